"""The negotiation protocol's handlers on an agent's mesh node.

A call for proposals starts the provider graph; every later step resumes the graph of
its conversation that is paused waiting for it, or is refused with an error reply
naming why (``not_party``, ``out_of_order`` with the states that accept it, ...). Which
step each waiting phase accepts is read from ``NEGOTIATION``; the resume carries the
typed message. ``Redeliver`` is answered from the checkpoint.

A refused step costs no state: it is answered from the latest checkpoint before the
task's lock is taken, so a step for a conversation this agent does not know creates no
lock, record or checkpoint. A task's lock is dropped once the task has ended.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from agentmesh.agents.context import TaskContext
from agentmesh.agents.task_runner import CHAIN_DOWN
from agentmesh.errors import AgentMeshError, SignatureError
from agentmesh.mesh.routes import ErrorReply, HandlerContext
from agentmesh.message import MAX_WIRE_INT, Message
from agentmesh.protocols.negotiation import (
    NEGOTIATION,
    Ack,
    Award,
    CallForProposals,
    CounterOffer,
    Decline,
    Delivery,
    Dispute,
    Failure,
    Funded,
    Phase,
    Proposal,
    Redeliver,
    Reject,
    Role,
    Settled,
    TaskStatus,
)

if TYPE_CHECKING:
    from agentmesh.agents.task_runner import TaskRunner
    from agentmesh.mesh.node import MeshNode

# Who the other party of a task is, by the role this agent plays in it.
PARTY_FIELD = {Role.PROVIDER: "requester", Role.REQUESTER: "winner"}
# The answer to a call whose first run an error stopped before any offer.
NOT_EVALUATED = "internal error: the call could not be evaluated"
# What a peer is told when a step needs the chain and this agent cannot reach it (the
# local error names the endpoint: that stays in the local log).
CHAIN_UNAVAILABLE = "chain unavailable: this agent cannot reach its chain now; retry shortly"


class NegotiationHandlers:
    """Answers ``agentmesh.negotiation@1`` messages for one agent."""

    def __init__(self, ctx: TaskContext, runner: TaskRunner) -> None:
        self.ctx = ctx
        self.runner = runner

    def install(self, node: MeshNode) -> None:
        """Register every negotiation handler on ``node``."""
        protocol = {"protocol": NEGOTIATION.name, "version": NEGOTIATION.version}
        node.on(CallForProposals, replies=(Proposal, Decline), **protocol)(self.on_call)
        provider_steps: tuple[type[Message], ...] = (
            CounterOffer,
            Award,
            Reject,
            Funded,
            Settled,
            Dispute,
        )
        for step in provider_steps:
            node.on(step, replies=(Ack,), **protocol)(self.on_provider_step)
        for step in (Delivery, Failure):
            node.on(step, replies=(Ack,), **protocol)(self.on_requester_step)
        node.on(Redeliver, replies=(Delivery,), **protocol)(self.on_redeliver)

    # ------------------------------------------------------------------ calls

    def proposal(self, values: dict[str, Any], reason: str, count: int, total: int) -> Proposal:
        """The offer a provider task in ``values`` stands by."""
        return Proposal(
            price=values["price"],
            eta_s=self.ctx.settings.min_work_s,
            model_sha256=self.ctx.model_sha256,
            reason=reason[:64],
            # What the chain says (uint256), capped to what a message may carry.
            reputation_count=min(count, MAX_WIRE_INT),
            reputation_total=min(total, MAX_WIRE_INT),
            valid_until=values.get("offer_until", 0),
        )

    def provider_input(self, ctx: HandlerContext, call: CallForProposals) -> dict[str, Any]:
        """The provider graph's initial state for ``call``."""
        return {
            "conversation": ctx.conversation.hex(),
            "requester": ctx.sender,
            "requester_card": call.card.model_dump(),
            "service": call.service,
            "input": call.input,
            "input_sha256": call.input_sha256,
            "budget": call.budget,
            "token": call.token,
            "deadline_s": call.deadline_s,
            "phase": Phase.STARTED,
            "txs": {},
        }

    async def on_call(self, ctx: HandlerContext, call: CallForProposals) -> Message:
        if call.service not in self.ctx.services:
            return Decline(reason=f"no service {call.service!r} here")
        try:
            if call.card.verify().lower() != ctx.sender.lower():
                raise SignatureError("card is not the sender's")
        except SignatureError as exc:
            self.ctx.counters["rejected.bad_card"] += 1
            return ErrorReply(code="bad_card", detail=exc.user_message)
        tid = Role.PROVIDER.task_id(ctx.conversation.hex())
        graph = self.runner.graph(tid)
        lock = await self.runner.begin(tid)
        ended = failed = False
        try:
            snapshot = await graph.aget_state(self.runner.config(tid))
            if snapshot.values:
                values = snapshot.values
                row = self.ctx.records.task(tid)
                # Stopped by an error before any offer and recorded failed (below).
                failed = bool(snapshot.next) and row is not None and row.status == TaskStatus.FAILED
                ended = failed or not snapshot.next
                same = (
                    values.get("input_sha256") == call.input_sha256
                    and values.get("requester", "").lower() == ctx.sender.lower()
                )
                if not same:
                    return self.out_of_order(CallForProposals, values.get("phase", "?"))
            else:
                self.start(tid, call, ctx.sender)
                values = await self.runner.advance(tid, graph, self.provider_input(ctx, call))
                ended = failed = self.failed_before_offer(tid, values)
        finally:
            self.runner.release(tid, lock, ended=ended)
        if failed:
            return self.not_evaluated(tid)
        reason = str((values.get("decision") or {}).get("reason", ""))
        if values.get("phase") in NEGOTIATION.offering:
            try:
                count, total = await self.ctx.registry.reputation(self.ctx.address)
            except AgentMeshError:
                count = total = 0  # the snapshot is informative; the chain is the truth
            return self.proposal(values, reason, count, total)
        return Decline(reason=(reason or "no reason given")[:200])

    def not_evaluated(self, tid: str) -> Decline:
        """The answer to a call whose evaluation an error stopped (said as such when the
        error was the chain not answering: the requester may ask again shortly)."""
        row = self.ctx.records.task(tid)
        if row is not None and row.detail.startswith(CHAIN_DOWN):
            return Decline(reason=CHAIN_UNAVAILABLE)
        return Decline(reason=NOT_EVALUATED)

    def start(self, tid: str, call: CallForProposals, sender: str) -> None:
        """Record a new sale (a call evaluated again after a failed first try is active
        again)."""
        row = self.ctx.records.task(tid)
        if row is None:
            self.ctx.records.start_task(tid, Role.PROVIDER, call.service, sender)
        elif row.status != TaskStatus.ACTIVE:
            self.ctx.records.update_task(tid, status=TaskStatus.ACTIVE)

    def failed_before_offer(self, tid: str, values: dict[str, Any]) -> bool:
        """Whether an error stopped a sale's first run before it offered anything; if so
        the task is recorded ``failed`` rather than left stalled.

        A stalled task is retried until it ends, which is right once money may be held;
        before any offer nothing is owed to anyone (the requester is answered with a
        ``Decline`` now), so a retry would only revive a task nobody waits for, and a
        call that always fails would be retried forever.
        """
        row = self.ctx.records.task(tid)
        if row is None or row.status != TaskStatus.STALLED:
            return False
        if values.get("phase") in NEGOTIATION.offering:
            return False  # the requester has an offer: the retry keeps it good
        self.ctx.records.update_task(tid, status=TaskStatus.FAILED)
        self.ctx.counters["calls_failed"] += 1
        return True

    async def on_redeliver(self, ctx: HandlerContext, message: Redeliver) -> Message:
        """Send a delivery again, to the requester only and once it is on chain.

        Read from the checkpoint without the task's lock: the result is immutable once
        submitted, and a requester asking must not wait behind a settlement.
        """
        tid = Role.PROVIDER.task_id(ctx.conversation.hex())
        snapshot = await self.runner.graph(tid).aget_state(self.runner.config(tid))
        values = snapshot.values
        stranger = self.stranger(snapshot, str(values.get("requester", "")), ctx.sender)
        if stranger is not None:
            return stranger
        phase = values.get("phase", "?")
        if phase not in NEGOTIATION.redeliverable or not values.get("result_sha256"):
            self.ctx.counters["rejected.out_of_order"] += 1
            states = ", ".join(sorted(NEGOTIATION.redeliverable))
            return ErrorReply(
                code="out_of_order",
                detail=f"Redeliver is accepted in state {states}; this task is in {phase}",
            )
        return Delivery(result=values["result"], result_sha256=values["result_sha256"])

    # ------------------------------------------------------------------ steps

    def out_of_order(self, message_type: type[Message], phase: str) -> ErrorReply:
        self.ctx.counters["rejected.out_of_order"] += 1
        states = [str(p) for p in NEGOTIATION.phases_accepting(message_type)] or ["(a new task)"]
        return ErrorReply(
            code="out_of_order",
            detail=f"{message_type.__name__} is accepted in state {', '.join(states)}; "
            f"this task is in {phase}",
        )

    async def on_provider_step(self, ctx: HandlerContext, message: Message) -> Message:
        return await self.step(ctx, Role.PROVIDER, message)

    async def on_requester_step(self, ctx: HandlerContext, message: Message) -> Message:
        return await self.step(ctx, Role.REQUESTER, message)

    def answer(self, message: Message, update: dict[str, Any]) -> Message:
        """The reply to a step that waited for the graph (``NEGOTIATION.answered_at``)."""
        phase = update.get("phase", "")
        if isinstance(message, CounterOffer) and phase == Phase.PROPOSED:
            values = {"price": int(update["price"]), "offer_until": update.get("offer_until", 0)}
            return self.proposal(values, "countered", 0, 0)
        if (isinstance(message, Funded) and phase == Phase.ACCEPTED) or (
            isinstance(message, Award) and phase == Phase.AWARDED
        ):
            return Ack(state=str(phase))
        error = str(update.get("error") or "")
        if CHAIN_DOWN in error:
            return ErrorReply(code="chain_unavailable", detail=CHAIN_UNAVAILABLE)
        return ErrorReply(code="refused", detail=(error or str(phase))[:200])

    def stranger(self, snapshot: Any, party: str, sender: str) -> ErrorReply | None:
        """Refusal if the task does not exist here or ``sender`` is not its ``party``."""
        if not snapshot.values:
            self.ctx.counters["rejected.unknown_task"] += 1
            return ErrorReply(code="unknown_task", detail="no such task here")
        if party.lower() != sender.lower():
            self.ctx.counters["rejected.not_party"] += 1
            return ErrorReply(code="not_party", detail=f"{sender} is not in this task")
        return None

    def refusal(
        self, snapshot: Any, role: Role, sender: str, message: Message
    ) -> ErrorReply | None:
        """Why ``message`` from ``sender`` may not resume this task now (None: it may)."""
        values = snapshot.values
        stranger = self.stranger(snapshot, str(values.get(PARTY_FIELD[role], "")), sender)
        if stranger is not None:
            return stranger
        waiting = [i.value for i in snapshot.interrupts if isinstance(i.value, dict)]
        waiting_in = str(waiting[0].get("phase", "")) if waiting else ""
        if type(message) not in NEGOTIATION.accepted(role, waiting_in):
            return self.out_of_order(type(message), values.get("phase", "?"))
        if isinstance(message, CounterOffer) and values.get("countered"):
            self.ctx.counters["rejected.counter_used"] += 1
            return ErrorReply(code="counter_used", detail="one counter-offer per conversation")
        if isinstance(message, Award) and message.price != values.get("price"):
            return ErrorReply(
                code="bad_award",
                detail=f"award price {message.price} is not the proposed {values.get('price')}",
            )
        return None

    async def step(self, ctx: HandlerContext, role: Role, message: Message) -> Message:
        """Resume the graph paused for ``message``; reject it if not a party or not now."""
        tid = role.task_id(ctx.conversation.hex())
        graph = self.runner.graph(tid)
        # Refuse what the latest checkpoint already rules out without queueing for the
        # task's lock: two agents whose graphs each wait on the other's reply must not
        # deadlock until a timeout, and a stranger is turned away even mid-run (who the
        # other party is does not change while a step runs; the task's state may, so
        # that part waits for the run to pause). A refusal creates nothing: a step for
        # an unknown conversation leaves no lock, record or checkpoint behind.
        early = await graph.aget_state(self.runner.config(tid))
        running = self.runner.locks.get(tid)
        if running is not None and running.locked():
            party = str(early.values.get(PARTY_FIELD[role], ""))
            refusal = self.stranger(early, party, ctx.sender)
        else:
            refusal = self.refusal(early, role, ctx.sender, message)
        if refusal is not None:
            return refusal
        lock = self.runner.locks.setdefault(tid, asyncio.Lock())
        try:
            await asyncio.wait_for(lock.acquire(), self.ctx.settings.reply_timeout_s / 3)
        except TimeoutError:
            return ErrorReply(code="busy", detail="the task is busy; retry shortly")
        return await self.resume_locked(tid, lock, role, ctx.sender, message)

    async def resume_locked(
        self, tid: str, lock: asyncio.Lock, role: Role, sender: str, message: Message
    ) -> Message:
        """With the task's ``lock`` held: resume its graph with ``message`` and answer."""
        from langgraph.types import Command

        graph = self.runner.graph(tid)
        handed_over = False
        try:
            snapshot = await graph.aget_state(self.runner.config(tid))
            refusal = self.refusal(snapshot, role, sender, message)
            if refusal is not None:
                return refusal
            resume: Command[Any] = Command(resume=message)
            awaited = NEGOTIATION.answered_at.get(type(message))
            if awaited is None:  # acknowledged now; the graph goes on in the background
                self.runner.run_locked(tid, lock, graph, resume)
                handed_over = True
                return Ack(state=str(snapshot.values.get("phase", "")))
            # Answered once the graph has acted on it (the job checked and accepted on
            # chain, or the counter-offer priced).
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self.runner.phase_waiters.setdefault(tid, []).append((lambda p: p in awaited, future))
            self.runner.run_locked(tid, lock, graph, resume)
            handed_over = True
            update = await asyncio.wait_for(future, self.ctx.settings.reply_timeout_s)
            return self.answer(message, update)
        finally:
            if not handed_over:
                self.runner.release(tid, lock)
