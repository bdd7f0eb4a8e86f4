"""MeshNode and Discovery over real ZeroMQ sockets on 127.0.0.1, with real SQLite stores.

Several nodes run in the test's event loop. Frames a well-behaved node would never send
(bad payloads, forged signatures, stale clocks, floods) come from ``RawClient``, a bare
DEALER that speaks the wire format. Waits are bounded polls: a condition that is not
reached in time fails the test; no test asserts on how long something took.
"""

from __future__ import annotations

import asyncio
import gc
import os
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import pytest
import zmq
import zmq.asyncio
from eth_account import Account
from sqlmodel import Session, select

from agentmesh.config import MeshConfig
from agentmesh.envelope import Envelope, EnvelopeSigner, now_ms
from agentmesh.errors import PeerUnreachable, ProtocolError
from agentmesh.mesh.card import AgentCard, CurveKeys, ServicePrice
from agentmesh.mesh.discovery import Discovery, Hello, Peers, Ping, Pong, wait_for_peers
from agentmesh.mesh.node import MeshNode, RemoteError, split_bootstrap
from agentmesh.mesh.routes import MESH_PROTOCOL, MESH_VERSION, ErrorReply, HandlerContext
from agentmesh.message import Message
from agentmesh.store import MessageRow, Store
from tests.helpers import eventually, raw_dealer

PROTO = "test.echo"
V1 = "1"
T = TypeVar("T")


class Echo(Message):
    text: str


class EchoReply(Message):
    text: str
    responder: str


class Note(Message):
    text: str


class Other(Message):
    n: int


# ---------------------------------------------------------------------------- helpers


def fast_config(**overrides: Any) -> MeshConfig:
    """Discovery timing scaled down so liveness and gossip happen within a second."""
    values: dict[str, Any] = {
        "heartbeat_s": 0.1,
        "gossip_s": 0.5,
        "request_timeout_s": 2.0,
        "request_retries": 1,
    }
    values.update(overrides)
    return MeshConfig(**values)


def rows(store: Store, *, direction: str | None = None, status: str | None = None) -> list[Any]:
    """Message rows of ``store`` (optionally one direction / status)."""
    with Session(store.engine) as session:
        query = select(MessageRow)
        if direction is not None:
            query = query.where(MessageRow.direction == direction)
        if status is not None:
            query = query.where(MessageRow.status == status)
        return list(session.exec(query).all())


def received_row(envelope: Envelope) -> tuple[bytes, str, str, str, bytes, bytes, bytes]:
    """The columns ``Store.record_received`` takes for an inbound envelope."""
    return (
        envelope.id,
        envelope.sender,
        envelope.protocol,
        envelope.protocol_version,
        envelope.conversation,
        envelope.reply_to,
        envelope.to_frame(),
    )


@dataclass
class Probe:
    """What the test handlers saw (handler call counts are the point of many tests)."""

    echoes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    gate: asyncio.Event = field(default_factory=asyncio.Event)


def install_handlers(node: MeshNode) -> Probe:
    """``Echo`` (request -> ``EchoReply``) and ``Note`` (one-way) on ``test.echo@1``.

    Echo "boom" raises; Echo "slow" waits for ``probe.gate``. Note records the effect
    ``note = text`` and then raises for "boom" (so that effect must not be kept).
    """
    probe = Probe()
    probe.gate.set()

    @node.on(Echo, protocol=PROTO, version=V1, replies=(EchoReply,))
    async def on_echo(ctx: HandlerContext, message: Echo) -> EchoReply:
        probe.echoes.append(message.text)
        if message.text == "boom":
            raise RuntimeError("asked to fail")
        if message.text == "slow":
            await probe.gate.wait()
        return EchoReply(text=message.text, responder=ctx.node.name)

    @node.on(Note, protocol=PROTO, version=V1)
    async def on_note(ctx: HandlerContext, note: Note) -> None:
        probe.notes.append(note.text)
        ctx.record("note", note.text)
        if note.text == "boom":
            raise RuntimeError("asked to fail after recording")

    return probe


class RawClient:
    """A bare DEALER connected to a node's ROUTER, for hand-made frames.

    Uses its own zmq context and a throwaway curve keypair (the node authenticates
    itself to us by ``server_key``; it accepts any client key).
    """

    def __init__(
        self,
        node: MeshNode,
        *,
        server_key: bytes | None = None,
        curve: bool = True,
        signer: EnvelopeSigner | None = None,
    ) -> None:
        assert node.card is not None, "start the node first"
        self.node = node
        self.signer = signer or EnvelopeSigner(os.urandom(32))
        self.ctx = zmq.asyncio.Context()
        key = (server_key or node.curve.public) if curve else None
        self.sock = raw_dealer(self.ctx, node.card.endpoint, key)

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close(0)
        self.ctx.term()

    def seal(self, message: Message, **overrides: Any) -> Envelope:
        kwargs: dict[str, Any] = {
            "recipient": self.node.address,
            "protocol": PROTO,
            "protocol_version": V1,
            "schema_digest": type(message).schema_digest(),
            "payload": message.encode(),
        }
        kwargs.update(overrides)
        return Envelope.seal(self.signer, **kwargs)

    async def send(self, frame: bytes) -> None:
        await self.sock.send(frame)

    async def recv(self, timeout: float) -> Envelope | None:
        """The next frame as an envelope, or None if nothing came within ``timeout``."""
        if not await self.sock.poll(int(timeout * 1000)):
            return None
        return Envelope.from_frame(await self.sock.recv())

    async def recv_raw(self, timeout: float) -> bytes | None:
        if not await self.sock.poll(int(timeout * 1000)):
            return None
        return bytes(await self.sock.recv())

    async def echo(self, text: str, timeout: float = 5.0) -> EchoReply:
        """A good request; fails the test if no EchoReply comes."""
        request = self.seal(Echo(text=text))
        await self.send(request.to_frame())
        reply = await self.recv(timeout)
        assert reply is not None, f"no reply to a good request ({text!r})"
        assert reply.reply_to == request.id
        assert reply.verify() == self.node.address
        decoded = EchoReply.decode(reply.payload)
        assert isinstance(decoded, EchoReply)
        return decoded


class Mesh:
    """Starts nodes (and discovery) for one test and stops whatever is still running."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.running: list[MeshNode] = []
        self.discoveries: dict[int, Discovery] = {}
        self.stores: list[Store] = []

    def store(self, name: str) -> Store:
        store = Store(self.tmp_path / f"{name}.db")
        self.stores.append(store)
        return store

    async def node(
        self,
        name: str,
        *,
        key: bytes | None = None,
        config: MeshConfig | None = None,
        store: Store | None | bool = True,
        services: tuple[ServicePrice, ...] = (),
        discovery: bool = False,
        start: bool = True,
    ) -> MeshNode:
        """A node with a store in ``tmp_path``; ``start=False`` leaves starting (after
        registering handlers, say) to :meth:`start`."""
        if store is True:
            store = self.store(name)
        node = MeshNode(
            key or os.urandom(32),
            name=name,
            config=config or fast_config(),
            store=store or None,
            services=services,
        )
        if discovery:
            self.discoveries[id(node)] = Discovery(node)
        if start:
            await self.start(node)
        return node

    async def start(self, node: MeshNode) -> MeshNode:
        await node.start()
        self.running.append(node)
        found = self.discoveries.get(id(node))
        if found is not None:
            await found.start()
        return node

    def discovery(self, node: MeshNode) -> Discovery:
        return self.discoveries[id(node)]

    async def stop(self, node: MeshNode) -> None:
        found = self.discoveries.pop(id(node), None)
        if found is not None:
            await found.stop()
        if node in self.running:
            self.running.remove(node)
            await node.stop()

    async def close(self) -> None:
        for node in reversed(list(self.running)):
            await self.stop(node)
        for store in self.stores:
            store.close()


@pytest.fixture
async def mesh(tmp_path: Path) -> AsyncIterator[Mesh]:
    harness = Mesh(tmp_path)
    try:
        yield harness
    finally:
        await harness.close()


async def pair(mesh: Mesh, **config: Any) -> tuple[MeshNode, MeshNode, Probe]:
    """Requester ``a`` that knows responder ``b`` (which has the test handlers)."""
    a = await mesh.node("a", config=fast_config(**config))
    b = await mesh.node("b", config=fast_config(**config))
    probe = install_handlers(b)
    assert b.card is not None
    a.peers.add(b.card, "test")
    return a, b, probe


async def echo(a: MeshNode, b: MeshNode, text: str, **kwargs: Any) -> EchoReply:
    reply = await a.request(
        b.address, Echo(text=text), protocol=PROTO, version=V1, expect=(EchoReply,), **kwargs
    )
    assert isinstance(reply, EchoReply)
    return reply


# ---------------------------------------------------------------------------- request / send


async def test_request_returns_typed_reply_signed_by_responder(mesh: Mesh) -> None:
    a, b, probe = await pair(mesh)

    reply = await echo(a, b, "hello")

    assert reply == EchoReply(text="hello", responder="b")
    assert probe.echoes == ["hello"]
    a_store, b_store = a.store, b.store
    assert a_store is not None and b_store is not None
    assert await eventually(lambda: a_store.message_counts() == {"out.sent": 1, "in.reply": 1}), (
        "the requester to log its request and the reply"
    )
    assert b_store.message_counts() == {"in.handled": 1}

    (sent,) = rows(a_store, direction="out")
    (got,) = rows(a_store, status="reply")
    reply_envelope = Envelope.from_frame(got.frame)
    assert reply_envelope.verify() == b.address  # signed by the responder
    assert reply_envelope.recipient == a.address
    assert reply_envelope.reply_to == sent.id
    assert reply_envelope.conversation == sent.conversation

    (handled,) = rows(b_store, status="handled")
    assert handled.id == sent.id
    assert handled.peer == a.address
    assert handled.reply_frame == got.frame  # the stored reply is exactly what was sent


async def test_send_one_way_reaches_the_handler(mesh: Mesh) -> None:
    a, b, probe = await pair(mesh)

    envelope = await a.send(b.address, Note(text="fire and forget"), protocol=PROTO, version=V1)

    assert await eventually(lambda: probe.notes == ["fire and forget"]), "the note handler"
    b_store = b.store
    assert b_store is not None
    assert await eventually(lambda: b_store.message_counts() == {"in.handled": 1}), (
        "the note marked handled"
    )
    (row,) = rows(b_store, status="handled")
    assert row.id == envelope.id
    assert row.reply_frame is None  # one-way: nothing was answered
    assert b.counters["replied"] == 0
    assert Envelope.from_frame(row.frame).verify() == a.address


async def test_unexpected_reply_type_is_a_protocol_error(mesh: Mesh) -> None:
    a, b, probe = await pair(mesh)

    with pytest.raises(ProtocolError, match="unexpected message type") as info:
        await a.request(b.address, Echo(text="x"), protocol=PROTO, version=V1, expect=(Pong,))
    assert not isinstance(info.value, RemoteError)
    assert probe.echoes == ["x"]
    assert (await echo(a, b, "still fine")).text == "still fine"


# ---------------------------------------------------------------------------- error replies


@pytest.mark.parametrize(
    ("message", "protocol", "version", "code", "counter"),
    [
        (Echo(text="x"), "no.such.protocol", V1, "unknown_protocol", "rejected.unknown_protocol"),
        (Echo(text="x"), PROTO, "2", "unknown_version", "rejected.unknown_version"),
        (Other(n=1), PROTO, V1, "unknown_message", "rejected.unknown_message"),
        (Echo(text="boom"), PROTO, V1, "handler_error", "handler_errors"),
    ],
)
async def test_error_replies_are_remote_errors_and_the_node_keeps_answering(
    mesh: Mesh, message: Message, protocol: str, version: str, code: str, counter: str
) -> None:
    a, b, probe = await pair(mesh)

    with pytest.raises(RemoteError) as info:
        await a.request(b.address, message, protocol=protocol, version=version, timeout=2)

    assert info.value.code == code
    assert info.value.peer == b.address
    assert b.counters[counter] == 1
    if code == "handler_error":
        assert "RuntimeError: asked to fail" in info.value.detail
    if code == "unknown_version":
        assert "supported: 1" in info.value.detail
    b_store = b.store
    assert b_store is not None
    assert await eventually(lambda: b_store.message_counts() == {"in.failed": 1}), "failed row"

    assert (await echo(a, b, "after")).text == "after"
    assert probe.echoes[-1] == "after"


async def test_invalid_payload_is_answered_with_an_error_reply(mesh: Mesh) -> None:
    b = await mesh.node("b")
    probe = install_handlers(b)

    with RawClient(b) as raw:
        for payload in (b'{"text": 5}', b'{"text": "x", "extra": 1}', b"not json"):
            bad = raw.seal(Echo(text="x"), payload=payload)
            await raw.send(bad.to_frame())
            reply = await raw.recv(5.0)
            assert reply is not None, f"no answer to payload {payload!r}"
            assert reply.reply_to == bad.id
            assert reply.verify() == b.address
            assert reply.schema_digest == ErrorReply.schema_digest()
            error = ErrorReply.decode(reply.payload)
            assert isinstance(error, ErrorReply)
            assert error.code == "invalid_payload"

        assert b.counters["rejected.invalid_payload"] == 3
        assert probe.echoes == []  # the handler never saw a bad payload
        assert (await raw.echo("good")).text == "good"


# ---------------------------------------------------------------------------- reachability


async def test_request_to_an_unknown_peer_is_unreachable(mesh: Mesh) -> None:
    a = await mesh.node("a")
    stranger = Account.create().address

    with pytest.raises(PeerUnreachable, match="not in the peer table"):
        await a.request(stranger, Echo(text="x"), protocol=PROTO, version=V1)
    with pytest.raises(PeerUnreachable):
        await a.send(stranger, Note(text="x"), protocol=PROTO, version=V1)
    assert a.counters["sent"] == 0


async def test_request_to_a_stopped_peer_is_unreachable_after_retries(mesh: Mesh) -> None:
    a, b, _ = await pair(mesh, request_timeout_s=0.1, request_retries=1)
    assert (await echo(a, b, "up")).text == "up"
    await mesh.stop(b)
    sent, timeouts = a.counters["sent"], a.counters["request_timeouts"]

    with pytest.raises(PeerUnreachable, match=r"within 4 x 0\.1s"):
        await echo(a, b, "anyone?", timeout=0.1, retries=3)
    assert a.counters["sent"] - sent == 4
    assert a.counters["request_timeouts"] - timeouts == 4

    with pytest.raises(PeerUnreachable, match=r"within 1 x 0\.05s"):
        await echo(a, b, "once", timeout=0.05, retries=0)
    assert a.counters["request_timeouts"] - timeouts == 5

    # Without explicit values the config applies: 1 + request_retries attempts.
    with pytest.raises(PeerUnreachable, match=r"within 2 x 0\.1s"):
        await echo(a, b, "defaults")
    assert a.counters["request_timeouts"] - timeouts == 7


async def test_retried_request_runs_the_handler_once(mesh: Mesh) -> None:
    a, b, probe = await pair(mesh)
    probe.gate.clear()  # "slow" waits until the requester has retried twice

    task = asyncio.create_task(echo(a, b, "slow", timeout=0.1, retries=10))
    try:
        assert await eventually(lambda: b.counters["rejected.duplicate"] >= 2), (
            "two retries at the responder"
        )
        assert probe.echoes == ["slow"]  # retries carry the same id: no second run
        probe.gate.set()
        reply = await asyncio.wait_for(task, 5)
    finally:
        probe.gate.set()
        task.cancel()

    assert reply.text == "slow"
    assert probe.echoes == ["slow"]
    timeouts = a.counters["request_timeouts"]
    assert 2 <= timeouts <= 10
    # Every attempt after the first reached the responder as a duplicate.
    assert await eventually(lambda: b.counters["rejected.duplicate"] == timeouts), (
        f"{timeouts} duplicates (got {b.counters['rejected.duplicate']})"
    )
    assert b.counters["handled"] == 1
    assert b.store is not None
    assert b.store.message_counts() == {"in.handled": 1}


async def test_duplicate_of_a_finished_request_gets_the_stored_reply(mesh: Mesh) -> None:
    b = await mesh.node("b")
    probe = install_handlers(b)

    with RawClient(b) as raw:
        request = raw.seal(Echo(text="once"))
        await raw.send(request.to_frame())
        first = await raw.recv_raw(5.0)
        await raw.send(request.to_frame())
        second = await raw.recv_raw(5.0)

    assert first is not None and second is not None
    assert second == first
    assert probe.echoes == ["once"]
    assert b.counters["rejected.duplicate"] == 1


async def test_dedup_survives_a_restart(mesh: Mesh) -> None:
    key = os.urandom(32)
    first_store = mesh.store("restart")
    node = await mesh.node("b", key=key, store=first_store)
    probe = install_handlers(node)
    client_signer = EnvelopeSigner(os.urandom(32))
    with RawClient(node, signer=client_signer) as raw:
        request = raw.seal(Echo(text="exactly once"))
        frame = request.to_frame()
        await raw.send(frame)
        reply = await raw.recv_raw(5.0)
    assert reply is not None
    assert probe.echoes == ["exactly once"]
    await mesh.stop(node)
    first_store.close()

    store = mesh.store("restart")  # same file, new connection
    again = await mesh.node("b", key=key, store=store)
    again_probe = install_handlers(again)
    assert again.address == node.address
    with RawClient(again, signer=client_signer) as raw:
        await raw.send(frame)
        replayed = await raw.recv_raw(5.0)
        assert replayed == reply  # the stored reply, byte for byte
        assert again_probe.echoes == []  # the handler did not run again
        assert again.counters["rejected.duplicate"] == 1
        assert (await raw.echo("new")).text == "new"
    assert again_probe.echoes == ["new"]


# ---------------------------------------------------------------------------- durability


async def test_pending_one_way_message_is_recovered_once(mesh: Mesh) -> None:
    key = os.urandom(32)
    address = EnvelopeSigner(key).address
    sender = EnvelopeSigner(os.urandom(32))
    envelope = Envelope.seal(
        sender,
        recipient=address,
        protocol=PROTO,
        protocol_version=V1,
        schema_digest=Note.schema_digest(),
        payload=Note(text="left behind").encode(),
    )
    store = mesh.store("pending")
    store.record_received([received_row(envelope)])
    assert [p.id for p in store.pending()] == [envelope.id]

    node = await mesh.node("b", key=key, store=store, start=False)
    probe = install_handlers(node)  # before start: recovery dispatches during start()
    await mesh.start(node)
    assert node.counters["recovered"] == 1
    assert await eventually(lambda: store.message_counts() == {"in.handled": 1}), "recovered"
    assert probe.notes == ["left behind"]
    assert store.pending() == []
    effects = [(e.message_id, e.key, e.value) for e in store.effects()]
    assert effects == [(envelope.id, "note", "left behind")]
    await mesh.stop(node)
    store.close()

    reopened = mesh.store("pending")
    again = await mesh.node("b", key=key, store=reopened, start=False)
    again_probe = install_handlers(again)
    await mesh.start(again)
    assert again.counters["recovered"] == 0
    assert again_probe.notes == []
    assert [(e.message_id, e.key, e.value) for e in reopened.effects()] == [
        (envelope.id, "note", "left behind")
    ]


async def test_effects_are_committed_with_the_handled_mark(mesh: Mesh) -> None:
    a, b, probe = await pair(mesh)
    texts = ["one", "two", "boom", "three"]
    sent = {
        text: await a.send(b.address, Note(text=text), protocol=PROTO, version=V1) for text in texts
    }

    assert b.store is not None
    store = b.store
    assert await eventually(lambda: store.message_counts() == {"in.handled": 3, "in.failed": 1}), (
        "all notes finished"
    )
    assert sorted(probe.notes) == sorted(texts)
    handled = {row.id for row in rows(store, status="handled")}
    assert handled == {sent[t].id for t in ("one", "two", "three")}
    effects = store.effects("note")
    # One effect per handled message, none for the one whose handler failed.
    assert {e.message_id: e.value for e in effects} == {
        sent[t].id: t for t in ("one", "two", "three")
    }
    assert len(effects) == 3


# ---------------------------------------------------------------------------- CurveZMQ


async def test_wrong_server_key_gets_no_reply_and_the_right_key_does(mesh: Mesh) -> None:
    b = await mesh.node("b")
    probe = install_handlers(b)
    wrong_key, _ = zmq.curve_keypair()
    assert wrong_key != b.curve.public

    with RawClient(b, server_key=wrong_key) as raw:
        await raw.send(raw.seal(Echo(text="eavesdropper")).to_frame())
        assert await raw.recv(0.5) is None  # the handshake fails: nothing is delivered
    assert b.counters["received"] == 0
    assert probe.echoes == []

    with RawClient(b) as raw:
        assert (await raw.echo("authenticated")).text == "authenticated"
    assert probe.echoes == ["authenticated"]


async def test_curve_key_is_derived_from_the_wallet_key(mesh: Mesh) -> None:
    key = os.urandom(32)
    node = await mesh.node("c", key=key, store=False)
    assert node.curve == CurveKeys.from_wallet_key(key)
    assert node.card is not None
    assert node.card.curve_key == node.curve.public.decode()
    assert CurveKeys.from_wallet_key(os.urandom(32)).public != node.curve.public


async def test_nodes_without_curve_work_together(mesh: Mesh) -> None:
    a, b, probe = await pair(mesh, curve=False)

    assert (await echo(a, b, "plain")).text == "plain"
    await a.send(b.address, Note(text="plain note"), protocol=PROTO, version=V1)
    assert await eventually(lambda: probe.notes == ["plain note"]), "the note"

    with RawClient(b, curve=False) as raw:
        assert (await raw.echo("plain raw")).responder == "b"


# ---------------------------------------------------------------------------- guard


def _expired(raw: RawClient) -> Envelope:
    return raw.seal(Echo(text="old"), created=now_ms() - 3_600_000)


def _from_future(raw: RawClient) -> Envelope:
    return raw.seal(Echo(text="later"), created=now_ms() + 60_000)


def _bad_ttl(raw: RawClient) -> Envelope:
    return raw.seal(Echo(text="forever"), ttl_ms=raw.node.config.max_ttl_ms + 1)


def _wrong_recipient(raw: RawClient) -> Envelope:
    return raw.seal(Echo(text="not yours"), recipient=Account.create().address)


def _forged(raw: RawClient) -> Envelope:
    good = raw.seal(Echo(text="forged"))
    signature = bytearray(good.signature)
    signature[10] ^= 0x01
    return good.with_signature(bytes(signature))


@pytest.mark.parametrize(
    ("build", "reason"),
    [
        (_expired, "expired"),
        (_from_future, "from_future"),
        (_bad_ttl, "bad_ttl"),
        (_wrong_recipient, "wrong_recipient"),
        (_forged, "bad_signature"),
    ],
)
async def test_guard_rejects_and_counts(
    mesh: Mesh, build: Callable[[RawClient], Envelope], reason: str
) -> None:
    b = await mesh.node("b")
    probe = install_handlers(b)

    with RawClient(b) as raw:
        bad = build(raw)
        await raw.send(bad.to_frame())
        # Frames on one connection are processed in order: if the bad one were answered,
        # its answer would come first.
        assert (await raw.echo("good")).text == "good"

    assert b.counters[f"rejected.{reason}"] == 1
    rejected = [k for k, v in b.counters.items() if k.startswith("rejected.") and v]
    assert rejected == [f"rejected.{reason}"]
    assert probe.echoes == ["good"]
    assert b.store is not None
    assert bad.id not in {row.id for row in rows(b.store)}


async def test_replayed_one_way_message_is_handled_once(mesh: Mesh) -> None:
    b = await mesh.node("b")
    probe = install_handlers(b)

    with RawClient(b) as raw:
        note = raw.seal(Note(text="only once"))
        await raw.send(note.to_frame())
        assert await eventually(lambda: probe.notes == ["only once"]), "the first delivery"
        await raw.send(note.to_frame())
        assert await eventually(lambda: b.counters["rejected.duplicate"] == 1), "the replay"
        assert (await raw.echo("after")).text == "after"
        assert await raw.recv(0.1) is None  # a one-way replay is not answered

    assert probe.notes == ["only once"]
    assert b.store is not None
    assert b.store.message_counts() == {"in.handled": 2}


async def test_rate_limit_drops_a_flood_and_recovers(mesh: Mesh) -> None:
    b = await mesh.node("b", config=fast_config(rate_per_s=50, burst=20))
    probe = install_handlers(b)
    flood = 200

    with RawClient(b) as raw:
        frames = [raw.seal(Note(text=f"n{i}")).to_frame() for i in range(flood)]
        for frame in frames:
            await raw.send(frame)
        assert await eventually(lambda: b.counters["received"] >= flood), "the flood to arrive"
        dropped = b.counters["rejected.rate_limited"]
        assert dropped > 0
        assert dropped < flood  # the burst got through
        assert await eventually(lambda: len(probe.notes) == flood - dropped), (
            "accepted notes handled"
        )

        # Later, tokens have refilled and the same connection is served again.
        deadline = time.monotonic() + 5.0
        reply = None
        while reply is None and time.monotonic() < deadline:
            request = raw.seal(Echo(text="later"))
            await raw.send(request.to_frame())
            reply = await raw.recv(0.2)
        assert reply is not None, "the node never answered after the flood"
        assert EchoReply.decode(reply.payload) == EchoReply(text="later", responder="b")

    # Another connection has its own bucket.
    a = await mesh.node("a")
    assert b.card is not None
    a.peers.add(b.card, "test")
    assert (await echo(a, b, "other connection")).text == "other connection"


async def test_router_survives_garbage_frames(mesh: Mesh) -> None:
    b = await mesh.node("b")
    install_handlers(b)

    with RawClient(b) as raw:
        for junk in (b"", b"\x01", b"\x02hello", os.urandom(300)):
            await raw.sock.send(junk)
        await raw.sock.send_multipart([b"two", b"parts"])
        assert (await raw.echo("still here")).text == "still here"
    assert b.counters["rejected.malformed"] == 5
    assert b.counters["loop_errors"] == 0


# ---------------------------------------------------------------------------- discovery


async def _boot_and_join(
    mesh: Mesh,
    count: int,
    *,
    services: dict[str, tuple[ServicePrice, ...]] | None = None,
    **overrides: Any,
) -> tuple[MeshNode, list[MeshNode]]:
    """A bootstrap node and ``count`` nodes that join through it (gossip fills the rest)."""
    services = services or {}
    boot = await mesh.node(
        "boot", discovery=True, services=services.get("boot", ()), config=fast_config(**overrides)
    )
    assert boot.card is not None
    config = fast_config(bootstrap=(boot.card.bootstrap_address,), **overrides)
    nodes = []
    for i in range(count):
        name = f"n{i}"
        nodes.append(
            await mesh.node(name, config=config, discovery=True, services=services.get(name, ()))
        )
    everyone = [boot, *nodes]
    for node in everyone:
        assert await wait_for_peers(node, len(everyone), timeout=10), (
            f"{node.name} knows only {[r.card.name for r in node.peers.all()]}"
        )
    return boot, nodes


async def test_discovery_converges_through_one_bootstrap(mesh: Mesh) -> None:
    boot, nodes = await _boot_and_join(mesh, 4)
    everyone = {n.address for n in [boot, *nodes]}

    for node in [boot, *nodes]:
        table = {r.address: r.state for r in node.peers.all()}
        assert table == dict.fromkeys(everyone, "up"), node.name
        assert node.store is not None
        assert {p.address for p in node.store.peers()} == everyone
        assert node.counters["rejected.bad_card"] == 0
    # Heartbeats flow over PUB/SUB.
    assert await eventually(lambda: all(n.counters["heartbeats"] > 0 for n in [boot, *nodes])), (
        "heartbeats"
    )


async def test_stopped_peer_is_marked_down_then_removed(mesh: Mesh) -> None:
    boot, nodes = await _boot_and_join(mesh, 2)
    leaver, stayer = nodes
    address = leaver.address
    observers = [boot, stayer]

    await mesh.stop(leaver)

    def state(node: MeshNode) -> str | None:
        record = node.peers.get(address)
        return None if record is None else record.state

    seen_down: dict[str, bool] = {}

    def progressed() -> bool:
        for node in observers:
            if state(node) == "down":
                seen_down[node.name] = True
        return all(state(node) is None for node in observers)

    assert await eventually(progressed, timeout=10, interval=0.02), (
        "the stopped peer to be removed everywhere"
    )
    assert seen_down == {"boot": True, "n1": True}, "it was never marked down first"
    for node in observers:
        assert node.counters["peers_down"] >= 1
        assert node.counters["peers_removed"] >= 1
        assert node.store is not None
        assert address not in {p.address for p in node.store.peers()}
        assert state(node) is None  # and not resurrected meanwhile
    assert boot.peers.get(stayer.address) is not None
    assert boot.peers.get(stayer.address).state == "up"  # type: ignore[union-attr]


async def test_dead_peer_goes_down_even_when_gossip_is_faster_than_heartbeats(
    mesh: Mesh,
) -> None:
    """Liveness must come from first-hand evidence. A Peers reply that still lists a
    peer (because its sender has not noticed yet) is not a sign of life; otherwise two
    survivors that gossip more often than ``down_after_missed`` beats keep refreshing
    each other's record of a dead peer and it is never marked down or removed."""
    boot = await mesh.node("boot", discovery=True, config=fast_config(gossip_s=0.15))
    assert boot.card is not None
    config = fast_config(gossip_s=0.15, bootstrap=(boot.card.bootstrap_address,))
    stayer = await mesh.node("stayer", config=config, discovery=True)
    leaver = await mesh.node("leaver", config=config, discovery=True)
    for node in (boot, stayer, leaver):
        assert await wait_for_peers(node, 3, timeout=10)

    await mesh.stop(leaver)

    # Nominally down after 0.3 s and removed after 1 s of silence; allow far more.
    assert await eventually(
        lambda: leaver.address not in boot.peers and leaver.address not in stayer.peers,
        timeout=6,
    ), (
        "the dead peer to be removed (peers_down: "
        f"boot={boot.counters['peers_down']}, stayer={stayer.counters['peers_down']})"
    )


async def test_offering_lists_live_providers_by_price(mesh: Mesh) -> None:
    svc = {
        "n0": (ServicePrice(name="svc", price=30),),
        "n1": (ServicePrice(name="svc", price=10), ServicePrice(name="other", price=1)),
        "n2": (ServicePrice(name="svc", price=20),),
        "n3": (ServicePrice(name="other", price=5),),
    }
    # Down after 3 missed beats, but kept (as down) for 100: offering() must skip it.
    boot, nodes = await _boot_and_join(mesh, 4, services=svc, remove_after_missed=100)
    n0, n1, n2, n3 = nodes

    def offering(node: MeshNode, service: str = "svc") -> list[str]:
        return [r.card.name for r in node.peers.offering(service)]

    assert offering(boot) == ["n1", "n2", "n0"]
    assert offering(n0) == ["n1", "n2"]  # never itself
    assert offering(boot, "other") == ["n1", "n3"]
    assert offering(boot, "nothing") == []

    def marked_down(node: MeshNode) -> bool:
        record = node.peers.get(n2.address)
        return record is not None and record.state == "down"

    await mesh.stop(n2)
    for node in (boot, n3):
        assert await eventually(partial(marked_down, node), timeout=10), (
            f"{node.name} to mark the stopped provider down"
        )
        assert offering(node) == ["n1", "n0"]
        assert n2.address in node.peers  # still known, just not live
        assert [c.name for c in node.find("svc")] == ["n1", "n0"]


async def test_hello_must_introduce_its_own_sender(mesh: Mesh) -> None:
    a = await mesh.node("a", discovery=True)
    b = await mesh.node("b", discovery=True)
    c = await mesh.node("c", store=False)
    assert b.card is not None and c.card is not None and a.card is not None

    with pytest.raises(RemoteError) as info:
        await a.request(
            b.card,
            Hello(card=c.card),
            protocol=MESH_PROTOCOL,
            version=MESH_VERSION,
            expect=(Peers,),
            timeout=2,
        )
    assert info.value.code == "handler_error"
    assert "own sender" in info.value.detail
    assert c.address not in b.peers

    reply = await a.request(
        b.card,
        Hello(card=a.card),
        protocol=MESH_PROTOCOL,
        version=MESH_VERSION,
        expect=(Peers,),
        timeout=2,
    )
    assert isinstance(reply, Peers)
    assert b.address in {card.address for card in reply.cards}
    assert a.address in b.peers
    assert c.address not in b.peers


async def test_card_with_bad_signature_is_not_learned(mesh: Mesh) -> None:
    b = await mesh.node("b", discovery=True)
    x_key = os.urandom(32)
    x = await mesh.node("x", key=x_key, store=False)
    assert b.card is not None and x.card is not None

    tampered = x.card.model_copy(update={"name": "mallory"})  # signature no longer matches
    reply = await x.request(
        b.card,
        Hello(card=tampered),
        protocol=MESH_PROTOCOL,
        version=MESH_VERSION,
        expect=(Peers,),
        timeout=2,
    )
    assert isinstance(reply, Peers)
    assert x.address not in b.peers
    assert b.counters["rejected.bad_card"] == 1

    # Directly: a forged signature, and someone else's address signed by x.
    victim = Account.create()
    impostor = AgentCard(
        address=victim.address,
        name="impostor",
        endpoint="tcp://127.0.0.1:1",
        presence_endpoint="tcp://127.0.0.1:2",
        curve_key=x.curve.public.decode(),
        issued_ms=0,
    ).signed(x_key)
    forged_sig = x.card.model_copy(update={"signature": "0x" + "11" * 65})
    assert mesh.discovery(b).learn([tampered, impostor, forged_sig], "test") == []
    assert b.counters["rejected.bad_card"] == 4
    assert victim.address not in b.peers and x.address not in b.peers

    # The genuine card is learned.
    assert mesh.discovery(b).learn([x.card], "test") == [x.card]
    assert b.peers.get(x.address).card.name == "x"  # type: ignore[union-attr]


async def test_ping_pong(mesh: Mesh) -> None:
    a = await mesh.node("a", discovery=True)
    b = await mesh.node("b", discovery=True)
    assert b.card is not None

    pong = await a.request(
        b.card,
        Ping(note="are you there"),
        protocol=MESH_PROTOCOL,
        version=MESH_VERSION,
        expect=(Pong,),
        timeout=2,
    )
    assert pong == Pong(note="are you there", name="b")

    # Through the bootstrap path, without knowing b's address up front.
    pong2, envelope = await a.request_endpoint(
        b.card.bootstrap_address,
        Ping(note="who"),
        protocol=MESH_PROTOCOL,
        version=MESH_VERSION,
        expect=(Pong,),
        timeout=2,
    )
    assert pong2 == Pong(note="who", name="b")
    assert envelope.sender == b.address
    assert envelope.verify() == b.address


async def test_bootstrap_path_only_accepts_the_mesh_protocol(mesh: Mesh) -> None:
    a = await mesh.node("a")
    b = await mesh.node("b")
    probe = install_handlers(b)
    assert b.card is not None

    with pytest.raises(PeerUnreachable):
        await a.request_endpoint(
            b.card.bootstrap_address,
            Echo(text="anonymous"),
            protocol=PROTO,
            version=V1,
            expect=(EchoReply,),
            timeout=0.2,
        )
    assert probe.echoes == []
    assert b.counters["rejected.wrong_recipient"] >= 1


async def test_newer_card_replaces_the_old_one(mesh: Mesh) -> None:
    key = os.urandom(32)
    boot, (a,) = await _boot_and_join(mesh, 1)
    assert boot.card is not None
    config = fast_config(bootstrap=(boot.card.bootstrap_address,))
    old = await mesh.node(
        "b", key=key, config=config, discovery=True, services=(ServicePrice(name="svc", price=10),)
    )
    assert old.card is not None
    old_issued = old.card.issued_ms
    for node in (boot, a):
        assert await eventually(partial(node.peers.get, old.address)), f"{node.name} learns b"
    await mesh.stop(old)

    new = await mesh.node(
        "b",
        key=key,
        config=config,
        discovery=True,
        store=mesh.store("b2"),
        services=(ServicePrice(name="svc", price=99), ServicePrice(name="new", price=1)),
    )
    assert new.card is not None and new.card.issued_ms > old_issued
    new_issued = new.card.issued_ms

    def has_new_card(node: MeshNode) -> bool:
        record = node.peers.get(new.address)
        return record is not None and record.card.issued_ms == new_issued

    for node in (boot, a):
        assert await eventually(partial(has_new_card, node), timeout=10), f"{node.name} update"
        record = node.peers.get(new.address)
        assert record is not None and record.state == "up"
        assert record.card.offers("new") is not None
        assert [(r.card.name, r.card.offers("svc").price) for r in node.peers.offering("svc")] == [  # type: ignore[union-attr]
            ("b", 99)
        ]
        assert node.store is not None
        (row,) = [p for p in node.store.peers() if p.address == new.address]
        assert '"new"' in row.services_json


# ---------------------------------------------------------------------------- bootstrap strings


def _key_with_at() -> str:
    for _ in range(1000):
        public, _ = zmq.curve_keypair()
        if b"@" in public:
            return public.decode()
    raise AssertionError("no curve key with '@' in 1000 tries")


def test_split_bootstrap_handles_keys_containing_at() -> None:
    key = _key_with_at()
    assert len(key) == 40
    assert split_bootstrap(f"{key}@tcp://127.0.0.1:5555") == (key, "tcp://127.0.0.1:5555")
    made_up = "@" * 40
    assert split_bootstrap(f"{made_up}@tcp://10.0.0.1:1") == (made_up, "tcp://10.0.0.1:1")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "nonsense",
        "tcp://127.0.0.1:5555",
        "k" * 39 + "@tcp://127.0.0.1:5555",  # key too short
        "k" * 41 + "@tcp://127.0.0.1:5555",  # key too long
        "k" * 40 + "#tcp://127.0.0.1:5555",
        "k" * 40 + "@udp://127.0.0.1:5555",
        "k" * 40 + "@",
        "k" * 40 + "@tcp://" + "h" * 300,
    ],
)
def test_split_bootstrap_rejects_malformed_strings(text: str) -> None:
    assert split_bootstrap(text) == ("", "")


@pytest.mark.parametrize(
    "text", ["nonsense", "k" * 39 + "@tcp://127.0.0.1:5555", "k" * 40 + "@udp://127.0.0.1:1"]
)
async def test_request_endpoint_with_malformed_bootstrap_is_a_protocol_error(
    mesh: Mesh, text: str
) -> None:
    a = await mesh.node("a", store=False)
    with pytest.raises(ProtocolError, match="bad bootstrap address"):
        await a.request_endpoint(text, Ping(), protocol=MESH_PROTOCOL, version=MESH_VERSION)
    assert a.counters["sent"] == 0


@pytest.mark.parametrize(
    "text",
    [
        "k" * 40 + "@tcp://",  # no host or port
        "k" * 40 + "@tcp://127.0.0.1:notaport",
        "," * 40 + "@tcp://127.0.0.1:5555",  # ',' is not in the Z85 alphabet
    ],
)
async def test_request_endpoint_with_unusable_bootstrap_is_a_protocol_error(
    mesh: Mesh, text: str
) -> None:
    """These pass ``split_bootstrap`` but cannot be dialled; the caller should get a
    ``ProtocolError`` (an ``AgentMeshError`` that ``Discovery._join_all`` catches)."""
    a = await mesh.node("a", store=False)
    raised: BaseException | None = None
    try:
        await asyncio.wait_for(
            a.request_endpoint(
                text, Ping(), protocol=MESH_PROTOCOL, version=MESH_VERSION, timeout=0.1
            ),
            5,
        )
    except Exception as exc:  # noqa: BLE001 - the type is what this test checks
        raised = exc
    kind = type(raised)
    del raised
    # A half-made DEALER is left open when connecting fails; collect it now so that
    # MeshNode.stop() (zmq Context.term) does not block forever on it.
    gc.collect()
    assert kind is not None and issubclass(kind, ProtocolError), f"raised {kind}"


async def test_forget_removes_the_peer_and_closes_its_connection() -> None:
    from agentmesh.errors import PeerUnreachable
    from agentmesh.mesh.discovery import Discovery, Ping, Pong
    from agentmesh.mesh.node import MeshNode

    client = MeshNode(os.urandom(32), name="client")
    server = MeshNode(os.urandom(32), name="server")
    Discovery(server)  # registers the built-in Ping handler; no loops needed here
    async with client, server:
        assert server.card is not None
        client.peers.add(server.card, "test")
        pong = await client.request(
            server.address, Ping(note="x"), protocol="mesh", version="1", expect=(Pong,)
        )
        assert pong.name == "server"
        assert any(key.startswith(f"{server.address}|") for key in client._dealers)
        client.forget(server.address)
        assert server.address not in client.peers
        assert not any(key.startswith(f"{server.address}|") for key in client._dealers)
        with pytest.raises(PeerUnreachable, match="unknown peer"):
            await client.request(server.address, Ping(), protocol="mesh", version="1")
