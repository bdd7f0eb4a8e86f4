"""Live mesh tests: real agent processes under hostile input, crashes and the CLI.

Every agent here is a separate OS process: the test peer (``python -m agentmesh.testing``)
or ``agentmesh mesh serve``. Tests talk to it over real CurveZMQ sockets, either as a
``MeshNode`` client or through raw DEALER sockets that inject arbitrary bytes, and after
every kind of abuse the agent must still answer a well-formed ``test.work`` request.

Counters are read from the agent's store, either live (the agent flushes them every
second, so reads poll with a deadline) or final (an agent stopped with SIGTERM writes its
last counters), which makes exact counts possible. Every process a test starts is
terminated (then killed, if need be) in fixture teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import sqlite3
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

import msgpack
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import Session, select

from agentmesh.config import MeshConfig
from agentmesh.envelope import Envelope, EnvelopeSigner, now_ms
from agentmesh.errors import ProtocolError
from agentmesh.mesh.card import AgentCard
from agentmesh.mesh.discovery import Hello, Ping, Pong
from agentmesh.mesh.node import ZERO_ADDRESS, MeshNode, RemoteError, split_bootstrap
from agentmesh.mesh.routes import MESH_PROTOCOL, MESH_VERSION, ErrorReply
from agentmesh.message import Message
from agentmesh.store import MessageRow, Store
from agentmesh.testing import TEST_PROTOCOL_VERSION, Note, Work, WorkDone
from tests.helpers import eventually, free_port, poll_blocking

PEER = [sys.executable, "-m", "agentmesh.testing"]
CLI = [sys.executable, "-m", "agentmesh.cli.app"]
WORK = "test.work"
NOTE = "test.note"
V = TEST_PROTOCOL_VERSION
MAX_FRAME = MeshConfig().max_frame_bytes  # what the test peer runs with
READY_S = 30.0  # bounded waits: generous, never a pass/fail timing threshold
STOP_S = 20.0
STATS_S = 15.0
ANSWER_S = 20.0
T = TypeVar("T")


# --------------------------------------------------------------------------- helpers


def wait_ready(proc: subprocess.Popen[bytes], ready: Path, log: Path) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        if ready.exists():
            return dict(json.loads(ready.read_text()))
        if proc.poll() is not None:
            raise AssertionError(
                f"agent exited with {proc.returncode} before it was ready:\n"
                f"{log.read_text(errors='replace')}"
            )
        return None

    info = poll_blocking(check, timeout=READY_S)
    assert info, f"timed out after {READY_S:g}s waiting for ready file {ready}"
    return info


def stop_process(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> int:
    """Signal ``proc`` and wait (bounded) for it; kill it if it does not go."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        try:
            proc.wait(STOP_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(STOP_S)
            raise AssertionError(f"pid {proc.pid} ignored signal {sig} and was killed") from None
    return int(proc.returncode)


@dataclass
class Peer:
    """One running test-peer process and what its ready file said."""

    home: Path
    proc: subprocess.Popen[bytes]
    info: dict[str, Any]
    log: Path

    @property
    def card(self) -> AgentCard:
        return AgentCard.model_validate_json(self.info["card"])

    @property
    def address(self) -> str:
        return str(self.info["address"])

    @property
    def db(self) -> Path:
        """The agent's store: the one database in its home's mesh folder."""
        found = sorted((self.home / "mesh").glob("*.db"))
        assert len(found) == 1, f"expected one store in {self.home / 'mesh'}: {found}"
        return found[0]

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        """SIGTERM: the agent stops its loops and writes its final counters."""
        return stop_process(self.proc)


@dataclass
class PeerFactory:
    """Starts test peers; whatever it started is stopped by the owning fixture."""

    base: Path
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    count: int = 0

    def start(
        self,
        home: Path | None = None,
        *,
        key: str = "",
        port: int = 0,
        rate: float | None = None,
        burst: int | None = None,
    ) -> Peer:
        self.count += 1
        home = home or self.base / f"peer{self.count}"
        ready = self.base / f"ready{self.count}.json"
        log = self.base / f"peer{self.count}.log"
        args = [*PEER, "--home", str(home), "--ready-file", str(ready)]
        if key:
            args += ["--key", key]
        if port:
            args += ["--port", str(port)]
        if rate is not None:
            args += ["--rate", str(rate)]
        if burst is not None:
            args += ["--burst", str(burst)]
        with log.open("wb") as out:
            proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=out)
        self.procs.append(proc)
        return Peer(home, proc, wait_ready(proc, ready, log), log)

    def close(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(STOP_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_S)


@pytest.fixture
def peers(tmp_path: Path) -> Iterator[PeerFactory]:
    factory = PeerFactory(tmp_path)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture
def peer(peers: PeerFactory) -> Peer:
    return peers.start()


@pytest.fixture(scope="module")
def zctx() -> Iterator[zmq.Context[zmq.Socket[bytes]]]:
    ctx: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
    yield ctx
    ctx.term()


@pytest.fixture
async def client() -> AsyncIterator[MeshNode]:
    """A MeshNode with a throw-away identity, for well-formed traffic."""
    node = MeshNode(os.urandom(32), name="live-test-client")
    await node.start()
    try:
        yield node
    finally:
        await node.stop()


@pytest.fixture
def signer() -> EnvelopeSigner:
    """The identity raw frames are signed with."""
    return EnvelopeSigner(os.urandom(32))


def meet(client: MeshNode, peer: Peer) -> AgentCard:
    """Give ``client`` the peer's card from the ready file (checking its signature)."""
    card = peer.card
    assert card.verify() == peer.address
    client.peers.add(card, "test")
    return card


async def ask_work(client: MeshNode, peer: Peer, text: str, **kw: Any) -> WorkDone:
    reply = await client.request(
        peer.address, Work(text=text), protocol=WORK, version=V, expect=(WorkDone,), **kw
    )
    assert isinstance(reply, WorkDone)
    return reply


async def assert_answers(client: MeshNode, peer: Peer, text: str) -> None:
    """The agent is alive and answers a well-formed ``test.work`` request correctly."""
    assert peer.alive(), f"agent died:\n{peer.log.read_text(errors='replace')}"
    reply = await ask_work(client, peer, text, timeout=5.0, retries=3)
    assert reply.text == text


def seal(
    signer: EnvelopeSigner,
    recipient: str,
    message: Message,
    protocol: str = WORK,
    version: str = V,
    **kw: Any,
) -> Envelope:
    return Envelope.seal(
        signer,
        recipient=recipient,
        protocol=protocol,
        protocol_version=version,
        schema_digest=type(message).schema_digest(),
        payload=message.encode(),
        **kw,
    )


class RawDealer:
    """A CurveZMQ DEALER with its own throw-away curve keypair, for injecting bytes."""

    def __init__(
        self, ctx: zmq.Context[zmq.Socket[bytes]], endpoint: str, curve_key: str, address: str
    ) -> None:
        self.address = address  # the agent's: every reply must be signed by it
        self.asked: set[bytes] = set()  # ids of the requests sent with `request`
        self.others: list[bytes] = []  # frames received that answer none of them
        self.sock = ctx.socket(zmq.DEALER)
        public, secret = zmq.curve_keypair()
        self.sock.curve_publickey = public
        self.sock.curve_secretkey = secret
        self.sock.curve_serverkey = curve_key.encode()
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.SNDTIMEO, 20_000)  # a stuck agent fails the test, no hang
        self.sock.setsockopt(zmq.SNDHWM, 0)
        self.sock.connect(endpoint)

    @classmethod
    def to(cls, ctx: zmq.Context[zmq.Socket[bytes]], peer: Peer) -> RawDealer:
        card = peer.card
        return cls(ctx, card.endpoint, card.curve_key, card.address)

    def send(self, frame: bytes) -> None:
        self.sock.send(frame)

    def send_parts(self, parts: list[bytes]) -> None:
        self.sock.send_multipart(parts)

    def drain(self) -> list[bytes]:
        frames = []
        while self.sock.poll(0):
            frames.append(self.sock.recv())
        return frames

    def unsolicited(self) -> list[bytes]:
        """Frames received so far that answer no request made with ``request``."""
        self._sort(self.drain())
        return self.others

    def _sort(self, frames: list[bytes]) -> None:
        for frame in frames:
            try:
                reply_to = Envelope.from_frame(frame, max_size=1 << 24).reply_to
            except ProtocolError:
                reply_to = b""
            if reply_to not in self.asked:
                self.others.append(frame)

    def request(self, envelope: Envelope, timeout: float = ANSWER_S) -> Envelope:
        """Send ``envelope`` and return the agent's verified reply to it.

        Re-sends the same frame every second until the deadline (a retry of a known id
        is answered with the stored reply); other frames that arrive are set aside.
        Frames on one connection are handled in order, so once this returns, everything
        sent earlier on this socket has been processed.
        """
        self.asked.add(envelope.id)
        frame = envelope.to_frame()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.sock.send(frame)
            resend_at = time.monotonic() + 1.0
            while time.monotonic() < resend_at:
                if not self.sock.poll(100):
                    continue
                received = self.sock.recv()
                reply = Envelope.from_frame(received, max_size=1 << 24)
                if reply.reply_to != envelope.id:
                    self._sort([received])
                    continue
                assert reply.verify() == self.address
                assert reply.recipient == envelope.sender
                return reply
        raise AssertionError(f"no reply to {envelope.protocol} {envelope.id.hex()} in {timeout}s")

    def close(self) -> None:
        self.sock.close(0)


@pytest.fixture
def raw_factory(zctx: zmq.Context[zmq.Socket[bytes]]) -> Iterator[Callable[[Peer], RawDealer]]:
    made: list[RawDealer] = []

    def make(peer: Peer) -> RawDealer:
        dealer = RawDealer.to(zctx, peer)
        made.append(dealer)
        return dealer

    yield make
    for dealer in made:
        dealer.close()


def decode_reply(envelope: Envelope, expect: type[Message]) -> Message:
    if envelope.schema_digest == ErrorReply.schema_digest():
        error = ErrorReply.decode(envelope.payload)
        raise AssertionError(f"agent answered an error: {error}")
    assert envelope.schema_digest == expect.schema_digest()
    return expect.decode(envelope.payload)


def raw_work(raw: RawDealer, signer: EnvelopeSigner, peer: Peer, text: str) -> Envelope:
    """A well-formed ``test.work`` request through a raw socket; returns the reply."""
    reply = raw.request(seal(signer, peer.address, Work(text=text)))
    done = decode_reply(reply, WorkDone)
    assert isinstance(done, WorkDone) and done.text == text
    return reply


def read_stats(db: Path) -> tuple[dict[str, int], int]:
    """The counters an agent last flushed to its store, and when (0 if never)."""
    if not db.exists():
        return {}, 0
    conn = sqlite3.connect(db, timeout=10)
    try:
        rows = conn.execute("SELECT name, value, updated_ms FROM stats").fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return {}, 0
    finally:
        conn.close()
    return {name: int(value) for name, value, _ in rows}, max((r[2] for r in rows), default=0)


def live_stats(
    db: Path, check: Callable[[dict[str, int]], bool], what: str, after_ms: int = 0
) -> dict[str, int]:
    """Poll the agent's flushed counters (written every second) until ``check`` holds,
    in a snapshot written after ``after_ms``."""

    def probe() -> dict[str, int] | None:
        stats, at = read_stats(db)
        return stats if at > after_ms and check(stats) else None

    stats = poll_blocking(probe, timeout=STATS_S)
    assert stats, (
        f"timed out after {STATS_S:g}s waiting for {what}; last counters: {read_stats(db)[0]}"
    )
    return stats


def final_stats(peer: Peer) -> dict[str, int]:
    """Stop the agent with SIGTERM (cleanly) and return the counters it wrote last."""
    assert peer.stop() == 0, peer.log.read_text(errors="replace")
    stats, _ = read_stats(peer.db)
    assert stats, "the agent wrote no counters"
    return stats


def stored_messages(db: Path) -> list[MessageRow]:
    store = Store(db)
    try:
        with Session(store.engine) as session:
            return list(session.exec(select(MessageRow)).all())
    finally:
        store.close()


def run_cli(home: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMESH_")}
    env["AGENTMESH_HOME"] = str(home)
    env["COLUMNS"] = "10000"
    return subprocess.run(
        [*CLI, *args],
        check=False,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def cli_json(home: Path, *args: str) -> Any:
    result = run_cli(home, *args, "--json")
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


# --------------------------------------------------------------------------- hostile bytes


async def test_random_bytes_are_rejected_as_malformed(
    peer: Peer,
    client: MeshNode,
    raw_factory: Callable[[Peer], RawDealer],
    signer: EnvelopeSigner,
) -> None:
    meet(client, peer)
    raw = raw_factory(peer)
    rng = random.Random(20261)
    frames = [rng.randbytes(n) for n in (0, 1, 2, 13, 64, 500, 4096, 65_536)]
    frames += [b"\x01" + rng.randbytes(n) for n in (0, 1, 20, 300, 5000)]
    frames += [b"\x01\x9d" + rng.randbytes(200)]  # claims a 13-field array
    frames += [b"\x01" + msgpack.packb([1, 2, 3])]
    for frame in frames:
        raw.send(frame)
    raw.send_parts([b"two", b"parts"])
    raw.send_parts([b"\x01", b"", b"three"])
    raw_work(raw, signer, peer, "same socket, after random bytes")
    await assert_answers(client, peer, "after random bytes")
    assert raw.unsolicited() == []

    stats = final_stats(peer)
    assert stats["rejected.malformed"] == len(frames) + 2
    assert stats["handled"] == 2  # only the well-formed requests
    assert stats.get("loop_errors", 0) == 0


async def test_truncated_frames_are_rejected_and_the_whole_frame_still_works(
    peer: Peer,
    client: MeshNode,
    raw_factory: Callable[[Peer], RawDealer],
    signer: EnvelopeSigner,
) -> None:
    meet(client, peer)
    raw = raw_factory(peer)
    envelope = seal(signer, peer.address, Work(text="cut"))
    frame = envelope.to_frame()
    cuts = [0, 1, 2, 10, 41, len(frame) // 2, len(frame) - 66, len(frame) - 1]
    for cut in cuts:
        raw.send(frame[:cut])
    raw.send(frame + b"\x00")  # trailing bytes are as malformed as missing ones
    await assert_answers(client, peer, "after truncated frames")
    # The cut copies did not poison the id: the intact frame is accepted and answered.
    done = decode_reply(raw.request(envelope), WorkDone)
    assert isinstance(done, WorkDone) and done.text == "cut"

    stats = final_stats(peer)
    assert stats["rejected.malformed"] == len(cuts) + 1
    assert stats["handled"] == 2
    assert stats.get("loop_errors", 0) == 0


async def test_oversized_frames_are_dropped_and_fresh_connections_still_work(
    peer: Peer,
    client: MeshNode,
    raw_factory: Callable[[Peer], RawDealer],
    signer: EnvelopeSigner,
) -> None:
    meet(client, peer)
    raw = raw_factory(peer)
    # A signed frame just over max_frame_bytes (zmq's MAXMSGSIZE still lets it in).
    probe = seal(signer, peer.address, Note(text="x"), NOTE).to_frame()
    padding = MAX_FRAME + 10 - len(probe)
    big = seal(signer, peer.address, Note.model_construct(text="x" * padding), NOTE).to_frame()
    assert MAX_FRAME < len(big) < MAX_FRAME + 100
    raw.send(big)
    raw_work(raw, signer, peer, "same socket, after an oversized frame")
    await assert_answers(client, peer, "after an oversized frame")
    # Far over the limit: zmq drops the connection. A fresh socket must still work.
    raw.send(os.urandom(4 * MAX_FRAME))
    raw.send(b"\x01" + bytes(2 * MAX_FRAME))
    raw_work(raw_factory(peer), signer, peer, "fresh socket after oversized")
    await assert_answers(client, peer, "after huge frames")

    stats = final_stats(peer)
    assert stats["rejected.oversized"] == 1
    assert stats["handled"] == 4  # the four well-formed requests; the note never ran
    assert stats.get("loop_errors", 0) == 0
    assert not any(m.protocol == NOTE for m in stored_messages(peer.db))


def _forgeries(signer: EnvelopeSigner, victim: str, recipient: str) -> list[Envelope]:
    """Five ways a signature can be wrong; all other fields are well formed."""
    good = seal(signer, recipient, Work(text="forged"))
    sig = good.signature
    n = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
    high_s = sig[:32] + (n - int.from_bytes(sig[32:64], "big")).to_bytes(32, "big")
    high_s += bytes((55 - sig[64],))  # the same signature, malleated: recovers, but high s
    impostor = replace(good, sender=victim, raw=b"")  # claims to be the victim
    return [
        impostor.with_signature(signer.sign_digest(impostor.digest())),
        replace(good, payload=Work(text="tampered").encode(), raw=b""),
        good.with_signature(high_s),
        good.with_signature(sig[:64] + b"\x1d"),
        good.with_signature(bytes(65)),
    ]


async def test_forged_signatures_are_rejected(
    peer: Peer,
    client: MeshNode,
    raw_factory: Callable[[Peer], RawDealer],
    signer: EnvelopeSigner,
) -> None:
    meet(client, peer)
    raw = raw_factory(peer)
    forged = _forgeries(signer, client.address, peer.address)
    for envelope in forged:
        raw.send(envelope.to_frame())
    raw_work(raw, signer, peer, "same socket, after forgeries")
    await assert_answers(client, peer, "after forged signatures")
    assert raw.unsolicited() == []  # no answer to any forgery

    stats = final_stats(peer)
    assert stats["rejected.bad_signature"] == len(forged)
    assert stats["handled"] == 2
    stored = {m.id for m in stored_messages(peer.db)}
    assert not stored & {e.id for e in forged}


async def test_replayed_messages_run_their_handler_once(
    peer: Peer, raw_factory: Callable[[Peer], RawDealer], signer: EnvelopeSigner
) -> None:
    raw = raw_factory(peer)
    work = seal(signer, peer.address, Work(text="replayed"))
    note = seal(signer, peer.address, Note(text="replayed note"), NOTE)
    first = raw.request(work)
    raw.send(note.to_frame())
    raw.send(note.to_frame())
    second = raw.request(work)
    # The stored reply, byte for byte: a second handler run would sign a new reply.
    assert second.to_frame() == first.to_frame()
    assert isinstance(decode_reply(second, WorkDone), WorkDone)
    raw_work(raw, signer, peer, "after replays")

    stats = final_stats(peer)
    assert stats["handled"] == 3  # replayed work, replayed note, the final request
    assert stats["rejected.duplicate"] >= 2
    statuses = {m.id: m.status for m in stored_messages(peer.db)}
    assert statuses[work.id] == "handled"
    assert statuses[note.id] == "handled"


async def test_expired_future_and_overlong_messages_are_rejected(
    peer: Peer,
    client: MeshNode,
    raw_factory: Callable[[Peer], RawDealer],
    signer: EnvelopeSigner,
) -> None:
    meet(client, peer)
    raw = raw_factory(peer)
    now = now_ms()
    stale = [
        seal(signer, peer.address, Work(text="expired"), created=now - 600_000),
        seal(signer, peer.address, Work(text="future"), created=now + 600_000),
        seal(signer, peer.address, Work(text="ttl too long"), ttl_ms=600_000),
        seal(signer, peer.address, Work(text="expires first"), ttl_ms=-1000),
    ]
    for envelope in stale:
        raw.send(envelope.to_frame())
    raw_work(raw, signer, peer, "same socket, after stale messages")
    await assert_answers(client, peer, "after stale messages")
    assert raw.unsolicited() == []

    stats = final_stats(peer)
    assert stats["rejected.expired"] == 1
    assert stats["rejected.from_future"] == 1
    assert stats["rejected.bad_ttl"] == 2
    assert stats["handled"] == 2


async def test_messages_for_another_agent_are_rejected(
    peer: Peer,
    client: MeshNode,
    raw_factory: Callable[[Peer], RawDealer],
    signer: EnvelopeSigner,
) -> None:
    meet(client, peer)
    raw = raw_factory(peer)
    other = EnvelopeSigner(os.urandom(32)).address
    raw.send(seal(signer, other, Work(text="not for you")).to_frame())
    raw.send(seal(signer, ZERO_ADDRESS, Work(text="broadcast work")).to_frame())
    await assert_answers(client, peer, "after misaddressed messages")
    # Control: the zero address is fine for the mesh protocol (joining by bootstrap).
    pong = decode_reply(
        raw.request(seal(signer, ZERO_ADDRESS, Ping(note="hi"), MESH_PROTOCOL, MESH_VERSION)),
        Pong,
    )
    assert isinstance(pong, Pong) and pong.note == "hi"
    assert raw.unsolicited() == []

    stats = final_stats(peer)
    assert stats["rejected.wrong_recipient"] == 2
    assert stats["handled"] == 2  # the well-formed work and the ping


async def test_unknown_protocol_and_version_get_error_replies(peer: Peer, client: MeshNode) -> None:
    meet(client, peer)
    with pytest.raises(RemoteError) as unknown:
        await client.request(
            peer.address, Work(text="x"), protocol="test.nope", version=V, expect=(WorkDone,)
        )
    assert unknown.value.code == "unknown_protocol"
    assert unknown.value.peer == peer.address
    assert "test.work@1" in unknown.value.detail  # tells what it does speak
    with pytest.raises(RemoteError) as version:
        await client.request(
            peer.address, Work(text="x"), protocol=WORK, version="99", expect=(WorkDone,)
        )
    assert version.value.code == "unknown_version"
    await assert_answers(client, peer, "after unknown protocols")

    stats = final_stats(peer)
    assert stats["rejected.unknown_protocol"] == 1
    assert stats["rejected.unknown_version"] == 1
    assert stats["handled"] == 1


async def test_payload_failing_its_schema_gets_invalid_payload(
    peer: Peer, client: MeshNode
) -> None:
    meet(client, peer)
    # model_construct skips validation: the client sends what the schema forbids.
    bad = [Work.model_construct(text="neg", ms=-5), Work.model_construct(text="t" * 2000, ms=0)]
    for message, field_name in zip(bad, ("ms", "text"), strict=True):
        with pytest.raises(RemoteError) as error:
            await client.request(
                peer.address, message, protocol=WORK, version=V, expect=(WorkDone,)
            )
        assert error.value.code == "invalid_payload"
        assert field_name in error.value.detail
    await assert_answers(client, peer, "after invalid payloads")

    stats = final_stats(peer)
    assert stats["rejected.invalid_payload"] == 2
    assert stats["handled"] == 1
    assert stats.get("handler_errors", 0) == 0


async def test_a_failing_handler_gets_handler_error(peer: Peer, client: MeshNode) -> None:
    meet(client, peer)
    with pytest.raises(RemoteError) as error:
        await ask_work(client, peer, "raise")
    assert error.value.code == "handler_error"
    assert "asked to fail" in error.value.detail
    await assert_answers(client, peer, "after a failing handler")
    stats = final_stats(peer)
    assert stats["handler_errors"] == 1
    assert stats.get("loop_errors", 0) == 0


@pytest.mark.slow
async def test_a_flood_from_one_peer_is_rate_limited_and_others_are_served(
    peers: PeerFactory,
    client: MeshNode,
    raw_factory: Callable[[Peer], RawDealer],
    signer: EnvelopeSigner,
) -> None:
    peer = peers.start(rate=200, burst=100)
    meet(client, peer)
    flooder = raw_factory(peer)
    flood = [seal(signer, peer.address, Note(text=f"flood {i}"), NOTE) for i in range(5000)]
    for envelope in flood:
        flooder.send(envelope.to_frame())
    # Another peer is served while (or right after) the flood is drained...
    await assert_answers(client, peer, "during a flood")
    # ... and the flooder itself once its bucket refills (the retry loop is bounded).
    raw_work(flooder, signer, peer, "flooder, later")
    live = live_stats(peer.db, lambda s: s.get("received", 0) >= 5000, "the flood to be counted")
    assert live["rejected.rate_limited"] > 0

    stats = final_stats(peer)
    notes = [m for m in stored_messages(peer.db) if m.protocol == NOTE]
    assert 0 < len(notes) < len(flood)  # the burst got in, the rest was dropped
    assert len(notes) + stats["rejected.rate_limited"] >= len(flood)
    assert all(m.status == "handled" for m in notes)


async def test_cli_stats_shows_rejection_counters(
    peer: Peer,
    client: MeshNode,
    raw_factory: Callable[[Peer], RawDealer],
    signer: EnvelopeSigner,
) -> None:
    meet(client, peer)
    raw = raw_factory(peer)
    raw.send(os.urandom(100))
    raw.send(seal(signer, peer.address, Work(text="f")).to_frame()[:-1] + b"\x00")
    raw.send(seal(signer, peer.address, Work(text="old"), created=now_ms() - 600_000).to_frame())
    raw.send(seal(signer, EnvelopeSigner(os.urandom(32)).address, Work(text="w")).to_frame())
    raw.send(b"\x01" + bytes(MAX_FRAME + 10))
    replayed = seal(signer, peer.address, Work(text="twice"))
    raw.request(replayed)
    raw.request(replayed)
    with pytest.raises(RemoteError):
        await client.request(peer.address, Work(text="x"), protocol="nope", version=V)
    with pytest.raises(RemoteError):
        await client.request(
            peer.address, Work.model_construct(text="x", ms=-1), protocol=WORK, version=V
        )
    await assert_answers(client, peer, "after every kind of rejection")
    reasons = (
        "malformed",
        "bad_signature",
        "expired",
        "wrong_recipient",
        "oversized",
        "duplicate",
        "unknown_protocol",
        "invalid_payload",
    )

    def all_counted(s: dict[str, int]) -> bool:
        return all(s.get(f"rejected.{r}", 0) > 0 for r in reasons)

    # The agent counted them (its own flushed counters)...
    live_stats(peer.db, all_counted, "the agent to flush its rejection counters")

    # ... and `agentmesh mesh stats --json` in that home shows them.
    def from_cli() -> dict[str, int] | None:
        result = cli_json(peer.home, "mesh", "stats")
        agent = result.get(peer.address) or next(iter(result.values()), None)
        return agent if agent and all_counted(agent) else None

    counters = poll_blocking(from_cli, timeout=STATS_S)
    if not counters:
        shown = cli_json(peer.home, "mesh", "stats")
        files = sorted(p.name for p in (peer.home / "mesh").iterdir())
        raise AssertionError(
            f"timed out after {STATS_S:g}s waiting for `agentmesh mesh stats` to show the "
            f"rejections: `agentmesh mesh stats --json` printed {shown}; "
            f"{peer.home / 'mesh'} holds {files}"
        )
    assert counters.get("loop_errors", 0) == 0
    assert counters.get("stored.in.handled", 0) >= 2


# --------------------------------------------------------------------------- fuzzing

FUZZ_EXAMPLES = 2000


@pytest.fixture(scope="module")
def fuzz_peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    factory = PeerFactory(tmp_path_factory.mktemp("fuzz"))
    try:
        yield factory.start()
    finally:
        factory.close()


@pytest.fixture(scope="module")
def fuzz_socket(zctx: zmq.Context[zmq.Socket[bytes]], fuzz_peer: Peer) -> Iterator[RawDealer]:
    dealer = RawDealer.to(zctx, fuzz_peer)
    yield dealer
    dealer.close()


def _fuzz_parts(signer: EnvelopeSigner, recipient: str) -> st.SearchStrategy[list[bytes]]:
    """Frames (as zmq message parts) that mix noise with almost-valid envelopes."""
    valid = [
        seal(signer, recipient, Work(text="fuzz")).to_frame(),
        seal(signer, recipient, Note(text="fuzz"), NOTE).to_frame(),
        seal(signer, recipient, Ping(note="fuzz"), MESH_PROTOCOL, MESH_VERSION).to_frame(),
        seal(signer, ZERO_ADDRESS, Ping(), MESH_PROTOCOL, MESH_VERSION).to_frame(),
    ]

    def mutations(frame: bytes) -> st.SearchStrategy[bytes]:
        size = len(frame)
        index = st.integers(0, size - 1)
        return st.one_of(
            st.tuples(index, st.integers(0, 255)).map(
                lambda t: frame[: t[0]] + bytes((t[1],)) + frame[t[0] + 1 :]
            ),
            st.integers(0, size).map(lambda i: frame[:i]),
            st.tuples(st.integers(0, size), st.binary(min_size=1, max_size=64)).map(
                lambda t: frame[: t[0]] + t[1] + frame[t[0] :]
            ),
            st.tuples(index, index).map(lambda t: frame[: min(t)] + frame[max(t) :]),
        )

    leaf = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(-(2**63), 2**64 - 1),
        st.floats(),
        st.binary(max_size=80),
        st.text(max_size=80),
    )
    value = st.recursive(
        leaf,
        lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner),
        max_leaves=20,
    )

    def packed(obj: Any) -> bytes:
        return b"\x01" + msgpack.packb(obj, use_bin_type=True)

    right_types = [
        st.binary(min_size=20, max_size=20),
        st.just(bytes.fromhex(recipient[2:])),
        st.binary(min_size=16, max_size=16),
        st.binary(min_size=16, max_size=16),
        st.binary(min_size=16, max_size=16),
        st.sampled_from([WORK, NOTE, MESH_PROTOCOL]),
        st.sampled_from([V, "2"]),
        st.binary(min_size=32, max_size=32),
        st.just(now_ms()),
        st.just(now_ms() + 30_000),
        st.integers(0, 2**64 - 1),
        st.binary(max_size=200),
        st.binary(min_size=65, max_size=65),
    ]
    # 13 fields, each either the right type or anything at all.
    shaped = st.tuples(*(st.one_of(s, value) for s in right_types)).map(lambda t: packed(list(t)))

    digests = [m.schema_digest() for m in (Work, Note, Ping, Pong, Hello, WorkDone, ErrorReply)]
    json_value = st.recursive(
        st.none() | st.booleans() | st.integers(-(2**70), 2**70) | st.text(max_size=40),
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner),
        max_leaves=12,
    )
    payloads = st.one_of(
        st.builds(
            lambda t, ms: json.dumps({"text": t, "ms": ms}).encode(),
            st.sampled_from(["fuzz", "raise", ""]) | st.text(max_size=30),
            st.integers(-5, 5),
        ),
        st.builds(lambda t: json.dumps({"text": t}).encode(), st.text(max_size=1100)),
        st.builds(lambda n: json.dumps({"note": n}).encode(), st.text(max_size=300)),
        json_value.map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=300),
    )
    # Validly signed envelopes with arbitrary content: these reach dispatch and handlers.
    # Half of them use a route the agent has (protocol, version and schema digest).
    routes = [
        (WORK, V, Work.schema_digest()),
        (NOTE, V, Note.schema_digest()),
        (MESH_PROTOCOL, MESH_VERSION, Ping.schema_digest()),
        (MESH_PROTOCOL, MESH_VERSION, Hello.schema_digest()),
    ]
    anything = st.tuples(
        st.sampled_from([WORK, NOTE, MESH_PROTOCOL]) | st.text(min_size=1, max_size=64),
        st.sampled_from([V, MESH_VERSION, "2"]) | st.text(min_size=1, max_size=64),
        st.sampled_from(digests) | st.binary(min_size=32, max_size=32),
    )
    signed = st.builds(
        lambda to, route, payload, created, ttl: Envelope.seal(
            signer,
            recipient=to,
            protocol=route[0],
            protocol_version=route[1],
            schema_digest=route[2],
            payload=payload,
            created=now_ms() + created,
            ttl_ms=ttl,
        ).to_frame(),
        st.sampled_from([recipient, recipient, recipient, ZERO_ADDRESS, signer.address]),
        st.booleans().flatmap(lambda real: st.sampled_from(routes) if real else anything),
        payloads,
        st.sampled_from([0, 0, 0, -600_000, 600_000]),
        st.sampled_from([30_000, 30_000, 30_000, 600_000, -1]),
    ).filter(lambda f: len(f) < MAX_FRAME)

    noise = st.one_of(
        st.binary(max_size=4096),
        st.binary(max_size=1024).map(lambda b: b"\x01" + b),
        st.sampled_from(valid).flatmap(mutations),
        value.map(packed),
        st.lists(value, max_size=20).map(packed),
        shaped,
    )
    # Half the frames are signed (they get deepest); one message in eight has the wrong
    # number of parts. (flatmap, not nested one_of: hypothesis flattens those.)
    single = st.booleans().flatmap(lambda deep: signed if deep else noise)
    multipart = st.lists(st.binary(max_size=64) | single, min_size=2, max_size=4)
    return st.integers(0, 7).flatmap(lambda i: multipart if i == 0 else single.map(lambda f: [f]))


@pytest.mark.slow
def test_fuzzed_frames_never_break_the_live_agent(
    fuzz_peer: Peer, fuzz_socket: RawDealer, zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    signer = EnvelopeSigner(os.urandom(32))
    sent = 0
    replies = 0
    # A bounded first exchange: a socket that cannot talk to the agent at all (say its
    # CurveZMQ handshake fails) fails the test here, in seconds, instead of fuzzing a dead
    # link, where every send blocks for its 20 s timeout and hypothesis shrinks that for
    # hours.
    raw_work(fuzz_socket, signer, fuzz_peer, "before the fuzz")

    def check_replies() -> None:
        nonlocal replies
        frames = [*fuzz_socket.others, *fuzz_socket.drain()]  # others: set aside by requests
        fuzz_socket.others.clear()
        for frame in frames:
            # Whatever comes back is a well-formed envelope, signed by the agent, to us.
            reply = Envelope.from_frame(frame)
            assert reply.verify() == fuzz_peer.address
            assert reply.recipient == signer.address
            replies += 1

    @settings(
        max_examples=FUZZ_EXAMPLES,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(_fuzz_parts(signer, fuzz_peer.address))
    def throw(parts: list[bytes]) -> None:
        nonlocal sent
        fuzz_socket.send_parts(parts)
        sent += 1
        check_replies()
        assert fuzz_peer.alive(), f"agent died on {parts!r}"

    throw()
    assert sent >= FUZZ_EXAMPLES

    assert fuzz_peer.alive()
    reply = raw_work(fuzz_socket, signer, fuzz_peer, "after the fuzz")  # the same socket
    fresh = RawDealer.to(zctx, fuzz_peer)
    try:
        raw_work(fresh, signer, fuzz_peer, "after the fuzz, new socket")
    finally:
        fresh.close()
    check_replies()
    assert replies > 0  # some fuzzed envelopes were valid enough to be answered
    # A snapshot written after the last answer covers every fuzzed frame.
    stats = live_stats(
        fuzz_peer.db,
        lambda s: s.get("received", 0) >= sent,
        "the counters to cover the fuzzed frames",
        after_ms=reply.created,
    )
    assert stats.get("loop_errors", 0) == 0
    assert stats["rejected.malformed"] > 0
    assert stats["rejected.bad_signature"] > 0
    assert fuzz_peer.alive()


# --------------------------------------------------------------------------- durability


async def test_handler_effects_are_committed_with_the_handled_mark(
    peer: Peer, client: MeshNode
) -> None:
    """``ctx.record`` effects land in the store (``Store.effects``), one per handler run."""
    meet(client, peer)
    texts = [f"effect {i}" for i in range(3)]
    for text in texts:
        await client.send(peer.address, Note(text=text), protocol=NOTE, version=V)
    for text in texts:
        await assert_answers(client, peer, text)
    live_stats(peer.db, lambda s: s.get("handled", 0) >= 6, "six handled messages")
    assert peer.stop() == 0

    store = Store(peer.db)
    try:
        assert sorted(e.value for e in store.effects("work")) == texts
        assert sorted(e.value for e in store.effects("note")) == texts
        handled = {m.id for m in stored_messages(peer.db) if m.status == "handled"}
        assert {e.message_id for e in store.effects()} <= handled
        assert store.pending() == []
    finally:
        store.close()


def _rows(db: Path, protocol: str, status: str | None = None) -> int:
    """How many inbound ``protocol`` messages the agent's store holds (with ``status``)."""
    query = "SELECT count(*) FROM messages WHERE direction = 'in' AND protocol = ?"
    args = [protocol]
    if status is not None:
        query += " AND status = ?"
        args.append(status)
    conn = sqlite3.connect(db, timeout=10)
    try:
        (count,) = conn.execute(query, args).fetchone()
    finally:
        conn.close()
    return int(count)


def _crash(agent: Peer) -> None:
    os.kill(agent.proc.pid, signal.SIGKILL)
    assert stop_process(agent.proc) == -signal.SIGKILL


@pytest.mark.slow
async def test_sigkill_mid_flight_loses_nothing_and_duplicates_nothing(
    peers: PeerFactory, client: MeshNode
) -> None:
    """Two crashes: one while notes are being recorded and handled, one just after the
    first requests were recorded as handled, with others in flight. Each restart uses the
    same key, home and port, so the client's retries reach it."""
    port = free_port()
    key = os.urandom(32).hex()
    agent = peers.start(key=key, port=port)
    address, endpoint = agent.address, agent.card.endpoint
    meet(client, agent)

    notes = [f"note {i}" for i in range(300)]
    for text in notes:
        await client.send(address, Note(text=text), protocol=NOTE, version=V)
    works = [f"work {i}" for i in range(100)]
    tasks = [
        asyncio.create_task(ask_work(client, agent, text, timeout=1.0, retries=10))
        for text in works
    ]
    # Crash 1: as soon as the agent has recorded a note (the rest are in flight).
    assert await eventually(lambda: _rows(agent.db, NOTE), timeout=ANSWER_S, interval=0.001), (
        "a recorded note"
    )
    _crash(agent)
    agent = peers.start(agent.home, key=key, port=port)
    assert (agent.address, agent.card.endpoint) == (address, endpoint)
    # Crash 2: as soon as a request is recorded handled (its reply is on its way).
    db = agent.db
    assert await eventually(lambda: _rows(db, WORK, "handled"), timeout=ANSWER_S, interval=0.001), (
        "a handled request"
    )
    _crash(agent)
    agent = peers.start(agent.home, key=key, port=port)

    replies = await asyncio.wait_for(asyncio.gather(*tasks), 60)
    assert [r.text for r in replies] == works

    # Let notes recovered after the crashes finish, then stop cleanly.
    def nothing_pending() -> bool:
        store = Store(agent.db)
        try:
            return store.pending() == []
        finally:
            store.close()

    assert await eventually(nothing_pending, timeout=STATS_S), "recovered notes to be handled"
    assert agent.stop() == 0

    store = Store(agent.db)
    try:
        work_effects = Counter(e.value for e in store.effects("work"))
        assert set(work_effects) == set(works), f"{len(work_effects)} of 100 work effects"
        assert {v: c for v, c in work_effects.items() if c != 1} == {}
        note_rows = [m for m in stored_messages(agent.db) if m.protocol == NOTE]
        assert note_rows, "no note was recorded at all"
        note_effects = store.effects("note")
        per_message = Counter(e.message_id for e in note_effects)
        assert {m.id for m in note_rows} == set(per_message), "recorded notes without effect"
        assert set(per_message.values()) == {1}
        assert {v: c for v, c in Counter(e.value for e in note_effects).items() if c != 1} == {}
        assert {e.value for e in note_effects} <= set(notes)
        assert store.pending() == []
    finally:
        store.close()


async def test_messages_handled_before_a_crash_are_not_run_again_after_restart(
    peers: PeerFactory,
    raw_factory: Callable[[Peer], RawDealer],
    signer: EnvelopeSigner,
) -> None:
    """The replay cache dies with the process; the store must still know the ids."""
    port = free_port()
    key = os.urandom(32).hex()
    agent = peers.start(key=key, port=port)
    raw = raw_factory(agent)
    work = seal(signer, agent.address, Work(text="before the crash"))
    note = seal(signer, agent.address, Note(text="before the crash"), NOTE)
    raw.send(note.to_frame())
    first = raw.request(work)  # answered: both are recorded handled
    _crash(agent)

    agent = peers.start(agent.home, key=key, port=port)
    raw = raw_factory(agent)
    raw.send(note.to_frame())
    second = raw.request(work)
    assert second.to_frame() == first.to_frame(), "the request ran again after the restart"
    raw_work(raw, signer, agent, "after the restart")

    stats = final_stats(agent)
    assert stats["handled"] == 1  # only the new request; the old two were duplicates
    assert stats["rejected.duplicate"] >= 2
    store = Store(agent.db)
    try:
        assert [e.value for e in store.effects("work")] == ["before the crash", "after the restart"]
        assert [e.value for e in store.effects("note")] == ["before the crash"]
    finally:
        store.close()


# --------------------------------------------------------------------------- mesh serve CLI


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    info: dict[str, Any]


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., Served]]:
    """Start ``agentmesh mesh serve`` processes in one shared home."""
    procs: list[subprocess.Popen[bytes]] = []
    home = tmp_path / "home"

    def start(name: str, *args: str, config: str = "") -> Served:
        home.mkdir(mode=0o700, exist_ok=True)
        if config:
            (home / "config.toml").write_text(config)
        ready = tmp_path / f"{name}.json"
        log = tmp_path / f"{name}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMESH_")}
        env["AGENTMESH_HOME"] = str(home)
        cmd = [*CLI, "mesh", "serve", "--name", name, "--ephemeral", "--ready-file", str(ready)]
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [*cmd, *args], env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
            )
        procs.append(proc)
        return Served(proc, wait_ready(proc, ready, log))

    start.home = home  # type: ignore[attr-defined]
    try:
        yield start
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(STOP_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(STOP_S)


def _known_peers(home: Path, address: str) -> dict[str, str]:
    """address -> state, from the peer table of the agent ``address`` in ``home``."""
    store = Store(home / "mesh" / f"{address}.db")
    try:
        return {p.address: p.state for p in store.peers()}
    finally:
        store.close()


@pytest.mark.slow
def test_two_served_agents_find_each_other_and_the_cli_sees_both(
    serve: Callable[..., Served],
) -> None:
    home: Path = serve.home  # type: ignore[attr-defined]
    alpha = serve("alpha")
    beta = serve("beta", f"--bootstrap={alpha.info['bootstrap']}")  # may start with "-"
    a, b = alpha.info["address"], beta.info["address"]
    assert a != b

    assert poll_blocking(lambda: _known_peers(home, a).get(b) == "up", timeout=READY_S), (
        "alpha to know beta"
    )
    assert poll_blocking(lambda: _known_peers(home, b).get(a) == "up", timeout=READY_S), (
        "beta to know alpha"
    )

    for target, name in ((b, "beta"), (a, "alpha")):
        result = run_cli(home, "mesh", "ping", target, "--count", "2", "--timeout", "10")
        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.count(f"pong from {name}") == 2

    listed = {row["address"]: row for row in cli_json(home, "mesh", "peers")}
    assert set(listed) == {a, b}
    assert listed[a]["name"] == "alpha" and listed[b]["name"] == "beta"
    assert all(row["state"] == "up" for row in listed.values())

    for served in (alpha, beta):
        assert stop_process(served.proc) == 0


def test_a_request_retried_after_the_replay_cache_filled_is_not_run_again(
    serve: Callable[..., Served], zctx: zmq.Context[zmq.Socket[bytes]]
) -> None:
    """A retried request still within its TTL is answered from the store, never re-run.

    The replay cache holds ``replay_cache_size`` ids; the store is consulted only for
    ids created before the agent started (plus ``clock_skew_ms``). The config here makes
    the cache small (1,000, the minimum) and the skew 0 so this is quick to reach; with
    the defaults it takes 200,000 messages within one TTL (up to ``max_ttl_ms``, five
    minutes) after the first five seconds of uptime.
    """
    agent = serve("gamma", config="[mesh]\nreplay_cache_size = 1000\nclock_skew_ms = 0\n")
    address = agent.info["address"]
    curve_key, endpoint = split_bootstrap(agent.info["bootstrap"])
    raw = RawDealer(zctx, endpoint, curve_key, address)
    signer = EnvelopeSigner(os.urandom(32))
    try:
        request = seal(
            signer, address, Ping(note="once"), MESH_PROTOCOL, MESH_VERSION, ttl_ms=300_000
        )
        first = raw.request(request)
        fillers = [
            seal(signer, address, Ping(note=str(i)), MESH_PROTOCOL, MESH_VERSION)
            for i in range(1100)
        ]
        for envelope in fillers:
            raw.send(envelope.to_frame())
        answered: set[bytes] = set()

        def all_answered() -> bool:
            answered.update(Envelope.from_frame(f).reply_to for f in raw.drain())
            return answered >= {e.id for e in fillers}

        assert poll_blocking(all_answered, timeout=ANSWER_S), "the agent to answer 1,100 pings"
        # The requester retries the first request (same id, well within its TTL).
        second = raw.request(request)
    finally:
        raw.close()
    assert second.to_frame() == first.to_frame(), (
        "the retried request ran its handler again (a new reply was signed) instead of "
        "getting its stored reply"
    )
    assert stop_process(agent.proc) == 0
