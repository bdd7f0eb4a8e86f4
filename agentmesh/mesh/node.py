"""``MeshNode``: signed request/response and one-way messages over ZeroMQ.

Sockets: one ROUTER bound for direct messages (replies go back on the same
connection), one PUB bound for presence, and one pooled DEALER per peer for outbound
traffic. With ``curve`` on (the default) every socket is CurveZMQ-encrypted and the
client authenticates the server by the curve key in the peer's signed card.

Inbound frames are drained in batches: each is size-checked, parsed, verified
(signature, recipient, clock, replay) and rate-limited; accepted messages are recorded
as ``received`` in one transaction, handlers run as tasks, and a flusher records them
``handled`` (with the reply) before the replies leave. A duplicate id gets its stored
reply again and never reaches the handler. Nothing a peer sends can stop the loop.

The store is pruned on start and every ``store_prune_s`` (``MeshConfig``'s retention
limits); the ids a replay check may still need and the messages not yet handled are
kept (see ``agentmesh.store``).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import zmq
from pydantic import ValidationError
from zmq.utils import z85

from agentmesh.config import MeshConfig
from agentmesh.envelope import NO_REPLY, Envelope, EnvelopeSigner, now_ms
from agentmesh.errors import PeerUnreachable, ProtocolError, SignatureError
from agentmesh.mesh.card import AgentCard, CurveKeys, ServicePrice
from agentmesh.mesh.guard import InboundGuard, Rejected
from agentmesh.mesh.peers import PeerTable
from agentmesh.mesh.reactor import ReactorSocket
from agentmesh.mesh.routes import ErrorReply, HandlerContext, Route, Routes
from agentmesh.message import Message
from agentmesh.store import MessageRetention, Store

log = logging.getLogger("agentmesh.mesh")

ZERO_ADDRESS = "0x0000000000000000000000000000000000000000"
LOG_FLUSH_S = 0.05
STATS_FLUSH_S = 1.0
M = TypeVar("M", bound=Message)


def split_bootstrap(text: str) -> tuple[str, str]:
    """``<40-char Z85 key>@tcp://host:port`` -> (key, endpoint); ("", "") if malformed.

    Z85 keys may themselves contain '@', so split at the fixed key length.
    """
    key, at, endpoint = text[:40], text[40:41], text[41:]
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    if (
        at != "@"
        or not endpoint.startswith("tcp://")
        or len(endpoint) > 256
        or not host
        or not port.isdigit()
        or not 0 < int(port) < 65536
    ):
        return "", ""
    try:
        if len(z85.decode(key.encode())) != 32:
            return "", ""
    except (ValueError, KeyError, IndexError):
        return "", ""
    return key, endpoint


class RemoteError(ProtocolError):
    """The peer answered with an ``ErrorReply``."""

    def __init__(self, peer: str, code: str, detail: str) -> None:
        super().__init__(f"{peer} answered {code}: {detail}")
        self.peer = peer
        self.code = code
        self.detail = detail


@dataclass(frozen=True, slots=True)
class _Done:
    ident: bytes | None
    envelope: Envelope
    status: str
    reply: bytes | None
    effects: tuple[tuple[str, str], ...] = ()


def _row(envelope: Envelope, peer: str | None = None) -> tuple[Any, ...]:
    """The store's message columns for ``envelope`` (peer defaults to the sender)."""
    return (
        envelope.id,
        peer or envelope.sender,
        envelope.protocol,
        envelope.protocol_version,
        envelope.conversation,
        envelope.reply_to,
        envelope.to_frame(),
    )


class MeshNode:
    """One agent's presence on the mesh."""

    def __init__(
        self,
        private_key: bytes,
        *,
        name: str,
        config: MeshConfig | None = None,
        store: Store | None = None,
        services: Iterable[ServicePrice] = (),
        model_sha256: str = "",
    ) -> None:
        self.config = config or MeshConfig()
        self.name = name
        self._private_key = private_key
        self._signer = EnvelopeSigner(private_key)
        self.address = self._signer.address
        self.curve = CurveKeys.from_wallet_key(private_key)
        self.store = store
        self.routes = Routes()
        self.guard = InboundGuard(self.config, self.address)
        self.peers = PeerTable(
            self.address, store, self.config.max_peers, on_evict=self._close_dealers
        )
        self.counters = self.guard.counters
        self._services = tuple(services)
        self._model_sha256 = model_sha256
        self._zmq: zmq.Context[zmq.Socket[bytes]] = zmq.Context()
        self._router: ReactorSocket | None = None
        self._pub: ReactorSocket | None = None
        self._dealers: dict[str, ReactorSocket] = {}
        self._flush_scheduled = False
        self._pending: dict[bytes, asyncio.Future[Envelope]] = {}
        self._done: list[_Done] = []
        self._log_out: list[Envelope] = []
        self._log_in: list[Envelope] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._handler_tasks: set[asyncio.Task[None]] = set()
        self.card: AgentCard | None = None
        self._started_ms = 0

    def __repr__(self) -> str:
        return f"MeshNode({self.name!r}, {self.address})"

    # ------------------------------------------------------------------ setup

    def on(
        self,
        message_type: type[M],
        *,
        protocol: str,
        version: str,
        replies: tuple[type[Message], ...] = (),
    ) -> Callable[[Any], Any]:
        """Register a handler ``handler(ctx, message) -> reply | None``.

        ``async def`` handlers run as tasks (anything that waits: models, chain calls).
        A plain function runs inline while its message is dispatched: use it for cheap,
        CPU-only work, since it holds the receive loop while it runs.
        """

        def register(fn: Any) -> Any:
            is_async = inspect.iscoroutinefunction(fn)
            self.routes.add(Route(protocol, version, message_type, fn, replies, is_async))
            return fn

        return register

    def _secure(self, sock: zmq.Socket[bytes], *, server: bool, server_key: bytes = b"") -> None:
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, self.config.max_frame_bytes + 1024)
        if not self.config.curve:
            return
        sock.curve_secretkey = self.curve.secret
        sock.curve_publickey = self.curve.public
        if server:
            sock.curve_server = True
        else:
            sock.curve_serverkey = server_key

    def _bind(self, sock: zmq.Socket[bytes], port: int) -> str:
        host = self.config.host
        if port:
            sock.bind(f"tcp://{host}:{port}")
        else:
            port = sock.bind_to_random_port(f"tcp://{host}")
        return f"tcp://{self.config.advertise_host or host}:{port}"

    async def start(self) -> None:
        """Bind sockets, publish our signed card to ourselves, start the loops.

        Register handlers before calling this: messages a previous run accepted but did
        not handle are dispatched during start.
        """
        router = self._zmq.socket(zmq.ROUTER)
        self._secure(router, server=True)
        endpoint = self._bind(router, self.config.port)
        pub = self._zmq.socket(zmq.PUB)
        self._secure(pub, server=True)
        presence = self._bind(pub, self.config.presence_port)
        self._router = ReactorSocket(router, self._process, self._loop_error)
        self._pub = ReactorSocket(pub, None)
        self.card = AgentCard(
            address=self.address,
            name=self.name,
            endpoint=endpoint,
            presence_endpoint=presence,
            curve_key=self.curve.public.decode(),
            services=self._services,
            model_sha256=self._model_sha256,
            issued_ms=0,
        ).signed(self._private_key)
        self.peers.add(self.card, "self")
        self._started_ms = now_ms()
        self._tasks = [
            asyncio.create_task(self._housekeeping(), name="mesh-housekeeping"),
        ]
        await self._recover_pending()
        self.prune_store()

    async def stop(self) -> None:
        """Stop loops, close sockets, write the last counters."""
        for task in [*self._tasks, *self._handler_tasks]:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._flush_done()
        self._flush_logs()
        if self.store is not None:
            self.store.save_stats(dict(self.counters))
        for dealer in self._dealers.values():
            dealer.close()
        self._dealers.clear()
        for sock in (self._router, self._pub):
            if sock is not None:
                sock.close()
        self._zmq.term()

    async def __aenter__(self) -> MeshNode:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def find(self, service: str) -> list[AgentCard]:
        """Cards of live peers offering ``service``, cheapest first."""
        return [record.card for record in self.peers.offering(service)]

    # ------------------------------------------------------------------ outbound

    def seal(
        self,
        recipient: str,
        message: Message,
        *,
        protocol: str,
        version: str,
        conversation: bytes | None = None,
        reply_to: bytes = NO_REPLY,
    ) -> Envelope:
        """Sign ``message`` for ``recipient`` (``ZERO_ADDRESS``: any node) without sending it.

        The envelope expires ``message_ttl_ms`` after now; every field is signed.
        """
        return Envelope.seal(
            self._signer,
            recipient=recipient,
            protocol=protocol,
            protocol_version=version,
            schema_digest=type(message).schema_digest(),
            payload=message.encode(),
            conversation=conversation,
            reply_to=reply_to,
            ttl_ms=self.config.message_ttl_ms,
        )

    def publish(self, message: Message, *, protocol: str, version: str) -> Envelope:
        """Broadcast ``message``, sealed for any node, on our presence (PUB) socket.

        Subscribers admit it like a direct message (signature, clock, rate). PUB drops
        rather than blocks when a subscriber is slow, so this never waits. Returns the
        envelope; raises ``RuntimeError`` before :meth:`start`.
        """
        if self._pub is None:
            raise RuntimeError(f"{self!r} is not started: nothing to publish on")
        envelope = self.seal(ZERO_ADDRESS, message, protocol=protocol, version=version)
        self._pub.send([envelope.to_frame()])
        return envelope

    def subscriber(self, on_batch: Callable[[list[list[bytes]]], None]) -> ReactorSocket:
        """A SUB socket (subscribed to everything) whose batches go to ``on_batch``.

        It carries our CurveZMQ keys when ``curve`` is on (set ``curve_serverkey`` on
        ``.sock`` before each connect) and reports receive errors like the node's own
        sockets do, so a failing ``on_batch`` never stops the loop. Close it when done.
        """
        sock = self._zmq.socket(zmq.SUB)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.SUBSCRIBE, b"")
        sock.setsockopt(zmq.MAXMSGSIZE, 64 * 1024)
        if self.config.curve:
            sock.curve_secretkey = self.curve.secret
            sock.curve_publickey = self.curve.public
        return ReactorSocket(sock, on_batch, self._loop_error)

    def _dealer_for(self, key: str, endpoint: str, curve_key: str) -> ReactorSocket:
        dealer = self._dealers.get(key)
        if dealer is not None:
            return dealer
        sock = self._zmq.socket(zmq.DEALER)
        try:
            self._secure(sock, server=False, server_key=curve_key.encode())
            sock.setsockopt(zmq.SNDHWM, 100_000)
            sock.connect(endpoint)
        except (zmq.ZMQError, ValueError) as exc:
            sock.close(0)  # never leak a socket: it would block context termination
            raise ProtocolError(f"cannot connect to {endpoint}: {exc}") from None
        dealer = ReactorSocket(sock, lambda batch: self._on_replies(batch, key), self._loop_error)
        self._dealers[key] = dealer
        return dealer

    def forget(self, address: str) -> None:
        """Remove a peer and close its pooled connections (a departed agent)."""
        self.peers.remove(address)
        self._close_dealers(address)

    def _close_dealers(self, address: str) -> None:
        for key in [k for k in self._dealers if k.startswith(f"{address}|")]:
            self._dealers.pop(key).close()

    def _route_to(self, peer: str | AgentCard) -> tuple[str, ReactorSocket]:
        card = peer if isinstance(peer, AgentCard) else None
        if card is None:
            record = self.peers.get(str(peer))
            if record is None:
                raise PeerUnreachable(f"unknown peer {peer}: not in the peer table")
            card = record.card
        key = f"{card.address}|{card.endpoint}|{card.curve_key}"
        return card.address, self._dealer_for(key, card.endpoint, card.curve_key)

    async def send(
        self,
        peer: str | AgentCard,
        message: Message,
        *,
        protocol: str,
        version: str,
        conversation: bytes | None = None,
        reply_to: bytes = NO_REPLY,
    ) -> Envelope:
        """Send a one-way message; returns the envelope that was sent."""
        address, sock = self._route_to(peer)
        envelope = self.seal(
            address,
            message,
            protocol=protocol,
            version=version,
            conversation=conversation,
            reply_to=reply_to,
        )
        if not await sock.send_async([envelope.to_frame()]):
            raise PeerUnreachable(f"{address} is not accepting messages (send queue full)")
        self.counters["sent"] += 1
        self._log_out.append(envelope)
        return envelope

    async def request(
        self,
        peer: str | AgentCard,
        message: Message,
        *,
        protocol: str,
        version: str,
        expect: tuple[type[M], ...] = (),
        timeout: float | None = None,
        retries: int | None = None,
        conversation: bytes | None = None,
    ) -> M:
        """Send ``message`` and wait for the signed reply, re-sending the same envelope on
        timeout. Raises ``RemoteError`` for an error reply, ``PeerUnreachable`` when no
        reply comes."""
        address, sock = self._route_to(peer)
        reply = await self._request_via(
            sock, address, message, protocol, version, expect, timeout, retries, conversation
        )
        return self._decode_reply(reply, expect)

    async def request_endpoint(
        self,
        bootstrap: str,
        message: Message,
        *,
        protocol: str,
        version: str,
        expect: tuple[type[M], ...] = (),
        timeout: float | None = None,
    ) -> tuple[M, Envelope]:
        """Request from ``<curve key>@tcp://host:port`` without knowing the agent's address
        (joining through a bootstrap). Only the mesh protocol accepts such requests."""
        curve_key, endpoint = split_bootstrap(bootstrap)
        if not endpoint:
            raise ProtocolError(
                f"bad bootstrap address {bootstrap!r}: expected <40-char curve key>@tcp://host:port"
            )
        sock = self._dealer_for(f"bootstrap|{bootstrap}", endpoint, curve_key)
        reply = await self._request_via(
            sock,
            ZERO_ADDRESS,
            message,
            protocol,
            version,
            expect,
            timeout,
            None,
            None,
        )
        return self._decode_reply(reply, expect), reply

    async def _request_via(
        self,
        sock: ReactorSocket,
        address: str,
        message: Message,
        protocol: str,
        version: str,
        expect: tuple[type[Message], ...],
        timeout: float | None,
        retries: int | None,
        conversation: bytes | None,
    ) -> Envelope:
        """Send and re-send until the reply envelope comes; raises ``PeerUnreachable``."""
        for reply_type in expect:
            self.routes.learn(reply_type)
        envelope = self.seal(
            address, message, protocol=protocol, version=version, conversation=conversation
        )
        frame = envelope.to_frame()
        loop = asyncio.get_running_loop()
        per_try = timeout if timeout is not None else self.config.request_timeout_s
        attempts = 1 + (self.config.request_retries if retries is None else retries)
        try:
            for _ in range(attempts):
                # A fresh future per attempt: a late reply to an earlier attempt carries
                # the same id and still completes the request.
                future: asyncio.Future[Envelope] = loop.create_future()
                self._pending[envelope.id] = future
                await sock.send_async([frame])
                self.counters["sent"] += 1
                try:
                    reply = await asyncio.wait_for(future, per_try)
                    break
                except TimeoutError:
                    self.counters["request_timeouts"] += 1
            else:
                raise PeerUnreachable(
                    f"{address if address != ZERO_ADDRESS else 'bootstrap'} did not answer "
                    f"{protocol}@{version} within {attempts} x {per_try:g}s"
                )
        finally:
            self._pending.pop(envelope.id, None)
        self._log_out.append(envelope)
        return reply

    def _decode_reply(self, reply: Envelope, expect: tuple[type[M], ...]) -> M:
        reply_type = self.routes.types.get(reply.schema_digest)
        if reply_type is ErrorReply:
            error = ErrorReply.decode(reply.payload)
            raise RemoteError(reply.sender, error.code, error.detail)
        if reply_type is None or (expect and reply_type not in expect):
            raise ProtocolError(f"{reply.sender} replied with an unexpected message type")
        try:
            # One of ``expect`` (checked above), or any known type when none is given.
            return cast(M, reply_type.decode(reply.payload))
        except ValidationError as exc:
            raise ProtocolError(f"{reply.sender} replied with an invalid payload: {exc}") from None

    # ------------------------------------------------------------------ inbound

    def admit(self, label: str, frame: bytes, *, broadcast_ok: bool) -> Envelope:
        """Parse and check one inbound frame: every check that needs no store.

        Rate (per ``label``: a connection or a socket), size, format, signature,
        recipient (``broadcast_ok`` also accepts ``ZERO_ADDRESS``) and clock. A failed
        check is counted and raises ``Rejected`` (``ReplayRejected``, also a
        ``ReplayError``, for an expired envelope). Duplicate ids are the caller's to
        check (``guard.seen``): a retried request is answered, not rejected.
        """
        guard = self.guard
        guard.check_rate(label)
        if len(frame) > self.config.max_frame_bytes:
            raise guard.reject(label, "oversized", f"{len(frame)} bytes")
        try:
            envelope = Envelope.from_frame(frame, max_size=self.config.max_frame_bytes)
        except ProtocolError as exc:
            raise guard.reject(label, "malformed", exc.user_message) from None
        try:
            envelope.verify()
        except SignatureError as exc:
            raise guard.reject(label, "bad_signature", exc.user_message) from None
        if envelope.recipient != self.address and not (
            broadcast_ok and envelope.recipient == ZERO_ADDRESS
        ):
            raise guard.reject(envelope.sender, "wrong_recipient", envelope.recipient)
        guard.check_times(envelope.sender, envelope.created, envelope.expires, now_ms())
        return envelope

    def _loop_error(self, exc: BaseException) -> None:
        # Nothing a peer sends may stop the node: count, log, keep serving.
        self.counters["loop_errors"] += 1
        log.error("mesh receive error (continuing)", exc_info=exc)

    def _process(self, batch: list[list[bytes]]) -> None:
        accepted: list[tuple[bytes, Envelope]] = []
        now = now_ms()
        for parts in batch:
            self.counters["received"] += 1
            if len(parts) != 2:
                self.guard.reject("?", "malformed", f"{len(parts)} parts")
                continue
            ident, frame = parts
            try:
                envelope = self.admit(ident.hex(), frame, broadcast_ok=True)
            except Rejected:
                continue
            if envelope.recipient == ZERO_ADDRESS and envelope.protocol != "mesh":
                self.guard.reject(envelope.sender, "wrong_recipient", "broadcast")
                continue
            if self.guard.seen(envelope.id):
                self._duplicate(ident, envelope.id)
                continue
            self.guard.remember(envelope.id, envelope.created, envelope.expires, now)
            accepted.append((ident, envelope))
        if not accepted:
            return
        if self.store is not None:
            accepted = self._persist_accepted(accepted)
        for ident, envelope in accepted:
            self.peers.seen(envelope.sender, now)
            self._dispatch(ident, envelope)
        if self._done:
            # Inline handlers and error replies of this batch: one commit, replies now.
            self._flush_done()

    def _persist_accepted(
        self, accepted: list[tuple[bytes, Envelope]]
    ) -> list[tuple[bytes, Envelope]]:
        """Drop ids the store already has (answering duplicates); record one-way messages."""
        assert self.store is not None
        # Only a message created before this process started (or before the newest
        # id the full replay cache had to drop) can be known without being cached.
        horizon = max(self._started_ms, self.guard.evicted_created_ms) + self.config.clock_skew_ms
        old = [e.id for _, e in accepted if e.created <= horizon]
        known = self.store.known_ids(old) if old else {}
        fresh = []
        for ident, envelope in accepted:
            if envelope.id in known:
                self._duplicate(ident, envelope.id, known[envelope.id])
            else:
                fresh.append((ident, envelope))
        accepted = fresh
        # One-way messages are durable before their handler runs (nobody would send
        # them again). Requests are written once, with their reply, before the reply
        # leaves: until then the requester retries, so nothing is lost either way.
        one_way = [e for _, e in accepted if not self._is_request(e)]
        if one_way:
            self.store.record_received(_row(e) for e in one_way)
        return accepted

    def _is_request(self, envelope: Envelope) -> bool:
        route = self.routes.by_key.get(
            (envelope.protocol, envelope.protocol_version, envelope.schema_digest)
        )
        return route is None or bool(route.replies)

    def _duplicate(
        self, ident: bytes, message_id: bytes, known: tuple[str, bytes | None] | None = None
    ) -> None:
        self.counters["rejected.duplicate"] += 1
        if known is None and self.store is not None:
            known = self.store.known_ids([message_id]).get(message_id)
        if known is not None and known[1] is not None and self._router is not None:
            # A retried request: the handler ran once; send the same reply again.
            self._router.send([ident, known[1]])

    def _dispatch(self, ident: bytes | None, envelope: Envelope) -> None:
        found = self.routes.find(
            envelope.protocol, envelope.protocol_version, envelope.schema_digest
        )
        if isinstance(found, ErrorReply):
            self.guard.reject(envelope.sender, found.code, envelope.protocol)
            self._finish(ident, envelope, "failed", found)
            return
        try:
            message = found.message_type.decode(envelope.payload)
        except ValidationError as exc:
            self.guard.reject(envelope.sender, "invalid_payload", str(exc.error_count()))
            detail = "; ".join(
                f"{'.'.join(map(str, e['loc'])) or 'payload'}: {e['msg']}" for e in exc.errors()[:3]
            )
            self._finish(
                ident, envelope, "failed", ErrorReply(code="invalid_payload", detail=detail)
            )
            return
        if not found.is_async:
            self._run_sync_handler(ident, envelope, found, message)
            return
        task = asyncio.create_task(self._run_handler(ident, envelope, found, message))
        self._handler_tasks.add(task)
        task.add_done_callback(self._handler_tasks.discard)

    def _run_sync_handler(
        self, ident: bytes | None, envelope: Envelope, route: Route, message: Message
    ) -> None:
        ctx = HandlerContext(self, envelope)
        try:
            reply = route.handler(ctx, message)
        except Exception as exc:  # a failing handler is the handler's problem, not the loop's
            self._handler_failed(ident, envelope, route, exc)
            return
        self.counters["handled"] += 1
        # Batched with the rest of this receive batch: one commit, then the replies.
        self._finish(ident, envelope, "handled", reply, tuple(ctx.effects))  # type: ignore[arg-type]

    def _handler_failed(
        self, ident: bytes | None, envelope: Envelope, route: Route, exc: Exception
    ) -> None:
        self.counters["handler_errors"] += 1
        log.warning("handler for %s@%s failed: %r", route.protocol, route.version, exc)
        self._finish(
            ident,
            envelope,
            "failed",
            ErrorReply(code="handler_error", detail=f"{type(exc).__name__}: {exc}"),
        )

    async def _run_handler(
        self, ident: bytes | None, envelope: Envelope, route: Route, message: Message
    ) -> None:
        ctx = HandlerContext(self, envelope)
        try:
            reply = await route.handler(ctx, message)  # type: ignore[misc]
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a failing handler is the handler's problem, not the loop's
            self._handler_failed(ident, envelope, route, exc)
            return
        self.counters["handled"] += 1
        self._finish(ident, envelope, "handled", reply, tuple(ctx.effects), from_handler=True)

    def _finish(
        self,
        ident: bytes | None,
        envelope: Envelope,
        status: str,
        reply: Message | None,
        effects: tuple[tuple[str, str], ...] = (),
        *,
        from_handler: bool = False,
    ) -> None:
        frame = None
        if reply is not None:
            frame = self.seal(
                envelope.sender,
                reply,
                protocol=envelope.protocol,
                version=envelope.protocol_version,
                conversation=envelope.conversation,
                reply_to=envelope.id,
            ).to_frame()
        self._done.append(_Done(ident, envelope, status, frame, effects))
        if from_handler and len(self._handler_tasks) <= 1 and not self._flush_scheduled:
            # Nothing else in flight: answer now rather than a loop turn later.
            self._flush_done()
        elif not self._flush_scheduled:
            # Under load, handlers finishing in the same loop turn share one commit.
            self._flush_scheduled = True
            asyncio.get_running_loop().call_soon(self._flush_done)

    def _flush_done(self) -> None:
        self._flush_scheduled = False
        done, self._done = self._done, []
        if not done:
            return
        try:
            if self.store is not None:
                # Durable before the replies leave: a crash now re-runs nothing that the
                # requester has already seen answered.
                self.store.record_done(
                    [(_row(d.envelope), d.status, d.reply) for d in done],
                    [(d.envelope.id, key, value) for d in done for key, value in d.effects],
                )
            for item in done:
                if item.reply is not None and item.ident is not None and self._router:
                    if self._router.send([item.ident, item.reply]):
                        self.counters["replied"] += 1
                    else:
                        self.counters["reply_dropped"] += 1
        except Exception as exc:
            self._loop_error(exc)

    def _on_replies(self, batch: list[list[bytes]], key: str) -> None:
        for parts in batch:
            try:
                self.counters["received"] += 1
                envelope = self.admit(key, parts[-1], broadcast_ok=False)
            except Rejected:
                continue
            future = self._pending.get(envelope.reply_to)
            if future is None or future.done():
                self.guard.reject(envelope.sender, "unexpected_reply")
                continue
            self.peers.seen(envelope.sender)
            self._log_in.append(envelope)
            future.set_result(envelope)

    async def _recover_pending(self) -> None:
        """Handle messages a previous run accepted but never finished."""
        if self.store is None:
            return
        for pending in self.store.pending():
            try:
                envelope = Envelope.from_frame(pending.frame, max_size=1 << 30)
                self.guard.remember(envelope.id, envelope.created, envelope.expires, now_ms())
            except ProtocolError:
                continue
            self.counters["recovered"] += 1
            self._dispatch(None, envelope)

    # ------------------------------------------------------------------ upkeep

    def retention(self) -> MessageRetention:
        """The store's retention from the config. Protected: rows young enough that a
        copy of their envelope could still be admitted (a received envelope expires at
        most ``max_ttl_ms`` after its creation, which is at most ``clock_skew_ms`` ahead
        of our clock, and is admitted until ``clock_skew_ms`` after it expires)."""
        config = self.config
        return MessageRetention(
            max_age_ms=config.store_retention_s * 1000,
            max_rows=config.store_max_messages,
            max_bytes=config.store_max_bytes,
            protect_ms=config.max_ttl_ms + 2 * config.clock_skew_ms,
        )

    def prune_store(self, at_ms: int | None = None) -> int:
        """Apply the retention limits to the store as of ``at_ms`` (default: now);
        returns how many messages were dropped."""
        if self.store is None:
            return 0
        now = now_ms() if at_ms is None else at_ms
        dropped = self.store.prune_messages(self.retention(), now)
        self.counters["store.pruned"] += dropped
        # Rows of peers this run does not hold (left by earlier runs) age out too.
        self.store.prune_peers(
            {r.address for r in self.peers.all()},
            self.config.max_peers,
            now - self.config.store_retention_s * 1000,
        )
        return dropped

    def _flush_logs(self) -> None:
        if self.store is None:
            self._log_out.clear()
            self._log_in.clear()
            return
        out, self._log_out = self._log_out, []
        replies, self._log_in = self._log_in, []
        if out:
            self.store.record_sent([_row(e, e.recipient) for e in out])
        if replies:
            self.store.record_done((_row(e), "reply", None) for e in replies)

    async def _housekeeping(self) -> None:
        last_stats = last_prune = time.monotonic()
        while True:
            await asyncio.sleep(LOG_FLUSH_S)
            try:
                self._flush_logs()
                if time.monotonic() - last_stats >= STATS_FLUSH_S and self.store is not None:
                    last_stats = time.monotonic()
                    self.store.save_stats(dict(self.counters))
                    self.peers.sync_last_seen()
                if time.monotonic() - last_prune >= self.config.store_prune_s:
                    last_prune = time.monotonic()
                    self.prune_store()
            except Exception:
                log.exception("mesh housekeeping error (continuing)")
