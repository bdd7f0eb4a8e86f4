"""TaskEscrow, driven through ``EscrowClient`` against the session's real anvil.

Every function's success path, every custom error (decoded name and arguments), the
exact time boundaries, conservation of funds on every path, and hostile tokens compiled
from ``tests/contracts`` (re-entrant, fee-on-transfer, false-returning).

Time is always chain time. Exact boundaries use ``evm_setNextBlockTimestamp`` so the
block a transaction lands in has a known timestamp; anvil estimates gas against the
latest block's timestamp, so a call expected to succeed must not depend on the estimate
seeing the future.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from web3 import AsyncWeb3
from web3.contract import AsyncContract
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD

from agentmesh.contracts import Artifact
from agentmesh.contracts.compile import compile_sources, render
from agentmesh.errors import AgentMeshError, ContractRevertError, InsufficientFundsError
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import (
    DISPUTE_TIMEOUT_S,
    EscrowClient,
    EscrowJob,
    JobStatus,
    TokenClient,
)
from agentmesh.wallets.deployer import dev_deployer
from agentmesh.wallets.reverts import decode_revert
from agentmesh.wallets.wallet import Wallet
from tests.helpers import (
    ONE_MUSD,
    SLACK_S,
    STATE_STATUS,
    Parties,
    WalletFactory,
    advance_time,
    chain_now,
    drive,
    escrow_for,
    fee_of,
    h32,
    net,
    rpc,
    token_for,
)
from tests.helpers import open_job as shared_open_job

AMOUNT = 25 * ONE_MUSD
CLIENT_MUSD = 1_000  # whole mUSD the client starts with
DEADLINE_S = 3_600
REVIEW_S = 600
MAX_REVIEW_S = 30 * 24 * 3_600
FIXED_GAS = 400_000  # sent with an explicit gas limit, the tx is mined even if it reverts
ZERO_ADDRESS = "0x" + "00" * 20
ZERO_HASH = bytes(32)
UINT256_MAX = 2**256 - 1
TEST_CONTRACTS = Path(__file__).resolve().parent / "contracts"
LIVE = {JobStatus.OPEN, JobStatus.ACCEPTED, JobStatus.SUBMITTED, JobStatus.DISPUTED}


# ---------------------------------------------------------------------------- parties


@pytest.fixture
async def p(make_wallet: WalletFactory) -> Parties:
    return Parties(
        client=await make_wallet(musd=CLIENT_MUSD, name="client"),
        provider=await make_wallet(musd=0, name="provider"),
        arbiter=await make_wallet(musd=0, name="arbiter"),
        stranger=await make_wallet(musd=0, name="stranger"),
    )


def escrow_address(chain: Chain) -> str:
    return str(chain.deployment.address("TaskEscrow"))


def pool_address(chain: Chain) -> str:
    """The validators' reward pool, where the protocol fee on provider payouts goes."""
    return str(chain.deployment.address("Consensus"))


# ---------------------------------------------------------------------------- ledger


async def balances(chain: Chain, token_address: str, holders: Sequence[str]) -> tuple[int, ...]:
    contract = chain.contract("MeshUSD", token_address)  # ERC-20 subset is all we read
    return tuple([int(await contract.functions.balanceOf(h).call()) for h in holders])


async def all_jobs(chain: Chain) -> tuple[EscrowJob, ...]:
    reader = EscrowClient(dev_deployer(chain.w3), escrow_address(chain))
    count = int(await reader.contract.functions.jobCount().call())
    return tuple([await reader.get_job(job_id) for job_id in range(1, count + 1)])


async def owed(chain: Chain, token_address: str) -> int:
    """What the escrow owes in ``token``: the amounts of its jobs still in flight."""
    return sum(
        j.amount for j in await all_jobs(chain) if j.token == token_address and j.status in LIVE
    )


async def assert_solvent(chain: Chain, token_address: str) -> None:
    held = (await balances(chain, token_address, [escrow_address(chain)]))[0]
    assert held == await owed(chain, token_address)


async def world(
    chain: Chain, holders: Sequence[str], tokens: Sequence[str] | None = None
) -> tuple[Any, ...]:
    """Every balance of ``holders`` and the escrow in ``tokens``, and every job record."""
    everyone = [*holders, escrow_address(chain)]
    token_list = tokens or [chain.token_address]
    return (
        tuple([await balances(chain, t, everyone) for t in token_list]),
        await all_jobs(chain),
    )


async def assert_reverts(
    chain: Chain,
    holders: Sequence[str],
    action: Awaitable[Any],
    name: str,
    args: tuple[Any, ...] | None,
    *,
    tokens: Sequence[str] | None = None,
) -> ContractRevertError:
    """``action`` reverts with custom error ``name(args)`` and changes no balance or job."""
    before = await world(chain, holders, tokens)
    with pytest.raises(ContractRevertError) as excinfo:
        await action
    assert excinfo.value.error_name == name, str(excinfo.value)
    if args is not None:
        assert excinfo.value.error_args == args, str(excinfo.value)
    assert await world(chain, holders, tokens) == before
    return excinfo.value


# ---------------------------------------------------------------------------- job driver


async def open_job(
    chain: Chain,
    p: Parties,
    *,
    client: Wallet | None = None,
    amount: int = AMOUNT,
    deadline_in: int = DEADLINE_S,
    review_window: int = REVIEW_S,
) -> int:
    return await shared_open_job(
        chain,
        p,
        client=client,
        amount=amount,
        deadline_in=deadline_in,
        review_window=review_window,
    )


async def job_in(chain: Chain, p: Parties, state: str, *, split: int = AMOUNT // 5) -> int:
    job_id = await open_job(chain, p)
    await drive(
        chain, p, job_id, state, split=split, deadline_in=DEADLINE_S, review_window=REVIEW_S
    )
    return job_id


Action = Callable[[EscrowClient, int], Awaitable[Any]]
ACTIONS: dict[str, Action] = {
    "cancel": lambda e, j: e.cancel(j),
    "accept": lambda e, j: e.accept(j),
    "submit": lambda e, j: e.submit(j, h32("result")),
    "release": lambda e, j: e.release(j),
    "claim": lambda e, j: e.claim(j),
    "refund": lambda e, j: e.refund(j),
    "dispute": lambda e, j: e.dispute(j, h32("reason")),
    "resolve": lambda e, j: e.resolve(j, 0),
    "expire": lambda e, j: e.expire_dispute(j),
}


def events(escrow: EscrowClient, name: str, receipt: Any) -> list[dict[str, Any]]:
    logs = escrow.contract.events[name]().process_receipt(receipt, errors=DISCARD)
    return [dict(e["args"]) for e in logs]


async def block_time(chain: Chain, receipt: Any) -> int:
    return int((await chain.w3.eth.get_block(receipt["blockNumber"]))["timestamp"])


async def feedback_parties(chain: Chain, job_id: int) -> tuple[str, str, bool]:
    raw = await chain.contract("TaskEscrow").functions.feedbackParties(job_id).call()
    return raw[0], raw[1], bool(raw[2])


# ============================================================================ success paths


async def test_open_approves_deposits_and_emits_job_opened(chain: Chain, p: Parties) -> None:
    escrow = escrow_for(chain, p.client)
    token = token_for(chain, p.client)
    assert await token.allowance(p.client.address, escrow.address) == 0
    deadline = await chain_now(chain) + DEADLINE_S

    job_id, receipts = await escrow.open(
        provider=p.provider.address,
        token=token,
        amount=AMOUNT,
        deadline=deadline,
        review_window=REVIEW_S,
        arbiter=p.arbiter.address,
        terms_hash=h32("terms"),
    )

    assert job_id == 1
    assert len(receipts) == 2  # approve, then open
    approvals = token.contract.events.Approval().process_receipt(receipts[0], errors=DISCARD)
    assert approvals[0]["args"]["owner"] == p.client.address
    assert approvals[0]["args"]["spender"] == escrow.address
    assert approvals[0]["args"]["value"] == AMOUNT
    (opened,) = events(escrow, "JobOpened", receipts[1])
    assert opened == {
        "jobId": 1,
        "client": p.client.address,
        "provider": p.provider.address,
        "token": chain.token_address,
        "amount": AMOUNT,
        "deadline": deadline,
        "reviewWindow": REVIEW_S,
        "arbiter": p.arbiter.address,
        "termsHash": h32("terms"),
    }
    assert await token.balance_of(escrow.address) == AMOUNT
    assert await token.balance_of(p.client.address) == CLIENT_MUSD * ONE_MUSD - AMOUNT
    assert await token.allowance(p.client.address, escrow.address) == 0  # exactly used up
    assert await escrow.contract.functions.jobCount().call() == 1


async def test_get_job_returns_the_full_record(chain: Chain, p: Parties) -> None:
    escrow = escrow_for(chain, p.client)
    deadline = await chain_now(chain) + DEADLINE_S
    job_id, _ = await escrow.open(
        provider=p.provider.address,
        token=token_for(chain, p.client),
        amount=AMOUNT,
        deadline=deadline,
        review_window=REVIEW_S,
        arbiter=p.arbiter.address,
        terms_hash=h32("terms"),
    )
    assert await escrow.get_job(job_id) == EscrowJob(
        job_id=job_id,
        client=p.client.address,
        provider=p.provider.address,
        arbiter=p.arbiter.address,
        token=chain.token_address,
        amount=AMOUNT,
        deadline=deadline,
        review_window=REVIEW_S,
        accepted_at=0,
        submitted_at=0,
        status=JobStatus.OPEN,
        terms_hash=h32("terms"),
        result_hash=ZERO_HASH,
    )


async def test_open_skips_approve_when_allowance_suffices(chain: Chain, p: Parties) -> None:
    escrow = escrow_for(chain, p.client)
    token = token_for(chain, p.client)
    await token.approve(escrow.address, 3 * AMOUNT)
    deadline = await chain_now(chain) + DEADLINE_S
    job_id, receipts = await escrow.open(
        provider=p.provider.address,
        token=token,
        amount=AMOUNT,
        deadline=deadline,
        review_window=REVIEW_S,
        arbiter=p.arbiter.address,
        terms_hash=h32("terms"),
    )
    assert len(receipts) == 1
    assert events(escrow, "JobOpened", receipts[0])[0]["jobId"] == job_id
    assert await token.allowance(p.client.address, escrow.address) == 2 * AMOUNT


async def test_a_standing_allowance_spares_later_opens_their_approve(
    chain: Chain, p: Parties
) -> None:
    escrow = EscrowClient(
        p.client, escrow_for(chain, p.client).address, standing_allowance=AMOUNT * 5 // 2
    )
    token = token_for(chain, p.client)
    counts = []
    for n in range(4):
        _, receipts = await escrow.open(
            provider=p.provider.address,
            token=token,
            amount=AMOUNT,
            deadline=await chain_now(chain) + DEADLINE_S,
            review_window=REVIEW_S,
            arbiter=p.arbiter.address,
            terms_hash=h32(f"terms {n}"),
        )
        counts.append(len(receipts))
        # Only ever what the jobs opened so far leave of the standing allowance.
        left = await token.allowance(p.client.address, escrow.address)
        assert left == {0: AMOUNT * 3 // 2, 1: AMOUNT // 2, 2: AMOUNT * 3 // 2, 3: AMOUNT // 2}[n]
    assert counts == [2, 1, 2, 1]  # approve+open, then open alone, until it runs short
    assert await token.balance_of(escrow.address) == 4 * AMOUNT


async def test_open_with_an_allowance_of_exactly_the_amount_sends_no_approve(
    chain: Chain, p: Parties
) -> None:
    escrow = escrow_for(chain, p.client)
    token = token_for(chain, p.client)
    await token.approve(escrow.address, AMOUNT)

    job_id, receipts = await escrow.open(
        provider=p.provider.address,
        token=token,
        amount=AMOUNT,
        deadline=await chain_now(chain) + DEADLINE_S,
        review_window=REVIEW_S,
        arbiter=p.arbiter.address,
        terms_hash=h32("terms"),
    )

    assert len(receipts) == 1  # open only
    assert events(escrow, "JobOpened", receipts[0])[0]["jobId"] == job_id
    assert await token.allowance(p.client.address, escrow.address) == 0
    assert await token.balance_of(escrow.address) == AMOUNT


async def test_job_ids_are_sequential(chain: Chain, p: Parties) -> None:
    ids = [await open_job(chain, p, amount=AMOUNT + i) for i in range(3)]
    assert ids == [1, 2, 3]
    amounts = [(await escrow_for(chain, p.client).get_job(j)).amount for j in ids]
    assert amounts == [AMOUNT, AMOUNT + 1, AMOUNT + 2]
    await assert_solvent(chain, chain.token_address)


@pytest.mark.parametrize("review_window", [1, MAX_REVIEW_S])
async def test_open_accepts_review_window_bounds(
    chain: Chain, p: Parties, review_window: int
) -> None:
    job_id = await open_job(chain, p, review_window=review_window)
    assert (await escrow_for(chain, p.client).get_job(job_id)).review_window == review_window


async def test_cancel_refunds_the_client(chain: Chain, p: Parties) -> None:
    escrow = escrow_for(chain, p.client)
    job_id = await open_job(chain, p)
    receipt = await escrow.cancel(job_id)
    assert events(escrow, "JobCancelled", receipt) == [{"jobId": job_id}]
    assert (await escrow.get_job(job_id)).status == JobStatus.CANCELLED
    assert await balances(chain, chain.token_address, [p.client.address, escrow.address]) == (
        CLIENT_MUSD * ONE_MUSD,
        0,
    )


async def test_accept_records_the_provider_and_time(chain: Chain, p: Parties) -> None:
    job_id = await open_job(chain, p)
    provider = escrow_for(chain, p.provider)
    receipt = await provider.accept(job_id)
    assert events(provider, "JobAccepted", receipt) == [
        {"jobId": job_id, "provider": p.provider.address}
    ]
    job = await provider.get_job(job_id)
    assert job.status == JobStatus.ACCEPTED
    assert job.accepted_at == await block_time(chain, receipt)
    assert job.submitted_at == 0
    await assert_solvent(chain, chain.token_address)


async def test_submit_records_the_result_and_time(chain: Chain, p: Parties) -> None:
    job_id = await job_in(chain, p, "accepted")
    provider = escrow_for(chain, p.provider)
    receipt = await provider.submit(job_id, h32("result"))
    assert events(provider, "ResultSubmitted", receipt) == [
        {"jobId": job_id, "resultHash": h32("result")}
    ]
    job = await provider.get_job(job_id)
    assert job.status == JobStatus.SUBMITTED
    assert job.result_hash == h32("result")
    assert job.submitted_at == await block_time(chain, receipt)
    assert job.accepted_at <= job.submitted_at


async def test_release_pays_the_provider(chain: Chain, p: Parties) -> None:
    job_id = await job_in(chain, p, "submitted")
    client = escrow_for(chain, p.client)
    receipt = await client.release(job_id)
    assert events(client, "JobReleased", receipt) == [{"jobId": job_id, "amount": AMOUNT}]
    assert (await client.get_job(job_id)).status == JobStatus.RELEASED
    assert events(client, "FeeTaken", receipt) == [
        {"token": chain.token_address, "amount": fee_of(AMOUNT)}
    ]
    assert await balances(
        chain, chain.token_address, [p.provider.address, client.address, pool_address(chain)]
    ) == (net(AMOUNT), 0, fee_of(AMOUNT))


async def test_claim_pays_the_provider_after_the_review_window(chain: Chain, p: Parties) -> None:
    job_id = await job_in(chain, p, "submitted")
    provider = escrow_for(chain, p.provider)
    await advance_time(chain, REVIEW_S + SLACK_S)
    receipt = await provider.claim(job_id)
    assert events(provider, "JobClaimed", receipt) == [{"jobId": job_id, "amount": AMOUNT}]
    assert (await provider.get_job(job_id)).status == JobStatus.CLAIMED
    assert await balances(
        chain, chain.token_address, [p.provider.address, provider.address, pool_address(chain)]
    ) == (net(AMOUNT), 0, fee_of(AMOUNT))


@pytest.mark.parametrize("from_state", ["open", "accepted"])
async def test_refund_after_the_deadline(chain: Chain, p: Parties, from_state: str) -> None:
    job_id = await job_in(chain, p, from_state)
    client = escrow_for(chain, p.client)
    await advance_time(chain, DEADLINE_S + SLACK_S)
    receipt = await client.refund(job_id)
    assert events(client, "JobRefunded", receipt) == [{"jobId": job_id, "amount": AMOUNT}]
    assert (await client.get_job(job_id)).status == JobStatus.REFUNDED
    assert await balances(
        chain, chain.token_address, [p.client.address, p.provider.address, client.address]
    ) == (CLIENT_MUSD * ONE_MUSD, 0, 0)


async def test_dispute_freezes_the_funds(chain: Chain, p: Parties) -> None:
    job_id = await job_in(chain, p, "submitted")
    client = escrow_for(chain, p.client)
    receipt = await client.dispute(job_id, h32("reason"))
    assert events(client, "JobDisputed", receipt) == [
        {"jobId": job_id, "reasonHash": h32("reason")}
    ]
    assert (await client.get_job(job_id)).status == JobStatus.DISPUTED
    # Long after the review window nobody but the arbiter can move the money.
    await advance_time(chain, DEADLINE_S + REVIEW_S + SLACK_S)
    assert await balances(chain, chain.token_address, [client.address]) == (AMOUNT,)
    await assert_solvent(chain, chain.token_address)


@pytest.mark.parametrize(
    "provider_amount", [AMOUNT, 0, 7 * ONE_MUSD + 1], ids=["all-provider", "all-client", "split"]
)
async def test_resolve_splits_the_deposit(chain: Chain, p: Parties, provider_amount: int) -> None:
    job_id = await job_in(chain, p, "disputed")
    arbiter = escrow_for(chain, p.arbiter)
    receipt = await arbiter.resolve(job_id, provider_amount)
    client_amount = AMOUNT - provider_amount
    assert events(arbiter, "DisputeResolved", receipt) == [
        {"jobId": job_id, "providerAmount": provider_amount, "clientAmount": client_amount}
    ]
    transfers = chain.contract("MeshUSD").events.Transfer().process_receipt(receipt, errors=DISCARD)
    # A zero share is not transferred at all (the provider's comes with the fee's).
    assert len(transfers) == 2 * (provider_amount > 0) + (client_amount > 0)
    assert (await arbiter.get_job(job_id)).status == JobStatus.RESOLVED
    assert await balances(
        chain,
        chain.token_address,
        [
            p.client.address,
            p.provider.address,
            p.arbiter.address,
            arbiter.address,
            pool_address(chain),
        ],
    ) == (
        CLIENT_MUSD * ONE_MUSD - AMOUNT + client_amount,
        net(provider_amount),
        0,
        0,
        fee_of(provider_amount),
    )


async def test_an_unresolved_dispute_returns_the_deposit_after_its_timeout(
    chain: Chain, p: Parties
) -> None:
    job_id = await job_in(chain, p, "submitted")
    client = escrow_for(chain, p.client)
    disputed_at = await block_time(chain, await client.dispute(job_id, h32("reason")))
    job = await client.get_job(job_id)
    ends = disputed_at + DISPUTE_TIMEOUT_S
    assert (job.disputed_at, job.dispute_ends_at()) == (disputed_at, ends)
    stranger = escrow_for(chain, p.stranger)
    # Within the timeout the arbiter decides: expiring it is refused, for anyone.
    await assert_reverts(
        chain, p.addresses, stranger.expire_dispute(job_id), "DisputePending", (job_id, ends)
    )
    await advance_time(chain, ends - await chain_now(chain) + 1)
    # Past it the arbiter cannot decide any more ...
    await assert_reverts(
        chain,
        p.addresses,
        escrow_for(chain, p.arbiter).resolve(job_id, AMOUNT),
        "DisputeTimedOut",
        (job_id, ends),
    )
    # ... and anyone can send the deposit back to the client (it can go nowhere else).
    receipt = await stranger.expire_dispute(job_id)
    assert events(stranger, "DisputeExpired", receipt) == [{"jobId": job_id, "amount": AMOUNT}]
    assert (await client.get_job(job_id)).status == JobStatus.REFUNDED
    assert (await client.get_job(job_id)).dispute_ends_at() is None
    assert await balances(
        chain, chain.token_address, [p.client.address, p.provider.address, stranger.address]
    ) == (CLIENT_MUSD * ONE_MUSD, 0, 0)
    await assert_solvent(chain, chain.token_address)
    await assert_reverts(
        chain,
        p.addresses,
        stranger.expire_dispute(job_id),
        "WrongStatus",
        (job_id, JobStatus.REFUNDED),
    )


async def test_the_arbiter_may_resolve_until_the_last_second_of_the_timeout(
    chain: Chain, p: Parties
) -> None:
    job_id = await job_in(chain, p, "submitted")
    client = escrow_for(chain, p.client)
    disputed_at = await block_time(chain, await client.dispute(job_id, h32("reason")))
    ends = disputed_at + DISPUTE_TIMEOUT_S
    await rpc(chain, "evm_setNextBlockTimestamp", ends)
    receipt = await escrow_for(chain, p.arbiter).resolve(job_id, AMOUNT)
    assert await block_time(chain, receipt) == ends
    assert (await client.get_job(job_id)).status == JobStatus.RESOLVED


async def test_job_record_through_its_life(chain: Chain, p: Parties) -> None:
    client, provider = escrow_for(chain, p.client), escrow_for(chain, p.provider)
    job_id = await open_job(chain, p)
    opened = await client.get_job(job_id)
    accepted_at = await block_time(chain, await provider.accept(job_id))
    submitted_at = await block_time(chain, await provider.submit(job_id, h32("result")))
    await client.release(job_id)
    final = await client.get_job(job_id)
    assert final == EscrowJob(
        job_id=job_id,
        client=p.client.address,
        provider=p.provider.address,
        arbiter=p.arbiter.address,
        token=chain.token_address,
        amount=AMOUNT,
        deadline=opened.deadline,
        review_window=REVIEW_S,
        accepted_at=accepted_at,
        submitted_at=submitted_at,
        status=JobStatus.RELEASED,
        terms_hash=h32("terms"),
        result_hash=h32("result"),
    )
    assert final.status.final and not opened.status.final


# ---------------------------------------------------------------------------- feedbackParties


@pytest.mark.parametrize(
    ("state", "eligible"),
    [
        ("released", True),
        ("claimed", True),
        ("resolved", True),
        ("refunded_accepted", True),
        ("refunded_open", False),  # the provider never took the job: nothing to rate
        ("cancelled", False),
        ("open", False),
        ("accepted", False),
        ("submitted", False),
        ("disputed", False),
    ],
)
async def test_feedback_parties_eligibility(
    chain: Chain, p: Parties, state: str, eligible: bool
) -> None:
    job_id = await job_in(chain, p, state)
    job = await escrow_for(chain, p.client).get_job(job_id)
    assert job.status == STATE_STATUS[state]
    assert job.status.final == (state not in {"open", "accepted", "submitted", "disputed"})
    assert await feedback_parties(chain, job_id) == (p.client.address, p.provider.address, eligible)


async def test_feedback_parties_of_unknown_job_reverts(chain: Chain, p: Parties) -> None:
    await open_job(chain, p)
    with pytest.raises(ContractLogicError) as excinfo:
        await feedback_parties(chain, 2)
    decoded = decode_revert(excinfo.value.data)
    assert (decoded.error_name, decoded.error_args) == ("UnknownJob", (2,))


# ============================================================================ conservation


@pytest.mark.parametrize(
    ("state", "split", "client_delta", "provider_delta"),
    [
        ("released", 0, -AMOUNT, AMOUNT),
        ("claimed", 0, -AMOUNT, AMOUNT),
        ("cancelled", 0, 0, 0),
        ("refunded_open", 0, 0, 0),
        ("refunded_accepted", 0, 0, 0),
        ("resolved", AMOUNT, -AMOUNT, AMOUNT),
        ("resolved", 0, 0, 0),
        ("resolved", AMOUNT // 3, -(AMOUNT // 3), AMOUNT // 3),
    ],
    ids=[
        "released",
        "claimed",
        "cancelled",
        "refunded-open",
        "refunded-accepted",
        "resolved-provider",
        "resolved-client",
        "resolved-split",
    ],
)
async def test_every_path_conserves_funds(
    chain: Chain, p: Parties, state: str, split: int, client_delta: int, provider_delta: int
) -> None:
    escrow = escrow_address(chain)
    holders = [*p.addresses, escrow, pool_address(chain)]
    start = await balances(chain, chain.token_address, holders)
    job_id = await job_in(chain, p, state, split=split)
    end = await balances(chain, chain.token_address, holders)

    assert (await escrow_for(chain, p.client).get_job(job_id)).status == STATE_STATUS[state]
    assert sum(end) == sum(start)
    assert end[0] - start[0] == client_delta
    assert end[1] - start[1] == net(provider_delta)
    assert end[-1] - start[-1] == fee_of(provider_delta)  # the reward pool
    assert end[2:5] == start[2:5] == (0, 0, 0)  # arbiter, stranger and escrow hold nothing
    await assert_solvent(chain, chain.token_address)


async def test_escrow_holds_exactly_the_live_jobs(
    chain: Chain, p: Parties, make_wallet: WalletFactory
) -> None:
    second = await make_wallet(musd=CLIENT_MUSD, name="second client")
    musd = chain.token_address
    holders = [*p.addresses, second.address, pool_address(chain), escrow_address(chain)]
    start_total = sum(await balances(chain, musd, holders))

    async def check(expected_held: int) -> None:
        now = await balances(chain, musd, holders)
        assert sum(now) == start_total
        assert now[-1] == expected_held == await owed(chain, musd)

    a = await open_job(chain, p, amount=AMOUNT)
    b = await open_job(chain, p, client=second, amount=2 * AMOUNT)
    c = await open_job(chain, p, amount=3 * AMOUNT)
    d = await open_job(chain, p, client=second, amount=4 * AMOUNT)
    await check(10 * AMOUNT)

    client, second_e = escrow_for(chain, p.client), escrow_for(chain, second)
    provider, arbiter = escrow_for(chain, p.provider), escrow_for(chain, p.arbiter)
    for job in (a, b, c):
        await provider.accept(job)
    await check(10 * AMOUNT)
    await second_e.cancel(d)
    await check(6 * AMOUNT)
    await provider.submit(a, h32("a"))
    await provider.submit(b, h32("b"))
    await client.release(a)
    await check(5 * AMOUNT)
    await second_e.dispute(b, h32("late"))
    await check(5 * AMOUNT)
    await advance_time(chain, DEADLINE_S + SLACK_S)
    await client.refund(c)  # accepted, never delivered
    await check(2 * AMOUNT)
    await arbiter.resolve(b, AMOUNT // 2)
    await check(0)
    assert await balances(chain, musd, [p.provider.address]) == (net(AMOUNT) + net(AMOUNT // 2),)


# ============================================================================ reverts


async def test_unknown_job_everywhere(chain: Chain, p: Parties) -> None:
    known = await open_job(chain, p)
    for job_id in (0, known + 1, UINT256_MAX):
        for name, action in ACTIONS.items():
            caller = escrow_for(chain, p.arbiter if name == "resolve" else p.client)
            err = await assert_reverts(
                chain, p.addresses, action(caller, job_id), "UnknownJob", (job_id,)
            )
            assert err.contract == "TaskEscrow", name


async def test_get_job_of_unknown_job_raises_decoded_revert(chain: Chain, p: Parties) -> None:
    """A reverting read comes back decoded, like a failed transaction's."""
    await open_job(chain, p)
    with pytest.raises(ContractRevertError) as excinfo:
        await escrow_for(chain, p.client).get_job(7)
    assert (excinfo.value.error_name, excinfo.value.error_args) == ("UnknownJob", (7,))


@pytest.mark.parametrize(
    ("action", "state", "late"),
    [
        ("cancel", "open", False),
        ("release", "submitted", False),
        ("refund", "open", True),
        ("refund", "accepted", True),
        ("dispute", "submitted", False),
    ],
)
@pytest.mark.parametrize("role", ["provider", "arbiter", "stranger"])
async def test_not_client(
    chain: Chain, p: Parties, action: str, state: str, late: bool, role: str
) -> None:
    job_id = await job_in(chain, p, state)
    if late:
        await advance_time(chain, DEADLINE_S + SLACK_S)
    caller = p.by_role(role)
    await assert_reverts(
        chain,
        p.addresses,
        ACTIONS[action](escrow_for(chain, caller), job_id),
        "NotClient",
        (job_id, caller.address),
    )


@pytest.mark.parametrize(
    ("action", "state", "late"),
    [("accept", "open", False), ("submit", "accepted", False), ("claim", "submitted", True)],
)
@pytest.mark.parametrize("role", ["client", "arbiter", "stranger"])
async def test_not_provider(
    chain: Chain, p: Parties, action: str, state: str, late: bool, role: str
) -> None:
    job_id = await job_in(chain, p, state)
    if late:
        await advance_time(chain, REVIEW_S + SLACK_S)
    caller = p.by_role(role)
    await assert_reverts(
        chain,
        p.addresses,
        ACTIONS[action](escrow_for(chain, caller), job_id),
        "NotProvider",
        (job_id, caller.address),
    )


@pytest.mark.parametrize("role", ["client", "provider", "stranger"])
async def test_not_arbiter(chain: Chain, p: Parties, role: str) -> None:
    job_id = await job_in(chain, p, "disputed")
    caller = p.by_role(role)
    for provider_amount in (0, AMOUNT):  # neither side can award itself the deposit
        await assert_reverts(
            chain,
            p.addresses,
            escrow_for(chain, caller).resolve(job_id, provider_amount),
            "NotArbiter",
            (job_id, caller.address),
        )


WRONG_STATUS = [
    # (state, role, action, past the deadline and review window first?)
    ("released", "client", "release", False),  # release twice
    ("accepted", "provider", "accept", False),  # accept twice
    ("open", "provider", "submit", False),  # submit before accept
    ("submitted", "provider", "submit", False),  # submit twice
    ("submitted", "client", "refund", True),  # refund after delivery
    ("released", "client", "refund", True),  # refund after payout
    ("disputed", "client", "refund", True),
    ("claimed", "client", "refund", True),
    ("accepted", "client", "cancel", False),  # cancel after accept
    ("cancelled", "client", "cancel", False),  # cancel twice
    ("submitted", "client", "cancel", False),
    ("open", "client", "release", False),  # release before delivery
    ("accepted", "client", "release", False),
    ("disputed", "client", "release", False),  # release once disputed
    ("claimed", "client", "release", False),
    ("open", "provider", "claim", True),
    ("accepted", "provider", "claim", True),
    ("released", "provider", "claim", True),  # claim after release
    ("claimed", "provider", "claim", True),  # claim twice
    ("disputed", "provider", "claim", True),  # claim during a dispute
    ("accepted", "client", "dispute", False),  # dispute before delivery
    ("disputed", "client", "dispute", False),  # dispute twice
    ("released", "client", "dispute", False),
    ("submitted", "arbiter", "resolve", False),  # resolve without a dispute
    ("resolved", "arbiter", "resolve", False),  # resolve twice
    ("submitted", "client", "expire", True),  # no dispute to expire
    ("resolved", "client", "expire", True),  # resolved: nothing left to expire
    ("refunded_open", "client", "refund", False),  # refund twice
    ("refunded_open", "provider", "accept", False),
    ("cancelled", "provider", "accept", False),
    ("refunded_accepted", "provider", "submit", False),
]


@pytest.mark.parametrize(
    ("state", "role", "action", "late"),
    WRONG_STATUS,
    ids=[f"{a}-when-{s}{'-late' if late else ''}" for s, _, a, late in WRONG_STATUS],
)
async def test_wrong_status(
    chain: Chain, p: Parties, state: str, role: str, action: str, late: bool
) -> None:
    job_id = await job_in(chain, p, state)
    if late:
        await advance_time(chain, DEADLINE_S + REVIEW_S + SLACK_S)
    await assert_reverts(
        chain,
        p.addresses,
        ACTIONS[action](escrow_for(chain, p.by_role(role)), job_id),
        "WrongStatus",
        (job_id, STATE_STATUS[state]),
    )


async def test_open_zero_amount(chain: Chain, p: Parties) -> None:
    escrow = escrow_for(chain, p.client)
    await assert_reverts(
        chain,
        p.addresses,
        escrow.open(
            provider=p.provider.address,
            token=token_for(chain, p.client),
            amount=0,
            deadline=await chain_now(chain) + DEADLINE_S,
            review_window=REVIEW_S,
            arbiter=p.arbiter.address,
            terms_hash=h32("terms"),
        ),
        "ZeroAmount",
        (),
    )


@pytest.mark.parametrize(
    ("provider", "arbiter", "bad"),
    [
        ("client", "arbiter", "client"),  # provider == client
        ("zero", "arbiter", "zero"),
        ("provider", "client", "client"),  # arbiter == client
        ("provider", "provider", "provider"),  # arbiter == provider
        ("provider", "zero", "zero"),
    ],
    ids=[
        "provider-is-client",
        "zero-provider",
        "arbiter-is-client",
        "arbiter-is-provider",
        "zero-arbiter",
    ],
)
async def test_open_invalid_party(
    chain: Chain, p: Parties, provider: str, arbiter: str, bad: str
) -> None:
    def pick(role: str) -> str:
        return ZERO_ADDRESS if role == "zero" else p.by_role(role).address

    await assert_reverts(
        chain,
        p.addresses,
        escrow_for(chain, p.client).open(
            provider=pick(provider),
            token=token_for(chain, p.client),
            amount=AMOUNT,
            deadline=await chain_now(chain) + DEADLINE_S,
            review_window=REVIEW_S,
            arbiter=pick(arbiter),
            terms_hash=h32("terms"),
        ),
        "InvalidParty",
        (pick(bad),),
    )


async def test_open_zero_token_raw(chain: Chain, p: Parties) -> None:
    # TokenClient cannot even read a balance at address zero: bypass the client.
    escrow = escrow_for(chain, p.client)
    call = escrow.contract.functions.open(
        p.provider.address,
        ZERO_ADDRESS,
        AMOUNT,
        await chain_now(chain) + DEADLINE_S,
        REVIEW_S,
        p.arbiter.address,
        h32("terms"),
    )
    await assert_reverts(
        chain, p.addresses, p.client.transact(call), "InvalidParty", (ZERO_ADDRESS,)
    )


@pytest.mark.parametrize("offset", [0, -1, None], ids=["now", "past", "zero"])
async def test_open_invalid_deadline(chain: Chain, p: Parties, offset: int | None) -> None:
    now = await chain_now(chain)
    deadline = 0 if offset is None else now + offset
    err = await assert_reverts(
        chain,
        p.addresses,
        escrow_for(chain, p.client).open(
            provider=p.provider.address,
            token=token_for(chain, p.client),
            amount=AMOUNT,
            deadline=deadline,
            review_window=REVIEW_S,
            arbiter=p.arbiter.address,
            terms_hash=h32("terms"),
        ),
        "InvalidDeadline",
        None,
    )
    assert err.error_args[0] == deadline
    assert err.error_args[1] >= now >= deadline  # the block time it was checked against


@pytest.mark.parametrize("review_window", [0, MAX_REVIEW_S + 1, 2**64 - 1])
async def test_open_invalid_review_window(chain: Chain, p: Parties, review_window: int) -> None:
    await assert_reverts(
        chain,
        p.addresses,
        escrow_for(chain, p.client).open(
            provider=p.provider.address,
            token=token_for(chain, p.client),
            amount=AMOUNT,
            deadline=await chain_now(chain) + DEADLINE_S,
            review_window=review_window,
            arbiter=p.arbiter.address,
            terms_hash=h32("terms"),
        ),
        "InvalidReviewWindow",
        (review_window,),
    )


async def test_open_beyond_balance_is_refused_before_sending(chain: Chain, p: Parties) -> None:
    escrow = escrow_for(chain, p.client)
    nonce = await chain.w3.eth.get_transaction_count(p.client.address)
    before = await world(chain, p.addresses)
    with pytest.raises(InsufficientFundsError):
        await escrow.open(
            provider=p.provider.address,
            token=token_for(chain, p.client),
            amount=CLIENT_MUSD * ONE_MUSD + 1,
            deadline=await chain_now(chain) + DEADLINE_S,
            review_window=REVIEW_S,
            arbiter=p.arbiter.address,
            terms_hash=h32("terms"),
        )
    assert await chain.w3.eth.get_transaction_count(p.client.address) == nonce  # nothing sent
    assert await world(chain, p.addresses) == before


async def test_open_raw_without_allowance_or_balance(chain: Chain, p: Parties) -> None:
    escrow = escrow_for(chain, p.client)
    deadline = await chain_now(chain) + DEADLINE_S

    def call(amount: int) -> Any:
        return escrow.contract.functions.open(
            p.provider.address,
            chain.token_address,
            amount,
            deadline,
            REVIEW_S,
            p.arbiter.address,
            h32("terms"),
        )

    await assert_reverts(
        chain,
        p.addresses,
        p.client.transact(call(AMOUNT)),
        "ERC20InsufficientAllowance",
        (escrow.address, 0, AMOUNT),
    )
    held = CLIENT_MUSD * ONE_MUSD
    await token_for(chain, p.client).approve(escrow.address, UINT256_MAX)
    await assert_reverts(
        chain,
        p.addresses,
        p.client.transact(call(held + 1)),
        "ERC20InsufficientBalance",
        (p.client.address, held, held + 1),
    )


async def test_deadline_passed(chain: Chain, p: Parties) -> None:
    provider = escrow_for(chain, p.provider)
    late_accept = await open_job(chain, p)
    late_submit = await job_in(chain, p, "accepted")
    await advance_time(chain, DEADLINE_S + SLACK_S)
    for job_id, action in ((late_accept, "accept"), (late_submit, "submit")):
        deadline = (await provider.get_job(job_id)).deadline
        await assert_reverts(
            chain,
            p.addresses,
            ACTIONS[action](provider, job_id),
            "DeadlinePassed",
            (job_id, deadline),
        )


@pytest.mark.parametrize("state", ["open", "accepted"])
async def test_deadline_not_reached(chain: Chain, p: Parties, state: str) -> None:
    job_id = await job_in(chain, p, state)
    deadline = (await escrow_for(chain, p.client).get_job(job_id)).deadline
    await advance_time(chain, DEADLINE_S - SLACK_S)
    await assert_reverts(
        chain,
        p.addresses,
        escrow_for(chain, p.client).refund(job_id),
        "DeadlineNotReached",
        (job_id, deadline),
    )


async def test_review_window_open(chain: Chain, p: Parties) -> None:
    job_id = await job_in(chain, p, "submitted")
    job = await escrow_for(chain, p.provider).get_job(job_id)
    await advance_time(chain, REVIEW_S - SLACK_S)
    await assert_reverts(
        chain,
        p.addresses,
        escrow_for(chain, p.provider).claim(job_id),
        "ReviewWindowOpen",
        (job_id, job.submitted_at + REVIEW_S),
    )


async def test_review_window_closed(chain: Chain, p: Parties) -> None:
    job_id = await job_in(chain, p, "submitted")
    job = await escrow_for(chain, p.client).get_job(job_id)
    await advance_time(chain, REVIEW_S + SLACK_S)
    await assert_reverts(
        chain,
        p.addresses,
        escrow_for(chain, p.client).dispute(job_id, h32("too late")),
        "ReviewWindowClosed",
        (job_id, job.submitted_at + REVIEW_S),
    )
    # ... and the provider's claim is what remains.
    await escrow_for(chain, p.provider).claim(job_id)
    assert await balances(chain, chain.token_address, [p.provider.address]) == (net(AMOUNT),)


async def test_empty_result(chain: Chain, p: Parties) -> None:
    job_id = await job_in(chain, p, "accepted")
    await assert_reverts(
        chain,
        p.addresses,
        escrow_for(chain, p.provider).submit(job_id, ZERO_HASH),
        "EmptyResult",
        (job_id,),
    )


@pytest.mark.parametrize("provider_amount", [AMOUNT + 1, UINT256_MAX])
async def test_invalid_split(chain: Chain, p: Parties, provider_amount: int) -> None:
    job_id = await job_in(chain, p, "disputed")
    await assert_reverts(
        chain,
        p.addresses,
        escrow_for(chain, p.arbiter).resolve(job_id, provider_amount),
        "InvalidSplit",
        (job_id, provider_amount, AMOUNT),
    )


# ============================================================================ exact boundaries


async def pin_next_block(chain: Chain, timestamp: int) -> None:
    assert await chain_now(chain) < timestamp
    await rpc(chain, "evm_setNextBlockTimestamp", timestamp)


async def test_accept_and_submit_on_the_deadline_second(chain: Chain, p: Parties) -> None:
    provider = escrow_for(chain, p.provider)
    job_id = await open_job(chain, p)
    deadline = (await provider.get_job(job_id)).deadline
    await pin_next_block(chain, deadline - 1)
    assert await block_time(chain, await provider.accept(job_id)) == deadline - 1
    await pin_next_block(chain, deadline)
    assert await block_time(chain, await provider.submit(job_id, h32("result"))) == deadline
    assert (await provider.get_job(job_id)).submitted_at == deadline


async def test_accept_on_the_deadline_second_itself(chain: Chain, p: Parties) -> None:
    provider = escrow_for(chain, p.provider)
    job_id = await open_job(chain, p)
    deadline = (await provider.get_job(job_id)).deadline
    await pin_next_block(chain, deadline)
    # The deadline second still belongs to the provider (`>`, not `>=`); an explicit gas
    # limit skips the estimate, so the call is mined at `deadline`.
    receipt = await p.provider.transact(provider.contract.functions.accept(job_id), gas=FIXED_GAS)
    assert await block_time(chain, receipt) == deadline
    job = await provider.get_job(job_id)
    assert job.status == JobStatus.ACCEPTED and job.accepted_at == deadline


async def test_refund_on_the_deadline_second_is_too_early(chain: Chain, p: Parties) -> None:
    client = escrow_for(chain, p.client)
    job_id = await open_job(chain, p)
    deadline = (await client.get_job(job_id)).deadline
    await pin_next_block(chain, deadline)
    # An explicit gas limit skips the estimate, so the call is mined at `deadline`.
    await assert_reverts(
        chain,
        p.addresses,
        p.client.transact(client.contract.functions.refund(job_id), gas=FIXED_GAS),
        "DeadlineNotReached",
        (job_id, deadline),
    )
    await rpc(chain, "evm_mine", deadline + 1)
    receipt = await client.refund(job_id)
    assert await block_time(chain, receipt) >= deadline + 1
    assert (await client.get_job(job_id)).status == JobStatus.REFUNDED


async def test_review_window_edge_belongs_to_the_client(chain: Chain, p: Parties) -> None:
    client, provider = escrow_for(chain, p.client), escrow_for(chain, p.provider)
    first = await job_in(chain, p, "submitted")
    await advance_time(chain, SLACK_S)
    second = await job_in(chain, p, "submitted")
    ends = {j: (await client.get_job(j)).submitted_at + REVIEW_S for j in (first, second)}
    assert ends[first] < ends[second]
    # Claiming on the last second of the window is too early ...
    await pin_next_block(chain, ends[first])
    await assert_reverts(
        chain,
        p.addresses,
        p.provider.transact(provider.contract.functions.claim(first), gas=FIXED_GAS),
        "ReviewWindowOpen",
        (first, ends[first]),
    )
    # ... while disputing on that second is still in time.
    await pin_next_block(chain, ends[second])
    assert await block_time(chain, await client.dispute(second, h32("edge"))) == ends[second]
    await provider.claim(first)  # one window ended: the provider may collect
    assert [(await client.get_job(j)).status for j in (first, second)] == [
        JobStatus.CLAIMED,
        JobStatus.DISPUTED,
    ]


@pytest.mark.parametrize("case", ["accept-after-deadline", "dispute-after-window"])
async def test_revert_decided_by_the_mined_block_time_is_decoded(
    chain: Chain, p: Parties, case: str
) -> None:
    """BUG: ``Wallet._replay_revert`` replays a failed tx on the *parent* block.

    Gas estimation passes (the latest block is still in time); the tx lands one second
    later and reverts. The replay at ``blockNumber - 1`` runs with the parent's timestamp,
    does not revert, and the error becomes "status 0 in receipt (out of gas?)" with no
    error name.
    """
    if case == "accept-after-deadline":
        job_id = await open_job(chain, p)
        wallet = p.provider
        job = await escrow_for(chain, wallet).get_job(job_id)
        limit, expected = job.deadline, ("DeadlinePassed", (job_id, job.deadline))
        action: Awaitable[Any] = escrow_for(chain, wallet).accept(job_id)
    else:
        job_id = await job_in(chain, p, "submitted")
        wallet = p.client
        job = await escrow_for(chain, wallet).get_job(job_id)
        limit = job.submitted_at + REVIEW_S
        expected = ("ReviewWindowClosed", (job_id, limit))
        action = escrow_for(chain, wallet).dispute(job_id, h32("just late"))
    await pin_next_block(chain, limit + 1)
    with pytest.raises(ContractRevertError) as excinfo:
        await action
    assert (excinfo.value.error_name, excinfo.value.error_args) == expected, str(excinfo.value)
    assert (await escrow_for(chain, wallet).get_job(job_id)).status == job.status


# ============================================================================ client misuse


async def test_open_with_a_token_client_of_another_wallet(
    chain: Chain, p: Parties, token: TokenClient, deployer: Wallet
) -> None:
    """BUG: ``EscrowClient.open`` approves (and checks the balance) from ``token.wallet``.

    Passing a ``TokenClient`` bound to another wallet (here the shared deployer one) makes
    the *deployer* approve the escrow, then the client's ``open`` reverts for lack of
    allowance: a doomed transaction and a stray allowance on someone else's account.
    """
    escrow = escrow_for(chain, p.client)
    deployer_balance = await token.balance_of(deployer.address)
    outcome: Exception | None = None
    try:
        job_id, _ = await escrow.open(
            provider=p.provider.address,
            token=token,
            amount=AMOUNT,
            deadline=await chain_now(chain) + DEADLINE_S,
            review_window=REVIEW_S,
            arbiter=p.arbiter.address,
            terms_hash=h32("terms"),
        )
    except (AgentMeshError, ValueError) as exc:
        outcome = exc
    assert await token.allowance(deployer.address, escrow.address) == 0, (
        "open() approved the escrow from the token client's wallet, not the escrow's"
    )
    assert not isinstance(outcome, ContractRevertError), f"sent a doomed open: {outcome}"
    assert await token.balance_of(deployer.address) == deployer_balance
    if outcome is None:  # fixed by approving from the escrow client's own wallet
        job = await escrow.get_job(job_id)
        assert job.client == p.client.address
        assert await token.balance_of(escrow.address) == AMOUNT


# ============================================================================ hostile tokens


@pytest.fixture(scope="session")
def test_artifacts() -> dict[str, Artifact]:
    compiled = compile_sources(src_dir=TEST_CONTRACTS)
    return {
        name: Artifact(
            name=name,
            abi=data["abi"],
            bytecode=data["bytecode"],
            deployed_bytecode=data["deployedBytecode"],
            sha256="0x" + hashlib.sha256(render(data).encode()).hexdigest(),
        )
        for name, data in compiled.items()
    }


async def deploy(chain: Chain, wallet: Wallet, artifact: Artifact) -> AsyncContract:
    address, _ = await wallet.deploy(artifact)
    contract: AsyncContract = chain.w3.eth.contract(address=address, abi=artifact.abi)
    return contract


REENTRANT_CALL = "ReentrancyGuardReentrantCall"


@dataclass
class Attack:
    evil: AsyncContract  # the re-entrant token, also a party of job `inner`
    outer: int  # job paid in the evil token; paying it out triggers the hook
    inner: int  # mUSD job in which the evil token is client or provider
    victim: Wallet  # the other party of `inner`
    holders: list[str]
    tokens: list[str]


# trigger of the outer payout -> (state of outer, evil's role in inner, state of inner,
#                                  function re-entered on inner, time to let pass)
REENTRY = {
    "claim": ("submitted", "provider", "submitted", "claim", REVIEW_S + SLACK_S),
    "release": ("submitted", "client", "submitted", "release", 0),
    "refund": ("accepted", "client", "open", "refund", DEADLINE_S + SLACK_S),
    "cancel": ("open", "client", "open", "cancel", 0),
    "resolve": ("disputed", "provider", "submitted", "claim", REVIEW_S + SLACK_S),
}


async def as_evil(deployer: Wallet, evil: AsyncContract, target: Any, fn: str, *args: Any) -> Any:
    """Have the evil token contract itself call ``target.fn(*args)``."""
    data = target.encode_abi(fn, args=list(args))
    return await deployer.transact(evil.functions.exec(target.address, data))


async def setup_attack(
    chain: Chain,
    p: Parties,
    make_wallet: WalletFactory,
    deployer: Wallet,
    artifacts: dict[str, Artifact],
    trigger: str,
) -> Attack:
    outer_state, evil_role, inner_state, _, wait = REENTRY[trigger]
    evil = await deploy(chain, deployer, artifacts["ReentrantToken"])
    escrow = chain.contract("TaskEscrow")
    musd = chain.contract("MeshUSD")
    victim = await make_wallet(musd=CLIENT_MUSD, name="victim")
    await deployer.transact(evil.functions.mint(p.client.address, CLIENT_MUSD * ONE_MUSD))

    deadline = await chain_now(chain) + DEADLINE_S
    outer, _ = await escrow_for(chain, p.client).open(
        provider=p.provider.address,
        token=TokenClient(p.client, evil.address),
        amount=AMOUNT,
        deadline=deadline,
        review_window=REVIEW_S,
        arbiter=p.arbiter.address,
        terms_hash=h32("outer"),
    )
    await drive(
        chain,
        p,
        outer,
        outer_state,
        split=AMOUNT // 2,
        deadline_in=DEADLINE_S,
        review_window=REVIEW_S,
    )

    if evil_role == "provider":
        inner, _ = await escrow_for(chain, victim).open(
            provider=evil.address,
            token=token_for(chain, victim),
            amount=AMOUNT,
            deadline=deadline,
            review_window=REVIEW_S,
            arbiter=p.arbiter.address,
            terms_hash=h32("inner"),
        )
        await as_evil(deployer, evil, escrow, "accept", inner)
        await as_evil(deployer, evil, escrow, "submit", inner, h32("inner result"))
    else:
        await TokenClient(deployer, chain.token_address).mint(evil.address, AMOUNT)
        await as_evil(deployer, evil, musd, "approve", escrow.address, AMOUNT)
        await as_evil(
            deployer,
            evil,
            escrow,
            "open",
            victim.address,
            chain.token_address,
            AMOUNT,
            deadline,
            REVIEW_S,
            p.arbiter.address,
            h32("inner"),
        )
        inner = int(await escrow.functions.jobCount().call())
        if inner_state == "submitted":
            await escrow_for(chain, victim).accept(inner)
            await escrow_for(chain, victim).submit(inner, h32("inner result"))
    if wait:
        await advance_time(chain, wait)
    jobs = {j.job_id: j for j in await all_jobs(chain)}
    assert jobs[outer].status == STATE_STATUS[outer_state]
    assert jobs[inner].status == STATE_STATUS[inner_state]
    assert getattr(jobs[inner], evil_role) == evil.address
    return Attack(
        evil,
        outer,
        inner,
        victim,
        holders=[*p.addresses, victim.address, evil.address],
        tokens=[chain.token_address, evil.address],
    )


def outer_payout(chain: Chain, p: Parties, trigger: str, job_id: int) -> Awaitable[Any]:
    """The legitimate call that pays out the outer job (and so fires the token hook)."""
    payer = {"claim": p.provider, "resolve": p.arbiter}.get(trigger, p.client)
    action: Action = ACTIONS[trigger]
    if trigger == "resolve":
        action = lambda e, j: e.resolve(j, AMOUNT // 2)  # noqa: E731 - both sides get paid
    return action(escrow_for(chain, payer), job_id)


@pytest.mark.parametrize("trigger", list(REENTRY))
async def test_reentry_from_token_transfer_reverts(
    chain: Chain,
    p: Parties,
    make_wallet: WalletFactory,
    deployer: Wallet,
    test_artifacts: dict[str, Artifact],
    trigger: str,
) -> None:
    attack = await setup_attack(chain, p, make_wallet, deployer, test_artifacts, trigger)
    escrow = chain.contract("TaskEscrow")
    reentered = REENTRY[trigger][3]
    payload = escrow.encode_abi(reentered, args=[attack.inner])
    await deployer.transact(attack.evil.functions.arm(escrow.address, payload, True))

    err = await assert_reverts(
        chain,
        attack.holders,
        outer_payout(chain, p, trigger, attack.outer),
        REENTRANT_CALL,
        (),
        tokens=attack.tokens,
    )
    assert err.contract == "TaskEscrow"
    for token_address in attack.tokens:
        await assert_solvent(chain, token_address)


async def test_swallowed_reentry_is_blocked_only_by_the_guard(
    chain: Chain,
    p: Parties,
    make_wallet: WalletFactory,
    deployer: Wallet,
    test_artifacts: dict[str, Artifact],
) -> None:
    """The re-entrant claim is otherwise fully authorised: once the outer call is over
    the very same call succeeds, so the guard is what stopped it."""
    attack = await setup_attack(chain, p, make_wallet, deployer, test_artifacts, "claim")
    escrow = chain.contract("TaskEscrow")
    evil = attack.evil
    await deployer.transact(
        evil.functions.arm(escrow.address, escrow.encode_abi("claim", args=[attack.inner]), False)
    )
    holders = [*attack.holders, escrow.address, pool_address(chain)]
    totals = [sum(await balances(chain, t, holders)) for t in attack.tokens]

    await escrow_for(chain, p.provider).claim(attack.outer)

    assert await evil.functions.attempted().call() is True
    assert await evil.functions.reentrySucceeded().call() is False
    result = bytes(await evil.functions.reentryResult().call())
    assert result == bytes(AsyncWeb3.keccak(text=f"{REENTRANT_CALL}()")[:4])
    assert decode_revert(result).error_name == REENTRANT_CALL
    jobs = {j.job_id: j for j in await all_jobs(chain)}
    assert jobs[attack.outer].status == JobStatus.CLAIMED
    assert jobs[attack.inner].status == JobStatus.SUBMITTED  # untouched by the re-entry
    assert await balances(chain, chain.token_address, [evil.address]) == (0,)

    await as_evil(deployer, evil, escrow, "claim", attack.inner)
    assert await balances(chain, chain.token_address, [evil.address]) == (net(AMOUNT),)
    assert await balances(chain, evil.address, [p.provider.address]) == (AMOUNT,)  # no fee
    for token_address, total in zip(attack.tokens, totals, strict=True):
        assert sum(await balances(chain, token_address, holders)) == total
        await assert_solvent(chain, token_address)


async def test_reentry_from_transfer_from_during_open_reverts(
    chain: Chain,
    p: Parties,
    make_wallet: WalletFactory,
    deployer: Wallet,
    test_artifacts: dict[str, Artifact],
) -> None:
    evil = await deploy(chain, deployer, test_artifacts["ReentrantToken"])
    escrow = chain.contract("TaskEscrow")
    await deployer.transact(evil.functions.mint(p.client.address, AMOUNT))
    await TokenClient(deployer, chain.token_address).mint(evil.address, AMOUNT)
    await as_evil(deployer, evil, chain.contract("MeshUSD"), "approve", escrow.address, AMOUNT)
    deadline = await chain_now(chain) + DEADLINE_S
    nested_open = escrow.encode_abi(
        "open",
        args=[
            p.provider.address,
            chain.token_address,
            AMOUNT,
            deadline,
            REVIEW_S,
            p.arbiter.address,
            h32("nested"),
        ],
    )
    await deployer.transact(evil.functions.arm(escrow.address, nested_open, True))

    await assert_reverts(
        chain,
        [*p.addresses, evil.address],
        escrow_for(chain, p.client).open(
            provider=p.provider.address,
            token=TokenClient(p.client, evil.address),
            amount=AMOUNT,
            deadline=deadline,
            review_window=REVIEW_S,
            arbiter=p.arbiter.address,
            terms_hash=h32("outer"),
        ),
        REENTRANT_CALL,
        (),
        tokens=[chain.token_address, evil.address],
    )
    assert await escrow.functions.jobCount().call() == 0


async def test_fee_on_transfer_token_is_rejected(
    chain: Chain, p: Parties, deployer: Wallet, test_artifacts: dict[str, Artifact]
) -> None:
    fee = await deploy(chain, deployer, test_artifacts["FeeOnTransferToken"])
    await deployer.transact(fee.functions.mint(p.client.address, CLIENT_MUSD * ONE_MUSD))
    fee_token = TokenClient(p.client, fee.address)
    escrow = escrow_for(chain, p.client)
    received = AMOUNT - AMOUNT * 100 // 10_000

    await assert_reverts(
        chain,
        p.addresses,
        escrow.open(
            provider=p.provider.address,
            token=fee_token,
            amount=AMOUNT,
            deadline=await chain_now(chain) + DEADLINE_S,
            review_window=REVIEW_S,
            arbiter=p.arbiter.address,
            terms_hash=h32("terms"),
        ),
        "DepositMismatch",
        (AMOUNT, received),
        tokens=[fee.address, chain.token_address],
    )
    assert await fee_token.balance_of(p.client.address) == CLIENT_MUSD * ONE_MUSD
    assert await fee_token.balance_of(escrow.address) == 0
    assert await fee.functions.totalSupply().call() == CLIENT_MUSD * ONE_MUSD  # no fee burnt
    assert await escrow.contract.functions.jobCount().call() == 0


async def test_false_returning_token_is_rejected(
    chain: Chain, p: Parties, deployer: Wallet, test_artifacts: dict[str, Artifact]
) -> None:
    bad = await deploy(chain, deployer, test_artifacts["FalseReturnToken"])
    await deployer.transact(bad.functions.mint(p.client.address, AMOUNT))
    await assert_reverts(
        chain,
        p.addresses,
        escrow_for(chain, p.client).open(
            provider=p.provider.address,
            token=TokenClient(p.client, bad.address),
            amount=AMOUNT,
            deadline=await chain_now(chain) + DEADLINE_S,
            review_window=REVIEW_S,
            arbiter=p.arbiter.address,
            terms_hash=h32("terms"),
        ),
        "SafeERC20FailedOperation",
        (bad.address,),
        tokens=[bad.address],
    )
    assert await chain.contract("TaskEscrow").functions.jobCount().call() == 0
