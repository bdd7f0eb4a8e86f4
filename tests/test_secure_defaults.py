"""Secure by default: a node built with nothing configured encrypts and authenticates
(CurveZMQ), and its envelopes expire and are checked for replays.

A default that silently turned off would leave every other test green (they pass with
curve on or off), so the defaults are pinned here, by what a peer can observe.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Iterator

import pytest
import zmq

from agentmesh.config import Config, MeshConfig
from agentmesh.envelope import Envelope, EnvelopeSigner, now_ms
from agentmesh.mesh.discovery import Ping, Pong
from agentmesh.mesh.node import MeshNode
from agentmesh.mesh.routes import MESH_PROTOCOL, MESH_VERSION, HandlerContext
from tests.helpers import eventually, raw_dealer

QUIET_S = 1.0  # how long a peer that must get no answer is given to (wrongly) get one


def test_the_default_config_turns_every_protection_on() -> None:
    mesh = MeshConfig()
    assert mesh.curve is True
    assert Config().mesh.curve is True  # what an agent with no config.toml gets
    assert 0 < mesh.message_ttl_ms <= mesh.max_ttl_ms  # every envelope expires
    assert mesh.max_ttl_ms <= 300_000  # ... within minutes, not days
    assert mesh.clock_skew_ms <= 30_000
    assert mesh.replay_cache_size >= 100_000  # a burst cannot flush the cache quickly
    assert mesh.host == "127.0.0.1"  # nothing listens beyond this machine unless asked


@pytest.fixture
async def node() -> AsyncIterator[MeshNode]:
    """A node with the default config (no store), answering mesh Pings."""
    mesh_node = MeshNode(os.urandom(32), name="default", store=None)

    @mesh_node.on(Ping, protocol=MESH_PROTOCOL, version=MESH_VERSION, replies=(Pong,))
    def on_ping(ctx: HandlerContext, ping: Ping) -> Pong:
        return Pong(note=ping.note)

    async with mesh_node:
        yield mesh_node


@pytest.fixture
def zctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    context: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield context
    context.destroy(linger=0)


def dealer(
    zctx: zmq.Context[zmq.Socket[bytes]], node: MeshNode, server_key: bytes | None
) -> zmq.Socket[bytes]:
    """A DEALER to ``node``'s ROUTER: CurveZMQ towards ``server_key``, or plaintext."""
    assert node.card is not None
    return raw_dealer(zctx, node.card.endpoint, server_key)


def send_if_possible(sock: zmq.Socket[bytes], envelope: Envelope) -> None:
    """Send without blocking: once the failed handshake has dropped the connection, a
    DEALER has no pipe to queue on and a plain send would wait forever. Not being able
    to send at all is as good a refusal as the node ignoring the frame."""
    with contextlib.suppress(zmq.Again):
        sock.send(envelope.to_frame(), zmq.NOBLOCK)


def ping(node: MeshNode, signer: EnvelopeSigner, note: str) -> Envelope:
    return Envelope.seal(
        signer,
        recipient=node.address,
        protocol=MESH_PROTOCOL,
        protocol_version=MESH_VERSION,
        schema_digest=Ping.schema_digest(),
        payload=Ping(note=note).encode(),
    )


def answer(sock: zmq.Socket[bytes]) -> Envelope | None:
    """The next frame on ``sock`` if one is there now (never blocks the node's loop)."""
    if not sock.poll(0):
        return None
    return Envelope.from_frame(sock.recv())


async def test_a_default_node_serves_curve_and_publishes_its_key(node: MeshNode) -> None:
    assert node.config.curve is True
    assert node.card is not None
    assert node.card.curve_key == node.curve.public.decode()
    assert node.card.verify() == node.address  # the key is vouched for by the wallet
    # Both bound sockets are CurveZMQ servers (the ROUTER for messages, PUB for presence).
    for bound in (node._router, node._pub):
        assert bound is not None
        assert bound.sock.getsockopt(zmq.CURVE_SERVER) == 1
        assert bound.sock.getsockopt(zmq.MECHANISM) == zmq.CURVE


async def test_a_curve_client_with_the_published_key_gets_answers(
    node: MeshNode, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    sock = dealer(zctx, node, node.curve.public)
    request = ping(node, EnvelopeSigner(os.urandom(32)), "hello")
    sock.send(request.to_frame())
    reply = await eventually(lambda: answer(sock), lambda r: r is not None, timeout=10)
    assert reply is not None and reply.reply_to == request.id
    assert reply.verify() == node.address
    # The reply expires like every envelope the node sends: after the default TTL.
    assert reply.expires - reply.created == MeshConfig().message_ttl_ms
    assert reply.created <= now_ms() + MeshConfig().clock_skew_ms


async def test_a_plaintext_client_cannot_talk_to_a_default_node(
    node: MeshNode, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    plain = dealer(zctx, node, None)
    send_if_possible(plain, ping(node, EnvelopeSigner(os.urandom(32)), "in the clear"))
    # Wait on purpose: the handshake fails, so nothing may arrive in this time.
    assert await eventually(lambda: answer(plain), timeout=QUIET_S) is None
    assert node.counters["received"] == 0  # the frame never reached the node
    # A client that expects another server key (a man in the middle) gets nothing either.
    impostor_key, _ = zmq.curve_keypair()
    wrong = dealer(zctx, node, impostor_key)
    send_if_possible(wrong, ping(node, EnvelopeSigner(os.urandom(32)), "to whom?"))
    assert await eventually(lambda: answer(wrong), timeout=QUIET_S) is None
    assert node.counters["received"] == 0
    # ... while the node still answers a proper client.
    good = dealer(zctx, node, node.curve.public)
    good.send(ping(node, EnvelopeSigner(os.urandom(32)), "ok").to_frame())
    assert await eventually(lambda: answer(good), lambda r: r is not None) is not None


async def test_a_default_node_refuses_replays_and_expired_envelopes(
    node: MeshNode, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    sock = dealer(zctx, node, node.curve.public)
    signer = EnvelopeSigner(os.urandom(32))
    request = ping(node, signer, "once")
    sock.send(request.to_frame())
    assert await eventually(lambda: answer(sock), lambda r: r is not None) is not None
    sock.send(request.to_frame())  # replayed
    assert await eventually(lambda: node.counters["rejected.duplicate"] == 1)
    stale = Envelope.seal(
        signer,
        recipient=node.address,
        protocol=MESH_PROTOCOL,
        protocol_version=MESH_VERSION,
        schema_digest=Ping.schema_digest(),
        payload=Ping(note="old").encode(),
        created=now_ms() - 3_600_000,
    )
    sock.send(stale.to_frame())
    assert await eventually(lambda: node.counters["rejected.expired"] == 1)
    assert node.counters["handled"] == 1  # only the first ping ran its handler
