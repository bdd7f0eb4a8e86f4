"""What a validator asks a provider and how it scores the answers (pure: no I/O).

Two kinds of probe, sent through the normal market like any buyer's calls:

- **Canaries**, answers known without trusting anyone: for an embedding service, a
  triple (anchor, paraphrase, unrelated text). It passes when the anchor asked twice
  comes back the same (a deterministic model does), both are unit vectors of one
  dimension, and the paraphrase is nearer the anchor than the unrelated text is.
- **Re-execution**, for a provider whose card names a model sha256 the validator also
  has: the validator embeds the same text with that model itself and the answer passes
  when its cosine similarity with the validator's is at least ``REEXEC_MIN_COSINE``.

A provider's score (0..10,000, what ``Consensus`` takes) is its canary pass rate times
its re-execution pass rate (1 when it names no model the validator has): garbage fails
the canaries, and a provider serving another model than the one it declares fails
re-execution, so either scores next to nothing.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from dataclasses import dataclass

from agentmesh.wallets.consensus import MAX_SCORE

REEXEC_MIN_COSINE = 0.99
REPEAT_MIN_COSINE = 0.999
UNIT_TOLERANCE = 1e-3

# (anchor, paraphrase, unrelated): the paraphrase means what the anchor means.
CANARIES: tuple[tuple[str, str, str], ...] = (
    (
        "The cat sat on the warm windowsill all afternoon.",
        "All afternoon the cat rested on the sunny window ledge.",
        "Quarterly bond yields rose after the central bank meeting.",
    ),
    (
        "Please reset my account password.",
        "I need to change the password for my account.",
        "The volcano erupted twice during the night.",
    ),
    (
        "It is raining heavily in the city today.",
        "There is a lot of rain falling on the town today.",
        "She compiled the kernel with debugging symbols enabled.",
    ),
    (
        "The train to Berlin leaves at nine in the morning.",
        "At 9 am the train departs for Berlin.",
        "Add two cups of flour and stir the batter slowly.",
    ),
    (
        "My laptop battery drains very quickly.",
        "The battery of my notebook computer runs out fast.",
        "The football match ended in a goalless draw.",
    ),
    (
        "He planted tomatoes and basil in the garden.",
        "Tomatoes and basil were planted in his garden.",
        "The invoice is due at the end of the month.",
    ),
)

# Texts for re-execution: ordinary requests, nothing that marks them as probes.
REEXEC_TEXTS: tuple[str, ...] = (
    "Shipping was fast and the package arrived in perfect condition.",
    "How do I configure a reverse proxy for two web applications?",
    "The meeting has been moved to Thursday afternoon.",
    "Refund requested: the headphones stopped working after a week.",
    "Summary of the quarterly results for the board.",
    "What is the best way to store fresh herbs?",
    "The museum opens late on Fridays during the summer.",
    "Customer asks whether the jacket is available in blue.",
)


@dataclass(frozen=True, slots=True)
class ProbePlan:
    """The calls to make to one provider this epoch."""

    canaries: tuple[tuple[str, str, str], ...]
    reexec: tuple[str, ...]  # empty when the validator does not have the provider's model


def plan_probes(
    rng: random.Random, *, canaries: int, reexec: int, can_reexecute: bool
) -> ProbePlan:
    """Pick this epoch's canaries and re-execution texts at random (a provider cannot
    learn a fixed list from one epoch and special-case it the next)."""
    return ProbePlan(
        canaries=tuple(rng.sample(CANARIES, min(canaries, len(CANARIES)))),
        reexec=tuple(rng.sample(REEXEC_TEXTS, min(reexec, len(REEXEC_TEXTS))))
        if can_reexecute
        else (),
    )


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity; 0 for vectors of different lengths or zero length."""
    if len(a) != len(b) or not a:
        return 0.0
    dot = sum(x * y for x, y in zip(a, b, strict=True))
    norms = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norms if norms > 0 else 0.0


def as_vector(value: object) -> list[float] | None:
    """A provider's answer as a list of floats, or None when it is not one."""
    if not isinstance(value, list) or not value:
        return None
    if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in value):
        return None
    vector = [float(v) for v in value]
    return vector if all(math.isfinite(v) for v in vector) else None


def _unit(vector: list[float]) -> bool:
    return abs(math.sqrt(sum(v * v for v in vector)) - 1.0) <= UNIT_TOLERANCE


def canary_passes(anchor: object, again: object, paraphrase: object, unrelated: object) -> bool:
    """One canary triple's answers (the anchor asked twice) pass: see the module doc."""
    vectors = [as_vector(v) for v in (anchor, again, paraphrase, unrelated)]
    if any(v is None for v in vectors):
        return False
    a, a2, p, u = (v for v in vectors if v is not None)
    if len({len(a), len(a2), len(p), len(u)}) != 1 or not all(map(_unit, (a, a2, p, u))):
        return False
    return cosine(a, a2) >= REPEAT_MIN_COSINE and cosine(a, p) > cosine(a, u)


def reexec_passes(answer: object, own: Sequence[float]) -> bool:
    """The provider's answer matches the validator's own run of the same model."""
    vector = as_vector(answer)
    return vector is not None and cosine(vector, own) >= REEXEC_MIN_COSINE


@dataclass(frozen=True, slots=True)
class ProbeOutcome:
    """What one provider's probes showed this epoch."""

    provider: str
    canaries_passed: int
    canaries: int
    reexec_passed: int
    reexec: int
    failures: tuple[str, ...] = ()  # calls that failed (refused, timed out), in words

    @property
    def score(self) -> int:
        """Canary pass rate x re-execution pass rate, scaled to 0..MAX_SCORE."""
        if self.canaries == 0:
            return 0
        quality = self.canaries_passed / self.canaries
        fidelity = self.reexec_passed / self.reexec if self.reexec else 1.0
        return round(MAX_SCORE * quality * fidelity)
