"""The store's message records on their own (the node's use of them is in test_mesh_node.py).

``known_ids`` is what the node asks about a message it may have seen before: the
message's status and its stored reply, for the ids the store holds.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentmesh.store import Store

PEER = "0x" + "11" * 20


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    opened = Store(tmp_path / "store.db")
    try:
        yield opened
    finally:
        opened.close()


def columns(message_id: bytes) -> tuple[bytes, str, str, str, bytes, bytes, bytes]:
    """The message columns the store takes: (id, peer, protocol, version, conversation,
    reply_to, frame)."""
    return (message_id, PEER, "test.store", "1", uuid.uuid4().bytes, bytes(16), b"frame")


def test_known_ids_gives_the_status_and_reply_of_recorded_ids(store: Store) -> None:
    received, handled, failed, unknown = (uuid.uuid4().bytes for _ in range(4))
    store.record_received([columns(received)])
    store.record_done(
        [(columns(handled), "handled", b"the reply"), (columns(failed), "failed", None)]
    )
    assert store.known_ids([received, handled, failed, unknown]) == {
        received: ("received", None),  # one-way, accepted, handler not finished
        handled: ("handled", b"the reply"),
        failed: ("failed", None),
    }
    assert store.known_ids([unknown]) == {}
    assert store.known_ids([]) == {}


def test_a_received_message_done_later_reports_its_new_status(store: Store) -> None:
    message_id = uuid.uuid4().bytes
    store.record_received([columns(message_id)])
    store.record_done([(columns(message_id), "handled", None)])
    assert store.known_ids([message_id]) == {message_id: ("handled", None)}
    assert store.pending() == []
