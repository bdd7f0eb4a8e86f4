"""Pure unit tests of the agent modules: pricing rules, services, records, ranking, terms.

No anvil, no model, no network: every test here runs in milliseconds.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from pydantic import ValidationError

from agentmesh.agents.decisions import (
    PRICING_SYSTEM,
    PriceDecision,
    apply_rules,
    pricing_prompt,
)
from agentmesh.agents.records import AgentRecords, find_approval
from agentmesh.agents.requester_graph import rank
from agentmesh.agents.service import Service, ServiceContext, check_result, parse_price
from agentmesh.canonical import canonical_json, sha256_hex
from agentmesh.errors import AgentMeshValueError, ModelError
from agentmesh.mesh.card import AgentCard, CurveKeys
from agentmesh.protocols.negotiation import (
    CallForProposals,
    terms_hash,
)

MUSD = 10**6
FLOOR = 20_000  # 0.02 mUSD
LIST = 50_000  # 0.05 mUSD


def _answer(
    action: str = "propose", price: float = 0.05, reason: str = "budget_covers_price"
) -> PriceDecision:
    return PriceDecision(action=action, price=price, reason=reason)  # type: ignore[arg-type]


# ---------------------------------------------------------------- decisions


def test_budget_below_floor_declines_and_overrides_a_proposal() -> None:
    decision = apply_rules(_answer(), floor=FLOOR, list_price=LIST, budget=FLOOR - 1)

    assert decision.action == "decline"
    assert decision.price == 0
    assert "below the floor" in decision.reason
    assert decision.model_action == "propose"
    assert decision.overridden is True


def test_budget_below_floor_declines_without_override_when_model_declined() -> None:
    answer = _answer("decline", 0, "budget_below_price")
    decision = apply_rules(answer, floor=FLOOR, list_price=LIST, budget=1)

    assert decision.action == "decline"
    assert decision.price == 0
    assert decision.model_action == "decline"
    assert decision.overridden is False


def test_budget_below_floor_declines_when_model_failed() -> None:
    decision = apply_rules(None, floor=FLOOR, list_price=LIST, budget=FLOOR - 1)

    assert decision.action == "decline"
    assert decision.model_action == "none"
    assert decision.overridden is False


def test_no_model_answer_falls_back_to_list_price() -> None:
    decision = apply_rules(None, floor=FLOOR, list_price=LIST, budget=MUSD)

    assert decision.action == "propose"
    assert decision.price == LIST
    assert decision.model_action == "none"
    assert decision.overridden is True


def test_no_model_answer_caps_list_price_by_budget() -> None:
    decision = apply_rules(None, floor=FLOOR, list_price=LIST, budget=30_000)

    assert decision.action == "propose"
    assert decision.price == 30_000


def test_a_decline_for_a_budget_that_covers_the_list_price_is_overruled() -> None:
    answer = _answer("decline", 0, "budget_below_price")
    decision = apply_rules(answer, floor=FLOOR, list_price=LIST, budget=MUSD)

    assert decision.action == "propose"
    assert decision.price == LIST
    assert decision.model_action == "decline"
    assert decision.overridden is True


def test_a_decline_for_a_budget_between_floor_and_list_price_stands() -> None:
    answer = _answer("decline", 0, "budget_below_price")
    decision = apply_rules(answer, floor=FLOOR, list_price=LIST, budget=LIST - 1)

    assert decision.action == "decline"
    assert decision.overridden is False


def test_model_decline_is_respected_when_budget_covers_floor() -> None:
    answer = _answer("decline", 0, "input_too_long")
    decision = apply_rules(answer, floor=FLOOR, list_price=LIST, budget=MUSD)

    assert decision.action == "decline"
    assert decision.price == 0
    assert "input_too_long" in decision.reason
    assert decision.model_action == "decline"
    assert decision.overridden is False


def test_model_price_is_taken_when_within_bounds() -> None:
    decision = apply_rules(_answer(price=0.04), floor=FLOOR, list_price=LIST, budget=MUSD)

    assert decision.action == "propose"
    assert decision.price == 40_000
    assert decision.reason == "budget_covers_price"
    assert decision.overridden is False


def test_model_price_below_floor_is_raised_to_floor() -> None:
    decision = apply_rules(_answer(price=0.001), floor=FLOOR, list_price=LIST, budget=MUSD)

    assert decision.action == "propose"
    assert decision.price == FLOOR
    assert decision.overridden is True


def test_model_price_above_budget_is_capped_to_budget() -> None:
    decision = apply_rules(_answer(price=5.0), floor=FLOOR, list_price=LIST, budget=30_000)

    assert decision.action == "propose"
    assert decision.price == 30_000
    assert decision.overridden is True


@pytest.mark.parametrize("price", [0.0, -1.0, -0.05])
def test_zero_or_negative_model_price_uses_list_price(price: float) -> None:
    decision = apply_rules(_answer(price=price), floor=FLOOR, list_price=LIST, budget=MUSD)

    assert decision.action == "propose"
    assert decision.price == LIST
    assert decision.overridden is False


def test_zero_model_price_uses_list_price_capped_by_budget() -> None:
    decision = apply_rules(_answer(price=0), floor=FLOOR, list_price=LIST, budget=30_000)

    assert decision.price == 30_000
    assert decision.overridden is True


def test_budget_equal_to_floor_proposes_at_floor() -> None:
    decision = apply_rules(_answer(), floor=FLOOR, list_price=LIST, budget=FLOOR)

    assert decision.action == "propose"
    assert decision.price == FLOOR


def test_budget_equal_to_floor_without_model_proposes_at_floor() -> None:
    decision = apply_rules(None, floor=FLOOR, list_price=LIST, budget=FLOOR)

    assert decision.action == "propose"
    assert decision.price == FLOOR


def test_price_decision_rejects_extra_fields() -> None:
    with pytest.raises(ValidationError):
        PriceDecision.model_validate(
            {"action": "propose", "price": 1, "reason": "budget_covers_price", "note": "hi"}
        )


@pytest.mark.parametrize(
    "body",
    [
        {"action": "counter", "price": 1, "reason": "budget_covers_price"},
        {"action": "propose", "price": 1, "reason": "because"},
        {"action": "propose", "reason": "budget_covers_price"},
    ],
)
def test_price_decision_rejects_unknown_values(body: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        PriceDecision.model_validate(body)


def test_price_decision_parses_model_json() -> None:
    text = '{"action":"decline","price":0,"reason":"budget_below_price"}'

    assert PriceDecision.model_validate_json(text) == _answer("decline", 0, "budget_below_price")


def test_pricing_prompt_formats_amounts_in_musd() -> None:
    messages = pricing_prompt("summarize", LIST, MUSD + 500_000, 1234)

    assert [m["role"] for m in messages] == ["system", "user"]
    assert messages[0]["content"] == PRICING_SYSTEM
    user = messages[1]["content"]
    assert "Service: summarize" in user
    assert "List price: 0.05 mUSD" in user
    assert "Buyer budget: 1.5 mUSD" in user
    assert "Input length: 1234 characters" in user


def test_pricing_prompt_system_prefix_is_fixed() -> None:
    first = pricing_prompt("a", 1, 2, 3)
    second = pricing_prompt("b", 4, 5, 6)

    assert first[0] == second[0]


# ---------------------------------------------------------------- service: parse_price


@pytest.mark.parametrize(
    ("text", "units"),
    [
        ("0.05 mUSD", 50_000),
        ("0.05", 50_000),
        ("1", MUSD),
        ("1 mUSD", MUSD),
        ("0.000001", 1),
        (" 2.5 mUSD ", 2_500_000),
        (0, 0),
        (123, 123),
    ],
)
def test_parse_price(text: str | int, units: int) -> None:
    assert parse_price(text) == units


@pytest.mark.parametrize(
    ("text", "match"),
    [
        (-1, "zero or positive"),
        ("-1", "zero or positive"),
        ("0.0000001", "decimal places"),
        ("1 ETH", "mUSD"),
        ("abc", "not a number"),
        ("", "not a number"),
    ],
)
def test_parse_price_rejects(text: str | int, match: str) -> None:
    with pytest.raises(AgentMeshValueError, match=match):
        parse_price(text)


# ---------------------------------------------------------------- service: from_function


async def _echo(ctx: Any, text: str, times: int = 1) -> str:
    """Repeat the text.

    Longer description that is not part of the service summary.
    """
    return text * times


def test_from_function_builds_service() -> None:
    service = Service.from_function("echo", _echo, price="0.05 mUSD", floor="0.02")

    assert service.name == "echo"
    assert service.price == LIST
    assert service.floor == FLOOR
    assert service.description == "Repeat the text."
    assert service.result_type is str


def test_from_function_floor_defaults_to_price() -> None:
    service = Service.from_function("echo", _echo, price=LIST)

    assert service.floor == LIST


def test_from_function_explicit_description_wins() -> None:
    service = Service.from_function("echo", _echo, price=1, description="Echo service")

    assert service.description == "Echo service"


@pytest.mark.parametrize("name", ["", "Echo", "1echo", "echo service", "echo/x", "_echo", "e" * 65])
def test_from_function_rejects_invalid_names(name: str) -> None:
    with pytest.raises(AgentMeshValueError, match="invalid service name"):
        Service.from_function(name, _echo, price=1)


@pytest.mark.parametrize("name", ["e", "echo", "text.summarize-v2_1", "e" * 64])
def test_from_function_accepts_valid_names(name: str) -> None:
    assert Service.from_function(name, _echo, price=1).name == name


def test_from_function_rejects_sync_function() -> None:
    def sync(ctx: Any, text: str) -> str:
        return text

    with pytest.raises(AgentMeshValueError, match="async def"):
        Service.from_function("echo", sync, price=1)  # type: ignore[arg-type]


def test_from_function_rejects_zero_price() -> None:
    with pytest.raises(AgentMeshValueError, match="price must be positive"):
        Service.from_function("echo", _echo, price=0)


def test_from_function_rejects_floor_above_price() -> None:
    with pytest.raises(AgentMeshValueError, match="at least the floor"):
        Service.from_function("echo", _echo, price="0.05", floor="0.06")


def test_from_function_accepts_floor_equal_to_price() -> None:
    service = Service.from_function("echo", _echo, price="0.05", floor=LIST)

    assert service.floor == service.price == LIST


def test_from_function_rejects_var_args() -> None:
    async def star(ctx: Any, *texts: str) -> str:
        return "".join(texts)

    with pytest.raises(AgentMeshValueError, match="texts must be a named parameter"):
        Service.from_function("echo", star, price=1)


def test_from_function_rejects_var_kwargs() -> None:
    async def kw(ctx: Any, **options: str) -> str:
        return ""

    with pytest.raises(AgentMeshValueError, match="options must be a named parameter"):
        Service.from_function("echo", kw, price=1)


def test_from_function_rejects_function_without_ctx() -> None:
    async def bare() -> str:
        return ""

    with pytest.raises(AgentMeshValueError, match="ctx"):
        Service.from_function("echo", bare, price=1)


def test_input_model_requires_params_without_default() -> None:
    service = Service.from_function("echo", _echo, price=1)

    with pytest.raises(AgentMeshValueError, match=r"invalid input for echo: text: Field required"):
        service.parse_input("{}")
    parsed = service.parse_input('{"text": "hi"}')
    assert dict(parsed) == {"text": "hi", "times": 1}


def test_input_model_forbids_extra_fields() -> None:
    service = Service.from_function("echo", _echo, price=1)

    with pytest.raises(AgentMeshValueError, match="extra"):
        service.parse_input('{"text": "hi", "extra": 1}')


def test_input_model_checks_types() -> None:
    service = Service.from_function("echo", _echo, price=1)

    with pytest.raises(AgentMeshValueError, match="times"):
        service.parse_input('{"text": "hi", "times": "many"}')


def test_parse_input_rejects_invalid_json() -> None:
    service = Service.from_function("echo", _echo, price=1)

    with pytest.raises(AgentMeshValueError, match="invalid input for echo"):
        service.parse_input("not json")


def test_input_model_keyword_only_params() -> None:
    async def kw(ctx: Any, *, text: str, loud: bool = False) -> str:
        return text.upper() if loud else text

    service = Service.from_function("kw", kw, price=1)

    assert dict(service.parse_input('{"text": "a"}')) == {"text": "a", "loud": False}


# ---------------------------------------------------------------- service: run and results


def _ctx(service: str = "echo") -> ServiceContext:
    return ServiceContext(
        service=service,
        conversation="ab" * 16,
        requester="0x" + "11" * 20,
    )


async def test_run_returns_json_of_result() -> None:
    service = Service.from_function("echo", _echo, price=1)

    text = await service.run(_ctx(), '{"text": "hé", "times": 2}')

    assert text == canonical_json("héhé")
    assert json.loads(text) == "héhé"


async def test_run_serializes_structured_result() -> None:
    async def split(ctx: ServiceContext, text: str) -> list[str]:
        assert ctx.service == "split"
        return text.split()

    service = Service.from_function("split", split, price=1)

    text = await service.run(_ctx("split"), '{"text": "a b  c"}')

    assert text == canonical_json(["a", "b", "c"])


async def test_run_passes_ctx_to_function() -> None:
    seen: list[ServiceContext] = []

    async def remember(ctx: ServiceContext, n: int) -> int:
        seen.append(ctx)
        return n + 1

    service = Service.from_function("inc", remember, price=1)
    ctx = _ctx("inc")

    assert await service.run(ctx, '{"n": 41}') == "42"
    assert seen == [ctx]
    assert ctx.chat_model is None  # made without a model: using one is a clear error
    with pytest.raises(ModelError, match="has no model"):
        _ = ctx.model


async def test_run_rejects_invalid_input_before_calling() -> None:
    called = False

    async def fn(ctx: Any, text: str) -> str:
        nonlocal called
        called = True
        return text

    service = Service.from_function("echo", fn, price=1)

    with pytest.raises(AgentMeshValueError, match="text"):
        await service.run(_ctx(), '{"txt": "x"}')
    assert called is False


@pytest.mark.parametrize("value", ["", "   \n\t", [], {}, None])
def test_check_result_rejects_empty(value: Any) -> None:
    ok, why = check_result(value, None)

    assert ok is False
    assert why in ("result is empty", "result is blank")


def test_check_result_blank_string_is_blank() -> None:
    assert check_result("  ", None) == (False, "result is blank")


@pytest.mark.parametrize("value", ["x", ["a"], {"a": 1}, 0, False])
def test_check_result_accepts_non_empty(value: Any) -> None:
    assert check_result(value, None) == (True, "")


def test_check_result_custom_check_false_fails() -> None:
    assert check_result("short", lambda v: len(v) > 10) == (
        False,
        "result failed the service's check",
    )


def test_check_result_custom_check_raising_fails_with_message() -> None:
    def boom(value: Any) -> bool:
        raise RuntimeError("checker exploded")

    ok, why = check_result("x", boom)

    assert ok is False
    assert "RuntimeError" in why
    assert "checker exploded" in why


def test_check_result_custom_check_not_run_on_empty() -> None:
    calls: list[Any] = []

    def check(value: Any) -> bool:
        calls.append(value)
        return True

    assert check_result("", check)[0] is False
    assert calls == []


def test_check_result_custom_check_true_passes() -> None:
    assert check_result("long enough text", lambda v: len(v) > 10) == (True, "")


@pytest.mark.parametrize("text", ['""', '"   "', "null"])
def test_accepts_result_rejects_empty_strings(text: str) -> None:
    service = Service.from_function("echo", _echo, price=1)

    ok, why = service.accepts_result(text)

    assert ok is False
    assert why


def test_accepts_result_rejects_empty_list() -> None:
    async def split(ctx: Any, text: str) -> list[str]:
        return text.split()

    service = Service.from_function("split", split, price=1)

    assert service.accepts_result("[]") == (False, "result is empty")
    assert service.accepts_result('["a"]') == (True, "")


def test_accepts_result_rejects_wrong_type() -> None:
    service = Service.from_function("echo", _echo, price=1)

    ok, why = service.accepts_result("[1, 2]")

    assert ok is False
    assert why.startswith("result is not a valid")


def test_accepts_result_rejects_invalid_json() -> None:
    service = Service.from_function("echo", _echo, price=1)

    ok, _why = service.accepts_result("hello")

    assert ok is False


def test_accepts_result_runs_custom_check() -> None:
    service = Service.from_function("echo", _echo, price=1, check=lambda v: v.startswith("ok"))

    assert service.accepts_result('"ok fine"') == (True, "")
    assert service.accepts_result('"nope"') == (False, "result failed the service's check")


def test_accepts_result_custom_check_raising_fails() -> None:
    service = Service.from_function("echo", _echo, price=1, check=lambda v: v["missing"])

    ok, why = service.accepts_result('"text"')

    assert ok is False
    assert "TypeError" in why


async def test_run_output_is_accepted_by_accepts_result() -> None:
    service = Service.from_function("echo", _echo, price=1)

    text = await service.run(_ctx(), '{"text": "round trip"}')

    assert service.accepts_result(text) == (True, "")


# ---------------------------------------------------------------- records


@pytest.fixture
def records(tmp_path: Path) -> Iterator[AgentRecords]:
    store = AgentRecords(tmp_path / "agents" / "alice" / "agent.db")
    yield store
    store.close()


def test_records_creates_its_folder(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "agent" / "agent.db"
    store = AgentRecords(path)
    try:
        assert path.exists()
    finally:
        store.close()


def test_start_task_is_idempotent(records: AgentRecords) -> None:
    records.start_task("c1", "provider", "echo", peer="0xpeer")
    records.update_task("c1", state="proposed")
    records.start_task("c1", "requester", "other", peer="0xother")

    task = records.task("c1")
    assert task is not None
    assert (task.role, task.service, task.peer) == ("provider", "echo", "0xpeer")
    assert task.state == "proposed"
    assert task.status == "active"
    assert len(records.tasks()) == 1


def test_update_task_changes_fields(records: AgentRecords) -> None:
    records.start_task("c1", "requester", "echo")
    before = records.task("c1")
    assert before is not None

    records.update_task("c1", state="funded", price=LIST, job_id=7, detail="ok")

    after = records.task("c1")
    assert after is not None
    assert (after.state, after.price, after.job_id, after.detail) == ("funded", LIST, 7, "ok")
    assert after.updated_ms >= before.updated_ms
    assert after.created_ms == before.created_ms


def test_update_unknown_task_is_ignored(records: AgentRecords) -> None:
    records.update_task("missing", state="x")

    assert records.task("missing") is None
    assert records.tasks() == []


def test_tasks_filter_by_status(records: AgentRecords) -> None:
    for conversation in ("c1", "c2", "c3"):
        records.start_task(conversation, "provider", "echo")
    records.update_task("c2", status="done")
    records.update_task("c3", status="failed")

    assert {t.conversation for t in records.tasks()} == {"c1", "c2", "c3"}
    assert [t.conversation for t in records.tasks(status="active")] == ["c1"]
    assert [t.conversation for t in records.tasks(status="done")] == ["c2"]
    assert [t.conversation for t in records.tasks(status="failed")] == ["c3"]
    assert records.tasks(status="cancelled") == []


def test_records_survive_reopen(tmp_path: Path) -> None:
    path = tmp_path / "agent.db"
    first = AgentRecords(path)
    first.start_task("c1", "provider", "echo")
    pending = first.request_approval("c1", LIST, "pay")
    first.close()

    second = AgentRecords(path)
    try:
        assert second.task("c1") is not None
        assert second.request_approval("c1", 1, "other").id == pending.id
    finally:
        second.close()


def test_request_approval_is_idempotent_while_not_applied(records: AgentRecords) -> None:
    first = records.request_approval("c1", LIST, "pay 0.05 mUSD")
    second = records.request_approval("c1", 999, "something else")

    assert second.id == first.id
    assert (second.amount, second.description) == (LIST, "pay 0.05 mUSD")
    assert first.status == "pending"
    assert first.applied is False
    assert len(records.approvals()) == 1


def test_request_approval_is_per_conversation(records: AgentRecords) -> None:
    first = records.request_approval("c1", 1, "a")
    second = records.request_approval("c2", 2, "b")

    assert first.id != second.id
    assert len(records.approvals(status="pending")) == 2


def test_request_approval_returns_decided_row_until_applied(records: AgentRecords) -> None:
    row = records.request_approval("c1", 1, "a")
    records.decide(row.id, approved=True)

    again = records.request_approval("c1", 1, "a")

    assert again.id == row.id
    assert again.status == "approved"


def test_decide_approves(records: AgentRecords) -> None:
    row = records.request_approval("c1", LIST, "pay")

    decided = records.decide(row.id, approved=True)

    assert decided.status == "approved"
    assert decided.decided_ms is not None
    assert [r.id for r in records.approvals(status="approved")] == [row.id]
    assert records.approvals(status="pending") == []


def test_decide_rejects(records: AgentRecords) -> None:
    row = records.request_approval("c1", LIST, "pay")

    decided = records.decide(row.id, approved=False)

    assert decided.status == "rejected"
    assert [r.id for r in records.approvals(status="rejected")] == [row.id]


@pytest.mark.parametrize("approved", [True, False])
def test_decide_twice_raises(records: AgentRecords, approved: bool) -> None:
    row = records.request_approval("c1", LIST, "pay")
    records.decide(row.id, approved=approved)

    with pytest.raises(AgentMeshValueError, match="already"):
        records.decide(row.id, approved=not approved)
    assert records.approvals()[0].status == ("approved" if approved else "rejected")


def test_decide_unknown_id_raises(records: AgentRecords) -> None:
    with pytest.raises(AgentMeshValueError, match="unknown approval id 'nope'"):
        records.decide("nope", approved=True)


def test_decided_unapplied_and_mark_applied(records: AgentRecords) -> None:
    approved = records.request_approval("c1", 1, "a")
    rejected = records.request_approval("c2", 2, "b")
    pending = records.request_approval("c3", 3, "c")
    records.decide(approved.id, approved=True)
    records.decide(rejected.id, approved=False)

    assert {r.id for r in records.decided_unapplied()} == {approved.id, rejected.id}

    records.mark_applied(approved.id)

    assert [r.id for r in records.decided_unapplied()] == [rejected.id]
    records.mark_applied(rejected.id)
    assert records.decided_unapplied() == []
    assert [r.id for r in records.approvals(status="pending")] == [pending.id]


def test_mark_applied_unknown_id_is_ignored(records: AgentRecords) -> None:
    records.mark_applied("nope")

    assert records.approvals() == []


def test_new_approval_after_mark_applied(records: AgentRecords) -> None:
    first = records.request_approval("c1", 1, "a")
    records.decide(first.id, approved=True)
    records.mark_applied(first.id)

    second = records.request_approval("c1", 2, "b")

    assert second.id != first.id
    assert second.status == "pending"
    assert second.amount == 2
    assert len(records.approvals()) == 2


def _agent_records(home: Path, name: str) -> AgentRecords:
    return AgentRecords(home / "agents" / name / "agent.db")


def test_find_approval_across_agents(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ids: dict[str, str] = {}
    for name in ("alice", "bob", "carol"):
        store = _agent_records(home, name)
        ids[name] = store.request_approval(f"conv-{name}", 1, name).id
        store.close()

    for name in ("alice", "bob", "carol"):
        found, row = find_approval(home, ids[name])
        try:
            assert row.id == ids[name]
            assert row.description == name
            assert found.path == home / "agents" / name / "agent.db"
            found.decide(row.id, approved=True)
        finally:
            found.close()

    bob = _agent_records(home, "bob")
    try:
        assert bob.approvals()[0].status == "approved"
    finally:
        bob.close()


def test_find_approval_unknown_id_lists_pending(tmp_path: Path) -> None:
    home = tmp_path / "home"
    alice = _agent_records(home, "alice")
    pending = alice.request_approval("c1", 1, "a").id
    decided = alice.request_approval("c2", 1, "b").id
    alice.decide(decided, approved=False)
    alice.close()
    bob = _agent_records(home, "bob")
    bob_pending = bob.request_approval("c3", 1, "c").id
    bob.close()

    with pytest.raises(AgentMeshValueError, match="unknown approval id 'nope'") as info:
        find_approval(home, "nope")

    message = info.value.user_message
    assert f"{pending} (alice)" in message
    assert f"{bob_pending} (bob)" in message
    assert decided not in message


def test_find_approval_without_agents(tmp_path: Path) -> None:
    with pytest.raises(AgentMeshValueError, match="pending approvals: none"):
        find_approval(tmp_path, "nope")


# ---------------------------------------------------------------- rank


def _proposal(provider: str, price: int, latency_ms: int = 10) -> dict[str, Any]:
    return {"provider": provider, "price": price, "latency_ms": latency_ms}


def test_rank_filters_unaffordable_and_non_positive() -> None:
    proposals = [
        _proposal("0xA", 101),
        _proposal("0xB", 0),
        _proposal("0xC", -5),
        _proposal("0xD", 100),
        _proposal("0xE", 1),
    ]

    assert [p["provider"] for p in rank(proposals, budget=100)] == ["0xE", "0xD"]


def test_rank_sorts_by_price_then_latency() -> None:
    proposals = [
        _proposal("0xA", 50, latency_ms=5),
        _proposal("0xB", 40, latency_ms=90),
        _proposal("0xC", 40, latency_ms=20),
    ]

    assert [p["provider"] for p in rank(proposals, budget=100)] == ["0xC", "0xB", "0xA"]


def test_rank_ties_break_on_address_case_insensitively() -> None:
    lower = _proposal("0xaaaa", 40)
    upper = _proposal("0xBBBB", 40)
    mixed = _proposal("0xAbCd", 40)

    ranked = rank([upper, mixed, lower], budget=100)

    assert [p["provider"] for p in ranked] == ["0xaaaa", "0xAbCd", "0xBBBB"]
    assert rank([lower, mixed, upper], budget=100) == ranked


def test_rank_empty() -> None:
    assert rank([], budget=100) == []
    assert rank([_proposal("0xA", 5)], budget=4) == []


def test_rank_does_not_mutate_input() -> None:
    proposals = [_proposal("0xB", 2), _proposal("0xA", 1)]
    copy = [dict(p) for p in proposals]

    rank(proposals, budget=10)

    assert proposals == copy


# ---------------------------------------------------------------- negotiation


CONVERSATION = bytes(range(16))
INPUT_SHA = sha256_hex('{"text":"hi"}')


def test_terms_hash_is_deterministic() -> None:
    first = terms_hash(CONVERSATION, "echo", INPUT_SHA, LIST)

    assert first == terms_hash(CONVERSATION, "echo", INPUT_SHA, LIST)
    assert isinstance(first, bytes)
    assert len(first) == 32


@pytest.mark.parametrize(
    "changed",
    [
        (bytes(16), "echo", INPUT_SHA, LIST),
        (CONVERSATION, "echo2", INPUT_SHA, LIST),
        (CONVERSATION, "echo", sha256_hex("other"), LIST),
        (CONVERSATION, "echo", INPUT_SHA, LIST + 1),
    ],
)
def test_terms_hash_changes_with_each_term(changed: tuple[bytes, str, str, int]) -> None:
    assert terms_hash(*changed) != terms_hash(CONVERSATION, "echo", INPUT_SHA, LIST)


def test_canonical_json_ignores_key_order() -> None:
    first = {"b": 1, "a": {"y": [1, 2], "x": "é"}}
    second = {"a": {"x": "é", "y": [1, 2]}, "b": 1}

    assert canonical_json(first) == canonical_json(second)
    assert canonical_json(first) == '{"a":{"x":"é","y":[1,2]},"b":1}'
    assert sha256_hex(canonical_json(first)) == sha256_hex(canonical_json(second))


def test_sha256_hex() -> None:
    assert sha256_hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"


def _card() -> AgentCard:
    key = os.urandom(32)
    return AgentCard(
        address=Account.from_key(key).address,
        name="requester",
        endpoint="tcp://127.0.0.1:5555",
        presence_endpoint="tcp://127.0.0.1:5556",
        curve_key=CurveKeys.from_wallet_key(key).public.decode(),
        issued_ms=0,
    ).signed(key)


def _call(**changes: Any) -> CallForProposals:
    fields: dict[str, Any] = {
        "service": "echo",
        "input": '{"text":"hi"}',
        "input_sha256": INPUT_SHA,
        "budget": LIST,
        "token": "0x" + "22" * 20,
        "deadline_s": 60,
        "card": _card(),
    }
    fields.update(changes)
    return CallForProposals(**fields)


def test_call_for_proposals_valid_roundtrip() -> None:
    call = _call()

    assert call.card.verify() == call.card.address
    assert CallForProposals.decode(call.encode()) == call


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "ab" * 31,
        "ab" * 33,
        INPUT_SHA.upper(),
        "g" * 64,
        "0x" + "ab" * 31,
    ],
)
def test_call_for_proposals_rejects_bad_input_sha256(bad: str) -> None:
    with pytest.raises(ValidationError, match="input_sha256"):
        _call(input_sha256=bad)


@pytest.mark.parametrize("deadline_s", [-1, 0, 9])
def test_call_for_proposals_rejects_short_deadline(deadline_s: int) -> None:
    with pytest.raises(ValidationError, match="deadline_s"):
        _call(deadline_s=deadline_s)


def test_call_for_proposals_deadline_bounds() -> None:
    assert _call(deadline_s=10).deadline_s == 10
    assert _call(deadline_s=7 * 24 * 3600).deadline_s == 7 * 24 * 3600
    with pytest.raises(ValidationError, match="deadline_s"):
        _call(deadline_s=7 * 24 * 3600 + 1)


@pytest.mark.parametrize(
    "changes",
    [{"budget": 0}, {"token": "0x1234"}, {"service": ""}, {"surprise": 1}],
)
def test_call_for_proposals_rejects_other_bad_fields(changes: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        _call(**changes)


def test_a_settled_outcome_is_built_as_the_result_type() -> None:
    from dataclasses import dataclass

    from pydantic import BaseModel

    from agentmesh.agents.outcome import TaskOutcome

    class Summary(BaseModel):
        text: str
        words: int

    @dataclass
    class Pair:
        left: int
        right: int

    state = {"phase": "settled", "result": '{"text": "hi", "words": 1}'}
    assert TaskOutcome.from_state("c", state, Summary).result == Summary(text="hi", words=1)
    pair = {"phase": "settled", "result": '{"left": 1, "right": 2}'}
    assert TaskOutcome.from_state("c", pair, Pair).result == Pair(1, 2)
    assert TaskOutcome.from_state("c", pair).result == {"left": 1, "right": 2}
    # Not settled: the raw result stays (it may not be of the type at all).
    disputed = {"phase": "disputed", "result": '"not a pair"'}
    assert TaskOutcome.from_state("c", disputed, Pair).result == "not a pair"


def test_a_dataclass_result_type_passes_the_delivery_check() -> None:
    from dataclasses import dataclass

    @dataclass
    class Pair:
        left: int
        right: int

    assert check_result({"left": 1, "right": 2}, None, Pair) == (True, "")
    ok, why = check_result({"left": "1", "right": 2}, None, Pair)
    assert not ok and "left" in why  # strict: "1" is not an int
