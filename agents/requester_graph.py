"""The buyer's side of a task as a LangGraph ``StateGraph``.

    solicit -> choose -> approve -> award -> fund -> notify -> await_delivery
            -> check -> release | dispute

Each node is a module-level function of the task's state and a
``Runtime[TaskContext]``. ``approve`` pauses with ``interrupt()`` when the price is
above the agent's approval threshold, until ``agentmesh approve``/``reject`` resumes it
with an ``ApprovalDecision`` (or until the chosen offer lapses: then the task expires,
nothing spent). ``fund`` is the only node that spends; it finds a job it opened before a
crash or a lost receipt (same terms hash) instead of paying twice. Every branch that
stops early leaves no money behind: nothing is spent before ``fund``, and a job the
provider refuses is cancelled at once.

``await_delivery`` also wakes up several times per review window to look at the job: a
result committed on chain but never received (we were down) is asked for again with
``Redeliver``, and disputed only if it cannot be had before the review window closes.
A delivery that fails the check before its hash is on chain is refused and the wait
goes on (disputing needs the hash on chain; ending would let the provider claim).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import interrupt

from agentmesh.agents.checks import delivery_problem
from agentmesh.agents.context import TaskContext, tx_hex
from agentmesh.agents.provider_graph import merge, phase_text, routes, waiting
from agentmesh.agents.ranking import Weights, rank
from agentmesh.canonical import sha256_hex
from agentmesh.errors import (
    AgentMeshError,
    ChainUnavailableError,
    FeeCapError,
    PeerUnreachable,
    TransactionError,
)
from agentmesh.mesh.card import AgentCard
from agentmesh.message import Message
from agentmesh.protocols.negotiation import (
    ApprovalDecision,
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
    Timeout,
    terms_hash,
    terms_text,
)
from agentmesh.wallets.clients import EscrowJob, JobStatus
from agentmesh.wallets.units import MUSD_DECIMALS, format_amount

if TYPE_CHECKING:
    from langgraph.graph.state import CompiledStateGraph

log = logging.getLogger("agentmesh.agent")
Update = dict[str, Any]
Ctx = Runtime[TaskContext]

# Job states in which the provider has committed a result on chain that we may not have
# received (we were down when it was delivered): ask for it again before deciding.
RESULT_ON_CHAIN = (JobStatus.SUBMITTED, JobStatus.CLAIMED, JobStatus.RELEASED)
FEEDBACK_GOOD = 100
FEEDBACK_BAD = 0


class RequesterState(TypedDict, total=False):
    conversation: str
    service: str
    input: str
    input_sha256: str
    budget: int
    token: str
    deadline_s: int
    providers: list[str]  # restrict to these addresses (empty: anyone offering it)
    phase: Annotated[str, phase_text]
    proposals: list[dict[str, Any]]
    declines: list[dict[str, Any]]
    winner: str
    winner_card: dict[str, Any]
    offer_until: int  # chain time the winner's offer lapses (0: not said)
    price: int
    excluded: list[str]  # providers that failed an award: the next-best gets it
    countered: bool
    delivery_until: int  # chain time after which an undelivered job is refunded
    from_block: int
    job_id: int
    result: str
    result_sha256: str
    txs: Annotated[dict[str, str], merge]
    error: str


def winner(state: RequesterState) -> AgentCard:
    """The chosen provider's signed card (how to reach it)."""
    return AgentCard.model_validate(state["winner_card"])


def poll_s(ctx: TaskContext) -> int:
    """How often a requester waiting for a delivery looks at the job on chain: several
    times per review window, so a result committed but not received is fetched (or
    contested) before the provider may claim it."""
    return max(1, ctx.settings.review_window_s // 3)


# ---------------------------------------------------------------------- proposals


async def ask_for_proposal(
    ctx: TaskContext, card: AgentCard, call: CallForProposals, conversation: str
) -> dict[str, Any]:
    """One provider's answer to the call: a proposal (with its latency) or a decline."""
    started = time.perf_counter()
    try:
        reply = await ctx.messenger.ask(
            card,
            call,
            conversation,
            expect=(Proposal, Decline),
            timeout=ctx.settings.proposal_window_s,
            retries=0,
        )
    except PeerUnreachable as exc:  # no answer at all: not the provider's decision
        return {"provider": card.address, "why": exc.user_message, "unanswered": True}
    except AgentMeshError as exc:  # an error reply, e.g. the call was malformed
        return {"provider": card.address, "why": exc.user_message}
    latency = round((time.perf_counter() - started) * 1000)
    if not isinstance(reply, Proposal):
        reason = reply.reason if isinstance(reply, Decline) else type(reply).__name__
        return {"provider": card.address, "why": reason}
    return {
        "provider": card.address,
        "card": card.model_dump(),
        "price": reply.price,
        "eta_s": reply.eta_s,
        "model_sha256": reply.model_sha256,
        "claimed_reputation": [reply.reputation_count, reply.reputation_total],
        "valid_until": reply.valid_until,
        "latency_ms": latency,
    }


async def solicit(state: RequesterState, runtime: Ctx) -> Update:
    ctx = runtime.context
    cards = ctx.messenger.find(state["service"])
    wanted = {a.lower() for a in state.get("providers") or []}
    if wanted:
        cards = [c for c in cards if c.address.lower() in wanted]
    if not cards:
        return {"phase": Phase.NO_PROVIDERS, "error": f"no peer offers {state['service']!r}"}
    call = CallForProposals(
        service=state["service"],
        input=state["input"],
        input_sha256=state["input_sha256"],
        budget=state["budget"],
        token=state["token"],
        deadline_s=state["deadline_s"],
        card=ctx.messenger.card,
    )
    answers = await asyncio.gather(
        *(ask_for_proposal(ctx, card, call, state["conversation"]) for card in cards)
    )
    proposals = [a for a in answers if "price" in a]
    for proposal in proposals:  # the chain's word on reputation, not the proposal's
        count, total = await ctx.registry.reputation(proposal["provider"])
        proposal["reputation"] = total / count if count else None
        if ctx.consensus is not None:  # and the validators' score, where there are any
            proposal["consensus"] = await ctx.consensus.score(proposal["provider"])
    declines = [a for a in answers if "why" in a]
    return {"phase": Phase.SOLICITED, "proposals": proposals, "declines": declines}


async def choose(state: RequesterState, runtime: Ctx) -> Update:
    ctx = runtime.context
    settings = ctx.settings
    weights = Weights(
        settings.weight_price,
        settings.weight_reputation,
        settings.weight_latency,
        settings.weight_consensus,
    )
    excluded = set(state.get("excluded") or [])
    candidates = [p for p in state.get("proposals", []) if p["provider"] not in excluded]
    ranked = rank(candidates, state["budget"], weights)
    if not ranked:
        return {"phase": Phase.NO_PROPOSAL, "error": no_proposal_reason(state, candidates)}
    best = ranked[0]
    price = best["price"]
    if settings.counter_ratio is not None and not state.get("countered"):
        price = await counter(ctx, state, best, settings.counter_ratio)
    return {
        "phase": Phase.CHOSEN,
        "winner": best["provider"],
        "winner_card": best["card"],
        "offer_until": best.get("valid_until", 0),
        "price": price,
        "countered": bool(state.get("countered")) or settings.counter_ratio is not None,
    }


def no_proposal_reason(state: RequesterState, candidates: list[dict[str, Any]]) -> str:
    """Why no proposal can be taken, naming each provider's own reason."""
    parts = [_decline_text(d) for d in state.get("declines", [])]
    if candidates:
        cheapest = min(p["price"] for p in candidates)
        parts.append(
            f"{len(candidates)} proposal(s) above the budget of "
            f"{format_amount(state['budget'], MUSD_DECIMALS, 'mUSD')} (cheapest "
            f"{format_amount(cheapest, MUSD_DECIMALS, 'mUSD')})"
        )
    excluded = state.get("excluded") or []
    if excluded:
        parts.append(f"{len(excluded)} awarded provider(s) failed")
    return "no proposal to take: " + ("; ".join(parts) or "no provider answered")


def _decline_text(decline: dict[str, Any]) -> str:
    provider, why = decline["provider"], decline["why"]
    if not decline.get("unanswered"):
        return f"{provider} declined: {why}"
    return why if provider in why else f"no answer from {provider}: {why}"


async def counter(
    ctx: TaskContext, state: RequesterState, best: dict[str, Any], ratio: float
) -> int:
    """Our one counter-offer; the provider's answer is final (never above its offer)."""
    asked = max(1, int(best["price"] * ratio))
    try:
        reply = await ctx.messenger.ask(
            AgentCard.model_validate(best["card"]),
            CounterOffer(price=asked),
            state["conversation"],
            expect=(Proposal,),
        )
    except AgentMeshError as exc:
        log.info("counter-offer to %s failed: %s", best["provider"], exc)
        return int(best["price"])
    offered = reply.price if isinstance(reply, Proposal) else best["price"]
    return min(int(offered), int(best["price"]))


def approval_text(state: RequesterState) -> str:
    """What a person approves: the price, the provider, the service and its input."""
    shown = state["input"] if len(state["input"]) <= 80 else state["input"][:77] + "..."
    return (
        f"pay {format_amount(state['price'], MUSD_DECIMALS, 'mUSD')} to {state['winner']} for "
        f"{state['service']} of {shown}"
    )


async def approve(state: RequesterState, runtime: Ctx) -> Update:
    ctx = runtime.context
    threshold = ctx.approval_threshold
    if threshold is not None and state["price"] > threshold:
        decision: Message = interrupt(
            {
                "kind": "approval",
                "amount": state["price"],
                "description": approval_text(state),
                # The offer does not wait forever: when it lapses, so does the request
                # (0: the provider did not say; wait as long as it takes).
                "until": state.get("offer_until", 0),
            }
        )
        if isinstance(decision, Timeout):
            ctx.records.expire_approvals(Role.REQUESTER.task_id(state["conversation"]))
            return {
                "phase": Phase.EXPIRED,
                "error": "not approved before the provider's offer lapsed; nothing was "
                "spent (buy again, or ask providers for a longer offer_ttl_s)",
            }
        if not (isinstance(decision, ApprovalDecision) and decision.approved):
            return {"phase": Phase.REJECTED, "error": "the spend was rejected by its owner"}
    return {"phase": Phase.APPROVED, "from_block": await ctx.clock.block_number()}


async def tell_losers(ctx: TaskContext, state: RequesterState, keep: str) -> None:
    """Tell every provider but ``keep`` that its offer was not taken (a courtesy only:
    an offer nobody awards expires anyway)."""
    reason = state.get("error") or "another proposal was chosen"
    for proposal in state.get("proposals", []):
        if proposal["provider"] == keep:
            continue
        card = AgentCard.model_validate(proposal["card"])
        notice = Reject(reason=reason[:200])
        await ctx.messenger.tell(card, notice, state["conversation"], retries=0)


async def reject_all(state: RequesterState, runtime: Ctx) -> Update:
    await tell_losers(runtime.context, state, keep="")
    return {}


async def award(state: RequesterState, runtime: Ctx) -> Update:
    ctx = runtime.context
    try:
        await ctx.messenger.ask(winner(state), Award(price=state["price"]), state["conversation"])
    except AgentMeshError as exc:
        # Nothing is spent yet: offer the task to the next-best proposal.
        log.warning("award to %s failed (%s); trying the next", state["winner"], exc)
        return {
            "phase": Phase.REAWARD,
            "excluded": [*(state.get("excluded") or []), state["winner"]],
            "error": f"award not taken by {state['winner']}: {exc.user_message}",
        }
    return {"phase": Phase.AWARDED}


# ---------------------------------------------------------------------- money


def agreed_terms_hash(state: RequesterState) -> bytes:
    conversation = bytes.fromhex(state["conversation"])
    return terms_hash(conversation, state["service"], state["input_sha256"], state["price"])


def keep_evidence(ctx: TaskContext, state: RequesterState, job_id: int) -> None:
    """What this buyer would show a jury: the terms the job commits to and the input."""
    conversation = bytes.fromhex(state["conversation"])
    terms = terms_text(conversation, state["service"], state["input_sha256"], state["price"])
    ctx.records.keep_evidence(job_id, ctx.escrow.address, terms=terms, input=state["input"])


async def found_job(ctx: TaskContext, state: RequesterState, terms: bytes) -> Update | None:
    """The update for a job we opened already (before a restart, or whose receipt was
    lost), or None if there is none."""
    job_id = await ctx.escrow.find_opened_job(
        ctx.address, state["winner"], terms, state["from_block"]
    )
    if job_id is None:
        return None
    job = await ctx.escrow.get_job(job_id)
    keep_evidence(ctx, state, job_id)
    return {"phase": Phase.FUNDED, "job_id": job_id, "delivery_until": job.deadline + 1}


async def fund(state: RequesterState, runtime: Ctx) -> Update:
    ctx = runtime.context
    terms = agreed_terms_hash(state)
    # Looking for a job opened by an earlier run costs a log query: only a run that
    # follows one (a restart, a retry) can find one.
    if ctx.records.count_attempt(Role.REQUESTER.task_id(state["conversation"]), "fund"):
        found = await found_job(ctx, state, terms)
        if found is not None:
            return found
        if await ctx.escrow.pending_transactions():
            # An open an earlier run sent may still be waiting in the pool (its wait
            # ended in an outage): opening again now could fund the task twice.
            raise TransactionError(
                "a transaction this wallet sent before is not mined yet: funding waits for it"
            )
    deadline = await ctx.clock.now() + state["deadline_s"]
    try:
        job_id, receipts = await ctx.escrow.open(
            provider=state["winner"],
            token=ctx.token,
            amount=state["price"],
            deadline=deadline,
            review_window=ctx.settings.review_window_s,
            arbiter=ctx.arbiter,
            terms_hash=terms,
        )
    except ChainUnavailableError:
        raise  # stalls; the retry looks for the job first, once the chain answers
    except AgentMeshError as exc:
        # The transaction may be mined although its receipt never came back (a
        # timeout): a job we opened must not be left behind unaccounted.
        found = await found_job(ctx, state, terms)
        if found is None:
            if isinstance(exc, FeeCapError) or await ctx.escrow.pending_transactions():
                # A fee spike, or the open still waiting in the pool: neither is a no.
                # The step stalls and looks again (the job first) later.
                raise
            return {"phase": Phase.FAILED, "error": f"could not fund the job: {exc.user_message}"}
        log.warning("opening job %s reported %s, but it is open", found["job_id"], exc)
        return found
    keep_evidence(ctx, state, job_id)
    txs = {"open": tx_hex(receipts[-1])}
    if len(receipts) > 1:
        txs["approve"] = tx_hex(receipts[0])
    return {"phase": Phase.FUNDED, "job_id": job_id, "delivery_until": deadline + 1, "txs": txs}


async def notify(state: RequesterState, runtime: Ctx) -> Update:
    ctx = runtime.context
    try:
        await ctx.messenger.ask(
            winner(state),
            Funded(job_id=state["job_id"], escrow=ctx.escrow.address),
            state["conversation"],
            # Three tries of one envelope within reply_timeout_s (inside its TTL): a
            # provider restarted meanwhile answers the retry.
            timeout=ctx.settings.reply_timeout_s / 3,
            retries=2,
        )
    except AgentMeshError as exc:
        job = await ctx.escrow.get_job(state["job_id"])
        if job.status == JobStatus.OPEN:
            # Not accepted: take the money back now, and offer the task to the next.
            log.warning("%s did not take job %s: %s", state["winner"], job.job_id, exc)
            receipt = await ctx.escrow.cancel(state["job_id"])
            return {
                "phase": Phase.REAWARD,
                "excluded": [*(state.get("excluded") or []), state["winner"]],
                "error": f"provider refused the job: {exc.user_message}",
                "txs": {"cancel": tx_hex(receipt)},
            }
        log.info("funded notice unanswered but job %s is %s", state["job_id"], job.status)
    # The others' offers stayed open until now, in case this one fell through.
    ctx.spawn(tell_losers(ctx, state, keep=state["winner"]))  # courtesy, not awaited
    return {"phase": Phase.NOTIFIED}


# ---------------------------------------------------------------------- delivery


def delivered(delivery: Delivery) -> Update:
    """The state update for a received (or re-requested) delivery."""
    return {
        "phase": Phase.DELIVERED,
        "result": delivery.result,
        "result_sha256": delivery.result_sha256,
    }


async def await_delivery(state: RequesterState, runtime: Ctx) -> Update:
    ctx = runtime.context
    # Wake up now and then to look at the job, not only at the deadline: a provider may
    # commit a result we never receive (we were down, or the network was) and claim it
    # after the review window, which can end before our deadline.
    until = min(state["delivery_until"], await ctx.clock.now() + poll_s(ctx))
    message: Message = interrupt(waiting(Phase.NOTIFIED, until))
    if isinstance(message, Delivery):
        return delivered(message)
    if isinstance(message, Failure):
        job = await ctx.escrow.get_job(state["job_id"])
        if job.status != JobStatus.REFUNDED:
            # Words are not money: until the job is refunded on chain, keep waiting (the
            # deadline timer still refunds it).
            log.warning("provider reported a failure but job %s is %s", job.job_id, job.status)
            return {"phase": Phase.NOTIFIED, "error": f"unconfirmed failure: {message.reason}"}
        return {
            "phase": Phase.FAILED,
            "error": f"provider failed: {message.reason} (deposit refunded)",
        }
    return await look_at_job(ctx, state)


async def request_redelivery(ctx: TaskContext, state: RequesterState) -> Delivery | None:
    """Ask the winner again for a delivery we missed; None if it does not answer."""
    try:
        reply = await ctx.messenger.ask(
            winner(state), Redeliver(), state["conversation"], expect=(Delivery,)
        )
    except AgentMeshError as exc:
        log.info("redelivery of job %s not obtained: %s", state.get("job_id"), exc.user_message)
        return None
    if not isinstance(reply, Delivery):
        return None
    ctx.counters["redeliveries"] += 1
    return reply


async def look_at_job(ctx: TaskContext, state: RequesterState) -> Update:
    """No delivery yet: fetch a result committed on chain, refund after the deadline,
    contest a result we cannot get before the provider may claim it."""
    job = await ctx.escrow.get_job(state["job_id"])
    now = await ctx.clock.now()
    if job.status in RESULT_ON_CHAIN:
        # It may have been sent while we could not receive it: ask again before
        # contesting what may be an honest delivery.
        delivery = await request_redelivery(ctx, state)
        if delivery is not None:
            return delivered(delivery)
    if job.status in (JobStatus.OPEN, JobStatus.ACCEPTED):
        return await refund_after_deadline(ctx, state, now)
    if job.status == JobStatus.SUBMITTED:
        return await contest_undelivered(ctx, state, job, now)
    if job.status == JobStatus.REFUNDED:
        return {"phase": Phase.REFUNDED, "error": "the provider abandoned the job (refunded)"}
    return {"phase": Phase.FAILED, "error": f"waiting for a delivery, the job is {job.status.name}"}


async def refund_after_deadline(ctx: TaskContext, state: RequesterState, now: int) -> Update:
    if now < state["delivery_until"]:
        return {"phase": Phase.NOTIFIED}  # still within the deadline: wait on
    receipt = await ctx.escrow.refund(state["job_id"])
    return {
        "phase": Phase.REFUNDED,
        "error": "nothing delivered before the deadline",
        "txs": {"refund": tx_hex(receipt)},
    }


async def contest_undelivered(
    ctx: TaskContext, state: RequesterState, job: EscrowJob, now: int
) -> Update:
    """A result is on chain but its delivery cannot be had: dispute it in time."""
    review_ends = job.submitted_at + job.review_window
    if now > review_ends:  # we were away too long: the chain no longer listens
        return {
            "phase": Phase.FAILED,
            "error": "a result was committed on chain but never reached us, and the "
            "review window has closed",
        }
    if now + poll_s(ctx) < review_ends:
        return {"phase": Phase.NOTIFIED}  # the provider has time to answer a retry
    reason = bytes.fromhex(sha256_hex("result never delivered"))
    receipt = await ctx.escrow.dispute(state["job_id"], reason)
    return {
        "phase": Phase.DISPUTED,
        "error": "a result was submitted on chain but never delivered",
        "txs": {"dispute": tx_hex(receipt)},
    }


async def check(state: RequesterState, runtime: Ctx) -> Update:
    ctx = runtime.context
    job = await ctx.escrow.get_job(state["job_id"])
    tid = Role.REQUESTER.task_id(state["conversation"])
    check_fn, result_type = ctx.buyer_checks.get(tid, (None, None))
    problem = delivery_problem(
        state["result"],
        state["result_sha256"],
        job.result_hash,
        check=check_fn,
        result_type=result_type,
    )
    if problem:
        return {"phase": Phase.REJECTING, "error": problem}
    return {"phase": Phase.CHECKED}


async def release(state: RequesterState, runtime: Ctx) -> Update:
    ctx = runtime.context
    job = await ctx.escrow.get_job(state["job_id"])
    txs: dict[str, str] = {}
    if job.status == JobStatus.SUBMITTED:
        txs["release"] = tx_hex(await ctx.escrow.release(state["job_id"]))
    try:
        receipt = await ctx.registry.give_feedback(state["job_id"], FEEDBACK_GOOD, bytes(32))
        txs["feedback"] = tx_hex(receipt)
    except AgentMeshError as exc:  # already rated before a restart: fine
        log.info("feedback for job %s not recorded: %s", state["job_id"], exc.user_message)
    # The release is on chain; the notice is a courtesy.
    notice = Settled(tx=txs.get("release", ""))
    await ctx.messenger.tell(winner(state), notice, state["conversation"], retries=1)
    return {"phase": Phase.SETTLED, "txs": txs}


async def dispute(state: RequesterState, runtime: Ctx) -> Update:
    ctx = runtime.context
    job = await ctx.escrow.get_job(state["job_id"])
    problem = state.get("error", "")
    if job.status == JobStatus.ACCEPTED:
        # Delivered before its hash is on chain: nothing to dispute yet, and ending here
        # would let the provider submit and claim later. Keep waiting: the deadline
        # timer refunds the job, or contests a hash submitted meanwhile.
        log.warning("job %s: delivery refused before submission: %s", job.job_id, problem)
        ctx.counters["deliveries_refused"] += 1
        return {"phase": Phase.NOTIFIED, "error": f"delivery refused: {problem}"}
    if job.status not in (JobStatus.SUBMITTED, JobStatus.DISPUTED, JobStatus.RESOLVED):
        # Paid already (claimed while we were away): too late to contest on chain.
        return {"phase": Phase.FAILED, "error": f"{problem}; the job is already {job.status.name}"}
    txs: dict[str, str] = {}
    if job.status == JobStatus.SUBMITTED:
        reason = bytes.fromhex(sha256_hex(problem))
        txs["dispute"] = tx_hex(await ctx.escrow.dispute(state["job_id"], reason))
    # The dispute is on chain; the notice is a courtesy.
    notice = Dispute(reason=problem[:200], tx=txs.get("dispute", ""))
    await ctx.messenger.tell(winner(state), notice, state["conversation"], retries=1)
    return {"phase": Phase.DISPUTED, "txs": txs}


# ---------------------------------------------------------------------- the graph


def build_requester_graph(checkpointer: Any) -> CompiledStateGraph[Any, Any, Any, Any]:
    """Compile the requester graph; runs get the agent's ``TaskContext`` as context."""
    graph = StateGraph(RequesterState, context_schema=TaskContext)
    for node in (
        solicit,
        choose,
        approve,
        reject_all,
        award,
        fund,
        notify,
        await_delivery,
        check,
        release,
        dispute,
    ):
        graph.add_node(node.__name__, node)
    graph.add_edge(START, "solicit")
    graph.add_conditional_edges("solicit", routes({Phase.SOLICITED: "choose"}))
    graph.add_conditional_edges("choose", routes({Phase.CHOSEN: "approve"}, "reject_all"))
    graph.add_conditional_edges("approve", routes({Phase.APPROVED: "award"}, "reject_all"))
    graph.add_edge("reject_all", END)
    graph.add_conditional_edges("award", routes({Phase.AWARDED: "fund", Phase.REAWARD: "choose"}))
    graph.add_conditional_edges("fund", routes({Phase.FUNDED: "notify"}))
    graph.add_conditional_edges(
        "notify", routes({Phase.NOTIFIED: "await_delivery", Phase.REAWARD: "choose"})
    )
    graph.add_conditional_edges(
        "await_delivery",
        routes({Phase.DELIVERED: "check", Phase.NOTIFIED: "await_delivery"}),
    )
    graph.add_conditional_edges("check", routes({Phase.CHECKED: "release"}, "dispute"))
    graph.add_edge("release", END)
    graph.add_conditional_edges("dispute", routes({Phase.NOTIFIED: "await_delivery"}))
    return graph.compile(checkpointer=checkpointer)
