"""The mesh store's retention: old and excess messages go, what replay protection and
restart recovery need stays, and the limits come from ``[mesh]`` in the config.

Store-level tests run on a real SQLite file with the store's clock set by the test
(``_now_ms``), so "an hour later" needs no waiting. Node-level tests use real ZeroMQ and
real signed frames: a request answered, the store pruned, the node restarted with an
empty replay cache, and the same frame sent again.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentmesh import store as store_module
from agentmesh.config import MeshConfig, load_config
from agentmesh.envelope import Envelope, EnvelopeSigner, now_ms
from agentmesh.errors import ConfigError
from agentmesh.mesh.node import MeshNode
from agentmesh.mesh.peers import PeerTable
from agentmesh.store import MessageRetention, PeerRow, Store
from agentmesh.testing import Note, Work, WorkDone, install_test_handlers
from agentmesh.testing_fakes import fake_card
from tests.helpers import ask_raw, eventually, new_key, seal_raw

T0 = 1_800_000_000_000  # the store's clock in store-level tests (ms)
MINUTE = 60_000
HOUR = 60 * MINUTE
PEER = "0x" + "11" * 20
SELF = "0x" + "22" * 20
LOOSE = MessageRetention(max_age_ms=24 * HOUR, max_rows=10**6, max_bytes=10**9, protect_ms=0)


@dataclass
class Clock:
    now: int | None = T0  # None: the real time


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    """The time the store stamps on rows it writes."""
    clock = Clock()
    monkeypatch.setattr(
        store_module, "_now_ms", lambda: now_ms() if clock.now is None else clock.now
    )
    return clock


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "mesh.db")
    try:
        yield opened
    finally:
        opened.close()


def columns(frame: bytes = b"frame") -> tuple[bytes, str, str, str, bytes, bytes, bytes]:
    return (uuid.uuid4().bytes, PEER, "test.store", "1", uuid.uuid4().bytes, bytes(16), frame)


def handled(store: Store, frame: bytes = b"frame", reply: bytes | None = None) -> bytes:
    """Record one handled request; its id."""
    row = columns(frame)
    store.record_done([(row, "handled", reply)])
    return row[0]


def ids(store: Store, candidates: list[bytes]) -> list[bytes]:
    """Which of ``candidates`` the store still holds, in their order."""
    known = store.known_ids(candidates)
    return [c for c in candidates if c in known]


# ---------------------------------------------------------------------------- by age


def test_messages_past_the_age_limit_go_but_pending_ones_stay(store: Store, clock: Clock) -> None:
    old_handled = handled(store)
    old_failed = columns()
    store.record_done([(old_failed, "failed", b"error reply")])
    old_sent = columns()
    store.record_sent([old_sent])
    pending = columns()
    store.record_received([pending])  # accepted one-way, handler never finished
    clock.now = T0 + 2 * HOUR
    young = handled(store)
    every = [old_handled, old_failed[0], old_sent[0], pending[0], young]

    assert store.prune_messages(LOOSE, T0 + 25 * HOUR) == 3
    assert ids(store, every) == [pending[0], young]
    assert [p.id for p in store.pending()] == [pending[0]]  # still handed back on start
    # A day later the pending one is still there, however small the limits.
    tight = MessageRetention(max_age_ms=1, max_rows=1, max_bytes=1, protect_ms=0)
    assert store.prune_messages(tight, T0 + 50 * HOUR) == 1
    assert ids(store, every) == [pending[0]]
    assert [p.id for p in store.pending()] == [pending[0]]


# ---------------------------------------------------------------------------- by size


def test_beyond_the_row_limit_the_oldest_go_first(store: Store, clock: Clock) -> None:
    pending = columns()
    store.record_received([pending])
    made = []
    for i in range(10):
        clock.now = T0 + i * 1000
        made.append(handled(store))
    limit = MessageRetention(max_age_ms=24 * HOUR, max_rows=4, max_bytes=10**9, protect_ms=0)
    assert store.prune_messages(limit, T0 + HOUR) == 7
    # Four rows in all: the pending one (never pruned) and the newest three.
    assert ids(store, [pending[0], *made]) == [pending[0], *made[-3:]]
    assert store.message_totals()[0] == 4
    assert store.prune_messages(limit, T0 + HOUR) == 0  # within the limit now


def test_beyond_the_byte_limit_the_oldest_go_first(store: Store, clock: Clock) -> None:
    made = []
    for i in range(10):
        clock.now = T0 + i * 1000
        made.append(handled(store, frame=bytes(1000), reply=bytes(500)))  # 1500 bytes each
    limit = MessageRetention(max_age_ms=24 * HOUR, max_rows=1000, max_bytes=3500, protect_ms=0)
    assert store.prune_messages(limit, T0 + HOUR) == 8
    assert ids(store, made) == made[-2:]
    assert store.message_totals() == (2, 3000)


def test_rows_inside_the_replay_window_stay_whatever_the_limits(store: Store, clock: Clock) -> None:
    made = []
    for i in range(10):
        clock.now = T0 + i * MINUTE
        made.append(handled(store))
    now = T0 + 9 * MINUTE + 1
    window = 5 * MINUTE + 10_000  # rows made at minute 4 and later are inside it
    limit = MessageRetention(max_age_ms=1, max_rows=2, max_bytes=1024, protect_ms=window)
    assert store.prune_messages(limit, now) == 4
    assert ids(store, made) == made[4:]  # six rows: over the limit, but protected


# ---------------------------------------------------------------------------- the node


def work_request(node: MeshNode, sender: bytes, text: str) -> Envelope:
    assert node.card is not None
    return seal_raw(
        node.card,
        sender,
        Work,
        Work(text=text).encode(),
        protocol="test.work",
        version="1",
        conversation=os.urandom(16),
    )


async def test_a_replay_inside_its_expiry_window_is_refused_after_pruning_and_a_restart(
    tmp_path: Path, clock: Clock
) -> None:
    clock.now = None
    config = MeshConfig(store_retention_s=1, store_max_messages=1, store_max_bytes=1024)
    store = Store(tmp_path / "keeper.db")
    key, sender = new_key(), new_key()
    first = MeshNode(key, name="keeper", config=config, store=store)
    install_test_handlers(first)
    async with first:
        assert first.card is not None
        request = work_request(first, sender, "once")
        reply = await ask_raw(first.card, request)
        assert WorkDone.decode(reply.payload) == WorkDone(text="once")
        clock.now = now_ms() - HOUR
        unrelated = handled(store)  # an hour old: of no use to anyone
        clock.now = None
        # A minute on: past the age limit, over the row limit. The request's copy could
        # still pass the clock check, so its row stays; the other one goes.
        assert first.prune_store(at_ms=now_ms() + MINUTE) == 1
        assert ids(store, [request.id, unrelated]) == [request.id]

    second = MeshNode(key, name="keeper", config=config, store=store)  # empty replay cache
    install_test_handlers(second)
    async with second:
        assert second.card is not None and not second.guard.seen(request.id)
        again = await ask_raw(second.card, request)
        assert again.to_frame() == reply.to_frame()  # the stored answer, sent again
        assert second.counters["rejected.duplicate"] == 1
        assert [e.value for e in store.effects("work")] == ["once"]  # handled once
        # Once no copy could pass the clock check any more, the row goes too.
        window = config.max_ttl_ms + 2 * config.clock_skew_ms
        assert second.prune_store(at_ms=now_ms() + window + MINUTE) >= 1
        assert ids(store, [request.id]) == []
    store.close()


async def test_a_pending_message_survives_pruning_and_is_handled_on_restart(
    tmp_path: Path,
) -> None:
    config = MeshConfig(store_retention_s=1, store_max_messages=1, store_max_bytes=1024)
    store = Store(tmp_path / "keeper.db")
    key = new_key()
    note = Envelope.seal(
        EnvelopeSigner(new_key()),
        recipient=EnvelopeSigner(key).address,
        protocol="test.note",
        protocol_version="1",
        schema_digest=Note.schema_digest(),
        payload=Note(text="kept").encode(),
    )
    # Accepted by an earlier run that died before its handler finished.
    store.record_received(
        [
            (
                note.id,
                note.sender,
                "test.note",
                "1",
                note.conversation,
                note.reply_to,
                note.to_frame(),
            )
        ]
    )
    for _ in range(3):
        handled(store, frame=bytes(2000))
    tight = MessageRetention(max_age_ms=1, max_rows=1, max_bytes=1024, protect_ms=0)
    assert store.prune_messages(tight, now_ms() + 30 * 24 * HOUR) == 3
    assert [p.id for p in store.pending()] == [note.id]

    node = MeshNode(key, name="keeper", config=config, store=store)
    install_test_handlers(node)
    async with node:  # prunes on start, then hands the pending message to its handler
        effects = await eventually(lambda: store.effects("note"))
        assert [e.value for e in effects] == ["kept"]
        assert node.counters["recovered"] == 1
    assert store.pending() == []
    store.close()


async def test_the_node_prunes_on_its_own_every_store_prune_s(tmp_path: Path) -> None:
    # The smallest window the config allows: a copy is refused 1 s after its creation.
    config = MeshConfig(
        message_ttl_ms=1000,
        max_ttl_ms=1000,
        clock_skew_ms=0,
        store_retention_s=1,
        store_prune_s=0.05,
    )
    store = Store(tmp_path / "keeper.db")
    async with MeshNode(new_key(), name="keeper", config=config, store=store) as node:
        old = handled(store)
        assert await eventually(lambda: ids(store, [old]) == [], timeout=20)
        assert node.counters["store.pruned"] >= 1
    store.close()


# ---------------------------------------------------------------------------- config


async def test_the_limits_come_from_the_mesh_config(tmp_path: Path) -> None:
    (tmp_path / "config.toml").write_text(
        "[mesh]\nstore_retention_s = 3600\nstore_max_messages = 500\n"
        "store_max_bytes = 65536\nstore_prune_s = 5\nmax_peers = 50\n"
        "max_ttl_ms = 60000\nclock_skew_ms = 2000\n"
    )
    config = load_config(tmp_path).mesh
    async with MeshNode(new_key(), name="configured", config=config) as node:
        assert node.retention() == MessageRetention(
            max_age_ms=3_600_000, max_rows=500, max_bytes=65536, protect_ms=64_000
        )
        assert node.peers.max_peers == 50
    defaults = MeshConfig()
    assert (defaults.store_retention_s, defaults.store_max_messages) == (7 * 24 * 3600, 200_000)
    (tmp_path / "config.toml").write_text("[mesh]\nstore_max_bytes = 10\n")
    with pytest.raises(ConfigError, match="mesh.store_max_bytes"):
        load_config(tmp_path)


# ---------------------------------------------------------------------------- peers


def test_the_peer_table_is_bounded_and_never_evicts_a_live_peer(store: Store) -> None:
    evicted: list[str] = []
    table = PeerTable(SELF, store, max_peers=3, on_evict=evicted.append)
    cards = [fake_card(f"peer{i}") for i in range(4)]
    assert all(table.add(card, "gossip") for card in cards[:3])
    # Full, and every peer is up: a fresh key's card is refused, in memory and on disk.
    assert not table.add(cards[3], "gossip")
    assert table.refused == 1 and len(table) == 3
    assert cards[3].address not in {row.address for row in store.peers()}
    # Two go down; the one seen longest ago makes room.
    table.seen(cards[0].address, 1_000)
    table.seen(cards[1].address, 2_000)
    table.mark(cards[0].address, "down")
    table.mark(cards[1].address, "down")
    assert table.add(cards[3], "gossip")
    assert evicted == [cards[0].address]
    assert {r.address for r in table.all()} == {c.address for c in cards[1:]}
    assert {row.address for row in store.peers()} == {c.address for c in cards[1:]}


def test_peer_rows_left_by_earlier_runs_age_out_and_are_capped(store: Store) -> None:
    def row(address: str, seen: int) -> PeerRow:
        return PeerRow(
            address=address,
            name="p",
            endpoint="tcp://127.0.0.1:1",
            presence_endpoint="tcp://127.0.0.1:2",
            curve_key="k" * 40,
            card_json="{}",
            source="gossip",
            first_seen_ms=seen,
            last_seen_ms=seen,
        )

    live, stale, recent, newer = ("0x" + c * 40 for c in "abcd")
    for address, seen in ((live, 0), (stale, 1_000), (recent, 9_000), (newer, 9_500)):
        store.upsert_peer(row(address, seen))
    # `live` is in the node's table (kept however old); `stale` is past the age limit;
    # of the rest, the cap keeps the most recently seen.
    assert store.prune_peers({live}, max_rows=2, seen_before_ms=5_000) == 2
    assert {r.address for r in store.peers()} == {live, newer}
