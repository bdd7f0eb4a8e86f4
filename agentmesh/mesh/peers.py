"""The peer table: one record per known agent, fed by bootstrap, gossip and the registry.

The table is bounded (``max_peers``): anyone can sign a card with a fresh key, so a
flood of them must not grow memory and the store without end. When full, the peer that
is down and was seen longest ago makes room; while every known peer is up, a new card
is refused (peers that keep sending heartbeats are never pushed out by newcomers, and
cards nobody runs go down after a few missed heartbeats, making room again).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agentmesh.mesh.card import AgentCard
from agentmesh.store import PeerRow, Store, services_json


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class PeerRecord:
    """A peer's latest verified card and liveness."""

    card: AgentCard
    source: str
    state: str = "up"
    last_seen_ms: int = field(default_factory=_now_ms)

    @property
    def address(self) -> str:
        return self.card.address


class PeerTable:
    """Verified cards by address; newer cards (by ``issued_ms``) replace older ones."""

    def __init__(
        self,
        self_address: str,
        store: Store | None = None,
        max_peers: int = 10_000,
        on_evict: Callable[[str], None] | None = None,
    ) -> None:
        self.self_address = self_address
        self.store = store
        self.max_peers = max_peers
        self.on_evict = on_evict  # told the address of a peer evicted to make room
        self.refused = 0  # new cards turned away while the table was full
        self._peers: dict[str, PeerRecord] = {}

    def __len__(self) -> int:
        return len(self._peers)

    def __contains__(self, address: object) -> bool:
        return address in self._peers

    def get(self, address: str) -> PeerRecord | None:
        return self._peers.get(address)

    def all(self) -> list[PeerRecord]:
        return sorted(self._peers.values(), key=lambda r: (r.card.name, r.address))

    def add(self, card: AgentCard, source: str) -> bool:
        """Add or refresh a card that was already verified; True if it was new or newer."""
        if card.address == self.self_address and source != "self":
            return False
        known = self._peers.get(card.address)
        if known is not None and known.card.issued_ms >= card.issued_ms:
            # A relayed copy of a card we have says nothing about whether its agent is
            # alive (gossip would keep a dead peer up): liveness comes only from
            # heartbeats and direct traffic, through `seen`.
            return False
        if known is None and source != "self" and not self._make_room():
            self.refused += 1
            return False
        self._peers[card.address] = PeerRecord(card, known.source if known else source)
        if self.store is not None:
            now = _now_ms()
            self.store.upsert_peer(
                PeerRow(
                    address=card.address,
                    name=card.name,
                    endpoint=card.endpoint,
                    presence_endpoint=card.presence_endpoint,
                    curve_key=card.curve_key,
                    services_json=services_json(card.services),
                    model_sha256=card.model_sha256,
                    card_json=card.model_dump_json(),
                    source=self._peers[card.address].source,
                    state="up",
                    first_seen_ms=now,
                    last_seen_ms=now,
                )
            )
        return True

    def _make_room(self) -> bool:
        """Whether a new peer fits, after evicting the longest-unseen down peer if full."""
        if len(self._peers) < self.max_peers:
            return True
        down = [
            r for r in self._peers.values() if r.state != "up" and r.address != self.self_address
        ]
        if not down:
            return False
        victim = min(down, key=lambda r: r.last_seen_ms).address
        self.remove(victim)
        if self.on_evict is not None:
            self.on_evict(victim)
        return True

    def seen(self, address: str, at_ms: int | None = None) -> None:
        record = self._peers.get(address)
        if record is not None:
            record.last_seen_ms = at_ms or _now_ms()
            if record.state != "up":
                self.mark(address, "up")

    def mark(self, address: str, state: str) -> None:
        record = self._peers.get(address)
        if record is not None:
            record.state = state
            if self.store is not None:
                self.store.set_peer_state(address, state)

    def remove(self, address: str) -> None:
        if self._peers.pop(address, None) is not None and self.store is not None:
            self.store.remove_peer(address)

    def offering(self, service: str) -> list[PeerRecord]:
        """Live peers whose card offers ``service``, cheapest first."""
        found = [
            r
            for r in self._peers.values()
            if r.state == "up" and r.address != self.self_address and r.card.offers(service)
        ]
        return sorted(found, key=lambda r: (r.card.offers(service).price, r.address))  # type: ignore[union-attr]

    def sync_last_seen(self) -> None:
        if self.store is not None:
            self.store.touch_peers(
                {r.address: r.last_seen_ms for r in self._peers.values() if r.state == "up"}
            )
