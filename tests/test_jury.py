"""The Jury contract of the devnet suite against a real anvil: a disputed escrow job
decided by staked validators (draw, evidence against the on-chain hashes, commit-reveal
votes, verdict, fee, slash), every documented outcome and the failure path of every
rule. Every test that moves money checks it is conserved across the parties, the jurors,
the escrow, the jury, the staking contract and the reward pool."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import pytest

from agentmesh.canonical import canonical_bytes
from agentmesh.errors import ContractRevertError
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import EscrowClient, JobStatus, TokenClient
from agentmesh.wallets.consensus import ConsensusClient
from agentmesh.wallets.deployer import (
    JURY_FEE,
    JURY_SLASH_BPS,
    JURY_WINDOWS_S,
    PROTOCOL_FEE_BPS,
    STAKING_UNBONDING_S,
)
from agentmesh.wallets.jury import JuryClient, Verdict, Vote, ballot
from agentmesh.wallets.staking import StakingClient
from agentmesh.wallets.wallet import Wallet
from tests.helpers import ONE_MUSD, WalletFactory, advance_time, chain_now, h32

AMOUNT = 20 * ONE_MUSD
PROVIDER_STAKE = 50 * ONE_MUSD
OPEN_S, EVIDENCE_S, COMMIT_S, REVEAL_S = JURY_WINDOWS_S
TASK_INPUT = canonical_bytes({"text": "is this spam?"})
RESULT = canonical_bytes({"label": "spam"})


def terms_for(task_input: bytes) -> bytes:
    """Terms as the negotiation protocol writes them (canonical JSON naming the input)."""
    return canonical_bytes(
        {
            "conversation": "ab" * 16,
            "input_sha256": hashlib.sha256(task_input).hexdigest(),
            "price": AMOUNT,
            "service": "classify",
        }
    )


@dataclass
class Court:
    chain: Chain
    token: TokenClient
    staking: StakingClient
    pool: ConsensusClient
    client: Wallet
    provider: Wallet
    validators: list[Wallet]
    job_id: int

    def jury(self, wallet: Wallet) -> JuryClient:
        return JuryClient(wallet, self.chain.deployment.address("Jury"))

    def escrow(self, wallet: Wallet) -> EscrowClient:
        return EscrowClient(wallet, self.chain.deployment.address("TaskEscrow"))

    def by_address(self, address: str) -> Wallet:
        return next(v for v in self.validators if v.address == address)

    async def holdings(self) -> dict[str, int]:
        holders = {
            "client": self.client.address,
            "provider": self.provider.address,
            **{f"validator{i}": v.address for i, v in enumerate(self.validators)},
            "escrow": self.chain.deployment.address("TaskEscrow"),
            "jury": self.chain.deployment.address("Jury"),
            "staking": self.staking.address,
            "pool": self.pool.address,
        }
        return {name: await self.token.balance_of(a) for name, a in holders.items()}

    async def opened_and_drawn(self) -> list[Wallet]:
        await self.jury(self.client).open(self.job_id)
        await self.jury(self.provider).draw(self.job_id)
        case = await self.jury(self.client).case(self.job_id)
        return [self.by_address(j) for j in case.jurors]

    async def shown(self) -> None:
        await self.jury(self.client).show_input(self.job_id, terms_for(TASK_INPUT), TASK_INPUT)
        await self.jury(self.provider).show_result(self.job_id, RESULT)

    async def vote(self, jurors: list[Wallet], votes: list[Vote]) -> None:
        ballots = [ballot(self.job_id, v) for v in votes]
        for juror, b in zip(jurors, ballots, strict=True):
            await self.jury(juror).commit_vote(b)
        if len(ballots) < len(await self.jurors()):
            await advance_time(self.chain, COMMIT_S + EVIDENCE_S)
        for juror, b in zip(jurors, ballots, strict=True):
            await self.jury(juror).reveal_vote(b)

    async def jurors(self) -> tuple[str, ...]:
        return (await self.jury(self.client).case(self.job_id)).jurors


async def stake(
    staking: StakingClient, wallet: Wallet, amount: int, *, validator: bool = False
) -> None:
    mine = staking.as_wallet(wallet)
    await mine.stake(amount)
    if validator:
        await mine.register_validator()


@pytest.fixture
async def court(chain: Chain, deployer: Wallet, make_wallet: WalletFactory) -> Court:
    """A submitted job (arbiter: the jury) that the client has disputed, a staked
    provider and three validators with permits."""
    token = TokenClient(deployer, chain.token_address)
    staking = StakingClient(deployer, chain.deployment.address("Staking"))
    pool = ConsensusClient(deployer, chain.deployment.address("Consensus"))
    client = await make_wallet(eth=5, musd=100, name="client")
    provider = await make_wallet(eth=5, musd=100, name="provider")
    await stake(staking, provider, PROVIDER_STAKE)
    validators = []
    for i, amount in enumerate((30, 20, 10)):
        v = await make_wallet(eth=5, musd=100, name=f"validator{i}")
        await stake(staking, v, amount * ONE_MUSD, validator=True)
        validators.append(v)
    escrow = EscrowClient(client, chain.deployment.address("TaskEscrow"))
    job_id, _ = await escrow.open(
        provider=provider.address,
        token=TokenClient(client, chain.token_address),
        amount=AMOUNT,
        deadline=await chain_now(chain) + 3600,
        review_window=600,
        arbiter=chain.deployment.address("Jury"),
        terms_hash=hashlib.sha256(terms_for(TASK_INPUT)).digest(),
    )
    as_provider = EscrowClient(provider, escrow.address)
    await as_provider.accept(job_id)
    await as_provider.submit(job_id, hashlib.sha256(RESULT).digest())
    await escrow.dispute(job_id, h32("wrong label"))
    return Court(chain, token, staking, pool, client, provider, validators, job_id)


def error(exc: pytest.ExceptionInfo[ContractRevertError]) -> str:
    return str(exc.value.error_name)


def fee_of(amount: int) -> int:
    return amount * PROTOCOL_FEE_BPS // 10_000


# ---------------------------------------------------------------------------- verdicts


async def test_a_jury_that_finds_for_the_client_refunds_it_and_slashes_the_provider(
    court: Court,
) -> None:
    before = await court.holdings()
    jurors = await court.opened_and_drawn()
    assert sorted(j.address for j in jurors) == sorted(v.address for v in court.validators)
    assert (await court.staking.stake_of(court.provider.address)).holds == 1
    await court.shown()
    await court.vote(jurors, [Vote.REFUND, Vote.REFUND, Vote.RELEASE])
    await court.jury(court.validators[0]).settle(court.job_id)  # everyone voted: at once

    case = await court.jury(court.client).case(court.job_id)
    slashed = PROVIDER_STAKE * JURY_SLASH_BPS // 10_000
    assert (case.verdict, case.for_refund, case.for_release) == (Verdict.REFUND, 2, 1)
    assert (case.slashed, case.compensation) == (slashed, slashed - JURY_FEE)
    job = await court.escrow(court.client).get_job(court.job_id)
    assert job.status == JobStatus.RESOLVED
    after = await court.holdings()
    share = JURY_FEE // 3
    assert after["client"] - before["client"] == AMOUNT + case.compensation
    assert after["provider"] == before["provider"]
    for i in range(3):
        assert after[f"validator{i}"] - before[f"validator{i}"] == share  # the minority too
    assert after["pool"] - before["pool"] == JURY_FEE - 3 * share  # rounding dust
    assert after["staking"] - before["staking"] == -slashed
    assert after["jury"] == before["jury"] == 0
    stake = await court.staking.stake_of(court.provider.address)
    assert (stake.active, stake.holds) == (PROVIDER_STAKE - slashed, 0)
    assert sum(after.values()) == sum(before.values())


async def test_a_jury_that_finds_for_the_provider_pays_it_and_the_clients_fee_pays_the_jurors(
    court: Court,
) -> None:
    before = await court.holdings()
    jurors = await court.opened_and_drawn()
    await court.shown()
    # One juror never votes: its share of the fee goes to the reward pool.
    await court.vote(jurors[:2], [Vote.RELEASE, Vote.RELEASE])
    with pytest.raises(ContractRevertError) as exc:
        await court.jury(court.client).settle(court.job_id)
    assert error(exc) == "SettleTooEarly"
    await advance_time(court.chain, REVEAL_S)
    await court.jury(court.client).settle(court.job_id)

    case = await court.jury(court.client).case(court.job_id)
    assert (case.verdict, case.slashed) == (Verdict.RELEASE, 0)
    after = await court.holdings()
    share = JURY_FEE // 3
    assert after["provider"] - before["provider"] == AMOUNT - fee_of(AMOUNT)
    assert after["client"] - before["client"] == -JURY_FEE
    paid = {j.address for j in jurors[:2]}
    for i, v in enumerate(court.validators):
        expected = share if v.address in paid else 0
        assert after[f"validator{i}"] - before[f"validator{i}"] == expected
    assert after["pool"] - before["pool"] == fee_of(AMOUNT) + JURY_FEE - 2 * share
    assert (await court.staking.stake_of(court.provider.address)).holds == 0
    assert sum(after.values()) == sum(before.values())


async def test_too_few_votes_is_no_quorum_the_client_is_refunded_and_nobody_slashed(
    court: Court,
) -> None:
    before = await court.holdings()
    jurors = await court.opened_and_drawn()
    await court.shown()
    await court.vote(jurors[:1], [Vote.REFUND])  # one of three: no majority
    await advance_time(court.chain, REVEAL_S)
    await court.jury(court.provider).settle(court.job_id)
    case = await court.jury(court.client).case(court.job_id)
    assert (case.verdict, case.slashed) == (Verdict.NO_QUORUM, 0)
    after = await court.holdings()
    share = JURY_FEE // 3
    assert after["client"] - before["client"] == AMOUNT - JURY_FEE
    assert after["provider"] == before["provider"]
    voter = court.validators.index(jurors[0])
    assert after[f"validator{voter}"] - before[f"validator{voter}"] == share
    assert after["pool"] - before["pool"] == JURY_FEE - share
    assert (await court.staking.stake_of(court.provider.address)).holds == 0
    assert sum(after.values()) == sum(before.values())


async def test_a_split_vote_without_majority_is_no_quorum(court: Court) -> None:
    jurors = await court.opened_and_drawn()
    await court.shown()
    await court.vote(jurors[:2], [Vote.REFUND, Vote.RELEASE])
    await advance_time(court.chain, REVEAL_S)
    await court.jury(court.provider).settle(court.job_id)
    assert (await court.jury(court.client).case(court.job_id)).verdict == Verdict.NO_QUORUM


async def test_a_provider_that_shows_a_result_not_matching_its_hash_loses(court: Court) -> None:
    before = await court.holdings()
    await court.opened_and_drawn()
    await court.jury(court.provider).show_result(court.job_id, b'{"label":"ham"}')
    case = await court.jury(court.client).case(court.job_id)
    slashed = PROVIDER_STAKE * JURY_SLASH_BPS // 10_000
    assert (case.verdict, case.slashed) == (Verdict.REFUND, slashed)
    after = await court.holdings()
    assert after["client"] - before["client"] == AMOUNT + slashed - JURY_FEE
    # Nobody voted: the jurors' pay (from the slash) goes to the reward pool.
    assert after["pool"] - before["pool"] == JURY_FEE
    assert sum(after.values()) == sum(before.values())


@pytest.mark.parametrize("lie", ["terms", "input"])
async def test_a_client_that_shows_an_input_not_matching_the_terms_loses(
    court: Court, lie: str
) -> None:
    before = await court.holdings()
    await court.opened_and_drawn()
    terms, task_input = terms_for(TASK_INPUT), TASK_INPUT
    if lie == "terms":
        terms = terms_for(b'{"text":"something else"}')
    else:
        task_input = b'{"text":"something else"}'
    await court.jury(court.client).show_input(court.job_id, terms, task_input)
    assert (await court.jury(court.client).case(court.job_id)).verdict == Verdict.RELEASE
    after = await court.holdings()
    assert after["provider"] - before["provider"] == AMOUNT - fee_of(AMOUNT)
    assert sum(after.values()) == sum(before.values())


async def test_a_party_that_does_not_show_its_evidence_loses(court: Court) -> None:
    jurors = await court.opened_and_drawn()
    await court.jury(court.client).show_input(court.job_id, terms_for(TASK_INPUT), TASK_INPUT)
    # The provider never shows its result; the jurors' votes cannot save it.
    await court.vote(jurors, [Vote.RELEASE, Vote.RELEASE, Vote.RELEASE])
    with pytest.raises(ContractRevertError) as exc:
        await court.jury(court.provider).settle(court.job_id)
    assert error(exc) == "SettleTooEarly"  # the provider still had time to show it
    await advance_time(court.chain, EVIDENCE_S + COMMIT_S + REVEAL_S)
    await court.jury(court.provider).settle(court.job_id)
    assert (await court.jury(court.client).case(court.job_id)).verdict == Verdict.REFUND


async def test_stake_unbonding_while_a_dispute_is_open_is_still_slashed(court: Court) -> None:
    jurors = await court.opened_and_drawn()
    await court.shown()
    await court.vote(jurors, [Vote.REFUND] * 3)
    mine = court.staking.as_wallet(court.provider)
    await mine.unbond(PROVIDER_STAKE)
    await advance_time(court.chain, STAKING_UNBONDING_S + 1)
    with pytest.raises(ContractRevertError) as exc:
        await mine.withdraw()
    assert (error(exc), exc.value.error_args) == ("StakeOnHold", (1,))
    before = await court.holdings()
    await court.jury(court.client).settle(court.job_id)
    slashed = PROVIDER_STAKE * JURY_SLASH_BPS // 10_000
    stake = await mine.stake_of(court.provider.address)
    assert (stake.active, stake.unbonding, stake.holds) == (0, PROVIDER_STAKE - slashed, 0)
    await mine.withdraw()  # the hold is gone with the verdict
    after = await court.holdings()
    assert after["provider"] - before["provider"] == PROVIDER_STAKE - slashed
    assert sum(after.values()) == sum(before.values())


# ---------------------------------------------------------------------------- time limits


async def test_a_dispute_never_brought_before_a_jury_is_dropped_for_the_provider(
    court: Court,
) -> None:
    before = await court.holdings()
    jury = court.jury(court.validators[0])
    with pytest.raises(ContractRevertError) as exc:
        await jury.settle_unopened(court.job_id)
    assert error(exc) == "OpenWindowOpen"
    await advance_time(court.chain, OPEN_S + 1)
    with pytest.raises(ContractRevertError) as exc:
        await court.jury(court.client).open(court.job_id)
    assert error(exc) == "OpenWindowClosed"
    await jury.settle_unopened(court.job_id)
    after = await court.holdings()
    assert after["provider"] - before["provider"] == AMOUNT - fee_of(AMOUNT)
    assert sum(after.values()) == sum(before.values())


async def test_a_case_past_the_escrow_timeout_expires_and_the_fee_goes_back(
    court: Court,
) -> None:
    before = await court.holdings()
    await court.jury(court.client).open(court.job_id)  # and nobody ever draws
    with pytest.raises(ContractRevertError) as exc:
        await court.jury(court.client).settle(court.job_id)
    assert error(exc) == "NotDrawn"
    escrow = court.escrow(court.client)
    (timeout,) = await escrow._read("DISPUTE_TIMEOUT")
    await advance_time(court.chain, int(timeout) + 1)
    await escrow.expire_dispute(court.job_id)
    await court.jury(court.provider).settle(court.job_id)
    case = await court.jury(court.client).case(court.job_id)
    assert case.verdict == Verdict.EXPIRED
    assert (await court.staking.stake_of(court.provider.address)).holds == 0
    after = await court.holdings()
    assert after["client"] - before["client"] == AMOUNT  # the deposit, and the fee back
    assert sum(after.values()) == sum(before.values())


async def test_with_nobody_to_draw_the_case_is_no_quorum_at_once(court: Court) -> None:
    for v in court.validators:
        await court.staking.as_wallet(v).unbond(
            (await court.staking.stake_of(v.address)).active
        )  # no active stake: no permit
    before = await court.holdings()
    await court.opened_and_drawn()
    case = await court.jury(court.client).case(court.job_id)
    assert (case.verdict, case.jurors) == (Verdict.NO_QUORUM, ())
    after = await court.holdings()
    assert after["client"] - before["client"] == AMOUNT  # deposit back, fee back
    assert sum(after.values()) == sum(before.values())


# ---------------------------------------------------------------------------- refusals


async def test_only_the_client_opens_a_case_once_and_only_for_a_jury_job(
    court: Court, make_wallet: WalletFactory
) -> None:
    with pytest.raises(ContractRevertError) as exc:
        await court.jury(court.provider).open(court.job_id)
    assert error(exc) == "NotClient"
    await court.jury(court.client).open(court.job_id)
    with pytest.raises(ContractRevertError) as exc:
        await court.jury(court.client).open(court.job_id)
    assert error(exc) == "CaseExists"
    with pytest.raises(ContractRevertError) as exc:
        await court.jury(court.client).open(court.job_id + 1)
    assert error(exc) == "UnknownJob"
    # A job whose arbiter is a key, not the jury.
    other = await make_wallet(eth=1, musd=0)
    escrow = court.escrow(court.client)
    job_id, _ = await escrow.open(
        provider=court.provider.address,
        token=TokenClient(court.client, court.chain.token_address),
        amount=ONE_MUSD,
        deadline=await chain_now(court.chain) + 3600,
        review_window=600,
        arbiter=other.address,
        terms_hash=h32("terms"),
    )
    with pytest.raises(ContractRevertError) as exc:
        await court.jury(court.client).open(job_id)
    assert error(exc) == "NotArbiter"


async def test_draw_skips_the_parties_and_validators_without_a_permit(
    court: Court, make_wallet: WalletFactory
) -> None:
    # The client is a validator with the most stake: it still cannot judge its own case.
    await stake(court.staking, court.client, 60 * ONE_MUSD, validator=True)
    jurors = await court.opened_and_drawn()
    assert court.client.address not in {j.address for j in jurors}
    assert len(jurors) == 3
    with pytest.raises(ContractRevertError) as exc:
        await court.jury(court.client).draw(court.job_id)
    assert error(exc) == "AlreadyDrawn"


async def test_votes_are_refused_from_strangers_late_twice_or_not_matching(
    court: Court, make_wallet: WalletFactory
) -> None:
    jurors = await court.opened_and_drawn()
    stranger = await make_wallet(eth=1, musd=0)
    with pytest.raises(ContractRevertError) as exc:
        await court.jury(stranger).commit_vote(ballot(court.job_id, Vote.REFUND))
    assert error(exc) == "NotJuror"
    mine = ballot(court.job_id, Vote.REFUND)
    await court.jury(jurors[0]).commit_vote(mine)
    with pytest.raises(ContractRevertError) as exc:
        await court.jury(jurors[0]).commit_vote(mine)
    assert error(exc) == "AlreadyCommitted"
    with pytest.raises(ContractRevertError) as exc:
        await court.jury(jurors[0]).reveal_vote(mine)  # others may still commit
    assert error(exc) == "RevealNotOpen"
    with pytest.raises(ContractRevertError) as exc:
        await court.jury(jurors[1]).reveal_vote(ballot(court.job_id, Vote.REFUND))
    assert error(exc) == "RevealNotOpen"
    await advance_time(court.chain, EVIDENCE_S + COMMIT_S)
    with pytest.raises(ContractRevertError) as exc:
        await court.jury(jurors[1]).commit_vote(ballot(court.job_id, Vote.REFUND))
    assert error(exc) == "CommitClosed"
    with pytest.raises(ContractRevertError) as exc:
        await court.jury(jurors[1]).reveal_vote(ballot(court.job_id, Vote.REFUND))
    assert error(exc) == "NoCommit"
    with pytest.raises(ContractRevertError) as exc:
        await court.jury(jurors[0]).reveal_vote(ballot(court.job_id, Vote.RELEASE, mine.salt))
    assert error(exc) == "VoteMismatch"
    await court.jury(jurors[0]).reveal_vote(mine)
    with pytest.raises(ContractRevertError) as exc:
        await court.jury(jurors[0]).reveal_vote(mine)
    assert error(exc) == "AlreadyRevealed"
    await advance_time(court.chain, REVEAL_S)
    with pytest.raises(ContractRevertError) as exc:
        await court.jury(jurors[2]).reveal_vote(mine)
    assert error(exc) == "RevealClosed"


async def test_evidence_is_refused_from_the_wrong_party_late_or_twice(court: Court) -> None:
    await court.opened_and_drawn()
    jury = court.jury(court.client)
    with pytest.raises(ContractRevertError) as exc:
        await court.jury(court.provider).show_input(court.job_id, b"x", b"y")
    assert error(exc) == "NotClient"
    with pytest.raises(ContractRevertError) as exc:
        await jury.show_result(court.job_id, RESULT)
    assert error(exc) == "NotProvider"
    await court.shown()
    with pytest.raises(ContractRevertError) as exc:
        await court.jury(court.provider).show_result(court.job_id, RESULT)
    assert error(exc) == "AlreadyShown"
    await advance_time(court.chain, EVIDENCE_S)
    with pytest.raises(ContractRevertError) as exc:
        await jury.show_input(court.job_id, terms_for(TASK_INPUT), TASK_INPUT)
    assert error(exc) == "EvidenceClosed"


async def test_a_decided_case_cannot_be_settled_or_voted_again(court: Court) -> None:
    jurors = await court.opened_and_drawn()
    await court.jury(court.provider).show_result(court.job_id, b"not it")  # loses at once
    for attempt in (
        court.jury(court.client).settle(court.job_id),
        court.jury(court.client).draw(court.job_id),
        court.jury(jurors[0]).commit_vote(ballot(court.job_id, Vote.REFUND)),
    ):
        with pytest.raises(ContractRevertError) as exc:
            await attempt
        assert error(exc) == "AlreadyDecided"
    # The escrow cannot be resolved a second time either (by anyone).
    with pytest.raises(ContractRevertError) as exc:
        await court.escrow(court.client).resolve(court.job_id, 0)
    assert error(exc) == "NotArbiter"
