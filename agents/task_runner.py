"""Drives an agent's task graphs: one run per task at a time, timers, approvals, retries.

Each task is a LangGraph thread (``p:<conversation>`` for a sale, ``r:<conversation>``
for a purchase) whose runs are serialized by a per-task lock. A run goes until the
graph pauses in an ``interrupt`` (waiting for a message, a timer or a person) or ends;
where it stands is written to the agent's records. Background loops resume paused
graphs when their chain-time timer comes due or a person decides an approval, run
again tasks an error stopped, and end disputed purchases whose jobs were resolved or
whose arbiter let the dispute time out (``DisputeWatch``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING, Any

from agentmesh.agents.context import TaskContext
from agentmesh.agents.dispute_watch import DISPUTE_CHECK_S, DisputeWatch
from agentmesh.agents.records import ApprovalStatus
from agentmesh.canonical import canonical_json
from agentmesh.errors import ChainUnavailableError
from agentmesh.protocols.negotiation import (
    NEGOTIATION,
    ApprovalDecision,
    Phase,
    Role,
    TaskStatus,
    Timeout,
)

if TYPE_CHECKING:
    from langgraph.graph.state import CompiledStateGraph

log = logging.getLogger("agentmesh.agent")

STALLED_RETRY_S = 5.0  # first retry of a task stopped by an error; doubles each time
STALLED_RETRY_MAX_S = 300.0  # ... up to this: never given up while money may be held
# A task stopped because the chain did not answer is retried sooner, and never more
# than this far apart: it goes on within seconds of the endpoint coming back.
CHAIN_RETRY_S = 0.5
CHAIN_RETRY_MAX_S = 5.0
CHAIN_DOWN = "ChainUnavailableError"  # how such a stop is recorded (the error's type)
PhaseWaiter = tuple[Callable[[str], bool], "asyncio.Future[Any]"]


class TaskRunner:
    """Runs, records and resumes the task graphs of one agent."""

    def __init__(
        self,
        ctx: TaskContext,
        graphs: dict[Role, CompiledStateGraph[Any, Any, Any, Any]],
    ) -> None:
        self.ctx = ctx
        self.graphs = graphs
        self.locks: dict[str, asyncio.Lock] = {}
        self._ended: set[str] = set()  # tasks whose run ended: their lock goes on release
        # Purchases waiting for their end: task -> the final state values.
        self.outcomes: dict[str, asyncio.Future[dict[str, Any]]] = {}
        # Handlers waiting for a task to reach a phase before they answer.
        self.phase_waiters: dict[str, list[PhaseWaiter]] = {}
        self.timers: dict[str, int] = {}  # task -> chain time its waiting node times out
        self._stalled_retries: Counter[str] = Counter()
        self._stalled_next: dict[str, float] = {}  # task -> loop time of its next retry
        self.disputes = DisputeWatch(ctx, self.holding)
        self._disputes_next = 0.0  # loop time of the next look at disputed purchases
        self._chain_down = False  # the timer loop's last look at the chain failed

    def config(self, tid: str) -> dict[str, Any]:
        return {"configurable": {"thread_id": tid}}

    def graph(self, tid: str) -> Any:
        return self.graphs[Role.of(tid)]

    async def begin(self, tid: str) -> asyncio.Lock:
        lock = self.locks.setdefault(tid, asyncio.Lock())
        await lock.acquire()
        return lock

    @contextlib.asynccontextmanager
    async def holding(self, tid: str) -> AsyncIterator[None]:
        """Hold the lock of ``tid``, an ended task acted on outside its graph."""
        lock = await self.begin(tid)
        try:
            yield
        finally:
            self.release(tid, lock, ended=True)

    def release(self, tid: str, lock: asyncio.Lock, *, ended: bool = False) -> None:
        """Release a task's ``lock``; forget it if the task has ended (``ended``, or its
        last run reached a final phase) and nobody waits for it, so a finished task
        keeps no lock (a later step is refused from its checkpoint without one)."""
        lock.release()
        if not (ended or tid in self._ended):
            return
        # A waiter holds this very lock: dropping it would let a new one run beside it.
        waiting = getattr(lock, "_waiters", None)
        if self.locks.get(tid) is lock and not lock.locked() and not waiting:
            del self.locks[tid]
            self._ended.discard(tid)

    def run_locked(
        self, tid: str, lock: asyncio.Lock, graph: Any, graph_input: Any
    ) -> asyncio.Task[Any]:
        """Run ``graph`` in the background; the caller's held ``lock`` passes to the run."""

        async def body() -> None:
            try:
                await self.advance(tid, graph, graph_input)
            finally:
                self.release(tid, lock)

        return self.ctx.spawn(body())

    def _phase_changed(self, tid: str, update: dict[str, Any]) -> None:
        """Wake handlers waiting for this task to reach a phase (with the node's update)."""
        waiters = self.phase_waiters.get(tid, [])
        for predicate, future in list(waiters):
            if predicate(update["phase"]) and not future.done():
                future.set_result(update)
                waiters.remove((predicate, future))

    async def advance(self, tid: str, graph: Any, graph_input: Any) -> dict[str, Any]:
        """Run until the graph pauses or ends; record where it stands."""
        config = self.config(tid)
        error = ""
        try:
            stream = graph.astream(graph_input, config, stream_mode="updates", context=self.ctx)
            async for chunk in stream:
                for update in chunk.values():
                    if isinstance(update, dict) and "phase" in update:
                        extra = {"detail": update["error"]} if update.get("error") else {}
                        if update.get("job_id") is not None:  # with its phase, not after
                            extra["job_id"] = update["job_id"]
                        self.ctx.records.update_task(tid, state=str(update["phase"]), **extra)
                        self._phase_changed(tid, update)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the task stays resumable from its last checkpoint
            self.ctx.counters["graph_errors"] += 1
            error = f"{type(exc).__name__}: {getattr(exc, 'user_message', exc)}"
            log.exception("task %s stopped", tid)
        snapshot = await graph.aget_state(config)
        values = dict(snapshot.values)
        if not snapshot.next and not error:
            self._ended.add(tid)
        self._record(tid, snapshot, error)
        if not snapshot.next or error:
            future = self.outcomes.pop(tid, None)
            if future is not None and not future.done():
                if error:
                    values = {**values, "phase": Phase.STALLED, "error": error}
                future.set_result(values)
        return values

    def _record(self, tid: str, snapshot: Any, error: str) -> None:
        """Write where the task stands; open an approval if the graph waits for one."""
        values = snapshot.values
        phase = str(values.get("phase", Phase.UNKNOWN))
        changes: dict[str, Any] = {
            "state": phase,
            "peer": values.get("winner") or values.get("requester") or "",
            "price": values.get("price", 0),
            "job_id": values.get("job_id"),
            "detail": error or values.get("error", ""),
            "txs": canonical_json(values.get("txs") or {}),
        }
        if error:
            changes["status"] = TaskStatus.STALLED
        elif not snapshot.next:
            changes["status"] = NEGOTIATION.status_when_final(phase)
        else:
            self.watch(tid, snapshot)
            for pending in snapshot.interrupts:
                if isinstance(pending.value, dict) and pending.value.get("kind") == "approval":
                    row = self.ctx.records.request_approval(
                        tid, pending.value["amount"], pending.value["description"]
                    )
                    changes["state"] = Phase.AWAITING_APPROVAL
                    log.warning("approval %s needed: %s", row.id, row.description)
        if error or not snapshot.next:
            self.timers.pop(tid, None)
        self.ctx.records.update_task(tid, **changes)
        final = {**values, "phase": changes["state"]}
        if error:  # a handler waiting for this step answers with why it stopped
            final["error"] = error
        self._phase_changed(tid, final)
        for _, future in self.phase_waiters.pop(tid, []):
            if not future.done():
                future.set_result(final)

    def watch(self, tid: str, snapshot: Any) -> None:
        """Arm (or clear) the timer of a task waiting in an ``interrupt``."""
        untils = [
            int(i.value["until"])
            for i in snapshot.interrupts
            if isinstance(i.value, dict) and i.value.get("until")
        ]
        if untils:
            self.timers[tid] = min(untils)
        else:
            self.timers.pop(tid, None)

    async def timer_loop(self) -> None:
        """Fire due timers (resume with ``Timeout``); retry tasks stalled by an error."""
        from langgraph.types import Command

        while True:
            await asyncio.sleep(0.5)
            try:
                if self.timers:
                    now = await self.ctx.clock.now()
                    for tid in [t for t, until in self.timers.items() if until <= now]:
                        if self.busy(tid):
                            # Running: it re-arms its timer when it pauses. Waiting for
                            # it here would hold up every other task's timer.
                            continue
                        lock = await self.begin(tid)
                        graph = self.graph(tid)
                        snapshot = await graph.aget_state(self.config(tid))
                        due = [
                            i
                            for i in snapshot.interrupts
                            if isinstance(i.value, dict) and 0 < i.value.get("until", 0) <= now
                        ]
                        if not due:
                            self.watch(tid, snapshot)
                            lock.release()
                            continue
                        self.timers.pop(tid, None)
                        self.ctx.counters["timeouts"] += 1
                        log.info("task %s timed out in %s", tid, snapshot.values.get("phase"))
                        self.run_locked(tid, lock, graph, Command(resume=Timeout()))
                await self._retry_stalled()
                loop_now = asyncio.get_running_loop().time()
                if loop_now >= self._disputes_next:
                    self._disputes_next = loop_now + DISPUTE_CHECK_S
                    await self.disputes.tick()
                if self._chain_down:
                    self._chain_down = False
                    log.warning("the chain answers again: timers run, stalled tasks resume")
            except ChainUnavailableError as exc:
                # Said once per outage; the mesh side keeps answering meanwhile.
                if not self._chain_down:
                    self._chain_down = True
                    log.warning("%s: timers wait until it is back", exc.user_message)
            except Exception:
                log.exception("timer loop error (continuing)")

    def busy(self, tid: str) -> bool:
        return tid in self.locks and self.locks[tid].locked()

    def retry_now(self, tid: str) -> None:
        """Run a stalled task again at the next tick instead of after its back-off."""
        self._stalled_next[tid] = 0.0

    async def _retry_stalled(self) -> None:
        """Run again tasks an error stopped, backing off (5 s, 10 s, ... 5 min)."""
        now = asyncio.get_running_loop().time()
        for row in self.ctx.records.tasks(TaskStatus.STALLED):
            tid = row.conversation
            if self.busy(tid):
                continue
            due = self._stalled_next.setdefault(tid, now + STALLED_RETRY_S)
            if now < due:
                continue
            self._stalled_retries[tid] += 1
            tries = min(self._stalled_retries[tid], 10)
            if row.detail.startswith(CHAIN_DOWN):
                delay = min(CHAIN_RETRY_MAX_S, CHAIN_RETRY_S * 2**tries)
            else:
                delay = min(STALLED_RETRY_MAX_S, STALLED_RETRY_S * 2**tries)
            self._stalled_next[tid] = now + delay
            lock = await self.begin(tid)
            self.ctx.records.update_task(tid, status=TaskStatus.ACTIVE)
            self.run_locked(tid, lock, self.graph(tid), None)

    async def resume_unfinished(self) -> None:
        """Continue tasks a previous run left between two pauses (killed mid-step)."""
        for row in self.ctx.records.tasks():
            if row.status not in (TaskStatus.ACTIVE, TaskStatus.STALLED):
                continue
            tid = row.conversation
            graph = self.graph(tid)
            snapshot = await graph.aget_state(self.config(tid))
            if snapshot.interrupts:
                self.watch(tid, snapshot)  # its timers run again from now
            elif snapshot.next:
                self.ctx.counters["resumed"] += 1
                log.info("resuming task %s from %s", tid, snapshot.values.get("phase"))
                self.ctx.records.update_task(tid, status=TaskStatus.ACTIVE)
                lock = await self.begin(tid)
                self.run_locked(tid, lock, graph, None)

    async def approval_loop(self) -> None:
        from langgraph.types import Command

        while True:
            try:
                for row in self.ctx.records.decided_unapplied():
                    tid = row.conversation
                    if not tid.startswith(tuple(role.prefix for role in self.graphs)):
                        continue  # another runner's (a DeFi intent's step)
                    lock = await self.begin(tid)
                    graph = self.graph(tid)
                    snapshot = await graph.aget_state(self.config(tid))
                    waiting = any(
                        isinstance(i.value, dict) and i.value.get("kind") == "approval"
                        for i in snapshot.interrupts
                    )
                    self.ctx.records.mark_applied(row.id)
                    if not waiting:
                        self.release(tid, lock, ended=not snapshot.next)
                        continue
                    self.ctx.records.update_task(tid, status=TaskStatus.ACTIVE)
                    decision = ApprovalDecision(approved=row.status == ApprovalStatus.APPROVED)
                    self.run_locked(tid, lock, graph, Command(resume=decision))
            except Exception:
                log.exception("approval loop error (continuing)")
            await asyncio.sleep(0.25)
