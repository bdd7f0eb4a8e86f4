"""``PricingPacer``: how long a pricing decision may wait, from the measured cost."""

from __future__ import annotations

import asyncio

import pytest

from agentmesh.agents.pricing import MIN_WAIT_S, WAIT_FACTOR, PricingPacer, warm_up_pricing
from agentmesh.agents.service import Service, ServiceContext
from agentmesh.errors import ModelError
from agentmesh.testing import FakeChatModel
from tests.helpers import eventually


def test_unmeasured_waits_the_configured_limit() -> None:
    assert PricingPacer(5.0).wait_s() == 5.0


def test_measured_cost_bounds_the_wait() -> None:
    pacer = PricingPacer(5.0, cost_s=0.5)
    assert pacer.wait_s() == pytest.approx(WAIT_FACTOR * 0.5)
    pacer.in_flight = 2  # the next call queues behind two: expected 1.5 s
    assert pacer.wait_s() == pytest.approx(min(5.0, WAIT_FACTOR * 1.5))


def test_a_fast_model_still_gets_the_minimum_wait() -> None:
    assert PricingPacer(5.0, cost_s=0.01).wait_s() == MIN_WAIT_S
    assert PricingPacer(0.2, cost_s=0.01).wait_s() == 0.2  # never above the limit


def test_a_queue_longer_than_the_limit_means_the_rules_decide_now() -> None:
    pacer = PricingPacer(2.0, cost_s=0.6, in_flight=3)  # 4 x 0.6 = 2.4 s > 2 s
    assert pacer.wait_s() is None
    pacer.in_flight = 2  # 1.8 s: still worth waiting for
    assert pacer.wait_s() == 2.0


def test_an_idle_model_is_asked_even_if_it_measured_slow() -> None:
    # Measured on a busy machine: asking again is how the cost gets measured anew.
    assert PricingPacer(2.0, cost_s=9.0).wait_s() == 2.0


async def _answer(value: str, delay_s: float) -> str:
    await asyncio.sleep(delay_s)
    return value


async def test_only_calls_that_find_the_model_idle_are_measured() -> None:
    pacer = PricingPacer(5.0)
    first = asyncio.ensure_future(pacer.ask(_answer("a", 0.02), 5.0))
    await asyncio.sleep(0)
    second = asyncio.ensure_future(pacer.ask(_answer("b", 0.02), 5.0))  # queued behind
    await asyncio.sleep(0)
    assert pacer.in_flight == 2
    assert await asyncio.gather(first, second) == ["a", "b"]
    assert pacer.in_flight == 0 and pacer.calls == 1


async def test_an_abandoned_call_stays_in_flight_until_it_ends_and_is_measured() -> None:
    pacer = PricingPacer(5.0)
    with pytest.raises(TimeoutError):
        await pacer.ask(_answer("late", 0.2), 0.01)
    assert pacer.in_flight == 1  # the model is still busy with it
    assert pacer.calls == 0
    await eventually(lambda: pacer.in_flight, lambda n: n == 0, timeout=5)
    assert pacer.in_flight == 0 and pacer.calls == 1
    assert (pacer.cost_s or 0) >= 0.2


async def test_a_failed_call_is_not_measured() -> None:
    pacer = PricingPacer(5.0)

    async def broken() -> str:
        raise ModelError("broken")

    with pytest.raises(ModelError):
        await pacer.ask(broken(), 5.0)
    assert (pacer.in_flight, pacer.calls, pacer.cost_s) == (0, 0, None)


async def test_an_unmeasured_call_is_not_recorded() -> None:
    pacer = PricingPacer(5.0)
    assert await pacer.ask(_answer("x", 0.0), 5.0, measure=False) == "x"
    assert pacer.calls == 0 and pacer.cost_s is None


def test_the_average_moves_toward_new_measurements() -> None:
    pacer = PricingPacer(5.0)
    pacer.record(1.0)
    pacer.record(0.0)
    assert 0.0 < (pacer.cost_s or 0) < 1.0


def _service(name: str) -> Service:
    async def run(ctx: ServiceContext, text: str) -> str:
        return text

    return Service.from_function(name, run, price="0.05 mUSD")


async def test_warm_up_prices_each_service_twice_and_measures_the_second() -> None:
    answer = {"action": "propose", "price": 0.05, "reason": "budget_covers_price"}
    model = FakeChatModel(decisions=[answer] * 4, delay_s=0.01)
    pacer = PricingPacer(5.0)
    await warm_up_pricing(model, {"a": _service("a"), "b": _service("b")}, pacer)
    structured = [call for kind, call in model.calls if kind == "structured"]
    assert len(structured) == 4
    assert pacer.calls == 2 and pacer.cost_s is not None and pacer.cost_s >= 0.01


async def test_a_failing_warm_up_leaves_the_limit(caplog: pytest.LogCaptureFixture) -> None:
    model = FakeChatModel(decisions=[ModelError("no model file")])
    pacer = PricingPacer(5.0)
    await warm_up_pricing(model, {"a": _service("a")}, pacer)
    assert pacer.cost_s is None and pacer.wait_s() == 5.0
    assert "model warm-up failed" in caplog.text
