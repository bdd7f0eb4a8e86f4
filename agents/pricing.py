"""How long a provider waits for its model's pricing decision: by the measured cost.

A flat timeout is wrong both ways: too short on a slow machine (every decision falls
back to the rules, and each fallback costs the whole timeout), too long on a fast one
(a stuck model holds every call for proposals). ``PricingPacer`` measures what a
pricing call costs on this agent's model (warm-up calls at start, then every call that
finds the model idle) and how many are waiting for the model's single worker, and from
that says how long the next one may take. When the queue alone would take longer than
the configured limit, the rules decide at once instead of queueing behind it.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass
from typing import TypeVar

from agentmesh.agents.decisions import PriceDecision, pricing_prompt
from agentmesh.agents.service import Service
from agentmesh.chat_model import ChatModel
from agentmesh.errors import AgentMeshError

log = logging.getLogger("agentmesh.agent")
T = TypeVar("T")

PRICING_MAX_TOKENS = 48  # the decision's JSON is ~40 tokens under its grammar
WAIT_FACTOR = 3.0  # wait up to this many times the expected time (noise, a busy CPU)
MIN_WAIT_S = 1.0  # never less: timer resolution, a first call after idle
SMOOTHING = 0.3  # weight of the newest measurement in the moving average
WARM_UP_WAIT_S = 120.0  # loading a big model on a slow disk


@dataclass(slots=True)
class PricingPacer:
    """The measured cost of this agent's pricing calls, and the calls in progress."""

    limit_s: float  # the most any decision may wait (``decision_timeout_s``)
    cost_s: float | None = None  # moving average of a call's duration; None: unmeasured
    in_flight: int = 0
    calls: int = 0

    def wait_s(self) -> float | None:
        """How long the next decision may wait for the model; None: do not ask it (the
        calls already queued would take longer than the limit)."""
        if self.cost_s is None:
            return self.limit_s  # nothing measured yet: the configured limit
        expected = (self.in_flight + 1) * self.cost_s
        if expected > self.limit_s and self.in_flight > 0:
            return None
        # An idle model is always asked (at most the limit), so a cost measured on a
        # busy machine is measured again instead of keeping the model silent for good.
        return min(self.limit_s, max(MIN_WAIT_S, WAIT_FACTOR * expected))

    def record(self, seconds: float) -> None:
        """A finished call's duration (only calls that found the model idle: a queued
        call's time includes the calls ahead of it)."""
        self.calls += 1
        if self.cost_s is None:
            self.cost_s = seconds
        else:
            self.cost_s = SMOOTHING * seconds + (1 - SMOOTHING) * self.cost_s

    async def ask(self, call: Awaitable[T], wait_s: float, *, measure: bool = True) -> T:
        """Await the model ``call`` for at most ``wait_s`` (``TimeoutError`` after).

        The call itself runs to its end either way (the model cannot be interrupted
        mid-generation): it counts as in flight until then, and its duration is
        measured even when nobody waits for its answer any more.
        """
        alone = measure and self.in_flight == 0
        self.in_flight += 1
        started = time.perf_counter()
        task = asyncio.ensure_future(call)

        def finished(done: asyncio.Future[T]) -> None:
            self.in_flight -= 1
            if alone and not done.cancelled() and done.exception() is None:
                self.record(time.perf_counter() - started)

        task.add_done_callback(finished)
        return await asyncio.wait_for(asyncio.shield(task), wait_s)


async def warm_up_pricing(
    model: ChatModel, services: Mapping[str, Service], pacer: PricingPacer
) -> None:
    """Load the model and make two pricing calls per service, so the first real call
    for proposals finds the grammar built and the prompt prefix cached, and its cost
    is measured (on the second call). Failures are logged: the rules still price."""
    load = getattr(model, "load", None)  # LocalModel loads lazily
    try:
        if callable(load):
            await load()
        for service in services.values():
            prompt = pricing_prompt(service.name, service.price, service.price, 100)
            # The first call also builds the grammar and caches the prompt's prefix:
            # the second is what a call for proposals will cost.
            for measure in (False, True):
                await pacer.ask(
                    model.structured(prompt, PriceDecision, max_tokens=PRICING_MAX_TOKENS),
                    WARM_UP_WAIT_S,
                    measure=measure,
                )
    except (AgentMeshError, OSError, TimeoutError) as exc:
        log.warning("model warm-up failed (pricing falls back to the rules): %r", exc)
        return
    if pacer.cost_s is not None:
        log.info("pricing call measured at %.3f s", pacer.cost_s)
