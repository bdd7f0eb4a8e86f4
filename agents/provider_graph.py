"""The seller's side of a task as a LangGraph ``StateGraph``.

    evaluate -> decide -> await_award -> await_funding -> verify_accept -> execute
             -> submit -> deliver -> await_settlement

``await_*`` nodes pause with ``interrupt()`` until the requester's next message
resumes them; every node is checkpointed, so a provider killed mid-task resumes from
its last finished node. Nodes that touch the chain read the job first and skip work
already done, because a node that crashed half-way runs again on restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from typing import TYPE_CHECKING, Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt

from agentmesh.agents.decisions import PriceDecision, apply_rules, pricing_prompt
from agentmesh.agents.service import ServiceContext
from agentmesh.errors import AgentMeshError, ModelError
from agentmesh.mesh.card import AgentCard
from agentmesh.protocols.negotiation import (
    Delivery,
    Failure,
    sha256_hex,
    terms_hash,
)
from agentmesh.wallets.clients import EscrowJob, JobStatus

if TYPE_CHECKING:
    from langgraph.graph.state import CompiledStateGraph

    from agentmesh.agents.agent import Agent

log = logging.getLogger("agentmesh.agent")

# Messages each waiting phase accepts (the rest are answered `out_of_order`).
PROVIDER_ACCEPTS: dict[str, tuple[str, ...]] = {
    "proposed": ("Award", "Reject", "CounterOffer"),
    "awarded": ("Funded",),
    "delivered": ("Settled", "Dispute"),
}
# Phases in which the result is committed on chain, so a `Redeliver` is answered.
REDELIVERABLE = ("submitted", "delivered", "settled", "claimed", "disputed")
TIMEOUT = "Timeout"  # what the agent's timer resumes a waiting node with


def merge(left: dict[str, str] | None, right: dict[str, str] | None) -> dict[str, str]:
    return {**(left or {}), **(right or {})}


class ProviderState(TypedDict, total=False):
    conversation: str
    requester: str
    requester_card: dict[str, Any]  # signed AgentCard: reachable even if not discovered
    service: str
    input: str
    input_sha256: str
    budget: int
    token: str
    deadline_s: int
    phase: str
    decision: dict[str, Any]
    price: int
    countered: bool
    offer_until: int  # chain time: the offer expires unless awarded
    funding_until: int  # chain time: the award expires unless funded
    claim_after: int  # chain time: the review window has ended
    job_id: int
    escrow: str
    result: str
    result_sha256: str
    txs: Annotated[dict[str, str], merge]
    error: str


def requester_card(state: ProviderState) -> AgentCard:
    return AgentCard.model_validate(state["requester_card"])


def tx_hex(receipt: Any) -> str:
    return "0x" + bytes(receipt["transactionHash"]).hex()


def job_problem(
    job: EscrowJob,
    state: ProviderState,
    me: str,
    token: str,
    now: int,
    min_work_s: int,
    arbiter: str = "",
    max_review_window_s: int = 0,
) -> str:
    """Why the funded job does not match what was agreed ('' when it does)."""
    expected_terms = terms_hash(
        bytes.fromhex(state["conversation"]),
        state["service"],
        state["input_sha256"],
        state["price"],
    )
    checks = [
        (job.client.lower() == state["requester"].lower(), "the client is not the requester"),
        (job.provider.lower() == me.lower(), "the provider is not this agent"),
        (job.token.lower() == token.lower(), "the token is not the one agreed"),
        (job.amount == state["price"], f"amount {job.amount} != agreed price {state['price']}"),
        (job.terms_hash == expected_terms, "the terms hash does not match this conversation"),
        (job.deadline >= now + min_work_s, f"the deadline leaves less than {min_work_s}s"),
        (
            not arbiter or job.arbiter.lower() == arbiter.lower(),
            f"the arbiter {job.arbiter} is not the one this agent trusts",
        ),
        (
            not max_review_window_s or job.review_window <= max_review_window_s,
            f"the review window {job.review_window}s exceeds {max_review_window_s}s",
        ),
        (
            job.status in (JobStatus.OPEN, JobStatus.ACCEPTED, JobStatus.SUBMITTED),
            f"the job is {job.status.name}",
        ),
    ]
    return next((why for ok, why in checks if not ok), "")


def build_provider_graph(agent: Agent, checkpointer: Any) -> CompiledStateGraph[Any]:
    """Compile the provider graph bound to ``agent``."""

    async def evaluate(state: ProviderState) -> dict[str, Any]:
        service = agent.services.get(state["service"])
        reason = ""
        if service is None:
            reason = f"no service {state['service']!r} here"
        elif state["token"].lower() != agent.token_address.lower():
            reason = "payment token not accepted"
        elif sha256_hex(state["input"]) != state["input_sha256"]:
            reason = "input_sha256 does not match the input"
        else:
            try:
                service.parse_input(state["input"])
            except AgentMeshError as exc:
                reason = exc.user_message
        if reason:
            return {"phase": "declined", "decision": {"action": "decline", "reason": reason}}
        return {"phase": "evaluated"}

    async def decide(state: ProviderState) -> dict[str, Any]:
        service = agent.services[state["service"]]
        answer: PriceDecision | None = None
        if agent.model is not None:
            prompt = pricing_prompt(
                service.name, service.price, state["budget"], len(state["input"])
            )
            try:
                # A model busy with long generations must not make us miss the call's
                # window: past the timeout the (still queued) decision is dropped.
                answer = await asyncio.wait_for(
                    agent.model.structured(prompt, PriceDecision, max_tokens=48),
                    agent.settings.decision_timeout_s,
                )
            except (ModelError, TimeoutError) as exc:  # the rules decide, logged
                agent.counters["model_fallbacks"] += 1
                why = exc.user_message if isinstance(exc, ModelError) else "model busy"
                log.warning("pricing model unavailable, rules decide: %s", why)
        decision = apply_rules(
            answer, floor=service.floor, list_price=service.price, budget=state["budget"]
        )
        phase = "proposed" if decision.action == "propose" else "declined"
        return {
            "phase": phase,
            "decision": dataclasses.asdict(decision),
            "price": decision.price,
            "offer_until": await agent.chain_time() + agent.settings.offer_ttl_s,
        }

    async def await_award(state: ProviderState) -> dict[str, Any]:
        message = interrupt({"await": PROVIDER_ACCEPTS["proposed"], "until": state["offer_until"]})
        kind = message["type"]
        if kind == TIMEOUT:
            return {"phase": "expired", "error": "the offer was not awarded in time"}
        if kind == "Reject":
            return {"phase": "rejected", "error": message.get("reason", "")}
        if kind == "CounterOffer":
            # One counter per side: meet the asked price if it is above the floor, else
            # answer with the floor (our last word) and never move again.
            floor = agent.services[state["service"]].floor
            price = max(floor, min(message["price"], state["price"]))
            return {
                "phase": "proposed",
                "price": price,
                "countered": True,
                "offer_until": state["offer_until"],  # the counter does not extend it
            }
        return {
            "phase": "awarded",
            "funding_until": await agent.chain_time() + agent.settings.funding_ttl_s,
        }

    async def await_funding(state: ProviderState) -> dict[str, Any]:
        message = interrupt({"await": PROVIDER_ACCEPTS["awarded"], "until": state["funding_until"]})
        if message["type"] == TIMEOUT:
            return {"phase": "expired", "error": "the award was not funded in time"}
        return {"phase": "funded", "job_id": message["job_id"], "escrow": message["escrow"]}

    async def verify_accept(state: ProviderState) -> dict[str, Any]:
        if state["escrow"].lower() != agent.escrow.address.lower():
            return {"phase": "refused", "error": "funded on an unknown escrow contract"}
        try:
            job = await agent.escrow.get_job(state["job_id"])
        except AgentMeshError as exc:
            return {"phase": "refused", "error": exc.user_message}
        now = await agent.chain_time()
        problem = job_problem(
            job,
            state,
            agent.address,
            agent.token_address,
            now,
            agent.settings.min_work_s,
            arbiter=agent.arbiter,
            max_review_window_s=agent.settings.max_review_window_s,
        )
        if problem:
            return {"phase": "refused", "error": problem}
        if job.status == JobStatus.OPEN:
            receipt = await agent.escrow.accept(state["job_id"])
            return {"phase": "accepted", "txs": {"accept": tx_hex(receipt)}}
        return {"phase": "accepted"}  # accepted before a restart

    async def execute(state: ProviderState) -> dict[str, Any]:
        service = agent.services[state["service"]]
        ctx = ServiceContext(agent, service.name, state["conversation"], state["requester"])
        try:
            result = await service.run(ctx, state["input"])
        except Exception as exc:  # the service's failure ends this task, not the agent
            agent.counters["service_errors"] += 1
            log.warning("service %s failed: %r", service.name, exc)
            return {"phase": "failing", "error": f"{type(exc).__name__}: {exc}"[:200]}
        ok, why = service.accepts_result(result)
        if not ok:
            # The service's own check (declared type, non-empty, `check=`): a result it
            # would not buy itself is abandoned (refund at once), never delivered.
            agent.counters["service_check_failed"] += 1
            log.warning("service %s result refused by its own check: %s", service.name, why)
            return {"phase": "failing", "error": f"result failed its check: {why}"[:200]}
        return {"phase": "executed", "result": result, "result_sha256": sha256_hex(result)}

    async def abandon(state: ProviderState) -> dict[str, Any]:
        job = await agent.escrow.get_job(state["job_id"])
        txs: dict[str, str] = {}
        if job.status == JobStatus.ACCEPTED:
            txs["abandon"] = tx_hex(await agent.escrow.abandon(state["job_id"]))
        failure = Failure(reason=state.get("error", "service failed"), tx=txs.get("abandon", ""))
        # The refund is on chain either way: the notice only saves the requester a wait.
        await agent.tell(requester_card(state), failure, state["conversation"])
        return {"phase": "abandoned", "txs": txs}

    async def submit(state: ProviderState) -> dict[str, Any]:
        job = await agent.escrow.get_job(state["job_id"])
        digest = bytes.fromhex(state["result_sha256"])
        txs: dict[str, str] = {}
        if job.status == JobStatus.ACCEPTED:
            txs["submit"] = tx_hex(await agent.escrow.submit(state["job_id"], digest))
            job = await agent.escrow.get_job(state["job_id"])
        if job.status == JobStatus.SUBMITTED and job.result_hash == digest:
            # submitted now, or before a restart
            claim_after = job.submitted_at + job.review_window + 1
            return {"phase": "submitted", "txs": txs, "claim_after": claim_after}
        return {"phase": "lost", "error": f"cannot submit: the job is {job.status.name}"}

    async def deliver(state: ProviderState) -> dict[str, Any]:
        delivery = Delivery(result=state["result"], result_sha256=state["result_sha256"])
        error = ""
        for attempt in range(agent.settings.delivery_attempts):
            try:
                # A fresh envelope per attempt: a retried one would outlive its TTL.
                await agent.ask(
                    requester_card(state),
                    delivery,
                    state["conversation"],
                    timeout=agent.settings.reply_timeout_s,
                    retries=0,
                )
                return {"phase": "delivered"}
            except AgentMeshError as exc:
                # Unreachable, or not ready for it yet (still finishing the previous
                # step): wait a little and send a fresh envelope.
                error = exc.user_message
                if attempt + 1 < agent.settings.delivery_attempts:
                    await asyncio.sleep(min(2**attempt, 10))
        # The hash is on chain: the payment can be claimed after the review window.
        return {"phase": "delivered", "error": f"requester unreachable: {error}"}

    async def await_settlement(state: ProviderState) -> dict[str, Any]:
        message = interrupt({"await": PROVIDER_ACCEPTS["delivered"], "until": state["claim_after"]})
        job = await agent.escrow.get_job(state["job_id"])
        if job.status == JobStatus.SUBMITTED and message["type"] == TIMEOUT:
            # The requester never decided within the review window: collect the pay.
            receipt = await agent.escrow.claim(state["job_id"])
            return {"phase": "claimed", "txs": {"claim": tx_hex(receipt)}}
        if job.status in (JobStatus.DISPUTED, JobStatus.RESOLVED):
            return {"phase": "disputed", "error": message.get("reason", "disputed on chain")}
        if job.status in (JobStatus.RELEASED, JobStatus.CLAIMED):
            return {"phase": "settled", "txs": {"release": message.get("tx", "")}}
        if job.status == JobStatus.SUBMITTED:
            # A notice the chain does not (yet) confirm: keep waiting; the review-window
            # timer claims the payment if nothing changes.
            return {"phase": "delivered", "error": f"unconfirmed {message['type']}"}
        return {"phase": "lost", "error": f"settlement: the job is {job.status.name}"}

    def after(phase_ok: str, next_node: str) -> Any:
        def route(state: ProviderState) -> str:
            return next_node if state.get("phase") == phase_ok else END

        return route

    graph = StateGraph(ProviderState)
    for node in (
        evaluate,
        decide,
        await_award,
        await_funding,
        verify_accept,
        execute,
        abandon,
        submit,
        deliver,
        await_settlement,
    ):
        graph.add_node(node.__name__, node)  # type: ignore[call-overload]
    graph.add_edge(START, "evaluate")
    graph.add_conditional_edges("evaluate", after("evaluated", "decide"))
    graph.add_conditional_edges("decide", after("proposed", "await_award"))
    graph.add_conditional_edges(
        "await_award",
        lambda s: {"awarded": "await_funding", "proposed": "await_award"}.get(s["phase"], END),
    )
    graph.add_conditional_edges("await_funding", after("funded", "verify_accept"))
    graph.add_conditional_edges("verify_accept", after("accepted", "execute"))
    graph.add_conditional_edges(
        "execute", lambda s: "submit" if s.get("phase") == "executed" else "abandon"
    )
    graph.add_edge("abandon", END)
    graph.add_conditional_edges("submit", after("submitted", "deliver"))
    graph.add_edge("deliver", "await_settlement")
    graph.add_conditional_edges(
        "await_settlement",
        lambda s: "await_settlement" if s.get("phase") == "delivered" else END,
    )
    return graph.compile(checkpointer=checkpointer)
