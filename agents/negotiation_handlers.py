"""The negotiation protocol's handlers on an agent's mesh node.

A call for proposals starts the provider graph; every later step resumes the graph of
its conversation that is paused waiting for it, or is refused with an error reply
naming why (``not_party``, ``out_of_order`` with the states that accept it, ...).
``Redeliver`` is answered from the checkpoint.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from agentmesh.agents.provider_graph import PROVIDER_ACCEPTS, REDELIVERABLE
from agentmesh.agents.requester_graph import REQUESTER_ACCEPTS
from agentmesh.errors import AgentMeshError, SignatureError
from agentmesh.mesh.routes import ErrorReply, HandlerContext
from agentmesh.message import Message
from agentmesh.protocols.negotiation import (
    PROTOCOL,
    VERSION,
    Ack,
    Award,
    CallForProposals,
    CounterOffer,
    Decline,
    Delivery,
    Dispute,
    Failure,
    Funded,
    Proposal,
    Redeliver,
    Reject,
    Settled,
)

if TYPE_CHECKING:
    from agentmesh.agents.agent import Agent
    from agentmesh.agents.task_runner import TaskRunner

# Steps whose reply waits for the graph to reach one of these phases.
STEP_ANSWERED_AT: dict[str, set[str]] = {
    # The Ack means "awarded": the Funded that follows must find the task waiting for it.
    "Award": {"awarded", "expired", "rejected"},
    "Funded": {"accepted", "refused", "expired"},
    "CounterOffer": {"proposed", "expired"},
}


class NegotiationHandlers:
    """Answers ``agentmesh.negotiation@1`` messages for one agent."""

    def __init__(self, agent: Agent, runner: TaskRunner) -> None:
        self.agent = agent
        self.runner = runner

    def install(self) -> None:
        """Register every negotiation handler on the agent's node."""
        node = self.agent.node
        node.on(CallForProposals, protocol=PROTOCOL, version=VERSION, replies=(Proposal, Decline))(
            self.on_call
        )
        for message_type in (CounterOffer, Award, Reject, Funded, Settled, Dispute):
            node.on(message_type, protocol=PROTOCOL, version=VERSION, replies=(Ack,))(
                self.on_provider_step
            )
        for message_type in (Delivery, Failure):
            node.on(message_type, protocol=PROTOCOL, version=VERSION, replies=(Ack,))(
                self.on_requester_step
            )
        node.on(Redeliver, protocol=PROTOCOL, version=VERSION, replies=(Delivery,))(
            self.on_redeliver
        )

    async def on_call(self, ctx: HandlerContext, call: CallForProposals) -> Message:
        if call.service not in self.agent.services:
            return Decline(reason=f"no service {call.service!r} here")
        try:
            if call.card.verify().lower() != ctx.sender.lower():
                raise SignatureError("card is not the sender's")
        except SignatureError as exc:
            self.agent.counters["rejected.bad_card"] += 1
            return ErrorReply(code="bad_card", detail=exc.user_message)
        tid = "p:" + ctx.conversation.hex()
        lock = await self.runner.begin(tid)
        try:
            snapshot = await self.agent.provider_graph.aget_state(self.runner.config(tid))
            if snapshot.values:
                values = snapshot.values
                same = (
                    values.get("input_sha256") == call.input_sha256
                    and values.get("requester", "").lower() == ctx.sender.lower()
                )
                if not same:
                    return self.out_of_order("CallForProposals", values.get("phase", "?"))
            else:
                self.agent.records.start_task(tid, "provider", call.service, ctx.sender)
                values = await self.runner.advance(
                    tid,
                    self.agent.provider_graph,
                    {
                        "conversation": ctx.conversation.hex(),
                        "requester": ctx.sender,
                        "requester_card": call.card.model_dump(),
                        "service": call.service,
                        "input": call.input,
                        "input_sha256": call.input_sha256,
                        "budget": call.budget,
                        "token": call.token,
                        "deadline_s": call.deadline_s,
                        "phase": "started",
                        "txs": {},
                    },
                )
        finally:
            lock.release()
        decision = values.get("decision") or {}
        if values.get("phase") in ("proposed", "awarded", "funded", "accepted"):
            try:
                count, total = await self.agent.registry.reputation(self.agent.address)
            except AgentMeshError:
                count = total = 0  # the snapshot is informative; the chain is the truth
            return Proposal(
                price=values["price"],
                eta_s=self.agent.settings.min_work_s,
                model_sha256=self.agent.model.sha256 if self.agent.model is not None else "",
                reason=str(decision.get("reason", ""))[:64],
                reputation_count=count,
                reputation_total=total,
                valid_until=values.get("offer_until", 0),
            )
        return Decline(reason=str(decision.get("reason", "declined"))[:200])

    async def on_redeliver(self, ctx: HandlerContext, message: Redeliver) -> Message:
        """Send a delivery again, to the requester only and once it is on chain.

        Read from the checkpoint without the task's lock: the result is immutable once
        submitted, and a requester asking must not wait behind a settlement.
        """
        tid = "p:" + ctx.conversation.hex()
        snapshot = await self.agent.provider_graph.aget_state(self.runner.config(tid))
        values = snapshot.values
        stranger = self.stranger(snapshot, str(values.get("requester", "")), ctx.sender)
        if stranger is not None:
            return stranger
        phase = values.get("phase", "?")
        if phase not in REDELIVERABLE or not values.get("result_sha256"):
            self.agent.counters["rejected.out_of_order"] += 1
            return ErrorReply(
                code="out_of_order",
                detail=f"Redeliver is accepted in state {', '.join(REDELIVERABLE)}; "
                f"this task is in {phase}",
            )
        return Delivery(result=values["result"], result_sha256=values["result_sha256"])

    def out_of_order(self, name: str, phase: str) -> ErrorReply:
        self.agent.counters["rejected.out_of_order"] += 1
        table = {**PROVIDER_ACCEPTS, **REQUESTER_ACCEPTS}
        states = sorted(s for s, names in table.items() if name in names) or ["(a new task)"]
        return ErrorReply(
            code="out_of_order",
            detail=f"{name} is accepted in state {', '.join(states)}; this task is in {phase}",
        )

    async def on_provider_step(self, ctx: HandlerContext, message: Message) -> Message:
        return await self.step(ctx, "p:", "requester", message)

    async def on_requester_step(self, ctx: HandlerContext, message: Message) -> Message:
        return await self.step(ctx, "r:", "winner", message)

    def answer(self, name: str, update: dict[str, Any]) -> Message:
        """The reply to a step that waited for the graph (see ``STEP_ANSWERED_AT``)."""
        phase = update.get("phase", "")
        if name == "CounterOffer" and phase == "proposed":
            return Proposal(
                price=int(update["price"]),
                eta_s=self.agent.settings.min_work_s,
                model_sha256=self.agent.model.sha256 if self.agent.model is not None else "",
                reason="countered",
                valid_until=update.get("offer_until", 0),
            )
        if (name, phase) in (("Funded", "accepted"), ("Award", "awarded")):
            return Ack(state=phase)
        detail = str(update.get("error") or phase)[:200]
        return ErrorReply(code="refused", detail=detail)

    def stranger(self, snapshot: Any, party: str, sender: str) -> ErrorReply | None:
        """Refusal if the task does not exist here or ``sender`` is not its ``party``."""
        if not snapshot.values:
            self.agent.counters["rejected.unknown_task"] += 1
            return ErrorReply(code="unknown_task", detail="no such task here")
        if party.lower() != sender.lower():
            self.agent.counters["rejected.not_party"] += 1
            return ErrorReply(code="not_party", detail=f"{sender} is not in this task")
        return None

    def refusal(
        self, snapshot: Any, party: str, sender: str, message: Message
    ) -> ErrorReply | None:
        """Why ``message`` from ``sender`` may not resume this task now (None: it may)."""
        values = snapshot.values
        name = type(message).__name__
        stranger = self.stranger(snapshot, party, sender)
        if stranger is not None:
            return stranger
        waiting = [i.value for i in snapshot.interrupts if isinstance(i.value, dict)]
        accepted = waiting[0].get("await", ()) if waiting else ()
        if name not in accepted:
            return self.out_of_order(name, values.get("phase", "?"))
        if isinstance(message, CounterOffer) and values.get("countered"):
            self.agent.counters["rejected.counter_used"] += 1
            return ErrorReply(code="counter_used", detail="one counter-offer per conversation")
        if isinstance(message, Award) and message.price != values.get("price"):
            return ErrorReply(
                code="bad_award",
                detail=f"award price {message.price} is not the proposed {values.get('price')}",
            )
        return None

    async def step(self, ctx: HandlerContext, prefix: str, party: str, message: Message) -> Message:
        """Resume the graph paused for ``message``; reject it if not a party or not now."""
        from langgraph.types import Command

        tid = prefix + ctx.conversation.hex()
        graph = self.runner.graph(tid)
        name = type(message).__name__
        # Refuse what the latest checkpoint already rules out without queueing for the
        # task's lock: two agents whose graphs each wait on the other's reply must not
        # deadlock until a timeout, and a stranger is turned away even mid-run (who the
        # other party is does not change while a step runs; the task's state may, so
        # that part waits for the run to pause).
        lock = self.runner.locks.setdefault(tid, asyncio.Lock())
        early = await graph.aget_state(self.runner.config(tid))
        party_address = str(early.values.get(party, ""))
        if lock.locked():
            refusal = self.stranger(early, party_address, ctx.sender)
        else:
            refusal = self.refusal(early, party_address, ctx.sender, message)
        if refusal is not None:
            return refusal
        try:
            await asyncio.wait_for(lock.acquire(), self.agent.settings.reply_timeout_s / 3)
        except TimeoutError:
            return ErrorReply(code="busy", detail="the task is busy; retry shortly")
        handed_over = False
        try:
            snapshot = await graph.aget_state(self.runner.config(tid))
            values = snapshot.values
            refusal = self.refusal(snapshot, str(values.get(party, "")), ctx.sender, message)
            if refusal is not None:
                return refusal
            resume = Command(resume={"type": name, **message.model_dump()})
            awaited = STEP_ANSWERED_AT.get(name)
            if awaited is None:  # acknowledged now; the graph goes on in the background
                self.runner.run_locked(tid, lock, graph, resume)
                handed_over = True
                return Ack(state=values.get("phase", ""))
            # Answered once the graph has acted on it (the job checked and accepted on
            # chain, or the counter-offer priced).
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self.runner.phase_waiters.setdefault(tid, []).append((lambda p: p in awaited, future))
            self.runner.run_locked(tid, lock, graph, resume)
            handed_over = True
            update = await asyncio.wait_for(future, self.agent.settings.reply_timeout_s)
            return self.answer(name, update)
        finally:
            if not handed_over:
                lock.release()
