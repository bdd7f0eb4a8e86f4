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


class ChainConsensusScores:
    """Consensus scores from the suite's ``Consensus`` contract: each provider's score in
    the last finalized epoch, cached for ``ttl_s`` (an epoch lasts minutes)."""

    def __init__(self, consensus: Any, from_block: int, ttl_s: float = 30.0) -> None:
        self.consensus = consensus  # a ConsensusClient
        self.from_block = from_block
        self.ttl_s = ttl_s
        self._epoch: tuple[float, int | None] | None = None
        self._scores: dict[tuple[int, str], int | None] = {}

    async def last_finalized(self) -> int | None:
        now = time.monotonic()
        if self._epoch is not None and now - self._epoch[0] < self.ttl_s:
            return self._epoch[1]
        epoch: int | None = await self.consensus.last_finalized(self.from_block)
        self._epoch = (now, epoch)
        return epoch

    async def score(self, provider: str) -> int | None:
        epoch = await self.last_finalized()
        if epoch is None:
            return None
        key = (epoch, provider.lower())
        if key not in self._scores:
            if len(self._scores) > 4096:
                self._scores.clear()
            providers = {p.lower() for p in await self.consensus.providers_of(epoch)}
            scored = provider.lower() in providers
            self._scores[key] = (
                await self.consensus.consensus_of(epoch, provider) if scored else None
            )
        return self._scores[key]
