"""Reputation reads for trading, cached for a few seconds.

Every call for proposals makes the provider state its own reputation and the requester
look up each proposer's: two registry reads per purchase that return the same numbers
until the next feedback lands. A value a few seconds old ranks proposals just as well
(the proposal's figure is informative only; the chain stays the truth), so reads are
shared for ``ttl_s``; feedback given through this object drops the cached value of
that provider at once.
"""

from __future__ import annotations

import time
from typing import Any

from agentmesh.agents.context import Registry

REPUTATION_TTL_S = 5.0


class CachedReputation:
    """A :class:`Registry` whose ``reputation`` reads are cached for ``ttl_s``."""

    def __init__(self, registry: Registry, ttl_s: float = REPUTATION_TTL_S) -> None:
        self.registry = registry
        self.ttl_s = ttl_s
        self._cache: dict[str, tuple[float, tuple[int, int]]] = {}

    async def reputation(self, agent: str) -> tuple[int, int]:
        key = agent.lower()
        now = time.monotonic()
        hit = self._cache.get(key)
        if hit is not None and now - hit[0] < self.ttl_s:
            return hit[1]
        value = await self.registry.reputation(agent)
        self._cache[key] = (now, value)
        if len(self._cache) > 4096:  # peers come and go: keep it bounded
            self._cache.clear()
        return value

    async def give_feedback(self, job_id: int, score: int, comment_hash: bytes) -> Any:
        self._cache.clear()  # the rated provider is not named here: start afresh
        return await self.registry.give_feedback(job_id, score, comment_hash)
