"""Runs the DeFi graph: one thread per intent, resumed by chain time, approvals and
cancellations, and picked up again after a restart.

Thread ids are ``d:<intent id>`` in the agent's ``defi_checkpoints.db``; approvals go in
the agent's ``agent.db`` under the same conversation id, so ``agentmesh approve|reject``
work for DeFi steps as for purchases. One loop (every ``TICK_S``) does the rest:

- a thread paused until a chain time that has come is resumed with ``Timeout``;
- a decided approval is applied;
- a thread that stopped between nodes (a crash, an RPC failure) runs again after a
  backoff; its nodes are idempotent (a step's row is written before its transaction and
  the chain is searched before a retry sends anything);
- the oracle is kept fresh for the pools the live intents trade (one observation per
  period: without it the wallet can price no swap).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from langgraph.types import Command

from agentmesh.protocols.defi import INTENT, IntentPhase, RebalanceIntent
from agentmesh.protocols.negotiation import ApprovalDecision, Timeout

from .defi_graph import DefiContext
from .records import ApprovalStatus

log = logging.getLogger(__name__)

PREFIX = "d:"
TICK_S = 0.5
KEEPER_S = 5.0
BACKOFF_S = (2.0, 5.0, 15.0, 60.0)


def thread_id(intent_id: str) -> str:
    return PREFIX + intent_id


class DefiRunner:
    """Drives every live intent of one DeFi agent."""

    def __init__(
        self,
        ctx: DefiContext,
        graph: Any,
        spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]],
    ) -> None:
        self.ctx = ctx
        self.graph = graph
        self.spawn = spawn
        self._busy: set[str] = set()
        self._retry_at: dict[str, tuple[int, float]] = {}  # intent -> (failures, monotonic)
        self._kept_at = 0.0
        self.idle = asyncio.Event()  # set whenever no thread is running (tests wait on it)
        self.idle.set()

    @staticmethod
    def config(intent_id: str) -> dict[str, Any]:
        return {"configurable": {"thread_id": thread_id(intent_id)}}

    # ------------------------------------------------------------------ running threads

    def kick(self, intent_id: str, value: Any) -> bool:
        """Run the intent's thread with ``value`` in the background, unless it runs."""
        if intent_id in self._busy:
            return False
        self._busy.add(intent_id)
        self.idle.clear()
        self.spawn(self._run(intent_id, value))
        return True

    async def _run(self, intent_id: str, value: Any) -> None:
        try:
            await self.graph.ainvoke(value, self.config(intent_id), context=self.ctx)
            self._retry_at.pop(intent_id, None)
        except Exception as exc:
            failures = self._retry_at.get(intent_id, (0, 0.0))[0] + 1
            delay = BACKOFF_S[min(failures, len(BACKOFF_S)) - 1]
            self._retry_at[intent_id] = (failures, time.monotonic() + delay)
            log.warning("intent %s stopped (%s); retrying in %.0f s", intent_id, exc, delay)
            self.ctx.store.update_intent(intent_id, reason=f"retrying after an error: {exc}")
        else:
            await self._after(intent_id)
        finally:
            self._busy.discard(intent_id)
            if not self._busy:
                self.idle.set()

    async def _after(self, intent_id: str) -> None:
        """Where the thread paused: open the approval it waits for."""
        snapshot = await self.graph.aget_state(self.config(intent_id))
        for pending in snapshot.interrupts:
            value = pending.value
            if isinstance(value, dict) and value.get("kind") == "approval":
                row = self.ctx.records.request_approval(
                    thread_id(intent_id), int(value["amount"]), str(value["description"])
                )
                self.ctx.store.update_intent(
                    intent_id,
                    phase=IntentPhase.AWAITING_APPROVAL,
                    next_due=int(value["until"]),
                    reason=f"waiting for approval {row.id}: {value['description']}",
                )
                log.info("intent %s: approval %s pending", intent_id, row.id)

    def start(self, intent_id: str) -> None:
        """Start a newly accepted intent."""
        self.kick(intent_id, {"intent_id": intent_id, "step": 0, "phase": IntentPhase.ACTIVE})

    async def cancel(self, intent_id: str) -> None:
        """Stop an intent: no further step starts (one already sent completes)."""
        self.ctx.store.update_intent(
            intent_id, phase=IntentPhase.CANCELLED, reason="cancelled by the owner", next_due=0
        )
        self.ctx.records.expire_approvals(thread_id(intent_id))
        snapshot = await self.graph.aget_state(self.config(intent_id))
        if snapshot.interrupts:
            self.kick(intent_id, Command(resume=Timeout()))

    # ------------------------------------------------------------------ the loop

    async def loop(self) -> None:
        """Resume what is due, apply decisions, keep the oracle fresh; forever."""
        while True:
            try:
                await self.tick()
            except Exception:
                log.exception("DeFi loop error (continuing)")
            await asyncio.sleep(TICK_S)

    async def tick(self) -> None:
        now = await self.ctx.clock.now()
        for row in self.ctx.store.intents(live_only=True):
            if row.id not in self._busy:
                await self._resume_if_due(row.id, now)
        for approval in self.ctx.records.decided_unapplied():
            if not approval.conversation.startswith(PREFIX):
                continue  # a purchase's: the market's runner applies it
            intent_id = approval.conversation.removeprefix(PREFIX)
            if intent_id in self._busy:
                continue
            self.ctx.records.mark_applied(approval.id)
            decision = ApprovalDecision(approved=approval.status == ApprovalStatus.APPROVED)
            self.ctx.store.update_intent(intent_id, phase=IntentPhase.EXECUTING)
            self.kick(intent_id, Command(resume=decision))
        if time.monotonic() >= self._kept_at:
            self._kept_at = time.monotonic() + KEEPER_S
            await self.keep_oracle_fresh(now)

    async def _resume_if_due(self, intent_id: str, now: int) -> None:
        snapshot = await self.graph.aget_state(self.config(intent_id))
        if not snapshot.values:  # accepted, but the first run never got going (a crash)
            self.start(intent_id)
            return
        if snapshot.interrupts:
            value = snapshot.interrupts[0].value
            if isinstance(value, dict) and int(value.get("until", 0)) <= now:
                if value.get("kind") == "approval":
                    # Nobody decided in time: a later decision is refused, not applied.
                    self.ctx.records.expire_approvals(thread_id(intent_id))
                self.kick(intent_id, Command(resume=Timeout()))
            return
        if snapshot.next:  # stopped between nodes: run on after the backoff
            failures, at = self._retry_at.get(intent_id, (0, 0.0))
            if time.monotonic() >= at:
                self.kick(intent_id, None)

    async def keep_oracle_fresh(self, now: int) -> None:
        """One observation per period of every pool a live intent trades through."""
        market = self.ctx.market
        paths: set[tuple[str, ...]] = set()
        for row in self.ctx.store.intents(live_only=True):
            intent = INTENT.validate_json(row.body)
            if isinstance(intent, RebalanceIntent):
                pairs = [(a, b) for a in intent.tokens for b in intent.tokens if a < b]
                for a, b in pairs:
                    paths.add(market.route(a, b))
            else:
                paths.add(market.route(intent.token_in, intent.token_out))
        for path in sorted(paths):
            try:
                await market.keep_fresh(path, now)
            except Exception as exc:  # the keeper's job is best effort; the wallet is the check
                log.warning("could not update the oracle for %s: %s", path, exc)
