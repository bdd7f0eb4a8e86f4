"""``DisputeWatch``: a disputed purchase ends by itself when its arbiter resolves it, or
gets its deposit back once the arbiter's time is over (in-memory escrow, real SQLite
records)."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path

from agentmesh.agents.context import TaskContext
from agentmesh.agents.dispute_watch import RESOLUTION_CHECK_S, DisputeWatch
from agentmesh.agents.testing import unit_context
from agentmesh.protocols.negotiation import Phase, TaskStatus
from agentmesh.testing import InMemoryLedger
from agentmesh.wallets.clients import DISPUTE_TIMEOUT_S, JobStatus

BUYER, SELLER, ARBITER = "0x" + "b1" * 20, "0x" + "5e" * 20, "0x" + "a7" * 20
PRICE, FUNDS = 2_000, 10_000


async def disputed_purchase(ctx: TaskContext, ledger: InMemoryLedger, tid: str) -> int:
    """A purchase ``tid`` whose job the buyer disputed just now."""
    escrow = ledger.escrow_for(BUYER)
    job_id, _ = await escrow.open(
        provider=SELLER,
        token=escrow.token,
        amount=PRICE,
        deadline=ledger.clock.time + 300,
        review_window=120,
        arbiter=ARBITER,
        terms_hash=b"\1" * 32,
    )
    await ledger.escrow_for(SELLER).accept(job_id)
    await ledger.escrow_for(SELLER).submit(job_id, b"\2" * 32)
    await escrow.dispute(job_id, b"\3" * 32)
    ctx.records.start_task(tid, "requester", "shout", SELLER)
    ctx.records.update_task(
        tid,
        state=Phase.DISPUTED,
        status=TaskStatus.DISPUTED,
        job_id=job_id,
        txs=json.dumps({"open": "0x01"}),
    )
    return job_id


def counting_reads(ctx: TaskContext) -> list[int]:
    reads: list[int] = []
    real = ctx.escrow.get_job

    async def get_job(job_id: int) -> object:
        reads.append(job_id)
        return await real(job_id)

    object.__setattr__(ctx.escrow, "get_job", get_job)
    return reads


async def test_a_lapsed_dispute_comes_back_to_the_buyer_by_itself(tmp_path: Path) -> None:
    ledger = InMemoryLedger()
    ledger.mint(BUYER, FUNDS)
    ctx = unit_context(tmp_path / "buyer.db", ledger=ledger, address=BUYER)
    job_id = await disputed_purchase(ctx, ledger, "r:aa")
    reads = counting_reads(ctx)
    watch = DisputeWatch(ctx)
    await watch.tick()
    ledger.clock.advance(RESOLUTION_CHECK_S - 1)
    await watch.tick()
    assert reads == [job_id]  # not read again before it is due
    ledger.clock.advance(1)
    await watch.tick()  # read again: the arbiter may have resolved it meanwhile
    assert reads == [job_id, job_id]
    ledger.clock.advance(DISPUTE_TIMEOUT_S - RESOLUTION_CHECK_S)  # the arbiter's last second
    await watch.tick()
    assert ledger.jobs[job_id].status == JobStatus.DISPUTED
    ledger.clock.advance(1)
    await watch.tick()
    assert ledger.jobs[job_id].status == JobStatus.REFUNDED
    assert ledger.balance_of(BUYER) == FUNDS
    row = ctx.records.task("r:aa")
    assert row is not None
    assert (row.state, row.status) == (Phase.REFUNDED, TaskStatus.REFUNDED)
    assert f"the arbiter {ARBITER} did not resolve the dispute in time" in row.detail
    assert set(json.loads(row.txs)) == {"open", "expire_dispute"}
    assert ctx.counters["disputes_expired"] == 1
    reads.clear()
    await watch.tick()  # nothing disputed is left: no more reads
    assert reads == []


async def test_a_resolved_dispute_is_recorded_as_done(tmp_path: Path) -> None:
    ledger = InMemoryLedger()
    ledger.mint(BUYER, FUNDS)
    ctx = unit_context(tmp_path / "buyer.db", ledger=ledger, address=BUYER)
    job_id = await disputed_purchase(ctx, ledger, "r:bb")
    watch = DisputeWatch(ctx)
    await watch.tick()
    ledger.jobs[job_id].status = JobStatus.RESOLVED  # the arbiter split it
    ledger.clock.advance(RESOLUTION_CHECK_S)  # noticed at the next read, not days later
    await watch.tick()
    row = ctx.records.task("r:bb")
    assert row is not None
    assert (row.state, row.status) == (Phase.DISPUTED, TaskStatus.DONE)
    assert row.detail == f"resolved by the arbiter {ARBITER}"
    assert ctx.counters["disputes_expired"] == 0


async def test_a_purchase_ended_meanwhile_is_left_alone(tmp_path: Path) -> None:
    ledger = InMemoryLedger()
    ledger.mint(BUYER, FUNDS)
    ctx = unit_context(tmp_path / "buyer.db", ledger=ledger, address=BUYER)
    job_id = await disputed_purchase(ctx, ledger, "r:cc")
    held: list[str] = []

    @contextlib.asynccontextmanager
    async def hold(tid: str) -> AsyncIterator[None]:
        held.append(tid)
        # `task refund` got there first, under the same lock: the record says so.
        ctx.records.update_task(tid, state=Phase.REFUNDED, status=TaskStatus.REFUNDED)
        yield

    reads = counting_reads(ctx)
    await DisputeWatch(ctx, hold).tick()
    assert held == ["r:cc"]
    assert reads == []  # re-read under the lock: nothing left to do
    assert ledger.jobs[job_id].status == JobStatus.DISPUTED
