"""The replay protections on their own: the guard's id cache and clock checks, then a
node with no store (so nothing but the in-memory cache can catch a replay).

What ``InboundGuard`` promises: an id it remembered is seen until its envelope expires
(plus the allowed clock skew); an envelope past that is rejected as ``expired`` by the
clock check, so dropping an expired id never opens a replay window; the cache holds at
most ``replay_cache_size`` ids, oldest dropped first, and ``evicted_created_ms`` then
tells the node from which creation time on it must ask its store instead.

The guard's per-peer rate limit (a token bucket) is tested here too, on a frozen clock.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import zmq

from agentmesh.config import MeshConfig
from agentmesh.envelope import Envelope, EnvelopeSigner, now_ms
from agentmesh.errors import ReplayError
from agentmesh.mesh import guard as guard_module
from agentmesh.mesh.guard import InboundGuard, Rejected
from agentmesh.mesh.node import MeshNode
from agentmesh.mesh.routes import HandlerContext
from agentmesh.message import Message
from tests.helpers import eventually, raw_dealer

T0 = 1_800_000_000_000  # a fixed "now" in ms: the guard takes time as an argument
TTL = 30_000
SKEW = MeshConfig().clock_skew_ms
PEER = "0x" + "11" * 20
SELF = "0x" + "22" * 20
PROTO = "test.replay"


def new_id() -> bytes:
    return uuid.uuid4().bytes


@pytest.fixture
def guard() -> InboundGuard:
    return InboundGuard(MeshConfig(), SELF)


# ---------------------------------------------------------------------------- the id cache


def test_a_remembered_id_is_seen_and_another_is_not(guard: InboundGuard) -> None:
    first = new_id()
    assert not guard.seen(first)
    guard.remember(first, T0, T0 + TTL, T0)
    assert guard.seen(first)  # the same envelope again: a duplicate
    assert not guard.seen(new_id())  # a new message (new id, new nonce) is not


def test_an_id_is_kept_until_its_expiry_plus_skew(guard: InboundGuard) -> None:
    first = new_id()
    guard.remember(first, T0, T0 + TTL, T0)
    # Expiry happens on the next remember(): right at expires + skew it is still held...
    guard.remember(new_id(), T0, T0 + TTL, T0 + TTL + SKEW)
    assert guard.seen(first)
    # ... one millisecond later it is dropped (the clock check now refuses it instead).
    guard.remember(new_id(), T0, T0 + TTL, T0 + TTL + SKEW + 1)
    assert not guard.seen(first)
    assert guard.evicted_created_ms == 0  # expired, not evicted: the store is not needed


def test_an_id_dropped_on_expiry_is_refused_by_the_clock_check(guard: InboundGuard) -> None:
    """No window between leaving the cache and being too old to admit."""
    first = new_id()
    guard.remember(first, T0, T0 + TTL, T0)
    later = T0 + TTL + SKEW + 1
    guard.remember(new_id(), later, later + TTL, later)
    assert not guard.seen(first)
    with pytest.raises(Rejected) as info:
        guard.check_times(PEER, T0, T0 + TTL, later)
    assert info.value.reason == "expired"


def test_the_cache_is_bounded_and_drops_the_oldest_first() -> None:
    size = 1_000  # the smallest cache the config allows
    guard = InboundGuard(MeshConfig(replay_cache_size=size), "0x" + "22" * 20)
    ids = [new_id() for _ in range(size + 500)]
    for i, message_id in enumerate(ids[:size]):
        guard.remember(message_id, T0 + i, T0 + i + TTL, T0 + i)
    assert all(guard.seen(m) for m in ids[:size])  # full, nothing dropped yet
    assert guard.evicted_created_ms == 0
    for i, message_id in enumerate(ids[size:], start=size):
        guard.remember(message_id, T0 + i, T0 + i + TTL, T0 + i)
    held = [guard.seen(m) for m in ids]
    assert sum(held) == size
    assert held == [False] * 500 + [True] * size  # the oldest 500 went, in order
    # Evicted while still valid: from their creation time on, the node asks its store.
    assert guard.evicted_created_ms == T0 + 499


def test_an_id_dropped_for_space_on_its_last_valid_millisecond_counts_as_evicted() -> None:
    """At ``now == expires + skew`` an id is still unexpired (the clock check admits its
    envelope), so dropping it for space must move ``evicted_created_ms``."""
    size = 1_000
    guard = InboundGuard(MeshConfig(replay_cache_size=size), SELF)
    first = new_id()
    guard.remember(first, T0, T0 + TTL, T0)
    for i in range(1, size):
        guard.remember(new_id(), T0 + i, T0 + i + TTL, T0 + i)
    assert guard.evicted_created_ms == 0  # full, nothing dropped yet
    last_valid = T0 + TTL + SKEW
    guard.remember(new_id(), last_valid, last_valid + TTL, last_valid)
    assert not guard.seen(first)  # dropped for space...
    guard.check_times(PEER, T0, T0 + TTL, last_valid)  # ... while a copy is still admitted
    assert guard.evicted_created_ms == T0  # so the node asks its store from T0 on


# ---------------------------------------------------------------------------- clock checks


def test_an_expired_envelope_is_refused_as_a_replay(guard: InboundGuard) -> None:
    created, expires = T0 - TTL - SKEW - 1, T0 - SKEW - 1
    with pytest.raises(Rejected) as info:
        guard.check_times(PEER, created, expires, T0)
    assert info.value.reason == "expired"
    assert isinstance(info.value, ReplayError)  # what callers of MeshNode.admit catch
    assert guard.counters["rejected.expired"] == 1


def test_an_envelope_expiring_within_the_skew_is_still_admitted(guard: InboundGuard) -> None:
    guard.check_times(PEER, T0 - TTL - SKEW, T0 - SKEW, T0)  # exactly at the limit
    assert not guard.counters


@pytest.mark.parametrize(
    ("created", "expires", "reason"),
    [
        (T0 + SKEW + 1, T0 + SKEW + 1 + TTL, "from_future"),
        (T0, T0 - 1, "bad_ttl"),  # expires before it was created
        (T0, T0 + MeshConfig().max_ttl_ms + 1, "bad_ttl"),  # lives longer than allowed
    ],
    ids=["from-future", "negative-ttl", "ttl-too-long"],
)
def test_clock_checks_refuse_and_count(
    guard: InboundGuard, created: int, expires: int, reason: str
) -> None:
    with pytest.raises(Rejected) as info:
        guard.check_times(PEER, created, expires, T0)
    assert info.value.reason == reason
    assert guard.counters == {f"rejected.{reason}": 1}


def test_the_longest_allowed_ttl_and_the_skew_ahead_are_admitted(guard: InboundGuard) -> None:
    guard.check_times(PEER, T0, T0 + MeshConfig().max_ttl_ms, T0)
    guard.check_times(PEER, T0 + SKEW, T0 + SKEW + TTL, T0)
    assert not guard.counters


def test_a_ttl_of_zero_is_admitted_for_the_skew(guard: InboundGuard) -> None:
    """expires == created is not a bad ttl: such an envelope lives for the clock skew."""
    guard.check_times(PEER, T0, T0, T0)
    guard.check_times(PEER, T0, T0, T0 + SKEW)
    assert not guard.counters
    with pytest.raises(Rejected) as info:
        guard.check_times(PEER, T0, T0, T0 + SKEW + 1)
    assert info.value.reason == "expired"


# ---------------------------------------------------------------------------- rate limits

BURST = 5
RATE = 4.0  # tokens per second: one every 0.25 s (exact in binary floating point)
BUCKET_TABLE_CAP = 100_000  # check_rate resets its table of buckets above this many peers


class FrozenClock:
    """Stands in for the guard module's ``time``: ``monotonic()`` moves only when told."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def monotonic(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FrozenClock:
    frozen = FrozenClock()
    monkeypatch.setattr(guard_module, "time", frozen)
    return frozen


@pytest.fixture
def limiter(clock: FrozenClock) -> InboundGuard:
    return InboundGuard(MeshConfig(burst=BURST, rate_per_s=RATE), SELF)


def passes(guard: InboundGuard, peer: str) -> bool:
    """Whether ``check_rate`` lets a frame from ``peer`` through."""
    try:
        guard.check_rate(peer)
    except Rejected as exc:
        assert exc.reason == "rate_limited"
        return False
    return True


def test_exactly_burst_frames_pass_then_one_per_refill(
    clock: FrozenClock, limiter: InboundGuard
) -> None:
    assert [passes(limiter, PEER) for _ in range(BURST + 2)] == [True] * BURST + [False] * 2
    assert limiter.counters == {"rejected.rate_limited": 2}
    clock.now += 1 / RATE  # one token back
    assert [passes(limiter, PEER) for _ in range(2)] == [True, False]
    clock.now += 3_600  # a long pause refills up to the burst, not beyond
    assert [passes(limiter, PEER) for _ in range(BURST + 1)] == [True] * BURST + [False]


def test_a_flooding_peer_stays_limited_while_new_peers_arrive(limiter: InboundGuard) -> None:
    assert [passes(limiter, PEER) for _ in range(BURST + 1)][-1] is False
    for i in range(3):
        assert passes(limiter, f"0x{i:040x}")  # each new peer gets its own full bucket
        assert not passes(limiter, PEER)  # the flooder's empty bucket is kept


def test_the_bucket_table_is_reset_only_above_its_cap(limiter: InboundGuard) -> None:
    """The table of buckets is bounded: past the cap, a new peer clears it."""
    assert [passes(limiter, PEER) for _ in range(BURST + 1)][-1] is False
    for i in range(BUCKET_TABLE_CAP - 1):
        limiter.check_rate(f"peer-{i}")
    # The table holds exactly the cap (the flooder's bucket among them): a new peer
    # still leaves it alone...
    assert passes(limiter, "newcomer-1")
    assert not passes(limiter, PEER)
    # ... and the next one, above the cap, resets it: the flooder starts afresh.
    assert passes(limiter, "newcomer-2")
    assert passes(limiter, PEER)


# ---------------------------------------------------------------------------- a node, no store


class Note(Message):
    text: str


@pytest.fixture
async def node() -> AsyncIterator[tuple[MeshNode, list[str]]]:
    """A started node with no store, whose one-way ``Note`` handler records each call."""
    handled: list[str] = []
    mesh_node = MeshNode(os.urandom(32), name="guarded", config=MeshConfig(), store=None)

    @mesh_node.on(Note, protocol=PROTO, version="1")
    async def on_note(ctx: HandlerContext, note: Note) -> None:
        handled.append(note.text)

    async with mesh_node:
        yield mesh_node, handled


@pytest.fixture
def dealer(node: tuple[MeshNode, list[str]]) -> Iterator[zmq.Socket[bytes]]:
    """A CurveZMQ DEALER with a throw-away key, connected to the node's ROUTER."""
    mesh_node, _ = node
    assert mesh_node.card is not None
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    sock = raw_dealer(context, mesh_node.card.endpoint, mesh_node.curve.public)
    try:
        yield sock
    finally:
        sock.close(0)
        context.term()


def note_for(mesh_node: MeshNode, signer: EnvelopeSigner, text: str, **kwargs: object) -> Envelope:
    return Envelope.seal(
        signer,
        recipient=mesh_node.address,
        protocol=PROTO,
        protocol_version="1",
        schema_digest=Note.schema_digest(),
        payload=Note(text=text).encode(),
        **kwargs,  # type: ignore[arg-type]
    )


async def test_without_a_store_a_replayed_envelope_is_refused_and_a_new_one_admitted(
    node: tuple[MeshNode, list[str]], dealer: zmq.Socket[bytes]
) -> None:
    mesh_node, handled = node
    signer = EnvelopeSigner(os.urandom(32))
    first = note_for(mesh_node, signer, "once")
    dealer.send(first.to_frame())
    assert await eventually(lambda: handled == ["once"]), handled

    dealer.send(first.to_frame())  # the same bytes again
    assert await eventually(lambda: mesh_node.counters["rejected.duplicate"] == 1)
    # Same id, freshly signed with a new nonce and other content: still a replay (the
    # cache keys on the id every signed envelope carries, not on the bytes).
    resigned = note_for(mesh_node, signer, "changed", message_id=first.id)
    assert resigned.nonce != first.nonce
    dealer.send(resigned.to_frame())
    assert await eventually(lambda: mesh_node.counters["rejected.duplicate"] == 2)

    # The same content as a new message (new id, new nonce) is a new message.
    dealer.send(note_for(mesh_node, signer, "once").to_frame())
    assert await eventually(lambda: handled == ["once", "once"]), handled
    assert mesh_node.counters["rejected.duplicate"] == 2
    assert mesh_node.counters["handled"] == 2


async def test_without_a_store_an_expired_envelope_is_refused(
    node: tuple[MeshNode, list[str]], dealer: zmq.Socket[bytes]
) -> None:
    mesh_node, handled = node
    signer = EnvelopeSigner(os.urandom(32))
    ttl = mesh_node.config.message_ttl_ms
    stale = note_for(
        mesh_node, signer, "stale", created=now_ms() - ttl - mesh_node.config.clock_skew_ms - 1_000
    )
    dealer.send(stale.to_frame())
    assert await eventually(lambda: mesh_node.counters["rejected.expired"] == 1)
    # Frames on one connection are handled in order: a fresh note after it is handled,
    # and by then the stale one would have been too.
    dealer.send(note_for(mesh_node, signer, "fresh").to_frame())
    assert await eventually(lambda: handled == ["fresh"]), handled
    assert not mesh_node.guard.seen(stale.id)  # an expired id is never cached
