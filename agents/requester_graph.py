"""The buyer's side of a task as a LangGraph ``StateGraph``.

    solicit -> choose -> approve -> award -> fund -> notify -> await_delivery
            -> check -> release | dispute

``approve`` pauses with ``interrupt()`` when the price is above the agent's approval
threshold, until ``agentmesh approve``/``reject`` (or until the chosen offer lapses:
then the task expires, nothing spent). ``fund`` is the only node that spends; it finds
a job it opened before a crash or a lost receipt (same terms hash) instead of paying
twice. Every branch that stops early leaves no money behind: nothing is spent before
``fund``, and a job the provider refuses is cancelled at once.

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
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.types import interrupt

from agentmesh.agents.provider_graph import merge, tx_hex
from agentmesh.errors import AgentMeshError
from agentmesh.mesh.card import AgentCard
from agentmesh.protocols.negotiation import (
    Award,
    CallForProposals,
    CounterOffer,
    Decline,
    Delivery,
    Dispute,
    Funded,
    Proposal,
    Redeliver,
    Reject,
    Settled,
    sha256_hex,
    terms_hash,
)
from agentmesh.wallets.clients import EscrowJob, JobStatus

if TYPE_CHECKING:
    from langgraph.graph.state import CompiledStateGraph

    from agentmesh.agents.agent import Agent

log = logging.getLogger("agentmesh.agent")

REQUESTER_ACCEPTS: dict[str, tuple[str, ...]] = {"notified": ("Delivery", "Failure")}
TIMEOUT = "Timeout"
# Job states in which the provider has committed a result on chain that we may not have
# received (we were down when it was delivered): ask for it again before deciding.
RESULT_ON_CHAIN = (JobStatus.SUBMITTED, JobStatus.CLAIMED, JobStatus.RELEASED)
UNRATED = 50  # the reputation assumed for a provider nobody has rated yet
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
    phase: str
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


@dataclass(frozen=True, slots=True)
class Weights:
    """How proposals are ranked: the lowest weighted score wins."""

    price: float = 1.0  # per budget share
    reputation: float = 0.2  # per missing share of a perfect average score
    latency: float = 0.05  # per second of measured proposal latency


def score(proposal: dict[str, Any], budget: int, weights: Weights) -> float:
    reputation = proposal.get("reputation")
    average = UNRATED if reputation is None else reputation
    return (
        weights.price * proposal["price"] / budget
        + weights.reputation * (1 - average / 100)
        + weights.latency * proposal["latency_ms"] / 1000
    )


def rank(
    proposals: list[dict[str, Any]], budget: int, weights: Weights | None = None
) -> list[dict[str, Any]]:
    """Affordable proposals, best first.

    Without ``weights``: price, then measured latency, then address. With them: the
    weighted score, ties broken the same way, so the order is always deterministic.
    """
    affordable = [p for p in proposals if 0 < p["price"] <= budget]

    def key(p: dict[str, Any]) -> tuple[Any, ...]:
        tie = (p["price"], p["latency_ms"], p["provider"].lower())
        return tie if weights is None else (round(score(p, budget, weights), 9), *tie)

    return sorted(affordable, key=key)


def winner(state: RequesterState) -> AgentCard:
    """The chosen provider's signed card (how to reach it)."""
    return AgentCard.model_validate(state["winner_card"])


def build_requester_graph(agent: Agent, checkpointer: Any) -> CompiledStateGraph[Any]:
    """Compile the requester graph bound to ``agent``."""

    def poll_s() -> int:
        """How often a requester waiting for a delivery looks at the job on chain:
        several times per review window, so a result committed but not received is
        fetched (or contested) before the provider may claim it."""
        return max(1, agent.settings.review_window_s // 3)

    async def solicit(state: RequesterState) -> dict[str, Any]:
        cards = agent.node.find(state["service"])
        wanted = {a.lower() for a in state.get("providers") or []}
        if wanted:
            cards = [c for c in cards if c.address.lower() in wanted]
        if not cards:
            return {"phase": "no_providers", "error": f"no peer offers {state['service']!r}"}
        assert agent.node.card is not None
        call = CallForProposals(
            service=state["service"],
            input=state["input"],
            input_sha256=state["input_sha256"],
            budget=state["budget"],
            token=state["token"],
            deadline_s=state["deadline_s"],
            card=agent.node.card,
        )

        async def ask(card: AgentCard) -> dict[str, Any]:
            started = time.perf_counter()
            try:
                reply = await agent.ask(
                    card,
                    call,
                    state["conversation"],
                    expect=(Proposal, Decline),
                    timeout=agent.settings.proposal_window_s,
                    retries=0,
                )
            except AgentMeshError as exc:
                return {"provider": card.address, "declined": exc.user_message}
            latency = round((time.perf_counter() - started) * 1000)
            if isinstance(reply, Decline):
                return {"provider": card.address, "declined": reply.reason}
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

        answers = await asyncio.gather(*(ask(card) for card in cards))
        proposals = [a for a in answers if "price" in a]
        for proposal in proposals:  # the chain's word on reputation, not the proposal's
            count, total = await agent.registry.reputation(proposal["provider"])
            proposal["reputation"] = total / count if count else None
        declines = [a for a in answers if "declined" in a]
        return {"phase": "solicited", "proposals": proposals, "declines": declines}

    async def choose(state: RequesterState) -> dict[str, Any]:
        settings = agent.settings
        weights = Weights(
            settings.weight_price, settings.weight_reputation, settings.weight_latency
        )
        excluded = set(state.get("excluded") or [])
        candidates = [p for p in state.get("proposals", []) if p["provider"] not in excluded]
        ranked = rank(candidates, state["budget"], weights)
        if not ranked:
            reasons = "; ".join(d["declined"] for d in state.get("declines", [])) or "none"
            if excluded:
                reasons += f"; {len(excluded)} awarded provider(s) failed"
            return {"phase": "no_proposal", "error": f"no affordable proposal ({reasons})"}
        best = ranked[0]
        price = best["price"]
        if settings.counter_ratio is not None and not state.get("countered"):
            price = await counter(state, best, settings.counter_ratio)
        return {
            "phase": "chosen",
            "winner": best["provider"],
            "winner_card": best["card"],
            "offer_until": best.get("valid_until", 0),
            "price": price,
            "countered": bool(state.get("countered")) or settings.counter_ratio is not None,
        }

    async def counter(state: RequesterState, best: dict[str, Any], ratio: float) -> int:
        """Our one counter-offer; the provider's answer is final (never above its offer)."""
        asked = max(1, int(best["price"] * ratio))
        try:
            reply = await agent.ask(
                AgentCard.model_validate(best["card"]),
                CounterOffer(price=asked),
                state["conversation"],
                expect=(Proposal,),
            )
        except AgentMeshError as exc:
            log.info("counter-offer to %s failed: %s", best["provider"], exc)
            return int(best["price"])
        return min(int(reply.price), int(best["price"]))

    async def approve(state: RequesterState) -> dict[str, Any]:
        threshold = agent.approval_threshold
        if threshold is not None and state["price"] > threshold:
            decision = interrupt(
                {
                    "kind": "approval",
                    "amount": state["price"],
                    "description": f"pay {state['price']} base units to {state['winner']} "
                    f"for {state['service']}",
                    # The offer does not wait forever: when it lapses, so does the request
                    # (0: the provider did not say; wait as long as it takes).
                    "until": state.get("offer_until", 0),
                }
            )
            if decision.get("type") == TIMEOUT:
                agent.records.expire_approvals("r:" + state["conversation"])
                return {
                    "phase": "expired",
                    "error": "not approved before the provider's offer lapsed; nothing was "
                    "spent (buy again, or ask providers for a longer offer_ttl_s)",
                }
            if not decision.get("approved"):
                return {"phase": "rejected", "error": "the spend was rejected by its owner"}
        return {"phase": "approved", "from_block": await agent.block_number()}

    async def reject_all(state: RequesterState) -> dict[str, Any]:
        await tell_losers(state, keep="")
        return {}

    async def tell_losers(state: RequesterState, keep: str) -> None:
        reason = state.get("error") or "another proposal was chosen"
        for proposal in state.get("proposals", []):
            if proposal["provider"] == keep:
                continue
            card = AgentCard.model_validate(proposal["card"])
            # Courtesy only: an offer nobody awards expires anyway.
            await agent.tell(card, Reject(reason=reason[:200]), state["conversation"], retries=0)

    async def award(state: RequesterState) -> dict[str, Any]:
        try:
            await agent.ask(winner(state), Award(price=state["price"]), state["conversation"])
        except AgentMeshError as exc:
            # Nothing is spent yet: offer the task to the next-best proposal.
            log.warning("award to %s failed (%s); trying the next", state["winner"], exc)
            return {
                "phase": "reaward",
                "excluded": [*(state.get("excluded") or []), state["winner"]],
                "error": f"award not taken by {state['winner']}: {exc.user_message}",
            }
        return {"phase": "awarded"}

    async def fund(state: RequesterState) -> dict[str, Any]:
        terms = terms_hash(
            bytes.fromhex(state["conversation"]),
            state["service"],
            state["input_sha256"],
            state["price"],
        )
        job_id = await agent.find_opened_job(state["winner"], terms, state["from_block"])
        if job_id is not None:  # opened before a restart
            job = await agent.escrow.get_job(job_id)
            return {"phase": "funded", "job_id": job_id, "delivery_until": job.deadline + 1}
        deadline = await agent.chain_time() + state["deadline_s"]
        try:
            job_id, receipts = await agent.escrow.open(
                provider=state["winner"],
                token=agent.token,
                amount=state["price"],
                deadline=deadline,
                review_window=agent.settings.review_window_s,
                arbiter=agent.arbiter,
                terms_hash=terms,
            )
        except AgentMeshError as exc:
            # The transaction may be mined although its receipt never came back (a
            # timeout): a job we opened must not be left behind unaccounted.
            job_id = await agent.find_opened_job(state["winner"], terms, state["from_block"])
            if job_id is None:
                return {"phase": "failed", "error": f"could not fund the job: {exc.user_message}"}
            log.warning("opening job %s reported %s, but it is open", job_id, exc)
            job = await agent.escrow.get_job(job_id)
            return {"phase": "funded", "job_id": job_id, "delivery_until": job.deadline + 1}
        return {
            "phase": "funded",
            "job_id": job_id,
            "delivery_until": deadline + 1,
            "txs": {"open": tx_hex(receipts[-1])}
            | ({"approve": tx_hex(receipts[0])} if len(receipts) > 1 else {}),
        }

    async def notify(state: RequesterState) -> dict[str, Any]:
        try:
            await agent.ask(
                winner(state),
                Funded(job_id=state["job_id"], escrow=agent.escrow.address),
                state["conversation"],
                # Three tries of one envelope within reply_timeout_s (inside its TTL): a
                # provider restarted meanwhile answers the retry.
                timeout=agent.settings.reply_timeout_s / 3,
                retries=2,
            )
        except AgentMeshError as exc:
            job = await agent.escrow.get_job(state["job_id"])
            if job.status == JobStatus.OPEN:
                # Not accepted: take the money back now, and offer the task to the next.
                log.warning("%s did not take job %s: %s", state["winner"], job.job_id, exc)
                receipt = await agent.escrow.cancel(state["job_id"])
                return {
                    "phase": "reaward",
                    "excluded": [*(state.get("excluded") or []), state["winner"]],
                    "error": f"provider refused the job: {exc.user_message}",
                    "txs": {"cancel": tx_hex(receipt)},
                }
            log.info("funded notice unanswered but job %s is %s", state["job_id"], job.status)
        # The others' offers stayed open until now, in case this one fell through.
        agent.spawn(tell_losers(state, keep=state["winner"]))  # courtesy, not awaited
        return {"phase": "notified"}

    async def await_delivery(state: RequesterState) -> dict[str, Any]:
        # Wake up now and then to look at the job, not only at the deadline: a provider
        # may commit a result we never receive (we were down, or the network was) and
        # claim it after the review window, which can end before our deadline.
        until = min(state["delivery_until"], await agent.chain_time() + poll_s())
        message = interrupt({"await": REQUESTER_ACCEPTS["notified"], "until": until})
        if message["type"] == TIMEOUT:
            return await look_at_job(state)
        if message["type"] == "Failure":
            job = await agent.escrow.get_job(state["job_id"])
            if job.status != JobStatus.REFUNDED:
                # Words are not money: until the job is refunded on chain, keep waiting
                # (the deadline timer still refunds it).
                log.warning("provider reported a failure but job %s is %s", job.job_id, job.status)
                return {"phase": "notified", "error": f"unconfirmed failure: {message['reason']}"}
            return {
                "phase": "failed",
                "error": f"provider failed: {message['reason']} (deposit refunded)",
            }
        return delivered(Delivery(result=message["result"], result_sha256=message["result_sha256"]))

    async def look_at_job(state: RequesterState) -> dict[str, Any]:
        """No delivery yet: fetch a result committed on chain, refund after the
        deadline, contest a result we cannot get before the provider may claim it."""
        job = await agent.escrow.get_job(state["job_id"])
        now = await agent.chain_time()
        if job.status in RESULT_ON_CHAIN:
            # It may have been sent while we could not receive it: ask again before
            # contesting what may be an honest delivery.
            delivery = await request_redelivery(agent, state)
            if delivery is not None:
                return delivered(delivery)
        if job.status in (JobStatus.OPEN, JobStatus.ACCEPTED):
            return await refund_after_deadline(state, now)
        if job.status == JobStatus.SUBMITTED:
            return await contest_undelivered(state, job, now)
        if job.status == JobStatus.REFUNDED:
            return {"phase": "refunded", "error": "the provider abandoned the job (refunded)"}
        return {"phase": "failed", "error": f"waiting for a delivery, the job is {job.status.name}"}

    async def refund_after_deadline(state: RequesterState, now: int) -> dict[str, Any]:
        if now < state["delivery_until"]:
            return {"phase": "notified"}  # still within the deadline: wait on
        receipt = await agent.escrow.refund(state["job_id"])
        return {
            "phase": "refunded",
            "error": "nothing delivered before the deadline",
            "txs": {"refund": tx_hex(receipt)},
        }

    async def contest_undelivered(
        state: RequesterState, job: EscrowJob, now: int
    ) -> dict[str, Any]:
        """A result is on chain but its delivery cannot be had: dispute it in time."""
        review_ends = job.submitted_at + job.review_window
        if now > review_ends:  # we were away too long: the chain no longer listens
            return {
                "phase": "failed",
                "error": "a result was committed on chain but never reached us, and the "
                "review window has closed",
            }
        if now + poll_s() < review_ends:
            return {"phase": "notified"}  # the provider has time to answer a retry
        reason = bytes.fromhex(sha256_hex("result never delivered"))
        receipt = await agent.escrow.dispute(state["job_id"], reason)
        return {
            "phase": "disputed",
            "error": "a result was submitted on chain but never delivered",
            "txs": {"dispute": tx_hex(receipt)},
        }

    async def check(state: RequesterState) -> dict[str, Any]:
        job = await agent.escrow.get_job(state["job_id"])
        problem = ""
        if sha256_hex(state["result"]) != state["result_sha256"]:
            problem = "the result does not match its hash"
        elif job.result_hash.hex() != state["result_sha256"]:
            problem = "the result hash on chain differs from the delivered one"
        else:
            tid = "r:" + state["conversation"]
            ok, why = agent.check_result(state["service"], state["result"], tid)
            if not ok:
                problem = why
        if problem:
            return {"phase": "rejecting", "error": problem}
        return {"phase": "checked"}

    async def release(state: RequesterState) -> dict[str, Any]:
        job = await agent.escrow.get_job(state["job_id"])
        txs: dict[str, str] = {}
        if job.status == JobStatus.SUBMITTED:
            txs["release"] = tx_hex(await agent.escrow.release(state["job_id"]))
        try:
            receipt = await agent.registry.give_feedback(state["job_id"], FEEDBACK_GOOD, bytes(32))
            txs["feedback"] = tx_hex(receipt)
        except AgentMeshError as exc:  # already rated before a restart: fine
            log.info("feedback for job %s not recorded: %s", state["job_id"], exc.user_message)
        # The release is on chain; the notice is a courtesy.
        await agent.tell(
            winner(state), Settled(tx=txs.get("release", "")), state["conversation"], retries=1
        )
        return {"phase": "settled", "txs": txs}

    async def dispute(state: RequesterState) -> dict[str, Any]:
        job = await agent.escrow.get_job(state["job_id"])
        problem = state.get("error", "")
        if job.status == JobStatus.ACCEPTED:
            # Delivered before its hash is on chain: nothing to dispute yet, and ending
            # here would let the provider submit and claim later. Keep waiting: the
            # deadline timer refunds the job, or contests a hash submitted meanwhile.
            log.warning("job %s: delivery refused before submission: %s", job.job_id, problem)
            agent.counters["deliveries_refused"] += 1
            return {"phase": "notified", "error": f"delivery refused: {problem}"}
        if job.status not in (JobStatus.SUBMITTED, JobStatus.DISPUTED, JobStatus.RESOLVED):
            # Paid already (claimed while we were away): too late to contest on chain.
            return {"phase": "failed", "error": f"{problem}; the job is already {job.status.name}"}
        txs: dict[str, str] = {}
        if job.status == JobStatus.SUBMITTED:
            reason = bytes.fromhex(sha256_hex(problem))
            txs["dispute"] = tx_hex(await agent.escrow.dispute(state["job_id"], reason))
        # The dispute is on chain; the notice is a courtesy.
        notice = Dispute(reason=state.get("error", "")[:200], tx=txs.get("dispute", ""))
        await agent.tell(winner(state), notice, state["conversation"], retries=1)
        return {"phase": "disputed", "txs": txs}

    def after(phase_ok: str, next_node: str, otherwise: str = END) -> Any:
        def route(state: RequesterState) -> str:
            return next_node if state.get("phase") == phase_ok else otherwise

        return route

    graph = StateGraph(RequesterState)
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
        graph.add_node(node.__name__, node)  # type: ignore[call-overload]
    graph.add_edge(START, "solicit")
    graph.add_conditional_edges("solicit", after("solicited", "choose"))
    graph.add_conditional_edges("choose", after("chosen", "approve", "reject_all"))
    graph.add_conditional_edges("approve", after("approved", "award", "reject_all"))
    graph.add_edge("reject_all", END)
    graph.add_conditional_edges(
        "award", lambda s: {"awarded": "fund", "reaward": "choose"}.get(s["phase"], END)
    )
    graph.add_conditional_edges("fund", after("funded", "notify"))
    graph.add_conditional_edges(
        "notify",
        lambda s: {"notified": "await_delivery", "reaward": "choose"}.get(s["phase"], END),
    )
    graph.add_conditional_edges(
        "await_delivery",
        lambda s: {"delivered": "check", "notified": "await_delivery"}.get(s["phase"], END),
    )
    graph.add_conditional_edges("check", after("checked", "release", "dispute"))
    graph.add_edge("release", END)
    graph.add_conditional_edges("dispute", after("notified", "await_delivery"))
    return graph.compile(checkpointer=checkpointer)


def delivered(delivery: Delivery) -> dict[str, Any]:
    """The state update for a received (or re-requested) delivery."""
    return {
        "phase": "delivered",
        "result": delivery.result,
        "result_sha256": delivery.result_sha256,
    }


async def request_redelivery(agent: Agent, state: RequesterState) -> Delivery | None:
    """Ask the winner again for a delivery we missed; None if it does not answer."""
    try:
        reply = await agent.ask(
            winner(state),
            Redeliver(),
            state["conversation"],
            expect=(Delivery,),
        )
    except AgentMeshError as exc:
        log.info("redelivery of job %s not obtained: %s", state.get("job_id"), exc.user_message)
        return None
    agent.counters["redeliveries"] += 1
    return reply  # type: ignore[no-any-return]
