"""A purchase whose dispute its arbiter left unresolved gets its deposit back by itself.

A disputed job's deposit waits for its arbiter for ``TaskEscrow.DISPUTE_TIMEOUT``; after
that the contract lets anyone return it to the buyer (``expireDispute``). The buyer's
agent does so on its own: it reads each disputed purchase's job every
``RESOLUTION_CHECK_S`` of chain time and when its arbiter's time ends, and records the
outcome (refunded, or resolved by the arbiter). ``agentmesh task refund`` goes through
the same code.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager

from agentmesh.agents.context import TaskContext, tx_hex
from agentmesh.agents.records import TaskRow
from agentmesh.protocols.negotiation import Phase, Role, TaskStatus
from agentmesh.wallets.clients import EscrowJob, JobStatus

log = logging.getLogger("agentmesh.agent")

DISPUTE_CHECK_S = 5.0  # how often the runner looks at its disputed purchases (no read)
RESOLUTION_CHECK_S = 600  # chain seconds between reads of a job still disputed


class DisputeWatch:
    """Ends the disputed purchases of one agent when their jobs settle or time out."""

    def __init__(
        self,
        ctx: TaskContext,
        hold: Callable[[str], AbstractAsyncContextManager[None]] | None = None,
    ) -> None:
        """``hold(task)``: the task's lock, held while it is acted on (the runner's), so
        `task refund` and this watch never both expire one dispute."""
        self.ctx = ctx
        self._hold = hold or (lambda _tid: contextlib.nullcontext())
        # task -> chain time of its next read: the end of its arbiter's window, or sooner
        # to notice a resolution.
        self._next: dict[str, int] = {}

    async def tick(self) -> None:
        """Look at every disputed purchase that may have moved since the last look."""
        rows = [
            row
            for row in self.ctx.records.tasks(TaskStatus.DISPUTED)
            if Role.of(row.conversation) is Role.REQUESTER and row.job_id is not None
        ]
        if not rows:
            return
        now = await self.ctx.clock.now()
        for row in rows:
            due = self._next.get(row.conversation)
            if due is not None and now < due:
                continue
            async with self._hold(row.conversation):
                await self._look(row.conversation, now)

    async def _look(self, tid: str, now: int) -> None:
        row = self.ctx.records.task(tid)  # again: it may have ended meanwhile
        if row is None or row.status != TaskStatus.DISPUTED or row.job_id is None:
            self._next.pop(tid, None)
            return
        job = await self.ctx.escrow.get_job(row.job_id)
        ends = job.dispute_ends_at()
        if ends is not None and now <= ends:
            self._next[tid] = min(ends + 1, now + RESOLUTION_CHECK_S)
            return
        self._next.pop(tid, None)
        if ends is not None:
            await self.expire(row, job)
        else:
            self.settled(row, job)

    async def expire(self, row: TaskRow, job: EscrowJob) -> str:
        """Return the deposit of ``job`` (disputed past its timeout) to this agent and
        record the purchase as refunded; returns the transaction hash."""
        tx = tx_hex(await self.ctx.escrow.expire_dispute(job.job_id))
        self.ctx.counters["disputes_expired"] += 1
        log.warning(
            "job %s: the arbiter %s did not resolve the dispute in time; deposit returned",
            job.job_id,
            job.arbiter,
        )
        self._record(
            row,
            Phase.REFUNDED,
            TaskStatus.REFUNDED,
            f"the arbiter {job.arbiter} did not resolve the dispute in time: the deposit came back",
            {"expire_dispute": tx},
        )
        return tx

    def settled(self, row: TaskRow, job: EscrowJob) -> None:
        """Record how a dispute that is no longer open ended."""
        if job.status == JobStatus.RESOLVED:
            self._record(
                row, Phase.DISPUTED, TaskStatus.DONE, f"resolved by the arbiter {job.arbiter}"
            )
        elif job.status == JobStatus.REFUNDED:
            self._record(
                row, Phase.REFUNDED, TaskStatus.REFUNDED, "the dispute expired: deposit returned"
            )

    def _record(
        self,
        row: TaskRow,
        phase: Phase,
        status: TaskStatus,
        detail: str,
        txs: dict[str, str] | None = None,
    ) -> None:
        merged = {**json.loads(row.txs or "{}"), **(txs or {})}
        self.ctx.records.update_task(
            row.conversation, state=phase, status=status, detail=detail, txs=json.dumps(merged)
        )
