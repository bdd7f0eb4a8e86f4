"""ZeroMQ sockets driven straight from the asyncio loop's reader callbacks.

``zmq.asyncio`` wraps every receive in futures and poller bookkeeping; on this class of
machine that doubles a loopback round trip (0.19 ms vs 0.09 ms measured here). A
:class:`ReactorSocket` registers the socket's file descriptor with ``loop.add_reader``
and drains all ready messages in one callback.

ZeroMQ's FD is edge-triggered and a *send* can consume the readable edge, so every
send schedules one extra drain; without it a reply that arrived during the send would
sit unread until the next message.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import cast

import zmq

log = logging.getLogger("agentmesh.mesh")

POLLIN = int(zmq.POLLIN)
EVENTS = int(zmq.EVENTS)
NOBLOCK = int(zmq.NOBLOCK)
BATCH_MAX = 512
SEND_RETRY_S = 0.001

Batch = list[list[bytes]]


class ReactorSocket:
    """A sync zmq socket whose incoming batches are handed to ``on_batch``."""

    def __init__(
        self,
        sock: zmq.Socket[bytes],
        on_batch: Callable[[Batch], None] | None,
        on_error: Callable[[BaseException], None] | None = None,
    ) -> None:
        self.sock = sock
        self._on_batch = on_batch
        self._on_error = on_error
        self._loop = asyncio.get_running_loop()
        self._fd = sock.FD
        self._scheduled = False
        self._closed = False
        if on_batch is not None:
            self._loop.add_reader(self._fd, self._drain)

    def _drain(self) -> None:
        self._scheduled = False
        if self._closed or self._on_batch is None:
            return
        sock = self.sock
        events = cast("Callable[[int], int]", sock.getsockopt)  # EVENTS is an int option
        batch: Batch = []
        try:
            while len(batch) < BATCH_MAX and events(EVENTS) & POLLIN:
                batch.append(sock.recv_multipart(NOBLOCK))
        except zmq.Again:
            pass
        except zmq.ZMQError as exc:
            if not self._closed:
                log.warning("zmq receive error: %s", exc)
            return
        if len(batch) == BATCH_MAX:
            self._kick()  # more may be waiting: yield to the loop, then continue
        if batch:
            try:
                self._on_batch(batch)
            except Exception as exc:  # the socket must keep being served
                if self._on_error is not None:
                    self._on_error(exc)
                else:
                    log.exception("mesh batch handler failed (continuing)")

    def _kick(self) -> None:
        if not self._scheduled and not self._closed and self._on_batch is not None:
            self._scheduled = True
            self._loop.call_soon(self._drain)

    def send(self, parts: list[bytes]) -> bool:
        """Send without blocking; False when the socket is at its high-water mark."""
        if self._closed:
            return False
        try:
            self.sock.send_multipart(parts, NOBLOCK, copy=False)
        except zmq.Again:
            return False
        finally:
            self._kick()
        return True

    async def send_async(self, parts: list[bytes], timeout: float = 5.0) -> bool:
        """Send, waiting (briefly, politely) while the socket is full."""
        waited = 0.0
        while not self.send(parts):
            if self._closed or waited >= timeout:
                return False
            await asyncio.sleep(SEND_RETRY_S)
            waited += SEND_RETRY_S
        return True

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._on_batch is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self._fd)
        self.sock.close(0)
