"""How a requester ranks proposals: price, reputation, the validators' consensus score
and latency, deterministically."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

UNRATED = 50  # the reputation assumed for a provider nobody has rated yet
UNSCORED = 5_000  # the consensus score assumed for a provider no validator scored
MAX_CONSENSUS = 10_000


@dataclass(frozen=True, slots=True)
class Weights:
    """How proposals are ranked: the lowest weighted score wins."""

    price: float = 1.0  # per budget share
    reputation: float = 0.2  # per missing share of a perfect average score
    latency: float = 0.05  # per second of measured proposal latency
    consensus: float = 0.5  # per missing share of a perfect consensus score


def score(proposal: dict[str, Any], budget: int, weights: Weights) -> float:
    reputation = proposal.get("reputation")
    average = UNRATED if reputation is None else reputation
    consensus = proposal.get("consensus")
    validated = UNSCORED if consensus is None else consensus
    return float(
        weights.price * proposal["price"] / budget
        + weights.reputation * (1 - average / 100)
        + weights.consensus * (1 - validated / MAX_CONSENSUS)
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
