"""Discovery and presence: bootstrap, gossip, heartbeats, liveness.

- **Bootstrap**: ``Hello(our card)`` to each ``<curve key>@tcp://host:port`` in the
  config; the answer ``Peers(cards)`` seeds the table.
- **Gossip**: every new peer gets our ``Hello`` (so it learns us), and every
  ``gossip_s`` a few random peers are asked again, spreading cards transitively.
- **Presence**: each node publishes a signed ``Heartbeat`` on its PUB socket every
  ``heartbeat_s``; we subscribe to every known peer. A peer silent for
  ``down_after_missed`` beats is marked down, after ``remove_after_missed`` removed. A
  node that stops publishes a signed ``Goodbye``: its peers mark it down at once
  instead of waiting for missed beats (and stop greeting it).
- **Extra sources** (the on-chain registry) supply bootstrap addresses the same way, at
  start and again on ``refresh()`` (when an agent looks for a peer it does not know:
  one that restarted on a new endpoint, or registered later).

Every card is verified against its wallet signature before it enters the table, and a
``Hello`` may only introduce its own sender.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import TypeVar

import zmq
from pydantic import Field

from agentmesh.envelope import Envelope, now_ms
from agentmesh.errors import AgentMeshError, PeerUnreachable, ProtocolError, SignatureError
from agentmesh.mesh.card import AgentCard
from agentmesh.mesh.guard import Rejected
from agentmesh.mesh.node import MeshNode
from agentmesh.mesh.reactor import ReactorSocket
from agentmesh.mesh.routes import MESH_PROTOCOL, MESH_VERSION, HandlerContext
from agentmesh.message import Message

log = logging.getLogger("agentmesh.mesh.discovery")
T = TypeVar("T")

MAX_CARDS = 256
GOSSIP_FANOUT = 3
GOODBYE_FLUSH_S = 0.05
REFRESH_GRACE_S = 0.5  # gossip may bring a peer this soon; then read the sources again
BOOTSTRAP_ATTEMPTS = 5  # a configured bootstrap address: it is expected to be up


class Hello(Message):
    """Introduce ourselves; the answer is the peers the other side knows."""

    card: AgentCard


class Peers(Message):
    """Signed cards of the peers a node knows (itself included)."""

    cards: tuple[AgentCard, ...] = Field(default=(), max_length=MAX_CARDS)


class Heartbeat(Message):
    """Presence beacon; ``card_issued_ms`` tells peers when to fetch a newer card."""

    seq: int
    card_issued_ms: int


class Goodbye(Message):
    """Presence: the sender is leaving the mesh (a clean stop)."""


class Ping(Message):
    """Liveness probe any node answers."""

    note: str = Field(default="", max_length=256)


class Pong(Message):
    note: str = ""
    name: str = ""


BootstrapSource = Callable[[], Awaitable[Iterable[str]]]


class Discovery:
    """Keeps a node's peer table filled and current."""

    def __init__(self, node: MeshNode, sources: Iterable[BootstrapSource] = ()) -> None:
        self.node = node
        self.config = node.config
        self.sources = list(sources)
        self._sub: ReactorSocket | None = None
        self._subscribed: set[str] = set()
        self._greeted: set[str] = set()
        self._tasks: list[asyncio.Task[None]] = []
        self._seq = 0
        self._refreshed = float("-inf")  # loop time of the last refresh()
        # Set once every bootstrap address and registry entry has been tried (joined
        # or given up): from then on, a service nobody offers is not coming soon.
        self.joined = asyncio.Event()
        node.on(Hello, protocol=MESH_PROTOCOL, version=MESH_VERSION, replies=(Peers,))(
            self._on_hello
        )
        node.on(Ping, protocol=MESH_PROTOCOL, version=MESH_VERSION, replies=(Pong,))(self._on_ping)

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Start presence and discovery (the node must be started)."""
        self._sub = self.node.subscriber(self._on_presence)
        self._tasks = [
            asyncio.create_task(self._join_all(), name="mesh-join"),
            asyncio.create_task(self._heartbeat_loop(), name="mesh-heartbeat"),
            asyncio.create_task(self._liveness_loop(), name="mesh-liveness"),
            asyncio.create_task(self._gossip_loop(), name="mesh-gossip"),
        ]

    async def stop(self) -> None:
        """Say goodbye on the presence socket, then stop the loops."""
        with contextlib.suppress(RuntimeError, zmq.ZMQError):
            self.node.publish(Goodbye(), protocol=MESH_PROTOCOL, version=MESH_VERSION)
            # PUB sockets do not linger: give the frame a moment to leave.
            await asyncio.sleep(GOODBYE_FLUSH_S)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._sub is not None:
            self._sub.close()
            self._sub = None

    # ------------------------------------------------------------------ learning

    def learn(self, cards: Iterable[AgentCard], source: str) -> list[AgentCard]:
        """Verify and add cards; returns the ones that were new or newer."""
        fresh = []
        for card in cards:
            try:
                card.verify()
            except SignatureError:
                self.node.guard.reject(card.address, "bad_card")
                continue
            if self.node.peers.add(card, source):
                fresh.append(card)
                self._subscribe(card)
        for card in fresh:
            if card.address not in self._greeted and card.address != self.node.address:
                self._greeted.add(card.address)
                task = asyncio.create_task(self._greet(card))
                self._tasks.append(task)
        return fresh

    def _subscribe(self, card: AgentCard) -> None:
        if self._sub is None or card.address == self.node.address:
            return
        key = f"{card.presence_endpoint}|{card.curve_key}"
        if key in self._subscribed:
            return
        if self.config.curve:
            # Options apply to connections made after they are set: one key per connect.
            self._sub.sock.curve_serverkey = card.curve_key.encode()
        self._sub.sock.connect(card.presence_endpoint)
        self._subscribed.add(key)

    def _unsubscribe(self, card: AgentCard) -> None:
        key = f"{card.presence_endpoint}|{card.curve_key}"
        if self._sub is not None and key in self._subscribed:
            self._subscribed.discard(key)
            with contextlib.suppress(zmq.ZMQError):
                self._sub.sock.disconnect(card.presence_endpoint)

    async def _greet(self, card: AgentCard) -> None:
        """Introduce ourselves to a newly learned peer and learn whom it knows."""
        assert self.node.card is not None
        try:
            reply = await self.node.request(
                card,
                Hello(card=self.node.card),
                protocol=MESH_PROTOCOL,
                version=MESH_VERSION,
                expect=(Peers,),
                timeout=self.config.heartbeat_s * 2,
                retries=2,
            )
        except AgentMeshError as exc:
            self._greeted.discard(card.address)
            log.info("could not greet %s: %s", card.address, exc.user_message)
            return
        self.learn(reply.cards, "gossip")

    async def join(self, bootstrap: str, source: str = "bootstrap") -> AgentCard | None:
        """Join through one bootstrap address; returns the bootstrap agent's card."""
        assert self.node.card is not None
        reply, envelope = await self.node.request_endpoint(
            bootstrap,
            Hello(card=self.node.card),
            protocol=MESH_PROTOCOL,
            version=MESH_VERSION,
            expect=(Peers,),
            timeout=self.config.heartbeat_s * 2,
        )
        own = next((c for c in reply.cards if c.address == envelope.sender), None)
        if own is not None:
            self._greeted.add(own.address)  # it knows us now: no Hello back needed
        self.learn(reply.cards, source)
        return own

    async def _join_all(self) -> None:
        """Join through every bootstrap address at once.

        Configured addresses are retried (they are expected to come up); registry
        entries get one try each, in parallel, since an entry may belong to an agent
        that exited without deregistering (killed): a dead entry then costs one
        timeout beside the live ones, never a queue of retries in front of them.
        """
        addresses = dict.fromkeys(self.config.bootstrap, "bootstrap")
        for source in self.sources:
            try:
                for address in await source():
                    addresses.setdefault(address, "registry")
            except Exception as exc:  # a broken source must not stop the others
                log.warning("bootstrap source failed: %s", exc)
        own = self.node.card.bootstrap_address if self.node.card is not None else None
        try:
            await asyncio.gather(
                *(
                    self._join_with_retries(address, label)
                    for address, label in addresses.items()
                    if address != own
                )
            )
        finally:
            self.joined.set()

    async def refresh(self, min_interval_s: float = 2.0) -> int:
        """Read the extra sources (the registry) again and join every address not
        already a live peer's: how an agent finds a peer that restarted on a new
        endpoint, or one that registered after this node started and never greeted
        it. At most once per ``min_interval_s``; returns how many were joined."""
        loop = asyncio.get_running_loop()
        if not self.joined.is_set() or loop.time() - self._refreshed < min_interval_s:
            return 0  # the first join is still under way, or a refresh was just made
        self._refreshed = loop.time()
        live = {r.card.bootstrap_address for r in self.node.peers.all() if r.state == "up"}
        if self.node.card is not None:
            live.add(self.node.card.bootstrap_address)
        addresses: set[str] = set()
        for source in self.sources:
            try:
                addresses.update(a for a in await source() if a not in live)
            except Exception as exc:  # a broken source must not stop the others
                log.warning("bootstrap source failed: %s", exc)
        joined = await asyncio.gather(
            *(self.join(address, "registry") for address in addresses), return_exceptions=True
        )
        return sum(1 for result in joined if not isinstance(result, BaseException))

    async def wait_for(
        self, probe: Callable[[], T | None], timeout: float, failure: Callable[[], str]
    ) -> T:
        """Poll ``probe`` (a lookup in the peer table) until it returns something; after
        ``REFRESH_GRACE_S`` without it, the sources are read again (``refresh``): the
        peer may have restarted on a new endpoint. ``PeerUnreachable`` with
        ``failure()`` after ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        start = loop.time()
        while (found := probe()) is None:
            now = loop.time()
            if now >= start + timeout:
                raise PeerUnreachable(failure())
            if now >= start + REFRESH_GRACE_S:
                await self.refresh()
            await asyncio.sleep(0.05)
        return found

    async def _join_with_retries(self, address: str, label: str) -> None:
        attempts = BOOTSTRAP_ATTEMPTS if label == "bootstrap" else 1
        for attempt in range(attempts):
            try:
                await self.join(address, label)
                return
            except ProtocolError as exc:  # malformed address: retrying cannot help
                log.warning("bootstrap %s unusable: %s", address, exc.user_message)
                return
            except AgentMeshError as exc:
                log.info(
                    "%s %s failed (attempt %d of %d): %s",
                    label,
                    address,
                    attempt + 1,
                    attempts,
                    exc.user_message,
                )
                if attempt + 1 < attempts:
                    await asyncio.sleep(self.config.heartbeat_s)

    # ------------------------------------------------------------------ handlers

    def _on_hello(self, ctx: HandlerContext, hello: Hello) -> Peers:
        if hello.card.address != ctx.sender:
            raise SignatureError("a Hello may only introduce its own sender")
        self._greeted.add(hello.card.address)  # it introduced itself: it knows us
        self.learn([hello.card], "gossip")
        cards = [r.card for r in self.node.peers.all() if r.state == "up"]
        return Peers(cards=tuple(cards[:MAX_CARDS]))

    def _on_ping(self, ctx: HandlerContext, ping: Ping) -> Pong:
        return Pong(note=ping.note, name=self.node.name)

    # ------------------------------------------------------------------ presence

    async def _heartbeat_loop(self) -> None:
        node = self.node
        while True:
            assert node.card is not None
            self._seq += 1
            beat = Heartbeat(seq=self._seq, card_issued_ms=node.card.issued_ms)
            node.publish(beat, protocol=MESH_PROTOCOL, version=MESH_VERSION)
            await asyncio.sleep(self.config.heartbeat_s)

    def _on_presence(self, batch: list[list[bytes]]) -> None:
        for parts in batch:
            try:
                envelope = self.node.admit("presence", parts[-1], broadcast_ok=True)
            except Rejected:
                continue
            self._on_heartbeat(envelope)

    def _on_heartbeat(self, envelope: Envelope) -> None:
        node = self.node
        if envelope.protocol == MESH_PROTOCOL and envelope.schema_digest == (
            Goodbye.schema_digest()
        ):
            self._on_goodbye(envelope.sender)
            return
        if (
            envelope.protocol != MESH_PROTOCOL
            or envelope.schema_digest != Heartbeat.schema_digest()
        ):
            node.guard.reject(envelope.sender, "bad_heartbeat")
            return
        beat = Heartbeat.decode(envelope.payload)
        record = node.peers.get(envelope.sender)
        if record is None:
            return
        node.counters["heartbeats"] += 1
        node.peers.seen(envelope.sender, now_ms())
        if beat.card_issued_ms > record.card.issued_ms:
            self._greeted.discard(envelope.sender)
            task = asyncio.create_task(self._greet(record.card))
            self._tasks.append(task)

    def _on_goodbye(self, sender: str) -> None:
        """A peer left: down now (the table keeps its card; a later beat revives it)."""
        record = self.node.peers.get(sender)
        if record is None or record.state != "up":
            return
        self.node.peers.mark(sender, "down")
        self._greeted.discard(sender)
        self.node.counters["peers_left"] += 1

    async def _liveness_loop(self) -> None:
        node = self.node
        interval = self.config.heartbeat_s
        while True:
            await asyncio.sleep(interval / 2)
            now = now_ms()
            for record in node.peers.all():
                if record.address == node.address:
                    continue
                missed = (now - record.last_seen_ms) / (interval * 1000)
                if missed >= self.config.remove_after_missed:
                    node.forget(record.address)
                    self._unsubscribe(record.card)
                    self._greeted.discard(record.address)
                    node.counters["peers_removed"] += 1
                elif missed >= self.config.down_after_missed and record.state == "up":
                    node.peers.mark(record.address, "down")
                    node.counters["peers_down"] += 1
            self._tasks = [t for t in self._tasks if not t.done()]

    async def _gossip_loop(self) -> None:
        node = self.node
        while True:
            await asyncio.sleep(self.config.gossip_s * random.uniform(0.8, 1.2))
            live = [r for r in node.peers.all() if r.address != node.address and r.state == "up"]
            for record in random.sample(live, min(GOSSIP_FANOUT, len(live))):
                self._greeted.add(record.address)
                task = asyncio.create_task(self._greet(record.card))
                self._tasks.append(task)


async def wait_for_peers(node: MeshNode, count: int, timeout: float) -> bool:
    """Wait until ``node`` knows ``count`` live agents (itself included)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if sum(1 for r in node.peers.all() if r.state == "up") >= count:
            return True
        await asyncio.sleep(0.05)
    return False
