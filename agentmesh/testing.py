"""Test helpers that ship with agentmesh: fakes for unit tests of one layer, and a
mesh test peer for tests that need a real agent process.

``python -m agentmesh.testing --home H --ready-file F [--port N]`` runs a node that
answers ``mesh`` pings and two test protocols whose handlers record effects in the
node's store, ``<home>/mesh/<address>.db`` like ``agentmesh mesh serve`` (committed
together with the handled mark):

- ``test.note`` (one-way ``Note``): records ``note`` = the note's text;
- ``test.work`` (request ``Work`` -> ``WorkDone``): sleeps ``ms``, records ``work``.

The fakes (``FakeChatModel``, ``InMemoryLedger`` with its ``InMemoryEscrow`` and
``InMemoryRegistry`` clients, ``ScriptedMessenger``, ``FakeClock``) live in
``agentmesh.testing_fakes`` and are re-exported here.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
from pathlib import Path

from pydantic import Field

from agentmesh.config import MeshConfig
from agentmesh.envelope import EnvelopeSigner
from agentmesh.mesh.discovery import Discovery
from agentmesh.mesh.node import MeshNode
from agentmesh.mesh.routes import HandlerContext
from agentmesh.message import Message
from agentmesh.store import Store
from agentmesh.testing_fakes import (
    FakeChatModel,
    FakeClock,
    InMemoryEscrow,
    InMemoryLedger,
    InMemoryRegistry,
    ScriptedMessenger,
)

__all__ = [
    "FakeChatModel",
    "FakeClock",
    "InMemoryEscrow",
    "InMemoryLedger",
    "InMemoryRegistry",
    "Note",
    "ScriptedMessenger",
    "Work",
    "WorkDone",
    "install_test_handlers",
]

TEST_PROTOCOL_VERSION = "1"


class Note(Message):
    text: str = Field(max_length=1024)


class Work(Message):
    text: str = Field(max_length=1024)
    ms: int = Field(default=0, ge=0, le=10_000)


class WorkDone(Message):
    text: str


def install_test_handlers(node: MeshNode) -> None:
    """Register the ``test.note`` and ``test.work`` handlers on ``node``."""

    @node.on(Note, protocol="test.note", version=TEST_PROTOCOL_VERSION)
    async def on_note(ctx: HandlerContext, note: Note) -> None:
        ctx.record("note", note.text)

    @node.on(Work, protocol="test.work", version=TEST_PROTOCOL_VERSION, replies=(WorkDone,))
    async def on_work(ctx: HandlerContext, work: Work) -> WorkDone:
        if work.text == "raise":
            raise RuntimeError("asked to fail")
        if work.ms:
            await asyncio.sleep(work.ms / 1000)
        ctx.record("work", work.text)
        return WorkDone(text=work.text)


async def _serve(args: argparse.Namespace) -> None:
    key = bytes.fromhex(args.key) if args.key else os.urandom(32)
    config = MeshConfig(
        port=args.port,
        presence_port=args.presence_port,
        host=args.host,
        heartbeat_s=args.heartbeat,
        bootstrap=tuple(args.bootstrap),
        rate_per_s=args.rate,
        burst=args.burst,
    )
    home = Path(args.home)
    node = MeshNode(
        key,
        name=args.name,
        config=config,
        store=Store(home / "mesh" / f"{EnvelopeSigner(key).address}.db"),
    )
    install_test_handlers(node)
    discovery = Discovery(node)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await node.start()
    await discovery.start()
    assert node.card is not None
    ready = Path(args.ready_file)
    tmp = ready.with_suffix(".tmp")
    tmp.write_text(
        json.dumps(
            {
                "address": node.address,
                "card": node.card.model_dump_json(),
                "bootstrap": node.card.bootstrap_address,
                "pid": os.getpid(),
            }
        )
    )
    tmp.replace(ready)
    await stop.wait()
    await discovery.stop()
    await node.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description="agentmesh test peer")
    parser.add_argument("--home", required=True)
    parser.add_argument("--ready-file", required=True)
    parser.add_argument("--name", default="test-peer")
    parser.add_argument("--key", default="", help="hex private key (default: random)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--presence-port", type=int, default=0)
    parser.add_argument("--heartbeat", type=float, default=1.0)
    parser.add_argument("--bootstrap", action="append", default=[])
    parser.add_argument("--rate", type=float, default=20_000)
    parser.add_argument("--burst", type=int, default=40_000)
    asyncio.run(_serve(parser.parse_args()))


if __name__ == "__main__":
    main()
