"""``CachedReputation``: registry reads shared for a few seconds, dropped on feedback."""

from __future__ import annotations

from typing import Any

import pytest

from agentmesh.agents import reputation
from agentmesh.agents.reputation import CachedReputation


class CountingRegistry:
    def __init__(self) -> None:
        self.reads: list[str] = []
        self.scores: dict[str, tuple[int, int]] = {}
        self.feedback: list[int] = []

    async def reputation(self, agent: str) -> tuple[int, int]:
        self.reads.append(agent)
        return self.scores.get(agent.lower(), (0, 0))

    async def give_feedback(self, job_id: int, score: int, comment_hash: bytes) -> Any:
        self.feedback.append(job_id)
        self.scores["0xaa"] = (1, score)
        return "receipt"


async def test_reads_are_shared_within_the_ttl_then_refreshed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [100.0]
    monkeypatch.setattr(reputation.time, "monotonic", lambda: now[0])
    registry = CountingRegistry()
    registry.scores["0xaa"] = (2, 150)
    cached = CachedReputation(registry, ttl_s=5)
    assert await cached.reputation("0xAA") == (2, 150)
    now[0] += 4.9
    assert await cached.reputation("0xaa") == (2, 150)  # same agent, any spelling
    assert registry.reads == ["0xAA"]
    registry.scores["0xaa"] = (3, 250)
    now[0] += 0.2
    assert await cached.reputation("0xaa") == (3, 250)
    assert len(registry.reads) == 2


async def test_feedback_through_it_drops_what_it_holds() -> None:
    registry = CountingRegistry()
    cached = CachedReputation(registry, ttl_s=60)
    assert await cached.reputation("0xaa") == (0, 0)
    assert await cached.give_feedback(7, 90, b"\0" * 32) == "receipt"
    assert registry.feedback == [7]
    assert await cached.reputation("0xaa") == (1, 90)
