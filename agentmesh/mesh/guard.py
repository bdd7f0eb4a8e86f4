"""Hardening for inbound traffic: replay cache, clock checks, rate limits, counters.

Every rejection is counted by reason and logged at most once per peer and reason per
minute, so a hostile peer cannot flood the log; the receive loop never stops for one.
"""

from __future__ import annotations

import logging
import time
from collections import Counter, OrderedDict
from dataclasses import dataclass

from agentmesh.config import MeshConfig
from agentmesh.errors import ReplayError

log = logging.getLogger("agentmesh.mesh")


@dataclass
class _Bucket:
    tokens: float
    stamp: float


class Rejected(Exception):  # noqa: N818 - a control-flow signal, not an error type
    """Internal: a frame was rejected for ``reason`` (already counted)."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class ReplayRejected(Rejected, ReplayError):
    """A frame rejected as a replay: its envelope has expired (a copy of an old message).

    Both the loop's ``Rejected`` signal (same reason codes and counters) and the public
    :class:`~agentmesh.errors.ReplayError`, for callers of ``MeshNode.admit``.
    """

    def __init__(self, reason: str, detail: str = "") -> None:
        ReplayError.__init__(self, f"replayed message rejected: {detail or reason}")
        self.reason = reason
        self.detail = detail


class InboundGuard:
    """Checks that are independent of handlers; one instance per node."""

    def __init__(self, config: MeshConfig, self_address: str) -> None:
        self.config = config
        self.self_address = self_address
        self.counters: Counter[str] = Counter()
        self._seen: OrderedDict[bytes, tuple[int, int]] = OrderedDict()  # id -> (until, created)
        self.evicted_created_ms = 0
        self._buckets: dict[str, _Bucket] = {}
        self._last_log: dict[tuple[str, str], float] = {}

    def reject(self, peer: str, reason: str, detail: str = "", *, replay: bool = False) -> Rejected:
        """Count and (rate-limited) log a rejection; returns the signal to raise.

        ``replay`` marks a replayed message: the signal is then a ``ReplayRejected``.
        """
        self.counters[f"rejected.{reason}"] += 1
        key = (peer, reason)
        now = time.monotonic()
        if now - self._last_log.get(key, -1e9) >= 60.0:
            self._last_log[key] = now
            if len(self._last_log) > 10_000:
                self._last_log.clear()
            log.warning("rejected frame from %s: %s %s", peer, reason, detail)
        return ReplayRejected(reason, detail) if replay else Rejected(reason, detail)

    def check_rate(self, peer: str) -> None:
        """Token bucket per peer; a peer over its rate has its frames dropped."""
        now = time.monotonic()
        bucket = self._buckets.get(peer)
        if bucket is None:
            if len(self._buckets) > 100_000:
                self._buckets.clear()
            bucket = self._buckets[peer] = _Bucket(self.config.burst, now)
        bucket.tokens = min(
            self.config.burst, bucket.tokens + (now - bucket.stamp) * self.config.rate_per_s
        )
        bucket.stamp = now
        if bucket.tokens < 1:
            raise self.reject(peer, "rate_limited")
        bucket.tokens -= 1

    def check_times(self, peer: str, created: int, expires: int, now_ms: int) -> None:
        """Reject a frame from the future, an expired one (a replay) or a bad ttl."""
        skew = self.config.clock_skew_ms
        if created > now_ms + skew:
            raise self.reject(peer, "from_future", f"created {created - now_ms} ms ahead")
        if expires + skew < now_ms:
            # Past its expiry the replay cache no longer holds its id: only this check
            # stops a recorded copy being accepted again.
            raise self.reject(peer, "expired", f"expired {now_ms - expires} ms ago", replay=True)
        if expires < created or expires - created > self.config.max_ttl_ms:
            raise self.reject(peer, "bad_ttl", f"ttl {expires - created} ms")

    def seen(self, message_id: bytes) -> bool:
        """Whether ``message_id`` is in the replay cache (a duplicate or a retry)."""
        return message_id in self._seen

    def remember(self, message_id: bytes, created: int, expires: int, now_ms: int) -> None:
        """Record an id until its expiry (plus skew); older ids are rejected as expired.

        When the cache is full, the oldest ids are dropped even if unexpired;
        ``evicted_created_ms`` then tells the node from which creation time on it must
        ask the store instead (so a late retry still finds its stored reply).
        """
        self._seen[message_id] = (expires + self.config.clock_skew_ms, created)
        while self._seen:
            oldest_id, (until, made) = next(iter(self._seen.items()))
            if until >= now_ms and len(self._seen) <= self.config.replay_cache_size:
                break
            if until >= now_ms:
                self.evicted_created_ms = max(self.evicted_created_ms, made)
            del self._seen[oldest_id]
