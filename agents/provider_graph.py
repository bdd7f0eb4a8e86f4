"""The seller's side of a task as a LangGraph ``StateGraph``.

    evaluate -> decide -> await_award -> await_funding -> verify_accept -> execute
             -> submit -> deliver -> await_settlement

Each node is a module-level function of the task's state and a
``Runtime[TaskContext]``. ``await_*`` nodes pause with ``interrupt()`` until the
requester's next message (or the agent's timer, with ``Timeout``) resumes them with the
typed message; every node is checkpointed, so a provider killed mid-task resumes from
its last finished node. Nodes that touch the chain read the job first and skip work
already done, because a node that crashed half-way runs again on restart.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING, Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import interrupt

from agentmesh.agents.checks import AgreedTerms, funded_job_problem
from agentmesh.agents.context import TaskContext, tx_hex
from agentmesh.agents.decisions import PriceDecision, apply_rules, pricing_prompt
from agentmesh.agents.pricing import PRICING_MAX_TOKENS
from agentmesh.agents.service import ServiceContext
from agentmesh.canonical import sha256_hex
from agentmesh.errors import AgentMeshError, ChainUnavailableError, ModelError
from agentmesh.mesh.card import AgentCard
from agentmesh.message import Message
from agentmesh.protocols.negotiation import (
    CounterOffer,
    Delivery,
    Dispute,
    Failure,
    Funded,
    Phase,
    Reject,
    Settled,
    Timeout,
)
from agentmesh.wallets.clients import JobStatus

if TYPE_CHECKING:
    from langgraph.graph.state import CompiledStateGraph

log = logging.getLogger("agentmesh.agent")
Update = dict[str, Any]
Ctx = Runtime[TaskContext]


def merge(left: dict[str, str] | None, right: dict[str, str] | None) -> dict[str, str]:
    """Reducer of the ``txs`` channel: every node adds its transactions."""
    return {**(left or {}), **(right or {})}


def phase_text(_old: str | None, new: str) -> str:
    """Reducer of the ``phase`` channel: checkpoints keep the phase as plain text."""
    return str(new)


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
    phase: Annotated[str, phase_text]
    decision: dict[str, Any]
    price: int
    countered: bool
    offer_until: int  # chain time: the offer expires unless awarded
    funding_until: int  # chain time: the award expires unless funded
    claim_after: int  # chain time: the review window has ended
    job_id: int
    job_deadline: int  # chain time: the funded job's deadline (fixed on chain)
    escrow: str
    result: str
    result_sha256: str
    txs: Annotated[dict[str, str], merge]
    error: str


def waiting(phase: Phase, until: int) -> dict[str, Any]:
    """The interrupt value of a node waiting in ``phase`` for a message (or ``until``)."""
    return {"phase": str(phase), "until": until}


def requester_card(state: ProviderState) -> AgentCard:
    return AgentCard.model_validate(state["requester_card"])


def input_problem(state: ProviderState, ctx: TaskContext) -> str:
    """Why this call for proposals cannot be served here ('' if it can)."""
    service = ctx.services.get(state["service"])
    if service is None:
        return f"no service {state['service']!r} here"
    if state["token"].lower() != ctx.token.address.lower():
        return "payment token not accepted"
    if sha256_hex(state["input"]) != state["input_sha256"]:
        return "input_sha256 does not match the input"
    try:
        service.parse_input(state["input"])
    except AgentMeshError as exc:
        return exc.user_message
    return ""


async def evaluate(state: ProviderState, runtime: Ctx) -> Update:
    reason = input_problem(state, runtime.context)
    if reason:
        return {"phase": Phase.DECLINED, "decision": {"action": "decline", "reason": reason}}
    return {"phase": Phase.EVALUATED}


async def ask_model_price(state: ProviderState, ctx: TaskContext) -> PriceDecision | None:
    """The model's pricing answer, or None (the rules decide) if it has none in time.

    The wait is bounded by the measured cost of a pricing call (``PricingPacer``), not
    a flat timeout; when the calls already queued for the model would take longer than
    ``decision_timeout_s``, the rules decide at once.
    """
    if ctx.model is None:
        return None
    wait_s = ctx.pricing.wait_s()
    if wait_s is None:
        ctx.counters["model_fallbacks"] += 1
        log.warning(
            "pricing by the rules: %d decisions already queued for the model (%.2f s each)",
            ctx.pricing.in_flight,
            ctx.pricing.cost_s or 0.0,
        )
        return None
    service = ctx.services[state["service"]]
    prompt = pricing_prompt(service.name, service.price, state["budget"], len(state["input"]))
    try:
        # Past the wait, the decision (still queued or running) is dropped.
        return await ctx.pricing.ask(
            ctx.model.structured(prompt, PriceDecision, max_tokens=PRICING_MAX_TOKENS), wait_s
        )
    except (ModelError, TimeoutError) as exc:  # the rules decide, logged
        ctx.counters["model_fallbacks"] += 1
        why = (
            exc.user_message
            if isinstance(exc, ModelError)
            else (
                f"no answer within {wait_s:.2f} s (a call measured {ctx.pricing.cost_s or 0:.2f} s)"
            )
        )
        log.warning("pricing model unavailable, rules decide: %s", why)
        return None


async def decide(state: ProviderState, runtime: Ctx) -> Update:
    ctx = runtime.context
    service = ctx.services[state["service"]]
    answer = await ask_model_price(state, ctx)
    decision = apply_rules(
        answer, floor=service.floor, list_price=service.price, budget=state["budget"]
    )
    return {
        "phase": Phase.PROPOSED if decision.action == "propose" else Phase.DECLINED,
        "decision": dataclasses.asdict(decision),
        "price": decision.price,
        "offer_until": await ctx.clock.now() + ctx.settings.offer_ttl_s,
    }


async def await_award(state: ProviderState, runtime: Ctx) -> Update:
    ctx = runtime.context
    message: Message = interrupt(waiting(Phase.PROPOSED, state["offer_until"]))
    if isinstance(message, Timeout):
        return {"phase": Phase.EXPIRED, "error": "the offer was not awarded in time"}
    if isinstance(message, Reject):
        return {"phase": Phase.REJECTED, "error": message.reason}
    if isinstance(message, CounterOffer):
        # One counter per side: meet the asked price if it is above the floor, else
        # answer with the floor (our last word) and never move again.
        floor = ctx.services[state["service"]].floor
        return {
            "phase": Phase.PROPOSED,
            "price": max(floor, min(message.price, state["price"])),
            "countered": True,
            "offer_until": state["offer_until"],  # the counter does not extend it
        }
    return {
        "phase": Phase.AWARDED,
        "funding_until": await ctx.clock.now() + ctx.settings.funding_ttl_s,
    }


async def await_funding(state: ProviderState, runtime: Ctx) -> Update:
    message: Message = interrupt(waiting(Phase.AWARDED, state["funding_until"]))
    if not isinstance(message, Funded):
        return {"phase": Phase.EXPIRED, "error": "the award was not funded in time"}
    return {"phase": Phase.FUNDED, "job_id": message.job_id, "escrow": message.escrow}


def agreed_terms(state: ProviderState, ctx: TaskContext) -> AgreedTerms:
    """What this provider agreed to in the conversation, and what it accepts of a job."""
    return AgreedTerms(
        conversation=state["conversation"],
        requester=state["requester"],
        provider=ctx.address,
        token=ctx.token.address,
        price=state["price"],
        service=state["service"],
        input_sha256=state["input_sha256"],
        min_work_s=ctx.settings.min_work_s,
        arbiter=ctx.arbiter,
        max_review_window_s=ctx.settings.max_review_window_s,
    )


async def verify_accept(state: ProviderState, runtime: Ctx) -> Update:
    ctx = runtime.context
    if state["escrow"].lower() != ctx.escrow.address.lower():
        return {"phase": Phase.REFUSED, "error": "funded on an unknown escrow contract"}
    try:
        job = await ctx.escrow.get_job(state["job_id"])
    except ChainUnavailableError:
        raise  # not a verdict on the job: the step stalls and runs again once it answers
    except AgentMeshError as exc:
        return {"phase": Phase.REFUSED, "error": exc.user_message}
    problem = funded_job_problem(job, agreed_terms(state, ctx), await ctx.clock.now())
    if problem:
        return {"phase": Phase.REFUSED, "error": problem}
    if job.status == JobStatus.OPEN:
        receipt = await ctx.escrow.accept(state["job_id"])
        return {
            "phase": Phase.ACCEPTED,
            "txs": {"accept": tx_hex(receipt)},
            "job_deadline": job.deadline,
        }
    return {"phase": Phase.ACCEPTED, "job_deadline": job.deadline}  # before a restart


async def too_late(ctx: TaskContext, deadline: int) -> Update | None:
    """The abandon update if the job's ``deadline`` has passed (a provider restarted
    late): the result could no longer be submitted, so the work is not done at all and
    the deposit goes back to the requester at once."""
    # A transaction now lands in a later block: at the deadline second it is too late.
    if await ctx.clock.now() < deadline:
        return None
    ctx.counters["deadline_passed"] += 1
    return {
        "phase": Phase.FAILING,
        "error": "the job's deadline passed before the result could be submitted",
    }


async def execute(state: ProviderState, runtime: Ctx) -> Update:
    ctx = runtime.context
    deadline = state.get("job_deadline")
    if deadline is None:  # a checkpoint written before the deadline was kept in state
        deadline = (await ctx.escrow.get_job(state["job_id"])).deadline
    late = await too_late(ctx, deadline)
    if late is not None:
        return late
    service = ctx.services[state["service"]]
    service_ctx = ServiceContext(
        service=service.name,
        conversation=state["conversation"],
        requester=state["requester"],
        agent_name=ctx.name,
        chat_model=ctx.model,
    )
    try:
        result = await service.run(service_ctx, state["input"])
    except Exception as exc:  # the service's failure ends this task, not the agent
        ctx.counters["service_errors"] += 1
        log.warning("service %s failed: %r", service.name, exc)
        return {"phase": Phase.FAILING, "error": f"{type(exc).__name__}: {exc}"[:200]}
    ok, why = service.accepts_result(result)
    if not ok:
        # The service's own check (declared type, non-empty, `check=`): a result it
        # would not buy itself is abandoned (refund at once), never delivered.
        ctx.counters["service_check_failed"] += 1
        log.warning("service %s result refused by its own check: %s", service.name, why)
        return {"phase": Phase.FAILING, "error": f"result failed its check: {why}"[:200]}
    return {"phase": Phase.EXECUTED, "result": result, "result_sha256": sha256_hex(result)}


async def abandon(state: ProviderState, runtime: Ctx) -> Update:
    ctx = runtime.context
    job = await ctx.escrow.get_job(state["job_id"])
    txs: dict[str, str] = {}
    if job.status == JobStatus.ACCEPTED:
        txs["abandon"] = tx_hex(await ctx.escrow.abandon(state["job_id"]))
    failure = Failure(reason=state.get("error", "service failed"), tx=txs.get("abandon", ""))
    # The refund is on chain either way: the notice only saves the requester a wait.
    await ctx.messenger.tell(requester_card(state), failure, state["conversation"])
    return {"phase": Phase.ABANDONED, "txs": txs}


async def submit(state: ProviderState, runtime: Ctx) -> Update:
    ctx = runtime.context
    job = await ctx.escrow.get_job(state["job_id"])
    digest = bytes.fromhex(state["result_sha256"])
    txs: dict[str, str] = {}
    if job.status == JobStatus.ACCEPTED:
        late = await too_late(ctx, job.deadline)
        if late is not None:
            return late
        txs["submit"] = tx_hex(await ctx.escrow.submit(state["job_id"], digest))
        job = await ctx.escrow.get_job(state["job_id"])
    if job.status == JobStatus.SUBMITTED and job.result_hash == digest:
        # submitted now, or before a restart; kept to show a jury if it comes to that
        ctx.records.keep_evidence(state["job_id"], ctx.escrow.address, result=state["result"])
        claim_after = job.submitted_at + job.review_window + 1
        return {"phase": Phase.SUBMITTED, "txs": txs, "claim_after": claim_after}
    return {"phase": Phase.LOST, "error": f"cannot submit: the job is {job.status.name}"}


async def deliver(state: ProviderState, runtime: Ctx) -> Update:
    ctx = runtime.context
    delivery = Delivery(result=state["result"], result_sha256=state["result_sha256"])
    attempts = ctx.settings.delivery_attempts
    error = ""
    for attempt in range(attempts):
        try:
            # A fresh envelope per attempt: a retried one would outlive its TTL.
            await ctx.messenger.ask(
                requester_card(state),
                delivery,
                state["conversation"],
                timeout=ctx.settings.reply_timeout_s,
                retries=0,
            )
            return {"phase": Phase.DELIVERED}
        except AgentMeshError as exc:
            # Unreachable, or not ready for it yet (still finishing the previous step):
            # wait a little and send a fresh envelope.
            error = exc.user_message
            if attempt + 1 < attempts:
                await asyncio.sleep(min(2**attempt, 10))
    # The hash is on chain: the payment can be claimed after the review window.
    return {"phase": Phase.DELIVERED, "error": f"requester unreachable: {error}"}


async def await_settlement(state: ProviderState, runtime: Ctx) -> Update:
    ctx = runtime.context
    message: Message = interrupt(waiting(Phase.DELIVERED, state["claim_after"]))
    job = await ctx.escrow.get_job(state["job_id"])
    if job.status == JobStatus.SUBMITTED and isinstance(message, Timeout):
        # The requester never decided within the review window: collect the pay.
        receipt = await ctx.escrow.claim(state["job_id"])
        return {"phase": Phase.CLAIMED, "txs": {"claim": tx_hex(receipt)}}
    if job.status in (JobStatus.DISPUTED, JobStatus.RESOLVED):
        reason = message.reason if isinstance(message, Dispute) else "disputed on chain"
        return {"phase": Phase.DISPUTED, "error": reason}
    if job.status in (JobStatus.RELEASED, JobStatus.CLAIMED):
        tx = message.tx if isinstance(message, Settled) else ""
        return {"phase": Phase.SETTLED, "txs": {"release": tx}}
    if job.status == JobStatus.SUBMITTED:
        # A notice the chain does not (yet) confirm: keep waiting; the review-window
        # timer claims the payment if nothing changes.
        return {"phase": Phase.DELIVERED, "error": f"unconfirmed {type(message).__name__}"}
    return {"phase": Phase.LOST, "error": f"settlement: the job is {job.status.name}"}


def routes(table: dict[Phase, str], otherwise: str = END) -> Any:
    """A conditional edge: the node for the phase the last node reported (``table``),
    else ``otherwise``. Both graphs route with it."""

    def route(state: Mapping[str, Any]) -> str:
        return table.get(state.get("phase", ""), otherwise)

    return route


def build_provider_graph(checkpointer: Any) -> CompiledStateGraph[Any, Any, Any, Any]:
    """Compile the provider graph; runs get the agent's ``TaskContext`` as context."""
    graph = StateGraph(ProviderState, context_schema=TaskContext)
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
        graph.add_node(node.__name__, node)
    graph.add_edge(START, "evaluate")
    graph.add_conditional_edges("evaluate", routes({Phase.EVALUATED: "decide"}))
    graph.add_conditional_edges("decide", routes({Phase.PROPOSED: "await_award"}))
    graph.add_conditional_edges(
        "await_award",
        routes({Phase.AWARDED: "await_funding", Phase.PROPOSED: "await_award"}),
    )
    graph.add_conditional_edges("await_funding", routes({Phase.FUNDED: "verify_accept"}))
    graph.add_conditional_edges("verify_accept", routes({Phase.ACCEPTED: "execute"}))
    graph.add_conditional_edges(
        "execute", routes({Phase.EXECUTED: "submit", Phase.FAILING: "abandon"})
    )
    graph.add_edge("abandon", END)
    graph.add_conditional_edges(
        "submit", routes({Phase.SUBMITTED: "deliver", Phase.FAILING: "abandon"})
    )
    graph.add_edge("deliver", "await_settlement")
    graph.add_conditional_edges("await_settlement", routes({Phase.DELIVERED: "await_settlement"}))
    return graph.compile(checkpointer=checkpointer)
