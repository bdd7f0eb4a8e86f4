"""The provider and requester graph nodes against the in-memory fakes.

Each node is called directly with a ``Runtime[TaskContext]`` of fakes (an in-memory
escrow with the contract's rules, a scripted messenger, a fake model), or through the
compiled graph where it waits in ``interrupt()``. No anvil, mesh or model: milliseconds.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest
from langgraph.checkpoint.memory import InMemorySaver
from langgraph.runtime import Runtime
from langgraph.types import Command

from agentmesh.agents import provider_graph as pg
from agentmesh.agents import requester_graph as rg
from agentmesh.agents.checkpoints import checkpoint_serde
from agentmesh.agents.context import TaskContext
from agentmesh.agents.negotiation_handlers import NegotiationHandlers
from agentmesh.agents.records import ApprovalStatus
from agentmesh.agents.service import Service, ServiceContext
from agentmesh.agents.task_runner import TaskRunner
from agentmesh.agents.testing import unit_context
from agentmesh.canonical import canonical_json, sha256_hex
from agentmesh.config import AgentConfig
from agentmesh.errors import ModelOutputError, PeerUnreachable
from agentmesh.mesh.card import AgentCard, ServicePrice
from agentmesh.mesh.routes import ErrorReply, HandlerContext
from agentmesh.message import Message
from agentmesh.protocols.negotiation import (
    Ack,
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
    TaskStatus,
    Timeout,
    terms_hash,
)
from agentmesh.testing import FakeChatModel, InMemoryLedger, ScriptedMessenger
from agentmesh.testing_fakes import fake_card
from agentmesh.wallets.clients import JobStatus

SERVICE = "summarize"
LIST_PRICE = 1_000
FLOOR = 600
BUDGET = 2_000
FUNDS = 10_000
CONVERSATION = "5a" * 16
INPUT = canonical_json({"text": "hello"})
RESULT = canonical_json("HELLO")
PROVIDER_TID = Role.PROVIDER.task_id(CONVERSATION)
REQUESTER_TID = Role.REQUESTER.task_id(CONVERSATION)
Responder = Callable[[AgentCard, Message], Any]

# ---------------------------------------------------------------------- helpers


async def shout(ctx: ServiceContext, text: str) -> str:
    return text.upper()


def make_service(fn: Any = shout, check: Any = None) -> Service:
    return Service.from_function(SERVICE, fn, price=LIST_PRICE, floor=FLOOR, check=check)


def offering(name: str, price: int = LIST_PRICE) -> AgentCard:
    return fake_card(name, services=[ServicePrice(name=SERVICE, price=price)])


def ack_all(peer: AgentCard, message: Message) -> Message:
    return Ack(state="ok")


def rt(ctx: TaskContext) -> Runtime[TaskContext]:
    return Runtime(context=ctx)


def config(tid: str) -> Any:
    return {"configurable": {"thread_id": tid}}


def messenger_of(ctx: TaskContext) -> ScriptedMessenger:
    return cast(ScriptedMessenger, ctx.messenger)


def tx_of(ledger: InMemoryLedger, method: str, job_id: int) -> str:
    """The hash the ledger gave the one ``method`` transaction on ``job_id``."""
    found = [i for i, t in enumerate(ledger.transactions) if t[1:] == (method, job_id)]
    assert len(found) == 1, (method, job_id, ledger.transactions)
    return "0x" + (found[0] + 1).to_bytes(32, "big").hex()


def methods(ledger: InMemoryLedger) -> list[str]:
    return [method for _, method, _ in ledger.transactions]


def agreed_hash(price: int = LIST_PRICE, conversation: str = CONVERSATION) -> bytes:
    return terms_hash(bytes.fromhex(conversation), SERVICE, sha256_hex(INPUT), price)


async def open_job(
    ledger: InMemoryLedger,
    client: str,
    provider: str,
    *,
    amount: int = LIST_PRICE,
    terms: bytes | None = None,
    arbiter: str = "0x" + "a7" * 20,
    deadline_s: int = 300,
    review_window: int = 120,
) -> int:
    escrow = ledger.escrow_for(client)
    job_id, _ = await escrow.open(
        provider=provider,
        token=escrow.token,
        amount=amount,
        deadline=ledger.clock.time + deadline_s,
        review_window=review_window,
        arbiter=arbiter,
        terms_hash=terms if terms is not None else agreed_hash(amount),
    )
    return job_id


async def submitted_job(
    ledger: InMemoryLedger, client: str, provider: str, result_sha256: str
) -> int:
    job_id = await open_job(ledger, client, provider)
    seller = ledger.escrow_for(provider)
    await seller.accept(job_id)
    await seller.submit(job_id, bytes.fromhex(result_sha256))
    return job_id


async def eventually(probe: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await probe():
        assert loop.time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


@pytest.fixture
def ledger() -> InMemoryLedger:
    return InMemoryLedger()


@pytest.fixture
def buyer_card() -> AgentCard:
    return fake_card("buyer")


# ---------------------------------------------------------------------- provider side


def seller_ctx(
    tmp_path: Path,
    ledger: InMemoryLedger,
    *,
    service: Service | None = None,
    model: Any = None,
    settings: AgentConfig | None = None,
    responder: Responder | None = ack_all,
) -> TaskContext:
    messenger = ScriptedMessenger(card=offering("seller"), responder=responder)
    return unit_context(
        tmp_path / "seller.db",
        ledger=ledger,
        address=messenger.card.address,
        services={SERVICE: service or make_service()},
        messenger=messenger,
        model=model,
        settings=settings,
    )


def call_state(ctx: TaskContext, buyer: AgentCard, **changes: Any) -> Any:
    """The provider graph's state for a call for proposals from ``buyer``."""
    state: dict[str, Any] = {
        "conversation": CONVERSATION,
        "requester": buyer.address,
        "requester_card": buyer.model_dump(),
        "service": SERVICE,
        "input": INPUT,
        "input_sha256": sha256_hex(INPUT),
        "budget": BUDGET,
        "token": ctx.token.address,
        "deadline_s": 300,
        "phase": Phase.STARTED,
        "txs": {},
    }
    return {**state, **changes}


def funded_state(ctx: TaskContext, buyer: AgentCard, job_id: int, **changes: Any) -> Any:
    funded = {
        "phase": Phase.FUNDED,
        "price": LIST_PRICE,
        "job_id": job_id,
        "escrow": ctx.escrow.address,
    }
    return call_state(ctx, buyer, **{**funded, **changes})


async def test_evaluate_unknown_service(tmp_path: Path, ledger: InMemoryLedger) -> None:
    ctx = seller_ctx(tmp_path, ledger)
    update = await pg.evaluate(call_state(ctx, fake_card(), service="translate"), rt(ctx))
    assert update == {
        "phase": Phase.DECLINED,
        "decision": {"action": "decline", "reason": "no service 'translate' here"},
    }


async def test_evaluate_wrong_token(tmp_path: Path, ledger: InMemoryLedger) -> None:
    ctx = seller_ctx(tmp_path, ledger)
    update = await pg.evaluate(call_state(ctx, fake_card(), token="0x" + "99" * 20), rt(ctx))
    assert update["phase"] == Phase.DECLINED
    assert update["decision"]["reason"] == "payment token not accepted"


async def test_evaluate_token_compared_without_case(tmp_path: Path, ledger: InMemoryLedger) -> None:
    ctx = seller_ctx(tmp_path, ledger)
    state = call_state(ctx, fake_card(), token=ctx.token.address.upper().replace("0X", "0x"))
    assert await pg.evaluate(state, rt(ctx)) == {"phase": Phase.EVALUATED}


async def test_evaluate_bad_input_hash(tmp_path: Path, ledger: InMemoryLedger) -> None:
    ctx = seller_ctx(tmp_path, ledger)
    state = call_state(ctx, fake_card(), input_sha256=sha256_hex(INPUT + " "))
    update = await pg.evaluate(state, rt(ctx))
    assert update["decision"]["reason"] == "input_sha256 does not match the input"


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('{"text":5}', "invalid input for summarize: text: Input should be a valid string"),
        ('{"txt":"a"}', "invalid input for summarize: text: Field required"),
        ('{"text":"a","x":1}', "invalid input for summarize: x: Extra inputs are not permitted"),
    ],
)
async def test_evaluate_invalid_input_names_the_field(
    tmp_path: Path, ledger: InMemoryLedger, text: str, reason: str
) -> None:
    ctx = seller_ctx(tmp_path, ledger)
    state = call_state(ctx, fake_card(), input=text, input_sha256=sha256_hex(text))
    update = await pg.evaluate(state, rt(ctx))
    assert update == {"phase": Phase.DECLINED, "decision": {"action": "decline", "reason": reason}}


async def test_evaluate_ok(tmp_path: Path, ledger: InMemoryLedger) -> None:
    ctx = seller_ctx(tmp_path, ledger)
    assert await pg.evaluate(call_state(ctx, fake_card()), rt(ctx)) == {"phase": Phase.EVALUATED}


def model_says(price_musd: float) -> dict[str, Any]:
    return {"action": "propose", "price": price_musd, "reason": "budget_covers_price"}


async def test_decide_uses_the_model_answer(tmp_path: Path, ledger: InMemoryLedger) -> None:
    model = FakeChatModel(decisions=[model_says(0.0008)])  # 800 base units
    ctx = seller_ctx(tmp_path, ledger, model=model)
    update = await pg.decide(call_state(ctx, fake_card()), rt(ctx))
    assert update["phase"] == Phase.PROPOSED
    assert update["price"] == 800
    assert update["decision"] == {
        "action": "propose",
        "price": 800,
        "reason": "budget_covers_price",
        "model_action": "propose",
        "overridden": False,
    }
    assert update["offer_until"] == ledger.clock.time + ctx.settings.offer_ttl_s
    assert [kind for kind, _ in model.calls] == ["structured"]
    assert ctx.counters["model_fallbacks"] == 0


async def test_decide_bounds_the_model_by_the_floor(tmp_path: Path, ledger: InMemoryLedger) -> None:
    ctx = seller_ctx(tmp_path, ledger, model=FakeChatModel(decisions=[model_says(0.0001)]))
    update = await pg.decide(call_state(ctx, fake_card()), rt(ctx))
    assert (update["price"], update["decision"]["overridden"]) == (FLOOR, True)


async def test_decide_falls_back_to_rules_when_the_model_fails(
    tmp_path: Path, ledger: InMemoryLedger
) -> None:
    model = FakeChatModel(decisions=[ModelOutputError("not JSON")])
    ctx = seller_ctx(tmp_path, ledger, model=model)
    update = await pg.decide(call_state(ctx, fake_card()), rt(ctx))
    assert update["phase"] == Phase.PROPOSED
    assert update["price"] == LIST_PRICE
    assert update["decision"]["reason"] == "rules (no model answer)"
    assert update["decision"]["model_action"] == "none"
    assert ctx.counters["model_fallbacks"] == 1


async def test_decide_does_not_wait_for_a_slow_model(
    tmp_path: Path, ledger: InMemoryLedger
) -> None:
    model = FakeChatModel(decisions=[model_says(0.0008)], delay_s=2.0)
    settings = AgentConfig(faucet=False, decision_timeout_s=0.05)
    ctx = seller_ctx(tmp_path, ledger, model=model, settings=settings)
    started = asyncio.get_running_loop().time()
    update = await pg.decide(call_state(ctx, fake_card()), rt(ctx))
    assert asyncio.get_running_loop().time() - started < 1.0
    assert update["price"] == LIST_PRICE  # the rules, not the model's 800
    assert update["decision"]["reason"] == "rules (no model answer)"
    assert ctx.counters["model_fallbacks"] == 1


async def test_decide_without_a_model(tmp_path: Path, ledger: InMemoryLedger) -> None:
    ctx = seller_ctx(tmp_path, ledger, model=None)
    update = await pg.decide(call_state(ctx, fake_card(), budget=700), rt(ctx))
    assert update["phase"] == Phase.PROPOSED
    assert update["price"] == 700  # the list price capped by the budget
    assert ctx.counters["model_fallbacks"] == 0


async def test_decide_declines_a_budget_below_the_floor(
    tmp_path: Path, ledger: InMemoryLedger
) -> None:
    ctx = seller_ctx(tmp_path, ledger)
    update = await pg.decide(call_state(ctx, fake_card(), budget=FLOOR - 1), rt(ctx))
    assert update["phase"] == Phase.DECLINED
    assert update["price"] == 0
    assert update["decision"]["reason"] == "budget 0.000599 mUSD is below the floor 0.0006 mUSD"


# -- await_award (in the compiled graph: it interrupts)


async def proposed_graph(ctx: TaskContext, buyer: AgentCard) -> tuple[Any, Any]:
    """A provider graph paused in ``proposed`` at the list price."""
    graph = pg.build_provider_graph(InMemorySaver(serde=checkpoint_serde()))
    cfg = config(PROVIDER_TID)
    await graph.ainvoke(call_state(ctx, buyer), cfg, context=ctx)
    snapshot = await graph.aget_state(cfg)
    assert snapshot.next == ("await_award",)
    offer_until = ledger_time(ctx) + ctx.settings.offer_ttl_s
    assert [i.value for i in snapshot.interrupts] == [{"phase": "proposed", "until": offer_until}]
    return graph, cfg


def ledger_time(ctx: TaskContext) -> int:
    return cast(Any, ctx.clock).time  # type: ignore[no-any-return]


async def test_await_award_award(
    tmp_path: Path, ledger: InMemoryLedger, buyer_card: AgentCard
) -> None:
    ctx = seller_ctx(tmp_path, ledger)
    graph, cfg = await proposed_graph(ctx, buyer_card)
    ledger.clock.advance(7)
    await graph.ainvoke(Command(resume=Award(price=LIST_PRICE)), cfg, context=ctx)
    snapshot = await graph.aget_state(cfg)
    funding_until = ledger.clock.time + ctx.settings.funding_ttl_s
    assert snapshot.values["phase"] == Phase.AWARDED
    assert snapshot.values["funding_until"] == funding_until
    assert snapshot.next == ("await_funding",)
    assert [i.value for i in snapshot.interrupts] == [{"phase": "awarded", "until": funding_until}]


async def test_await_award_reject(
    tmp_path: Path, ledger: InMemoryLedger, buyer_card: AgentCard
) -> None:
    ctx = seller_ctx(tmp_path, ledger)
    graph, cfg = await proposed_graph(ctx, buyer_card)
    await graph.ainvoke(Command(resume=Reject(reason="too slow")), cfg, context=ctx)
    snapshot = await graph.aget_state(cfg)
    assert (snapshot.values["phase"], snapshot.values["error"]) == (Phase.REJECTED, "too slow")
    assert snapshot.next == ()


@pytest.mark.parametrize(
    ("asked", "price"),
    [(100, FLOOR), (FLOOR, FLOOR), (800, 800), (LIST_PRICE + 500, LIST_PRICE)],
)
async def test_await_award_counter_offer(
    tmp_path: Path, ledger: InMemoryLedger, buyer_card: AgentCard, asked: int, price: int
) -> None:
    ctx = seller_ctx(tmp_path, ledger)
    graph, cfg = await proposed_graph(ctx, buyer_card)
    offer_until = (await graph.aget_state(cfg)).values["offer_until"]
    ledger.clock.advance(30)
    await graph.ainvoke(Command(resume=CounterOffer(price=asked)), cfg, context=ctx)
    snapshot = await graph.aget_state(cfg)
    values = snapshot.values
    assert (values["phase"], values["price"], values["countered"]) == (
        Phase.PROPOSED,
        price,
        True,
    )
    # Waiting again for the award, under the same (not extended) offer.
    assert values["offer_until"] == offer_until
    assert snapshot.next == ("await_award",)
    assert [i.value for i in snapshot.interrupts] == [{"phase": "proposed", "until": offer_until}]


async def test_await_award_timeout(
    tmp_path: Path, ledger: InMemoryLedger, buyer_card: AgentCard
) -> None:
    ctx = seller_ctx(tmp_path, ledger)
    graph, cfg = await proposed_graph(ctx, buyer_card)
    await graph.ainvoke(Command(resume=Timeout()), cfg, context=ctx)
    snapshot = await graph.aget_state(cfg)
    assert snapshot.values["phase"] == Phase.EXPIRED
    assert snapshot.values["error"] == "the offer was not awarded in time"
    assert snapshot.next == ()


async def test_await_funding_timeout(
    tmp_path: Path, ledger: InMemoryLedger, buyer_card: AgentCard
) -> None:
    ctx = seller_ctx(tmp_path, ledger)
    graph, cfg = await proposed_graph(ctx, buyer_card)
    await graph.ainvoke(Command(resume=Award(price=LIST_PRICE)), cfg, context=ctx)
    await graph.ainvoke(Command(resume=Timeout()), cfg, context=ctx)
    snapshot = await graph.aget_state(cfg)
    assert snapshot.values["phase"] == Phase.EXPIRED
    assert snapshot.values["error"] == "the award was not funded in time"


# -- verify_accept


async def test_verify_accept_unknown_escrow(
    tmp_path: Path, ledger: InMemoryLedger, buyer_card: AgentCard
) -> None:
    ctx = seller_ctx(tmp_path, ledger)
    ledger.mint(buyer_card.address, FUNDS)
    job_id = await open_job(ledger, buyer_card.address, ctx.address)
    state = funded_state(ctx, buyer_card, job_id, escrow="0x" + "99" * 20)
    update = await pg.verify_accept(state, rt(ctx))
    assert update == {"phase": Phase.REFUSED, "error": "funded on an unknown escrow contract"}
    assert methods(ledger) == ["open"]


async def test_verify_accept_unknown_job(
    tmp_path: Path, ledger: InMemoryLedger, buyer_card: AgentCard
) -> None:
    ctx = seller_ctx(tmp_path, ledger)
    update = await pg.verify_accept(funded_state(ctx, buyer_card, 42), rt(ctx))
    assert update == {
        "phase": Phase.REFUSED,
        "error": "transaction reverted: TaskEscrow.UnknownJob(42)",
    }


async def test_verify_accept_refuses_an_underfunded_job(
    tmp_path: Path, ledger: InMemoryLedger, buyer_card: AgentCard
) -> None:
    ctx = seller_ctx(tmp_path, ledger)
    ledger.mint(buyer_card.address, FUNDS)
    # Funded with less than the price, under the terms of the agreed price.
    job_id = await open_job(
        ledger, buyer_card.address, ctx.address, amount=900, terms=agreed_hash(LIST_PRICE)
    )
    update = await pg.verify_accept(funded_state(ctx, buyer_card, job_id), rt(ctx))
    assert update == {"phase": Phase.REFUSED, "error": "amount 900 != agreed price 1000"}
    assert ledger.jobs[job_id].status == JobStatus.OPEN
    assert "accept" not in methods(ledger)


async def test_verify_accept_refuses_another_conversations_job(
    tmp_path: Path, ledger: InMemoryLedger, buyer_card: AgentCard
) -> None:
    ctx = seller_ctx(tmp_path, ledger)
    ledger.mint(buyer_card.address, FUNDS)
    other = agreed_hash(LIST_PRICE, conversation="77" * 16)
    job_id = await open_job(ledger, buyer_card.address, ctx.address, terms=other)
    update = await pg.verify_accept(funded_state(ctx, buyer_card, job_id), rt(ctx))
    assert update == {
        "phase": Phase.REFUSED,
        "error": "the terms hash does not match this conversation",
    }
    assert ledger.jobs[job_id].status == JobStatus.OPEN
    assert "accept" not in methods(ledger)


async def test_verify_accept_refuses_a_job_for_someone_else(
    tmp_path: Path, ledger: InMemoryLedger, buyer_card: AgentCard
) -> None:
    ctx = seller_ctx(tmp_path, ledger)
    ledger.mint(buyer_card.address, FUNDS)
    job_id = await open_job(ledger, buyer_card.address, fake_card("other").address)
    update = await pg.verify_accept(funded_state(ctx, buyer_card, job_id), rt(ctx))
    assert update == {"phase": Phase.REFUSED, "error": "the provider is not this agent"}


async def test_verify_accept_accepts_the_agreed_job(
    tmp_path: Path, ledger: InMemoryLedger, buyer_card: AgentCard
) -> None:
    ctx = seller_ctx(tmp_path, ledger)
    ledger.mint(buyer_card.address, FUNDS)
    job_id = await open_job(ledger, buyer_card.address, ctx.address)
    update = await pg.verify_accept(funded_state(ctx, buyer_card, job_id), rt(ctx))
    assert update == {
        "phase": Phase.ACCEPTED,
        "txs": {"accept": tx_of(ledger, "accept", job_id)},
        "job_deadline": ledger.jobs[job_id].deadline,  # execute checks it without a read
    }
    assert ledger.jobs[job_id].status == JobStatus.ACCEPTED
    assert ledger.transactions[-1] == (ctx.address.lower(), "accept", job_id)


async def test_verify_accept_after_a_restart_does_not_accept_twice(
    tmp_path: Path, ledger: InMemoryLedger, buyer_card: AgentCard
) -> None:
    ctx = seller_ctx(tmp_path, ledger)
    ledger.mint(buyer_card.address, FUNDS)
    job_id = await open_job(ledger, buyer_card.address, ctx.address)
    first = await pg.verify_accept(funded_state(ctx, buyer_card, job_id), rt(ctx))
    again = await pg.verify_accept(funded_state(ctx, buyer_card, job_id), rt(ctx))
    assert first["phase"] == again["phase"] == Phase.ACCEPTED
    # no transaction the second time
    assert again == {"phase": Phase.ACCEPTED, "job_deadline": ledger.jobs[job_id].deadline}
    assert methods(ledger) == ["open", "accept"]


# -- execute, abandon, submit


def accepted_state(ctx: TaskContext, buyer: AgentCard, job_id: int, **changes: Any) -> Any:
    return funded_state(ctx, buyer, job_id, **{"phase": Phase.ACCEPTED, **changes})


async def accepted_job(ledger: InMemoryLedger, buyer: AgentCard, ctx: TaskContext) -> int:
    """A job ``buyer`` opened for this seller, which accepted it (deadline in 300 s)."""
    ledger.mint(buyer.address, FUNDS)
    job_id = await open_job(ledger, buyer.address, ctx.address)
    await ledger.escrow_for(ctx.address).accept(job_id)
    return job_id


async def test_execute_ok(tmp_path: Path, ledger: InMemoryLedger, buyer_card: AgentCard) -> None:
    ctx = seller_ctx(tmp_path, ledger)
    job_id = await accepted_job(ledger, buyer_card, ctx)
    update = await pg.execute(accepted_state(ctx, buyer_card, job_id), rt(ctx))
    assert update == {
        "phase": Phase.EXECUTED,
        "result": RESULT,
        "result_sha256": sha256_hex(RESULT),
    }


async def test_execute_a_service_that_raises(
    tmp_path: Path, ledger: InMemoryLedger, buyer_card: AgentCard
) -> None:
    async def broken(ctx: ServiceContext, text: str) -> str:
        raise RuntimeError("the GPU caught fire")

    ctx = seller_ctx(tmp_path, ledger, service=make_service(broken))
    job_id = await accepted_job(ledger, buyer_card, ctx)
    update = await pg.execute(accepted_state(ctx, buyer_card, job_id), rt(ctx))
    assert update == {"phase": Phase.FAILING, "error": "RuntimeError: the GPU caught fire"}
    assert ctx.counters["service_errors"] == 1
    assert ctx.counters["service_check_failed"] == 0


async def test_execute_a_result_failing_the_services_own_check(
    tmp_path: Path, ledger: InMemoryLedger, buyer_card: AgentCard
) -> None:
    ctx = seller_ctx(tmp_path, ledger, service=make_service(check=lambda value: value == "no"))
    job_id = await accepted_job(ledger, buyer_card, ctx)
    update = await pg.execute(accepted_state(ctx, buyer_card, job_id), rt(ctx))
    assert update == {
        "phase": Phase.FAILING,
        "error": "result failed its check: result failed the service's check",
    }
    assert ctx.counters["service_check_failed"] == 1
    assert ctx.counters["service_errors"] == 0


async def test_execute_an_empty_result(
    tmp_path: Path, ledger: InMemoryLedger, buyer_card: AgentCard
) -> None:
    async def nothing(ctx: ServiceContext, text: str) -> str:
        return ""

    ctx = seller_ctx(tmp_path, ledger, service=make_service(nothing))
    job_id = await accepted_job(ledger, buyer_card, ctx)
    update = await pg.execute(accepted_state(ctx, buyer_card, job_id), rt(ctx))
    assert update == {"phase": Phase.FAILING, "error": "result failed its check: result is empty"}


async def test_execute_after_the_deadline_abandons_without_working(
    tmp_path: Path, ledger: InMemoryLedger, buyer_card: AgentCard
) -> None:
    ran: list[str] = []

    async def work(ctx: ServiceContext, text: str) -> str:
        ran.append(text)
        return text

    ctx = seller_ctx(tmp_path, ledger, service=make_service(work))
    job_id = await accepted_job(ledger, buyer_card, ctx)
    ledger.clock.advance(300)  # restarted at the deadline second: too late to submit
    update = await pg.execute(accepted_state(ctx, buyer_card, job_id), rt(ctx))
    assert update["phase"] == Phase.FAILING
    assert "deadline passed" in update["error"]
    assert ran == []
    assert ctx.counters["deadline_passed"] == 1


async def test_execute_checks_the_deadline_kept_in_state_without_a_chain_read(
    tmp_path: Path, ledger: InMemoryLedger, buyer_card: AgentCard
) -> None:
    ctx = seller_ctx(tmp_path, ledger)
    job_id = await accepted_job(ledger, buyer_card, ctx)
    deadline = ledger.jobs[job_id].deadline
    ledger.clock.advance(299)
    state = accepted_state(ctx, buyer_card, job_id, job_deadline=deadline)
    assert (await pg.execute(state, rt(ctx)))["phase"] == Phase.EXECUTED
    ledger.clock.advance(1)
    assert (await pg.execute(state, rt(ctx)))["phase"] == Phase.FAILING
    # The state's deadline decides, not a read of the job: one a second later is ok.
    later = accepted_state(ctx, buyer_card, job_id, job_deadline=deadline + 1)
    assert (await pg.execute(later, rt(ctx)))["phase"] == Phase.EXECUTED


async def test_submit_after_the_deadline_abandons_instead(
    tmp_path: Path, ledger: InMemoryLedger, buyer_card: AgentCard
) -> None:
    ctx = seller_ctx(tmp_path, ledger)
    job_id = await accepted_job(ledger, buyer_card, ctx)
    total = ledger.total()
    ledger.clock.advance(301)
    state = accepted_state(ctx, buyer_card, job_id, result=RESULT, result_sha256=sha256_hex(RESULT))
    update = await pg.submit(state, rt(ctx))
    assert update["phase"] == Phase.FAILING and "deadline passed" in update["error"]
    assert "submit" not in methods(ledger)  # no transaction doomed to revert
    abandoned = await pg.abandon({**state, **update}, rt(ctx))
    assert abandoned["phase"] == Phase.ABANDONED
    assert ledger.jobs[job_id].status == JobStatus.REFUNDED
    assert ledger.balance_of(buyer_card.address) == FUNDS and ledger.total() == total


async def test_abandon_refunds_and_tells_the_requester(
    tmp_path: Path, ledger: InMemoryLedger, buyer_card: AgentCard
) -> None:
    ctx = seller_ctx(tmp_path, ledger)
    ledger.mint(buyer_card.address, FUNDS)
    total = ledger.total()
    job_id = await open_job(ledger, buyer_card.address, ctx.address)
    await ledger.escrow_for(ctx.address).accept(job_id)
    state = accepted_state(ctx, buyer_card, job_id, error="RuntimeError: boom")
    update = await pg.abandon(state, rt(ctx))
    abandon_tx = tx_of(ledger, "abandon", job_id)
    assert update == {"phase": Phase.ABANDONED, "txs": {"abandon": abandon_tx}}
    assert ledger.jobs[job_id].status == JobStatus.REFUNDED
    assert ledger.balance_of(buyer_card.address) == FUNDS
    assert ledger.balance_of(ctx.address) == 0
    assert ledger.balance_of(ledger.escrow_address) == 0
    assert ledger.total() == total
    assert messenger_of(ctx).sent == [
        (buyer_card.address, Failure(reason="RuntimeError: boom", tx=abandon_tx))
    ]
    # Run again after a restart: nothing more on chain, the notice again.
    again = await pg.abandon(state, rt(ctx))
    assert again == {"phase": Phase.ABANDONED, "txs": {}}
    assert methods(ledger).count("abandon") == 1
    assert ledger.total() == total


async def test_submit_commits_the_result_hash(
    tmp_path: Path, ledger: InMemoryLedger, buyer_card: AgentCard
) -> None:
    ctx = seller_ctx(tmp_path, ledger)
    ledger.mint(buyer_card.address, FUNDS)
    job_id = await open_job(ledger, buyer_card.address, ctx.address, review_window=90)
    await ledger.escrow_for(ctx.address).accept(job_id)
    ledger.clock.advance(5)
    state = accepted_state(ctx, buyer_card, job_id, result=RESULT, result_sha256=sha256_hex(RESULT))
    update = await pg.submit(state, rt(ctx))
    claim_after = ledger.clock.time + 90 + 1
    assert update == {
        "phase": Phase.SUBMITTED,
        "txs": {"submit": tx_of(ledger, "submit", job_id)},
        "claim_after": claim_after,
    }
    assert ledger.jobs[job_id].result_hash == bytes.fromhex(sha256_hex(RESULT))
    # Run again after a restart (later): found submitted, not submitted twice.
    ledger.clock.advance(20)
    again = await pg.submit(state, rt(ctx))
    assert again == {"phase": Phase.SUBMITTED, "txs": {}, "claim_after": claim_after}
    assert methods(ledger).count("submit") == 1


async def test_submit_a_job_not_accepted_is_lost(
    tmp_path: Path, ledger: InMemoryLedger, buyer_card: AgentCard
) -> None:
    ctx = seller_ctx(tmp_path, ledger)
    ledger.mint(buyer_card.address, FUNDS)
    job_id = await open_job(ledger, buyer_card.address, ctx.address)
    await ledger.escrow_for(buyer_card.address).cancel(job_id)
    state = accepted_state(ctx, buyer_card, job_id, result_sha256=sha256_hex(RESULT))
    update = await pg.submit(state, rt(ctx))
    assert update == {"phase": Phase.LOST, "error": "cannot submit: the job is CANCELLED"}
    assert "submit" not in methods(ledger)


# -- the whole provider graph up to await_settlement


async def delivered_graph(
    ctx: TaskContext, ledger: InMemoryLedger, buyer: AgentCard
) -> tuple[Any, Any, int]:
    """A provider graph that accepted, executed, submitted and delivered a job."""
    ledger.mint(buyer.address, FUNDS)
    graph, cfg = await proposed_graph(ctx, buyer)
    await graph.ainvoke(Command(resume=Award(price=LIST_PRICE)), cfg, context=ctx)
    job_id = await open_job(ledger, buyer.address, ctx.address, review_window=60)
    funded = Funded(job_id=job_id, escrow=ledger.escrow_address)
    await graph.ainvoke(Command(resume=funded), cfg, context=ctx)
    snapshot = await graph.aget_state(cfg)
    job = ledger.jobs[job_id]
    claim_after = job.submitted_at + 60 + 1
    assert snapshot.values["phase"] == Phase.DELIVERED
    assert snapshot.values["claim_after"] == claim_after
    assert [i.value for i in snapshot.interrupts] == [{"phase": "delivered", "until": claim_after}]
    assert job.status == JobStatus.SUBMITTED
    assert messenger_of(ctx).messages(Delivery) == [
        Delivery(result=RESULT, result_sha256=sha256_hex(RESULT))
    ]
    return graph, cfg, job_id


async def test_await_settlement_timeout_claims_after_the_review_window(
    tmp_path: Path, ledger: InMemoryLedger, buyer_card: AgentCard
) -> None:
    ctx = seller_ctx(tmp_path, ledger)
    graph, cfg, job_id = await delivered_graph(ctx, ledger, buyer_card)
    total = ledger.total()
    ledger.clock.time = (await graph.aget_state(cfg)).values["claim_after"]
    await graph.ainvoke(Command(resume=Timeout()), cfg, context=ctx)
    snapshot = await graph.aget_state(cfg)
    assert snapshot.values["phase"] == Phase.CLAIMED
    assert snapshot.values["txs"]["claim"] == tx_of(ledger, "claim", job_id)
    assert snapshot.next == ()
    assert ledger.jobs[job_id].status == JobStatus.CLAIMED
    assert ledger.balance_of(ctx.address) == LIST_PRICE
    assert ledger.balance_of(buyer_card.address) == FUNDS - LIST_PRICE
    assert ledger.total() == total


async def test_await_settlement_settled_once_released(
    tmp_path: Path, ledger: InMemoryLedger, buyer_card: AgentCard
) -> None:
    ctx = seller_ctx(tmp_path, ledger)
    graph, cfg, job_id = await delivered_graph(ctx, ledger, buyer_card)
    await ledger.escrow_for(buyer_card.address).release(job_id)
    await graph.ainvoke(Command(resume=Settled(tx="0xfeed")), cfg, context=ctx)
    snapshot = await graph.aget_state(cfg)
    assert snapshot.values["phase"] == Phase.SETTLED
    assert snapshot.values["txs"]["release"] == "0xfeed"
    assert snapshot.next == ()
    assert ledger.balance_of(ctx.address) == LIST_PRICE


async def test_await_settlement_dispute(
    tmp_path: Path, ledger: InMemoryLedger, buyer_card: AgentCard
) -> None:
    ctx = seller_ctx(tmp_path, ledger)
    graph, cfg, job_id = await delivered_graph(ctx, ledger, buyer_card)
    await ledger.escrow_for(buyer_card.address).dispute(job_id, bytes(32))
    notice = Dispute(reason="not a summary", tx="0x01")
    await graph.ainvoke(Command(resume=notice), cfg, context=ctx)
    snapshot = await graph.aget_state(cfg)
    assert (snapshot.values["phase"], snapshot.values["error"]) == (
        Phase.DISPUTED,
        "not a summary",
    )
    assert snapshot.next == ()
    assert ledger.balance_of(ctx.address) == 0  # frozen for the arbiter


async def test_await_settlement_unconfirmed_settled_keeps_waiting(
    tmp_path: Path, ledger: InMemoryLedger, buyer_card: AgentCard
) -> None:
    ctx = seller_ctx(tmp_path, ledger)
    graph, cfg, job_id = await delivered_graph(ctx, ledger, buyer_card)
    claim_after = (await graph.aget_state(cfg)).values["claim_after"]
    await graph.ainvoke(Command(resume=Settled(tx="0xlie")), cfg, context=ctx)
    snapshot = await graph.aget_state(cfg)
    assert snapshot.values["phase"] == Phase.DELIVERED
    assert snapshot.values["error"] == "unconfirmed Settled"
    assert snapshot.next == ("await_settlement",)
    assert [i.value for i in snapshot.interrupts] == [{"phase": "delivered", "until": claim_after}]
    assert "release" not in snapshot.values["txs"]
    assert ledger.jobs[job_id].status == JobStatus.SUBMITTED
    # ... and the review-window timer still collects the payment.
    ledger.clock.time = claim_after
    await graph.ainvoke(Command(resume=Timeout()), cfg, context=ctx)
    assert (await graph.aget_state(cfg)).values["phase"] == Phase.CLAIMED
    assert ledger.balance_of(ctx.address) == LIST_PRICE


async def test_abandon_through_the_graph_when_the_service_fails(
    tmp_path: Path, ledger: InMemoryLedger, buyer_card: AgentCard
) -> None:
    async def broken(ctx: ServiceContext, text: str) -> str:
        raise ValueError("no")

    ctx = seller_ctx(tmp_path, ledger, service=make_service(broken))
    ledger.mint(buyer_card.address, FUNDS)
    total = ledger.total()
    graph, cfg = await proposed_graph(ctx, buyer_card)
    await graph.ainvoke(Command(resume=Award(price=LIST_PRICE)), cfg, context=ctx)
    job_id = await open_job(ledger, buyer_card.address, ctx.address)
    funded = Funded(job_id=job_id, escrow=ledger.escrow_address)
    await graph.ainvoke(Command(resume=funded), cfg, context=ctx)
    snapshot = await graph.aget_state(cfg)
    assert snapshot.values["phase"] == Phase.ABANDONED
    assert snapshot.next == ()
    assert methods(ledger) == ["open", "accept", "abandon"]
    assert ledger.balance_of(buyer_card.address) == FUNDS
    assert ledger.total() == total
    (failure,) = messenger_of(ctx).messages(Failure)
    assert failure == Failure(reason="ValueError: no", tx=tx_of(ledger, "abandon", job_id))


# ---------------------------------------------------------------------- requester side


def buyer_ctx(
    tmp_path: Path,
    ledger: InMemoryLedger,
    *,
    responder: Responder | None = ack_all,
    peers: list[AgentCard] | None = None,
    settings: AgentConfig | None = None,
    approval_threshold: int | None = None,
    card: AgentCard | None = None,
) -> TaskContext:
    card = card or fake_card("buyer")
    messenger = ScriptedMessenger(card=card, responder=responder, peers=peers or [])
    ledger.mint(card.address, FUNDS)
    return unit_context(
        tmp_path / "buyer.db",
        ledger=ledger,
        address=card.address,
        messenger=messenger,
        settings=settings,
        approval_threshold=approval_threshold,
    )


def purchase(ctx: TaskContext, **changes: Any) -> Any:
    state: dict[str, Any] = {
        "conversation": CONVERSATION,
        "service": SERVICE,
        "input": INPUT,
        "input_sha256": sha256_hex(INPUT),
        "budget": BUDGET,
        "token": ctx.token.address,
        "deadline_s": 300,
        "providers": [],
        "phase": Phase.STARTED,
        "txs": {},
    }
    return {**state, **changes}


def proposal_of(
    card: AgentCard,
    price: int,
    *,
    reputation: float | None = None,
    latency_ms: int = 0,
    valid_until: int = 0,
) -> dict[str, Any]:
    return {
        "provider": card.address,
        "card": card.model_dump(),
        "price": price,
        "eta_s": 10,
        "model_sha256": "",
        "claimed_reputation": [0, 0],
        "valid_until": valid_until,
        "latency_ms": latency_ms,
        "reputation": reputation,
    }


def chosen(ctx: TaskContext, seller: AgentCard, price: int = LIST_PRICE, **changes: Any) -> Any:
    """A purchase that chose ``seller`` at ``price`` (and was approved)."""
    approved = {
        "phase": Phase.APPROVED,
        "proposals": [proposal_of(seller, price)],
        "declines": [],
        "winner": seller.address,
        "winner_card": seller.model_dump(),
        "price": price,
        "from_block": ledger_block(ctx),
    }
    return purchase(ctx, **{**approved, **changes})


def ledger_block(ctx: TaskContext) -> int:
    return cast(Any, ctx.clock).block  # type: ignore[no-any-return]


# -- solicit


async def test_solicit_without_providers(tmp_path: Path, ledger: InMemoryLedger) -> None:
    ctx = buyer_ctx(tmp_path, ledger, peers=[offering("other", 5)])
    state = purchase(ctx, service="translate")
    update = await rg.solicit(state, rt(ctx))
    assert update == {"phase": Phase.NO_PROVIDERS, "error": "no peer offers 'translate'"}
    assert messenger_of(ctx).sent == []


async def test_solicit_only_the_providers_asked_for(tmp_path: Path, ledger: InMemoryLedger) -> None:
    ctx = buyer_ctx(tmp_path, ledger, peers=[offering("p1")])
    state = purchase(ctx, providers=[fake_card("p2").address])
    update = await rg.solicit(state, rt(ctx))
    assert update == {"phase": Phase.NO_PROVIDERS, "error": "no peer offers 'summarize'"}


async def test_solicit_collects_proposals_and_declines(
    tmp_path: Path, ledger: InMemoryLedger
) -> None:
    p1, p2, p3, p4 = offering("p1"), offering("p2"), offering("p3"), offering("p4")

    def responder(peer: AgentCard, message: Message) -> Any:
        assert isinstance(message, CallForProposals)
        if peer.address == p1.address:
            # Claims a perfect reputation; the chain says otherwise.
            return Proposal(
                price=900, eta_s=12, reputation_count=9, reputation_total=900, valid_until=77
            )
        if peer.address == p2.address:
            return Decline(reason="busy")
        if peer.address == p3.address:
            return PeerUnreachable(f"{peer.address} did not answer")
        return Proposal(price=950, eta_s=5)

    ctx = buyer_ctx(tmp_path, ledger, responder=responder, peers=[p1, p2, p3, p4])
    ledger.reputation[p1.address.lower()] = (2, 150)
    update = await rg.solicit(purchase(ctx), rt(ctx))
    assert update["phase"] == Phase.SOLICITED
    first, second = update["proposals"]
    latency = first.pop("latency_ms")
    assert isinstance(latency, int)
    assert latency >= 0
    assert first == {
        "provider": p1.address,
        "card": p1.model_dump(),
        "price": 900,
        "eta_s": 12,
        "model_sha256": "",
        "claimed_reputation": [9, 900],
        "valid_until": 77,
        "reputation": 75.0,  # 150 / 2, from the registry
    }
    assert (second["provider"], second["price"], second["reputation"]) == (p4.address, 950, None)
    assert update["declines"] == [
        {"provider": p2.address, "why": "busy"},
        {"provider": p3.address, "why": f"{p3.address} did not answer", "unanswered": True},
    ]
    calls = messenger_of(ctx).messages(CallForProposals)
    assert len(calls) == 4
    assert calls[0] == CallForProposals(
        service=SERVICE,
        input=INPUT,
        input_sha256=sha256_hex(INPUT),
        budget=BUDGET,
        token=ctx.token.address,
        deadline_s=300,
        card=ctx.messenger.card,
    )


async def test_solicit_an_error_reply_is_a_decline(tmp_path: Path, ledger: InMemoryLedger) -> None:
    p1 = offering("p1")

    def responder(peer: AgentCard, message: Message) -> Message:
        return ErrorReply(code="bad_card", detail="card is not the sender's")

    ctx = buyer_ctx(tmp_path, ledger, responder=responder, peers=[p1])
    update = await rg.solicit(purchase(ctx), rt(ctx))
    assert update["proposals"] == []
    assert update["declines"] == [
        {"provider": p1.address, "why": f"{p1.address} answered bad_card: card is not the sender's"}
    ]


# -- choose


async def test_choose_the_best_by_weights(tmp_path: Path, ledger: InMemoryLedger) -> None:
    cheap, rated, slow = offering("cheap"), offering("rated"), offering("slow")
    proposals = [
        # score = price/budget + 0.2 * (1 - reputation/100) + 0.05 * latency_s
        proposal_of(cheap, 1_000, reputation=None, valid_until=5),  # 0.5 + 0.1 = 0.6
        proposal_of(rated, 1_100, reputation=100.0, valid_until=9),  # 0.55
        proposal_of(slow, 900, reputation=100.0, latency_ms=3_000),  # 0.45 + 0.15 = 0.6
    ]
    ctx = buyer_ctx(tmp_path, ledger)
    update = await rg.choose(purchase(ctx, proposals=proposals, declines=[]), rt(ctx))
    assert update == {
        "phase": Phase.CHOSEN,
        "winner": rated.address,
        "winner_card": rated.model_dump(),
        "offer_until": 9,
        "price": 1_100,
        "countered": False,
    }


async def test_choose_by_price_alone_when_only_price_weighs(
    tmp_path: Path, ledger: InMemoryLedger
) -> None:
    cheap, rated = offering("cheap"), offering("rated")
    proposals = [proposal_of(rated, 1_100, reputation=100.0), proposal_of(cheap, 1_000)]
    settings = AgentConfig(faucet=False, weight_reputation=0, weight_latency=0)
    ctx = buyer_ctx(tmp_path, ledger, settings=settings)
    update = await rg.choose(purchase(ctx, proposals=proposals), rt(ctx))
    assert (update["winner"], update["price"]) == (cheap.address, 1_000)


async def test_choose_none_affordable(tmp_path: Path, ledger: InMemoryLedger) -> None:
    dear = offering("dear")
    state = purchase(
        buyer_ctx(tmp_path, ledger),
        proposals=[proposal_of(dear, BUDGET + 1)],
        declines=[
            {"provider": "0x1", "why": "busy"},
            {"provider": "0x2", "why": "unreachable", "unanswered": True},
            {"provider": "0x3", "why": "0x3 did not answer in 1s", "unanswered": True},
        ],
    )
    ctx = buyer_ctx(tmp_path, ledger)
    update = await rg.choose(state, rt(ctx))
    assert update == {
        "phase": Phase.NO_PROPOSAL,
        "error": "no proposal to take: 0x1 declined: busy; no answer from 0x2: unreachable; "
        "0x3 did not answer in 1s; 1 proposal(s) above the budget of 0.002 mUSD "
        "(cheapest 0.002001 mUSD)",
    }


async def test_choose_no_proposal_and_no_decline(tmp_path: Path, ledger: InMemoryLedger) -> None:
    ctx = buyer_ctx(tmp_path, ledger)
    update = await rg.choose(purchase(ctx, proposals=[], declines=[]), rt(ctx))
    assert update == {
        "phase": Phase.NO_PROPOSAL,
        "error": "no proposal to take: no provider answered",
    }


async def test_choose_skips_excluded_providers(tmp_path: Path, ledger: InMemoryLedger) -> None:
    best, next_best = offering("best"), offering("next")
    proposals = [proposal_of(best, 800), proposal_of(next_best, 1_200)]
    ctx = buyer_ctx(tmp_path, ledger)
    update = await rg.choose(purchase(ctx, proposals=proposals, excluded=[best.address]), rt(ctx))
    assert (update["phase"], update["winner"], update["price"]) == (
        Phase.CHOSEN,
        next_best.address,
        1_200,
    )
    everyone = [best.address, next_best.address]
    update = await rg.choose(
        purchase(ctx, proposals=proposals, declines=[], excluded=everyone), rt(ctx)
    )
    assert update == {
        "phase": Phase.NO_PROPOSAL,
        "error": "no proposal to take: 2 awarded provider(s) failed",
    }


async def test_choose_counters_once(tmp_path: Path, ledger: InMemoryLedger) -> None:
    seller = offering("seller")

    def responder(peer: AgentCard, message: Message) -> Message:
        assert message == CounterOffer(price=500)
        return Proposal(price=700, eta_s=1)  # its last word

    settings = AgentConfig(faucet=False, counter_ratio=0.5)
    ctx = buyer_ctx(tmp_path, ledger, responder=responder, settings=settings)
    update = await rg.choose(purchase(ctx, proposals=[proposal_of(seller, 1_000)]), rt(ctx))
    assert (update["price"], update["countered"]) == (700, True)
    # Countered already (e.g. choosing again after a failed award): no second counter.
    again = await rg.choose(
        purchase(ctx, proposals=[proposal_of(seller, 1_000)], countered=True), rt(ctx)
    )
    assert (again["price"], again["countered"]) == (1_000, True)
    assert len(messenger_of(ctx).messages(CounterOffer)) == 1


# -- approve


async def test_approve_under_the_threshold_passes(tmp_path: Path, ledger: InMemoryLedger) -> None:
    ctx = buyer_ctx(tmp_path, ledger, approval_threshold=LIST_PRICE)
    ledger.clock.block = 42
    state = chosen(ctx, offering("seller"), phase=Phase.CHOSEN)
    assert await rg.approve(state, rt(ctx)) == {"phase": Phase.APPROVED, "from_block": 42}


async def test_approve_without_a_threshold_passes(tmp_path: Path, ledger: InMemoryLedger) -> None:
    ctx = buyer_ctx(tmp_path, ledger, approval_threshold=None)
    state = chosen(ctx, offering("seller"), price=10**12, phase=Phase.CHOSEN)
    assert (await rg.approve(state, rt(ctx)))["phase"] == Phase.APPROVED


def runner_for(ctx: TaskContext) -> TaskRunner:
    saver = InMemorySaver(serde=checkpoint_serde())
    return TaskRunner(
        ctx,
        {
            Role.PROVIDER: pg.build_provider_graph(saver),
            Role.REQUESTER: rg.build_requester_graph(saver),
        },
    )


async def awaiting_approval(
    ctx: TaskContext, seller: AgentCard, loser: AgentCard
) -> tuple[TaskRunner, Any]:
    """A purchase of ``seller``'s offer (over the threshold) waiting for a person."""
    runner = runner_for(ctx)
    graph = runner.graphs[Role.REQUESTER]
    ctx.records.start_task(REQUESTER_TID, Role.REQUESTER, SERVICE)
    state = chosen(ctx, seller, phase=Phase.CHOSEN, offer_until=ledger_time(ctx) + 60)
    state["proposals"].append(proposal_of(loser, 1_500))
    await graph.aupdate_state(config(REQUESTER_TID), state, as_node="choose")
    await runner.advance(REQUESTER_TID, graph, None)
    snapshot = await graph.aget_state(config(REQUESTER_TID))
    assert snapshot.next == ("approve",)
    assert [i.value for i in snapshot.interrupts] == [
        {
            "kind": "approval",
            "amount": LIST_PRICE,
            "description": f"pay 0.001 mUSD to {seller.address} for {SERVICE} of {INPUT}",
            "until": ledger_time(ctx) + 60,
        }
    ]
    (approval,) = ctx.records.approvals()
    assert (approval.status, approval.amount) == (ApprovalStatus.PENDING, LIST_PRICE)
    row = ctx.records.task(REQUESTER_TID)
    assert row is not None
    assert (row.state, row.status) == (Phase.AWAITING_APPROVAL, TaskStatus.ACTIVE)
    assert runner.timers[REQUESTER_TID] == ledger_time(ctx) + 60
    return runner, graph


async def test_approve_over_the_threshold_rejected(tmp_path: Path, ledger: InMemoryLedger) -> None:
    seller, loser = offering("seller"), offering("loser")
    ctx = buyer_ctx(tmp_path, ledger, approval_threshold=LIST_PRICE - 1)
    runner, graph = await awaiting_approval(ctx, seller, loser)
    values = await runner.advance(
        REQUESTER_TID, graph, Command(resume=ApprovalDecision(approved=False))
    )
    assert values["phase"] == Phase.REJECTED
    assert values["error"] == "the spend was rejected by its owner"
    row = ctx.records.task(REQUESTER_TID)
    assert row is not None
    assert (row.state, row.status) == (Phase.REJECTED, TaskStatus.CANCELLED)
    assert ledger.transactions == []  # nothing spent
    assert messenger_of(ctx).messages(Award) == []
    # Every offer is turned down (a courtesy).
    assert messenger_of(ctx).sent == [
        (seller.address, Reject(reason="the spend was rejected by its owner")),
        (loser.address, Reject(reason="the spend was rejected by its owner")),
    ]


async def test_approve_timeout_expires_the_request(tmp_path: Path, ledger: InMemoryLedger) -> None:
    seller, loser = offering("seller"), offering("loser")
    ctx = buyer_ctx(tmp_path, ledger, approval_threshold=LIST_PRICE - 1)
    runner, graph = await awaiting_approval(ctx, seller, loser)
    ledger.clock.advance(61)
    values = await runner.advance(REQUESTER_TID, graph, Command(resume=Timeout()))
    assert values["phase"] == Phase.EXPIRED
    assert values["error"].startswith("not approved before the provider's offer lapsed")
    (approval,) = ctx.records.approvals()
    assert (approval.status, approval.applied) == (ApprovalStatus.EXPIRED, True)
    assert ctx.records.decided_unapplied() == []
    row = ctx.records.task(REQUESTER_TID)
    assert row is not None
    assert (row.state, row.status) == (Phase.EXPIRED, TaskStatus.EXPIRED)
    assert REQUESTER_TID not in runner.timers
    assert ledger.transactions == []


async def test_approve_over_the_threshold_approved_spends(
    tmp_path: Path, ledger: InMemoryLedger
) -> None:
    seller, loser = offering("seller"), offering("loser")
    ctx = buyer_ctx(tmp_path, ledger, approval_threshold=LIST_PRICE - 1)
    runner, graph = await awaiting_approval(ctx, seller, loser)
    values = await runner.advance(
        REQUESTER_TID, graph, Command(resume=ApprovalDecision(approved=True))
    )
    assert values["phase"] == Phase.NOTIFIED
    assert methods(ledger) == ["open"]
    assert ledger.balance_of(ctx.address) == FUNDS - LIST_PRICE
    assert [type(m) for m in messenger_of(ctx).messages(Award)] == [Award]


# -- fund


async def test_fund_opens_the_job_with_the_price_and_the_terms(
    tmp_path: Path, ledger: InMemoryLedger
) -> None:
    seller = offering("seller")
    ctx = buyer_ctx(tmp_path, ledger)
    total = ledger.total()
    update = await rg.fund(chosen(ctx, seller, phase=Phase.AWARDED), rt(ctx))
    job_id = update["job_id"]
    deadline = ledger.clock.time + 300
    assert update == {
        "phase": Phase.FUNDED,
        "job_id": job_id,
        "delivery_until": deadline + 1,
        "txs": {"open": tx_of(ledger, "open", job_id)},
    }
    job = ledger.jobs[job_id]
    assert (job.client, job.provider, job.amount) == (ctx.address, seller.address, LIST_PRICE)
    assert job.terms_hash == agreed_hash(LIST_PRICE)
    assert (job.deadline, job.review_window) == (deadline, ctx.settings.review_window_s)
    assert (job.arbiter, job.token) == (ctx.arbiter, ledger.token_address)
    assert ledger.balance_of(ctx.address) == FUNDS - LIST_PRICE
    assert ledger.balance_of(ledger.escrow_address) == LIST_PRICE
    assert ledger.total() == total


async def test_fund_after_a_restart_does_not_pay_twice(
    tmp_path: Path, ledger: InMemoryLedger
) -> None:
    ctx = buyer_ctx(tmp_path, ledger)
    state = chosen(ctx, offering("seller"), phase=Phase.AWARDED)
    first = await rg.fund(state, rt(ctx))
    ledger.clock.advance(10)
    again = await rg.fund(state, rt(ctx))
    assert again == {
        "phase": Phase.FUNDED,
        "job_id": first["job_id"],
        "delivery_until": first["delivery_until"],
    }
    assert methods(ledger) == ["open"]
    assert ledger.balance_of(ctx.address) == FUNDS - LIST_PRICE


async def test_fund_looks_for_an_earlier_job_only_after_an_earlier_attempt(
    tmp_path: Path, ledger: InMemoryLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    ctx = buyer_ctx(tmp_path, ledger)
    looked: list[int] = []
    find = ctx.escrow.find_opened_job

    async def counted(*args: Any) -> int | None:
        looked.append(1)
        return await find(*args)

    monkeypatch.setattr(ctx.escrow, "find_opened_job", counted)
    state = chosen(ctx, offering("seller"), phase=Phase.AWARDED)
    first = await rg.fund(state, rt(ctx))
    assert looked == []  # a first attempt cannot have opened a job: no log query
    again = await rg.fund(state, rt(ctx))  # as after a crash: finds it, pays nothing
    assert looked == [1]
    assert again["job_id"] == first["job_id"]
    assert methods(ledger) == ["open"]


async def test_fund_recovers_a_lost_receipt(tmp_path: Path, ledger: InMemoryLedger) -> None:
    ctx = buyer_ctx(tmp_path, ledger)
    ledger.lose_receipt_of = "open"
    update = await rg.fund(chosen(ctx, offering("seller"), phase=Phase.AWARDED), rt(ctx))
    (job_id,) = ledger.jobs
    assert update == {
        "phase": Phase.FUNDED,
        "job_id": job_id,
        "delivery_until": ledger.jobs[job_id].deadline + 1,
    }
    assert methods(ledger) == ["open"]
    assert ledger.balance_of(ctx.address) == FUNDS - LIST_PRICE


async def test_fund_does_not_take_a_job_for_other_terms(
    tmp_path: Path, ledger: InMemoryLedger
) -> None:
    seller = offering("seller")
    ctx = buyer_ctx(tmp_path, ledger)
    await rg.fund(chosen(ctx, seller, phase=Phase.AWARDED, price=900), rt(ctx))
    update = await rg.fund(chosen(ctx, seller, phase=Phase.AWARDED), rt(ctx))
    assert ledger.jobs[update["job_id"]].amount == LIST_PRICE
    assert methods(ledger) == ["open", "open"]


async def test_fund_without_the_money(tmp_path: Path, ledger: InMemoryLedger) -> None:
    ctx = buyer_ctx(tmp_path, ledger)
    state = chosen(ctx, offering("seller"), phase=Phase.AWARDED, price=FUNDS + 1)
    update = await rg.fund(state, rt(ctx))
    assert update == {
        "phase": Phase.FAILED,
        "error": f"could not fund the job: insufficient mUSD: {ctx.address} holds {FUNDS}",
    }
    assert ledger.jobs == {}


# -- notify


async def test_notify_refused_cancels_and_reawards(tmp_path: Path, ledger: InMemoryLedger) -> None:
    seller = offering("seller")

    def responder(peer: AgentCard, message: Message) -> Message:
        assert isinstance(message, Funded)
        return ErrorReply(code="refused", detail="amount 1 != agreed price 1000")

    ctx = buyer_ctx(tmp_path, ledger, responder=responder)
    total = ledger.total()
    state = chosen(ctx, seller, phase=Phase.AWARDED, excluded=["0xearlier"])
    state.update(await rg.fund(state, rt(ctx)))
    update = await rg.notify(state, rt(ctx))
    job_id = state["job_id"]
    assert update == {
        "phase": Phase.REAWARD,
        "excluded": ["0xearlier", seller.address],
        "error": f"provider refused the job: {seller.address} answered refused: "
        "amount 1 != agreed price 1000",
        "txs": {"cancel": tx_of(ledger, "cancel", job_id)},
    }
    assert ledger.jobs[job_id].status == JobStatus.CANCELLED
    assert ledger.balance_of(ctx.address) == FUNDS
    assert ledger.balance_of(ledger.escrow_address) == 0
    assert ledger.total() == total
    assert messenger_of(ctx).messages(Funded) == [
        Funded(job_id=job_id, escrow=ledger.escrow_address)
    ]


async def test_notify_unanswered_but_accepted_goes_on(
    tmp_path: Path, ledger: InMemoryLedger
) -> None:
    seller = offering("seller")
    ctx = buyer_ctx(tmp_path, ledger, responder=lambda p, m: PeerUnreachable("timed out"))
    state = chosen(ctx, seller, phase=Phase.AWARDED)
    state.update(await rg.fund(state, rt(ctx)))
    await ledger.escrow_for(seller.address).accept(state["job_id"])
    assert await rg.notify(state, rt(ctx)) == {"phase": Phase.NOTIFIED}
    assert "cancel" not in methods(ledger)


async def test_notify_tells_the_losers(tmp_path: Path, ledger: InMemoryLedger) -> None:
    seller, loser = offering("seller"), offering("loser")
    ctx = buyer_ctx(tmp_path, ledger)
    state = chosen(ctx, seller, phase=Phase.AWARDED)
    state["proposals"].append(proposal_of(loser, 1_500))
    state.update(await rg.fund(state, rt(ctx)))
    assert await rg.notify(state, rt(ctx)) == {"phase": Phase.NOTIFIED}
    await eventually(lambda: _sent(ctx, Reject))
    assert messenger_of(ctx).sent[-1] == (
        loser.address,
        Reject(reason="another proposal was chosen"),
    )
    assert [a for a, m in messenger_of(ctx).sent if isinstance(m, Reject)] == [loser.address]


async def _sent(ctx: TaskContext, kind: type[Message]) -> bool:
    return bool(messenger_of(ctx).messages(kind))


async def test_a_refused_job_goes_to_the_next_best_through_the_graph(
    tmp_path: Path, ledger: InMemoryLedger
) -> None:
    first, second = offering("first"), offering("second")

    def responder(peer: AgentCard, message: Message) -> Message:
        if isinstance(message, Funded) and peer.address == first.address:
            return ErrorReply(code="refused", detail="the deadline leaves less than 10s")
        return Ack(state="ok")

    ctx = buyer_ctx(tmp_path, ledger, responder=responder)
    total = ledger.total()
    graph = rg.build_requester_graph(InMemorySaver(serde=checkpoint_serde()))
    cfg = config(REQUESTER_TID)
    solicited = purchase(
        ctx,
        phase=Phase.SOLICITED,
        proposals=[proposal_of(first, 900), proposal_of(second, 1_100)],
        declines=[],
    )
    await graph.aupdate_state(cfg, solicited, as_node="solicit")
    await graph.ainvoke(None, cfg, context=ctx)
    snapshot = await graph.aget_state(cfg)
    values = snapshot.values
    assert values["phase"] == Phase.NOTIFIED
    assert snapshot.next == ("await_delivery",)
    assert (values["winner"], values["price"], values["excluded"]) == (
        second.address,
        1_100,
        [first.address],
    )
    refused, funded = sorted(ledger.jobs)
    assert values["job_id"] == funded
    assert ledger.jobs[refused].status == JobStatus.CANCELLED
    assert (ledger.jobs[funded].provider, ledger.jobs[funded].amount) == (second.address, 1_100)
    assert methods(ledger) == ["open", "cancel", "open"]
    assert ledger.balance_of(ctx.address) == FUNDS - 1_100
    assert ledger.total() == total
    awards = [(a, m) for a, m in messenger_of(ctx).sent if isinstance(m, Award)]
    assert awards == [(first.address, Award(price=900)), (second.address, Award(price=1_100))]


# -- await_delivery (in the compiled graph: it interrupts)


async def waiting_for_delivery(
    ctx: TaskContext, ledger: InMemoryLedger, seller: AgentCard, job_id: int
) -> tuple[Any, Any, int]:
    """A requester graph that funded ``job_id`` and waits for its delivery."""
    graph = rg.build_requester_graph(InMemorySaver(serde=checkpoint_serde()))
    cfg = config(REQUESTER_TID)
    delivery_until = ledger.jobs[job_id].deadline + 1
    state = chosen(ctx, seller, phase=Phase.NOTIFIED, job_id=job_id)
    state["delivery_until"] = delivery_until
    await graph.aupdate_state(cfg, state, as_node="notify")
    await graph.ainvoke(None, cfg, context=ctx)
    snapshot = await graph.aget_state(cfg)
    # It looks at the job several times per review window, not only at the deadline.
    until = min(delivery_until, ledger.clock.time + ctx.settings.review_window_s // 3)
    assert snapshot.next == ("await_delivery",)
    assert [i.value for i in snapshot.interrupts] == [{"phase": "notified", "until": until}]
    return graph, cfg, delivery_until


async def test_await_delivery_checks_and_releases_a_delivery(
    tmp_path: Path, ledger: InMemoryLedger
) -> None:
    seller = offering("seller")
    ctx = buyer_ctx(tmp_path, ledger)
    total = ledger.total()
    job_id = await submitted_job(ledger, ctx.address, seller.address, sha256_hex(RESULT))
    graph, cfg, _ = await waiting_for_delivery(ctx, ledger, seller, job_id)
    delivery = Delivery(result=RESULT, result_sha256=sha256_hex(RESULT))
    await graph.ainvoke(Command(resume=delivery), cfg, context=ctx)
    snapshot = await graph.aget_state(cfg)
    assert (snapshot.values["phase"], snapshot.next) == (Phase.SETTLED, ())
    assert snapshot.values["result"] == RESULT
    assert ledger.balance_of(seller.address) == LIST_PRICE
    assert ledger.total() == total


async def test_await_delivery_a_bad_delivery_is_disputed(
    tmp_path: Path, ledger: InMemoryLedger
) -> None:
    seller = offering("seller")
    ctx = buyer_ctx(tmp_path, ledger)
    job_id = await submitted_job(ledger, ctx.address, seller.address, sha256_hex(RESULT))
    graph, cfg, _ = await waiting_for_delivery(ctx, ledger, seller, job_id)
    ctx.buyer_checks[REQUESTER_TID] = (lambda value: value == "hello", None)
    delivery = Delivery(result=RESULT, result_sha256=sha256_hex(RESULT))
    await graph.ainvoke(Command(resume=delivery), cfg, context=ctx)
    snapshot = await graph.aget_state(cfg)
    assert (snapshot.values["phase"], snapshot.next) == (Phase.DISPUTED, ())
    assert snapshot.values["error"] == "result failed the buyer's check"
    assert ledger.jobs[job_id].status == JobStatus.DISPUTED
    assert ledger.balance_of(seller.address) == 0


async def test_await_delivery_an_unconfirmed_failure_keeps_waiting(
    tmp_path: Path, ledger: InMemoryLedger
) -> None:
    seller = offering("seller")
    ctx = buyer_ctx(tmp_path, ledger)
    job_id = await open_job(ledger, ctx.address, seller.address)
    await ledger.escrow_for(seller.address).accept(job_id)
    graph, cfg, _ = await waiting_for_delivery(ctx, ledger, seller, job_id)
    await graph.ainvoke(Command(resume=Failure(reason="boom")), cfg, context=ctx)
    snapshot = await graph.aget_state(cfg)
    assert snapshot.values["phase"] == Phase.NOTIFIED
    assert snapshot.values["error"] == "unconfirmed failure: boom"
    assert snapshot.next == ("await_delivery",)


async def test_await_delivery_timeout_waits_until_the_deadline_then_refunds(
    tmp_path: Path, ledger: InMemoryLedger
) -> None:
    seller = offering("seller")
    ctx = buyer_ctx(tmp_path, ledger)
    total = ledger.total()
    job_id = await open_job(ledger, ctx.address, seller.address)
    await ledger.escrow_for(seller.address).accept(job_id)
    graph, cfg, delivery_until = await waiting_for_delivery(ctx, ledger, seller, job_id)
    ledger.clock.advance(100)  # a poll before the deadline: look, and wait on
    await graph.ainvoke(Command(resume=Timeout()), cfg, context=ctx)
    snapshot = await graph.aget_state(cfg)
    assert (snapshot.values["phase"], snapshot.next) == (Phase.NOTIFIED, ("await_delivery",))
    assert "refund" not in methods(ledger)
    ledger.clock.time = delivery_until
    await graph.ainvoke(Command(resume=Timeout()), cfg, context=ctx)
    snapshot = await graph.aget_state(cfg)
    assert (snapshot.values["phase"], snapshot.next) == (Phase.REFUNDED, ())
    assert snapshot.values["error"] == "nothing delivered before the deadline"
    assert snapshot.values["txs"]["refund"] == tx_of(ledger, "refund", job_id)
    assert ledger.balance_of(ctx.address) == FUNDS
    assert ledger.total() == total


async def test_await_delivery_asks_again_for_a_result_on_chain(
    tmp_path: Path, ledger: InMemoryLedger
) -> None:
    seller = offering("seller")

    def responder(peer: AgentCard, message: Message) -> Message:
        if isinstance(message, Redeliver):
            return Delivery(result=RESULT, result_sha256=sha256_hex(RESULT))
        return Ack(state="delivered")

    ctx = buyer_ctx(tmp_path, ledger, responder=responder)
    job_id = await submitted_job(ledger, ctx.address, seller.address, sha256_hex(RESULT))
    graph, cfg, _ = await waiting_for_delivery(ctx, ledger, seller, job_id)
    ledger.clock.advance(40)
    await graph.ainvoke(Command(resume=Timeout()), cfg, context=ctx)
    snapshot = await graph.aget_state(cfg)
    assert (snapshot.values["phase"], snapshot.next) == (Phase.SETTLED, ())
    assert ctx.counters["redeliveries"] == 1
    assert [type(m) for _, m in messenger_of(ctx).sent] == [Redeliver, Settled]
    assert ledger.balance_of(seller.address) == LIST_PRICE


# -- check, release, dispute


def delivered_state(
    ctx: TaskContext, seller: AgentCard, job_id: int, result: str = RESULT, **changes: Any
) -> Any:
    return chosen(
        ctx,
        seller,
        phase=Phase.DELIVERED,
        job_id=job_id,
        result=result,
        result_sha256=sha256_hex(result),
        **changes,
    )


async def test_check_ok(tmp_path: Path, ledger: InMemoryLedger) -> None:
    seller = offering("seller")
    ctx = buyer_ctx(tmp_path, ledger)
    job_id = await submitted_job(ledger, ctx.address, seller.address, sha256_hex(RESULT))
    assert await rg.check(delivered_state(ctx, seller, job_id), rt(ctx)) == {"phase": Phase.CHECKED}


async def test_check_a_result_not_matching_its_hash(tmp_path: Path, ledger: InMemoryLedger) -> None:
    seller = offering("seller")
    ctx = buyer_ctx(tmp_path, ledger)
    job_id = await submitted_job(ledger, ctx.address, seller.address, sha256_hex(RESULT))
    state = delivered_state(ctx, seller, job_id, result='"hello"')
    state["result_sha256"] = sha256_hex(RESULT)
    assert await rg.check(state, rt(ctx)) == {
        "phase": Phase.REJECTING,
        "error": "the result does not match its hash",
    }


async def test_check_a_hash_not_the_one_on_chain(tmp_path: Path, ledger: InMemoryLedger) -> None:
    seller = offering("seller")
    ctx = buyer_ctx(tmp_path, ledger)
    job_id = await submitted_job(ledger, ctx.address, seller.address, sha256_hex('"other"'))
    assert await rg.check(delivered_state(ctx, seller, job_id), rt(ctx)) == {
        "phase": Phase.REJECTING,
        "error": "the result hash on chain differs from the delivered one",
    }


async def test_check_the_buyers_own_check(tmp_path: Path, ledger: InMemoryLedger) -> None:
    seller = offering("seller")
    ctx = buyer_ctx(tmp_path, ledger)
    job_id = await submitted_job(ledger, ctx.address, seller.address, sha256_hex(RESULT))
    ctx.buyer_checks[REQUESTER_TID] = (lambda value: value.islower(), None)
    assert await rg.check(delivered_state(ctx, seller, job_id), rt(ctx)) == {
        "phase": Phase.REJECTING,
        "error": "result failed the buyer's check",
    }
    ctx.buyer_checks[REQUESTER_TID] = (None, int)
    update = await rg.check(delivered_state(ctx, seller, job_id), rt(ctx))
    assert update["phase"] == Phase.REJECTING
    assert update["error"].startswith("result is not a valid <class 'int'>")
    ctx.buyer_checks[REQUESTER_TID] = (lambda value: value.isupper(), str)
    assert (await rg.check(delivered_state(ctx, seller, job_id), rt(ctx)))["phase"] == (
        Phase.CHECKED
    )


async def test_release_pays_rates_and_tells(tmp_path: Path, ledger: InMemoryLedger) -> None:
    seller = offering("seller")
    ctx = buyer_ctx(tmp_path, ledger)
    total = ledger.total()
    job_id = await submitted_job(ledger, ctx.address, seller.address, sha256_hex(RESULT))
    update = await rg.release(delivered_state(ctx, seller, job_id), rt(ctx))
    release_tx = tx_of(ledger, "release", job_id)
    assert update == {
        "phase": Phase.SETTLED,
        "txs": {"release": release_tx, "feedback": tx_of(ledger, "feedback", job_id)},
    }
    assert ledger.jobs[job_id].status == JobStatus.RELEASED
    assert ledger.balance_of(seller.address) == LIST_PRICE
    assert ledger.balance_of(ctx.address) == FUNDS - LIST_PRICE
    assert ledger.total() == total
    assert ledger.reputation[seller.address.lower()] == (1, 100)
    assert messenger_of(ctx).sent == [(seller.address, Settled(tx=release_tx))]
    # Run again after a restart: neither paid nor rated twice.
    again = await rg.release(delivered_state(ctx, seller, job_id), rt(ctx))
    assert again == {"phase": Phase.SETTLED, "txs": {}}
    assert methods(ledger).count("release") == methods(ledger).count("feedback") == 1
    assert ledger.balance_of(seller.address) == LIST_PRICE


async def test_dispute_before_submission_keeps_waiting(
    tmp_path: Path, ledger: InMemoryLedger
) -> None:
    seller = offering("seller")
    ctx = buyer_ctx(tmp_path, ledger)
    job_id = await open_job(ledger, ctx.address, seller.address)
    await ledger.escrow_for(seller.address).accept(job_id)
    state = delivered_state(ctx, seller, job_id, error="the result does not match its hash")
    update = await rg.dispute(state, rt(ctx))
    assert update == {
        "phase": Phase.NOTIFIED,
        "error": "delivery refused: the result does not match its hash",
    }
    assert ctx.counters["deliveries_refused"] == 1
    assert ledger.jobs[job_id].status == JobStatus.ACCEPTED
    assert "dispute" not in methods(ledger)
    assert messenger_of(ctx).sent == []


async def test_dispute_a_submitted_result(tmp_path: Path, ledger: InMemoryLedger) -> None:
    seller = offering("seller")
    ctx = buyer_ctx(tmp_path, ledger)
    job_id = await submitted_job(ledger, ctx.address, seller.address, sha256_hex('"other"'))
    problem = "the result hash on chain differs from the delivered one"
    update = await rg.dispute(delivered_state(ctx, seller, job_id, error=problem), rt(ctx))
    dispute_tx = tx_of(ledger, "dispute", job_id)
    assert update == {"phase": Phase.DISPUTED, "txs": {"dispute": dispute_tx}}
    assert ledger.jobs[job_id].status == JobStatus.DISPUTED
    assert ledger.balance_of(seller.address) == 0
    assert ledger.balance_of(ledger.escrow_address) == LIST_PRICE
    assert messenger_of(ctx).sent == [(seller.address, Dispute(reason=problem, tx=dispute_tx))]


async def test_dispute_too_late(tmp_path: Path, ledger: InMemoryLedger) -> None:
    seller = offering("seller")
    ctx = buyer_ctx(tmp_path, ledger)
    job_id = await submitted_job(ledger, ctx.address, seller.address, sha256_hex('"other"'))
    ledger.clock.advance(121)
    await ledger.escrow_for(seller.address).claim(job_id)
    update = await rg.dispute(delivered_state(ctx, seller, job_id, error="bad"), rt(ctx))
    assert update == {"phase": Phase.FAILED, "error": "bad; the job is already CLAIMED"}
    assert "dispute" not in methods(ledger)


# ---------------------------------------------------------------------- one whole trade


def handler_context(sender: str, conversation: str) -> HandlerContext:
    """What a handler sees of an envelope (its sender and conversation), without a node."""
    envelope = SimpleNamespace(sender=sender, conversation=bytes.fromhex(conversation))
    return HandlerContext(node=cast(Any, None), envelope=cast(Any, envelope))


def mesh_of(handlers: dict[str, NegotiationHandlers], sender: Callable[[], str]) -> Responder:
    """A responder that hands each message to the handlers of the peer it is sent to."""

    async def respond(peer: AgentCard, message: Message) -> Message:
        target = handlers[peer.address]
        ctx = handler_context(sender(), CONVERSATION)
        if isinstance(message, CallForProposals):
            return await target.on_call(ctx, message)
        if isinstance(message, Redeliver):
            return await target.on_redeliver(ctx, message)
        if isinstance(message, Delivery | Failure):
            return await target.on_requester_step(ctx, message)
        return await target.on_provider_step(ctx, message)

    return respond


async def test_one_whole_trade_in_memory(tmp_path: Path, ledger: InMemoryLedger) -> None:
    handlers: dict[str, NegotiationHandlers] = {}
    seller_card, buyer_card = offering("seller"), fake_card("buyer")
    seller_messenger = ScriptedMessenger(
        card=seller_card, responder=mesh_of(handlers, lambda: seller_card.address)
    )
    buyer_messenger = ScriptedMessenger(
        card=buyer_card,
        responder=mesh_of(handlers, lambda: buyer_card.address),
        peers=[seller_card],
    )
    seller = unit_context(
        tmp_path / "seller.db",
        ledger=ledger,
        services={SERVICE: make_service()},
        messenger=seller_messenger,
    )
    buyer = unit_context(tmp_path / "buyer.db", ledger=ledger, messenger=buyer_messenger)
    assert (seller.address, buyer.address) == (seller_card.address, buyer_card.address)
    ledger.mint(buyer.address, FUNDS)
    ledger.mint(seller.address, 5)
    total = ledger.total()
    seller_runner, buyer_runner = runner_for(seller), runner_for(buyer)
    handlers[seller.address] = NegotiationHandlers(seller, seller_runner)
    handlers[buyer.address] = NegotiationHandlers(buyer, buyer_runner)

    # What Agent.buy does.
    outcome = buyer_runner.outcomes[REQUESTER_TID] = asyncio.get_running_loop().create_future()
    buyer.records.start_task(REQUESTER_TID, Role.REQUESTER, SERVICE)
    lock = await buyer_runner.begin(REQUESTER_TID)
    buyer_runner.run_locked(
        REQUESTER_TID, lock, buyer_runner.graphs[Role.REQUESTER], purchase(buyer)
    )
    values = await asyncio.wait_for(outcome, 10)

    async def seller_done() -> bool:
        row = seller.records.task(PROVIDER_TID)
        return row is not None and row.status == TaskStatus.DONE

    await eventually(seller_done)
    for runner, tid in ((seller_runner, PROVIDER_TID), (buyer_runner, REQUESTER_TID)):
        # The background runs have ended: a final task's lock is dropped with its run.
        async def unlocked(r: TaskRunner = runner, t: str = tid) -> bool:
            return t not in r.locks

        await eventually(unlocked)
        assert tid not in runner.locks

    assert values["phase"] == Phase.SETTLED
    assert values["result"] == RESULT
    job_id = values["job_id"]
    assert ledger.jobs[job_id].status == JobStatus.RELEASED
    assert ledger.total() == total
    assert ledger.balance_of(seller.address) == 5 + LIST_PRICE
    assert ledger.balance_of(buyer.address) == FUNDS - LIST_PRICE
    assert ledger.balance_of(ledger.escrow_address) == 0
    assert ledger.reputation[seller.address.lower()] == (1, 100)
    assert [(c, m) for c, m, _ in ledger.transactions] == [
        (buyer.address.lower(), "open"),
        (seller.address.lower(), "accept"),
        (seller.address.lower(), "submit"),
        (buyer.address.lower(), "release"),
        (buyer.address.lower(), "feedback"),
    ]
    bought = buyer.records.task(REQUESTER_TID)
    sold = seller.records.task(PROVIDER_TID)
    assert bought is not None
    assert sold is not None
    assert (bought.state, bought.status, bought.price) == (Phase.SETTLED, TaskStatus.DONE, 1_000)
    assert (sold.state, sold.status, sold.job_id) == (Phase.SETTLED, TaskStatus.DONE, job_id)
    sold_graph = seller_runner.graphs[Role.PROVIDER]
    sold_values = (await sold_graph.aget_state(config(PROVIDER_TID))).values
    assert sold_values["txs"] == {
        "accept": tx_of(ledger, "accept", job_id),
        "submit": tx_of(ledger, "submit", job_id),
        "release": tx_of(ledger, "release", job_id),
    }
    assert [type(m) for _, m in buyer_messenger.sent] == [
        CallForProposals,
        Award,
        Funded,
        Settled,
    ]
    assert [type(m) for _, m in seller_messenger.sent] == [Delivery]
    assert seller.counters["rejected.out_of_order"] == buyer.counters["rejected.out_of_order"] == 0


async def test_decide_does_not_queue_behind_a_long_model_queue(
    tmp_path: Path, ledger: InMemoryLedger
) -> None:
    model = FakeChatModel(decisions=[model_says(0.0008)])
    ctx = seller_ctx(tmp_path, ledger, model=model)
    ctx.pricing.cost_s = 1.0
    ctx.pricing.in_flight = int(ctx.settings.decision_timeout_s)  # 5 queued x 1 s
    update = await pg.decide(call_state(ctx, fake_card()), rt(ctx))
    assert update["price"] == LIST_PRICE  # the rules, at once
    assert model.calls == []  # the model was not asked
    assert ctx.counters["model_fallbacks"] == 1


async def test_decide_measures_the_model(tmp_path: Path, ledger: InMemoryLedger) -> None:
    model = FakeChatModel(decisions=[model_says(0.0008)], delay_s=0.01)
    ctx = seller_ctx(tmp_path, ledger, model=model)
    await pg.decide(call_state(ctx, fake_card()), rt(ctx))
    assert ctx.pricing.calls == 1 and (ctx.pricing.cost_s or 0) >= 0.01
    assert ctx.pricing.in_flight == 0
