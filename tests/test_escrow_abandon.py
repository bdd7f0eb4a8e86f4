"""TaskEscrow.abandon: the provider gives up an accepted job and the client is refunded.

Driven through ``EscrowClient`` against the session's real anvil, with jobs moved to each
state by the shared ``tests.escrow_jobs`` driver.
"""

from __future__ import annotations

from collections.abc import Awaitable
from typing import Any

import pytest
from web3.logs import DISCARD

from agentmesh.errors import ContractRevertError
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import JobStatus
from tests.helpers import (
    ONE_MUSD,
    SLACK_S,
    STATE_STATUS,
    Parties,
    WalletFactory,
    advance_time,
    drive,
    escrow_for,
    h32,
    open_job,
    registry_for,
    token_for,
)

AMOUNT = 25 * ONE_MUSD
CLIENT_MUSD = 1_000  # whole mUSD the client starts with
DEADLINE_S = 3_600
REVIEW_S = 600


@pytest.fixture
async def p(make_wallet: WalletFactory) -> Parties:
    return Parties(
        client=await make_wallet(musd=CLIENT_MUSD, name="client"),
        provider=await make_wallet(musd=0, name="provider"),
        arbiter=await make_wallet(musd=0, name="arbiter"),
        stranger=await make_wallet(musd=0, name="stranger"),
    )


async def job_in(chain: Chain, p: Parties, state: str) -> int:
    """A fresh job driven to ``state`` (one of ``tests.escrow_jobs.PATHS``)."""
    job_id = await open_job(chain, p, amount=AMOUNT, deadline_in=DEADLINE_S, review_window=REVIEW_S)
    await drive(
        chain, p, job_id, state, split=AMOUNT // 5, deadline_in=DEADLINE_S, review_window=REVIEW_S
    )
    return job_id


async def ledger(chain: Chain, p: Parties) -> tuple[int, ...]:
    """mUSD balances of every party and of the escrow."""
    token = token_for(chain, p.client)
    holders = [*p.addresses, escrow_for(chain, p.client).address]
    return tuple([await token.balance_of(h) for h in holders])


async def assert_reverts(
    chain: Chain, p: Parties, job_id: int, action: Awaitable[Any], name: str, args: tuple[Any, ...]
) -> None:
    """``action`` reverts with ``name(args)`` and moves neither money nor the job."""
    escrow = escrow_for(chain, p.client)
    before = (await ledger(chain, p), await escrow.get_job(job_id))
    with pytest.raises(ContractRevertError) as excinfo:
        await action
    assert (excinfo.value.error_name, excinfo.value.error_args) == (name, args), str(excinfo.value)
    assert (await ledger(chain, p), await escrow.get_job(job_id)) == before


# ---------------------------------------------------------------------------- success


async def test_provider_abandons_an_accepted_job(chain: Chain, p: Parties) -> None:
    token = token_for(chain, p.client)
    escrow = escrow_for(chain, p.provider)
    escrow_before = await token.balance_of(escrow.address)
    client_before = await token.balance_of(p.client.address)

    job_id = await job_in(chain, p, "accepted")
    assert await token.balance_of(p.client.address) == client_before - AMOUNT
    assert await token.balance_of(escrow.address) == escrow_before + AMOUNT

    receipt = await escrow.abandon(job_id)

    logs = escrow.contract.events.JobAbandoned().process_receipt(receipt, errors=DISCARD)
    assert [dict(e["args"]) for e in logs] == [{"jobId": job_id, "amount": AMOUNT}]
    job = await escrow.get_job(job_id)
    assert job.status == JobStatus.REFUNDED
    assert job.accepted_at != 0
    assert await token.balance_of(p.client.address) == client_before == CLIENT_MUSD * ONE_MUSD
    assert await token.balance_of(escrow.address) == escrow_before
    assert await token.balance_of(p.provider.address) == 0


async def test_abandon_needs_no_wait_for_the_deadline(chain: Chain, p: Parties) -> None:
    """Unlike refund, abandon works right away; a client refund now would still revert."""
    job_id = await job_in(chain, p, "accepted")
    job = await escrow_for(chain, p.client).get_job(job_id)
    await assert_reverts(
        chain,
        p,
        job_id,
        escrow_for(chain, p.client).refund(job_id),
        "DeadlineNotReached",
        (job_id, job.deadline),
    )
    await escrow_for(chain, p.provider).abandon(job_id)
    assert (await escrow_for(chain, p.client).get_job(job_id)).status == JobStatus.REFUNDED


# ---------------------------------------------------------------------------- reverts


@pytest.mark.parametrize("state", ["open", "submitted", "released"])
async def test_abandon_outside_accepted_reverts_wrong_status(
    chain: Chain, p: Parties, state: str
) -> None:
    job_id = await job_in(chain, p, state)
    await assert_reverts(
        chain,
        p,
        job_id,
        escrow_for(chain, p.provider).abandon(job_id),
        "WrongStatus",
        (job_id, STATE_STATUS[state]),
    )


@pytest.mark.parametrize("role", ["client", "stranger", "arbiter"])
async def test_abandon_by_non_provider_reverts(chain: Chain, p: Parties, role: str) -> None:
    job_id = await job_in(chain, p, "accepted")
    caller = p.by_role(role)
    await assert_reverts(
        chain,
        p,
        job_id,
        escrow_for(chain, caller).abandon(job_id),
        "NotProvider",
        (job_id, caller.address),
    )


async def test_abandon_unknown_job_reverts(chain: Chain, p: Parties) -> None:
    known = await job_in(chain, p, "accepted")
    before = await ledger(chain, p)
    for job_id in (0, known + 1):
        with pytest.raises(ContractRevertError) as excinfo:
            await escrow_for(chain, p.provider).abandon(job_id)
        assert (excinfo.value.error_name, excinfo.value.error_args) == ("UnknownJob", (job_id,))
    assert await ledger(chain, p) == before
    assert (await escrow_for(chain, p.client).get_job(known)).status == JobStatus.ACCEPTED


async def test_abandon_twice_reverts_wrong_status(chain: Chain, p: Parties) -> None:
    job_id = await job_in(chain, p, "accepted")
    await escrow_for(chain, p.provider).abandon(job_id)
    await assert_reverts(
        chain,
        p,
        job_id,
        escrow_for(chain, p.provider).abandon(job_id),
        "WrongStatus",
        (job_id, JobStatus.REFUNDED),
    )


async def test_client_refund_after_abandon_reverts_wrong_status(chain: Chain, p: Parties) -> None:
    job_id = await job_in(chain, p, "accepted")
    await escrow_for(chain, p.provider).abandon(job_id)
    await advance_time(chain, DEADLINE_S + SLACK_S)  # past the deadline: only status blocks it
    await assert_reverts(
        chain,
        p,
        job_id,
        escrow_for(chain, p.client).refund(job_id),
        "WrongStatus",
        (job_id, JobStatus.REFUNDED),
    )


# ---------------------------------------------------------------------------- reputation


async def test_abandoned_job_is_eligible_for_feedback(chain: Chain, p: Parties) -> None:
    job_id = await job_in(chain, p, "accepted")
    escrow = escrow_for(chain, p.client)
    parties = escrow.contract.functions.feedbackParties(job_id)
    assert tuple(await parties.call()) == (p.client.address, p.provider.address, False)

    await escrow_for(chain, p.provider).abandon(job_id)
    assert tuple(await parties.call()) == (p.client.address, p.provider.address, True)

    from_client = registry_for(chain, p.client)
    assert await from_client.reputation(p.provider.address) == (0, 0)
    receipt = await from_client.give_feedback(job_id, 20, h32("walked away"))
    logs = from_client.contract.events.FeedbackGiven().process_receipt(receipt, errors=DISCARD)
    assert [dict(e["args"]) for e in logs] == [
        {
            "agent": p.provider.address,
            "from": p.client.address,
            "jobId": job_id,
            "score": 20,
            "commentHash": h32("walked away"),
        }
    ]
    assert await from_client.reputation(p.provider.address) == (1, 20)
    assert await from_client.reputation(p.client.address) == (0, 0)

    # The provider may rate back once too; the client's one rating is used up.
    await registry_for(chain, p.provider).give_feedback(job_id, 90, h32("fair client"))
    assert await from_client.reputation(p.client.address) == (1, 90)
    with pytest.raises(ContractRevertError) as excinfo:
        await from_client.give_feedback(job_id, 0, h32("again"))
    assert (excinfo.value.error_name, excinfo.value.error_args) == (
        "FeedbackAlreadyGiven",
        (job_id, p.client.address),
    )
