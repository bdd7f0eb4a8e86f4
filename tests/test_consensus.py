"""Consensus against a real anvil: validators with permits commit and reveal scores of
providers, finalization computes the stake-weighted median consensus, clips each
validator's scores at it, and pays providers by incentive and validators by agreement.
The figures are checked against an independent Python reference of the same rules; a
colluding validator's weight is clipped and it earns less; every commit-reveal and
finalization rule has its failure path; money is conserved."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from agentmesh.errors import ContractRevertError
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import TokenClient
from agentmesh.wallets.consensus import ONE, ConsensusClient, ScoreSheet, score_sheet
from agentmesh.wallets.staking import StakingClient
from agentmesh.wallets.wallet import Wallet
from tests.helpers import ONE_MUSD, WalletFactory, advance_time, chain_now

EPOCH, REVEAL = 1000, 100
PROVIDER_SHARE_BPS = 6000


@dataclass
class Stage:
    chain: Chain
    staking: StakingClient
    consensus: ConsensusClient  # as the funder
    token: TokenClient
    validators: list[Wallet]
    providers: list[Wallet]
    stakes: list[int]

    def by(self, wallet: Wallet) -> ConsensusClient:
        return self.consensus.as_wallet(wallet)

    async def to_reveal(self, epoch: int) -> None:
        """Move the chain into ``epoch``'s reveal window."""
        end = await self.consensus.epoch_end(epoch)
        await advance_time(self.chain, max(0, end - await chain_now(self.chain)))

    async def to_finalize(self, epoch: int) -> None:
        end = await self.consensus.epoch_end(epoch)
        await advance_time(self.chain, max(0, end + REVEAL - await chain_now(self.chain)))

    async def holdings(self) -> int:
        holders = [w.address for w in self.validators + self.providers]
        holders += [self.consensus.wallet.address, self.consensus.address]
        return sum([await self.token.balance_of(h) for h in holders])


@pytest.fixture
async def st(chain: Chain, deployer: Wallet, make_wallet: WalletFactory) -> Stage:
    staking = await StakingClient.deploy(
        deployer,
        chain.token_address,
        unbonding_delay=100,
        min_provider_stake=10 * ONE_MUSD,
        permits=3,
        max_validators=8,
    )
    consensus = await ConsensusClient.deploy(
        deployer,
        staking.address,
        chain.token_address,
        epoch_length=EPOCH,
        reveal_window=REVEAL,
        provider_share_bps=PROVIDER_SHARE_BPS,
    )
    stakes = [30, 20, 10]
    validators = []
    for amount in stakes:
        wallet = await make_wallet(eth=5, musd=100)
        await staking.as_wallet(wallet).stake(amount * ONE_MUSD)
        await staking.as_wallet(wallet).register_validator()
        validators.append(wallet)
    providers = []
    for _ in range(3):
        wallet = await make_wallet(eth=5, musd=100)
        await staking.as_wallet(wallet).stake(10 * ONE_MUSD)
        providers.append(wallet)
    await consensus.fund(100 * ONE_MUSD)
    return Stage(
        chain,
        staking,
        consensus,
        TokenClient(deployer, chain.token_address),
        validators,
        providers,
        [s * ONE_MUSD for s in stakes],
    )


def reference(
    scores: list[dict[str, int]], stakes: list[int], ranked: set[str], pool: int
) -> tuple[dict[str, int], dict[str, int], list[int], dict[str, int], list[int]]:
    """The contract's rules, written again: consensus, incentive (1e18), dividend share
    (1e18), and rewards (providers', validators')."""
    providers = list(dict.fromkeys(p for sheet in scores for p in sheet))
    total = sum(stakes)
    consensus, ranks = {}, {}
    for p in providers:
        pairs = sorted(
            (sheet.get(p, 0), stake) for sheet, stake in zip(scores, stakes, strict=True)
        )
        seen, median = 0, 0
        for score, stake in pairs:
            seen += stake
            if 2 * seen >= total:
                median = score
                break
        consensus[p] = median
        clipped = sum(
            s * min(sheet.get(p, 0), median) for sheet, s in zip(scores, stakes, strict=True)
        )
        ranks[p] = clipped // total if p in ranked else 0
    total_rank = sum(ranks.values())
    incentive = {p: ranks[p] * ONE // total_rank for p in providers}
    provider_pool = pool * PROVIDER_SHARE_BPS // 10_000
    provider_rewards = {p: provider_pool * ranks[p] // total_rank for p in providers}
    dividends = []
    for sheet, stake in zip(scores, stakes, strict=True):
        agreement = sum(
            min(sheet.get(p, 0), consensus[p]) * incentive[p] for p in providers if incentive[p]
        )
        dividends.append(stake * (agreement // ONE))
    validator_pool = pool - provider_pool
    validator_rewards = [validator_pool * d // sum(dividends) for d in dividends]
    shares = [d * ONE // sum(dividends) for d in dividends]
    return consensus, incentive, shares, provider_rewards, validator_rewards


async def test_consensus_rewards_the_honest_and_clips_a_colluding_validator(st: Stage) -> None:
    before = await st.holdings()
    honest, garbage, liar = (p.address for p in st.providers)
    epoch = await st.consensus.current_epoch()
    sheets = [
        {honest: 9000, garbage: 500, liar: 1000},
        {honest: 8500, garbage: 0, liar: 2000},
        {honest: 8000, garbage: 9500, liar: 1000},  # colludes with the garbage provider
    ]
    signed = [score_sheet(epoch, sheet) for sheet in sheets]
    for validator, sheet in zip(st.validators, signed, strict=True):
        await st.by(validator).commit(sheet)
    await st.to_reveal(epoch)
    for validator, sheet in zip(st.validators, signed, strict=True):
        await st.by(validator).reveal(sheet)
    await st.to_finalize(epoch)
    receipt = await st.consensus.finalize(epoch)
    consensus, incentive, shares, provider_rewards, validator_rewards = reference(
        sheets, st.stakes, {honest, garbage, liar}, 100 * ONE_MUSD
    )
    for provider in (honest, garbage, liar):
        assert await st.consensus.consensus_of(epoch, provider) == consensus[provider]
        assert await st.consensus.incentive_of(epoch, provider) == incentive[provider]
        assert await st.consensus.claimable(provider) == provider_rewards[provider]
    assert consensus == {honest: 8500, garbage: 500, liar: 1000}  # the colluder's 9500: clipped
    assert incentive[honest] > 0.8 * ONE and incentive[garbage] < 0.06 * ONE
    for validator, share, reward in zip(st.validators, shares, validator_rewards, strict=True):
        assert await st.consensus.dividend_of(epoch, validator.address) == share
        assert await st.consensus.claimable(validator.address) == reward
    # Per unit of stake, the colluder earns less than the validators who agreed.
    per_stake = [r / s for r, s in zip(validator_rewards, st.stakes, strict=True)]
    assert per_stake[2] < per_stake[1] and per_stake[2] < per_stake[0]
    # Everything credited or left in the pool; claims move it out; nothing is lost.
    owed = await st.consensus.owed()
    assert owed + await st.consensus.pool() == 100 * ONE_MUSD
    assert owed == sum(provider_rewards.values()) + sum(validator_rewards)
    assert await st.token.balance_of(st.consensus.address) == 100 * ONE_MUSD
    for wallet in st.providers + st.validators:
        await st.by(wallet).claim()
    assert await st.token.balance_of(st.consensus.address) == await st.consensus.pool()
    assert await st.holdings() == before
    assert receipt["gasUsed"] < 1_000_000
    with pytest.raises(ContractRevertError) as exc:
        await st.consensus.finalize(epoch)
    assert str(exc.value.error_name) == "AlreadyFinalized"


def error(exc: pytest.ExceptionInfo[ContractRevertError]) -> str:
    return str(exc.value.error_name)


async def test_commit_reveal_rules(st: Stage, make_wallet: WalletFactory) -> None:
    v1, v2, _ = st.validators
    honest = st.providers[0].address
    epoch = await st.consensus.current_epoch()
    sheet = score_sheet(epoch, {honest: 7000})
    # No permit: not a validator, or a validator without active stake.
    outsider = await make_wallet(eth=5, musd=0)
    with pytest.raises(ContractRevertError) as exc:
        await st.by(outsider).commit(sheet)
    assert (error(exc), exc.value.error_args) == ("NoPermit", (outsider.address,))
    await st.by(v1).commit(sheet)
    with pytest.raises(ContractRevertError) as exc:
        await st.by(v1).commit(sheet)
    assert error(exc) == "AlreadyCommitted"
    # Too early to reveal, or reveal without a commit.
    with pytest.raises(ContractRevertError) as exc:
        await st.by(v1).reveal(sheet)
    assert error(exc) == "RevealNotOpen"
    await st.to_reveal(epoch)
    with pytest.raises(ContractRevertError) as exc:
        await st.by(v2).reveal(sheet)
    assert error(exc) == "NoCommit"
    # Scores that do not match the commit (another score, another salt).
    for other in (
        ScoreSheet(epoch, sheet.providers, (7001,), sheet.salt),
        ScoreSheet(epoch, sheet.providers, sheet.scores, bytes(32)),
    ):
        with pytest.raises(ContractRevertError) as exc:
            await st.by(v1).reveal(other)
        assert error(exc) == "RevealMismatch"
    await st.by(v1).reveal(sheet)
    with pytest.raises(ContractRevertError) as exc:
        await st.by(v1).reveal(sheet)
    assert error(exc) == "AlreadyRevealed"
    with pytest.raises(ContractRevertError) as exc:
        await st.consensus.finalize(epoch)
    assert error(exc) == "FinalizeTooEarly"
    await st.to_finalize(epoch)
    await st.consensus.finalize(epoch)


async def test_a_late_reveal_is_refused_and_its_stake_does_not_count(st: Stage) -> None:
    v1, v2, _ = st.validators
    honest, garbage, _ = (p.address for p in st.providers)
    epoch = await st.consensus.current_epoch()
    early = score_sheet(epoch, {honest: 8000, garbage: 100})
    late = score_sheet(epoch, {honest: 100, garbage: 9000})
    await st.by(v1).commit(early)
    await st.by(v2).commit(late)
    await st.to_reveal(epoch)
    await st.by(v1).reveal(early)
    await st.to_finalize(epoch)
    with pytest.raises(ContractRevertError) as exc:
        await st.by(v2).reveal(late)
    assert error(exc) == "RevealClosed"
    await st.consensus.finalize(epoch)
    assert await st.consensus.consensus_of(epoch, garbage) == 100  # v2's 9000 never counted
    assert await st.consensus.dividend_of(epoch, st.validators[0].address) == ONE


async def test_bad_score_sheets_are_refused(st: Stage) -> None:
    honest = st.providers[0].address
    zero = "0x" + "00" * 20
    epoch = await st.consensus.current_epoch()
    bad = [
        ScoreSheet(epoch, (honest,), (10_001,), bytes(32)),  # over the maximum
        ScoreSheet(epoch, (honest, honest), (1, 2), bytes(32)),  # a provider twice
        ScoreSheet(epoch, (zero,), (1,), bytes(32)),  # no provider
    ]
    for validator, sheet in zip(st.validators, bad, strict=True):
        await st.by(validator).commit(sheet)
    await st.to_reveal(epoch)
    for validator, sheet in zip(st.validators, bad, strict=True):
        with pytest.raises(ContractRevertError) as exc:
            await st.by(validator).reveal(sheet)
        assert error(exc) == "BadScores"


async def test_an_unranked_provider_earns_nothing_and_an_empty_epoch_keeps_the_pool(
    st: Stage,
) -> None:
    honest, garbage, _ = st.providers
    await st.staking.as_wallet(garbage).unbond(ONE_MUSD)  # below the minimum now
    epoch = await st.consensus.current_epoch()
    sheet = score_sheet(epoch, {honest.address: 6000, garbage.address: 6000})
    await st.by(st.validators[0]).commit(sheet)
    await st.to_reveal(epoch)
    await st.by(st.validators[0]).reveal(sheet)
    await st.to_finalize(epoch)
    await st.consensus.finalize(epoch)
    assert await st.consensus.consensus_of(epoch, garbage.address) == 6000
    assert await st.consensus.incentive_of(epoch, garbage.address) == 0
    assert await st.consensus.claimable(garbage.address) == 0
    assert await st.consensus.incentive_of(epoch, honest.address) == ONE
    # The next epoch nobody reveals: finalizing it pays nothing, the pool stays.
    pool = await st.consensus.pool()
    await st.to_finalize(epoch + 1)
    await st.consensus.finalize(epoch + 1)
    assert await st.consensus.pool() == pool
    with pytest.raises(ContractRevertError) as exc:
        await st.by(garbage).claim()
    assert error(exc) == "NothingToClaim"
    with pytest.raises(ContractRevertError) as exc:
        await st.consensus.fund(0)
    assert error(exc) == "ZeroAmount"
