"""Mesh benchmark: two processes on loopback, raw pyzmq floor vs agentmesh.

    .venv/bin/python bench/mesh_bench.py [--requests 3000] [--messages 20000]

Prints, from one run:
- request/response round trip p50/p99: raw pyzmq REQ/REP (the floor) vs agentmesh
  signed, verified, CurveZMQ-encrypted, persisted request/response, and the ratio;
- one-way throughput of signed, verified, persisted messages between two agents;
- (with --discovery N) time for N agent processes started together from one
  bootstrap address until every peer table holds all N.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq
from eth_account import Account
from rich.console import Console
from rich.table import Table

from agentmesh.mesh.card import AgentCard
from agentmesh.mesh.node import MeshNode
from agentmesh.message import Message
from agentmesh.store import Store

console = Console()


class Ping(Message):
    n: int


class Pong(Message):
    n: int


class Tick(Message):
    n: int


class CountQuery(Message):
    want: int


class CountReply(Message):
    seen: int


# ---------------------------------------------------------------- raw floor


def _raw_server(port_queue: Any) -> None:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REP)
    port = sock.bind_to_random_port("tcp://127.0.0.1")
    port_queue.put(port)
    while True:
        msg = sock.recv()
        if msg == b"stop":
            sock.send(b"bye")
            break
        sock.send(msg)
    sock.close(0)
    ctx.term()


def raw_round_trips(count: int) -> list[float]:
    queue: Any = mp.Queue()
    server = mp.Process(target=_raw_server, args=(queue,))
    server.start()
    port = queue.get(timeout=10)
    ctx = zmq.Context()
    sock = ctx.socket(zmq.REQ)
    sock.connect(f"tcp://127.0.0.1:{port}")
    payload = b"x" * 200  # about the size of a signed agentmesh frame
    for _ in range(200):  # warm up
        sock.send(payload)
        sock.recv()
    samples = []
    for _ in range(count):
        start = time.perf_counter()
        sock.send(payload)
        sock.recv()
        samples.append(time.perf_counter() - start)
    sock.send(b"stop")
    sock.recv()
    sock.close(0)
    ctx.term()
    server.join(10)
    return samples


# ---------------------------------------------------------------- agentmesh


def _mesh_server(card_queue: Any, home: str, key: bytes) -> None:
    async def main() -> None:
        node = MeshNode(key, name="server", store=Store(Path(home) / "server.db"))
        seen = 0
        reached = asyncio.Event()
        want = [0]

        @node.on(Ping, protocol="bench", version="1", replies=(Pong,))
        async def on_ping(ctx: Any, msg: Ping) -> Pong:
            return Pong(n=msg.n)

        @node.on(Tick, protocol="bench", version="1")
        async def on_tick(ctx: Any, msg: Tick) -> None:
            nonlocal seen
            seen += 1
            if want[0] and seen >= want[0]:
                reached.set()

        @node.on(CountQuery, protocol="bench", version="1", replies=(CountReply,))
        async def on_count(ctx: Any, msg: CountQuery) -> CountReply:
            want[0] = msg.want
            if seen < msg.want:
                reached.clear()
                await asyncio.wait_for(reached.wait(), 120)
            return CountReply(seen=seen)

        async with node:
            assert node.card is not None
            card_queue.put(node.card.model_dump_json())
            await asyncio.Event().wait()

    asyncio.run(main())


async def mesh_client(
    card_json: str, home: str, requests: int, messages: int
) -> tuple[list[float], float]:
    server_card = AgentCard.model_validate_json(card_json)
    server_card.verify()
    node = MeshNode(
        bytes(Account.create().key), name="client", store=Store(Path(home) / "client.db")
    )
    async with node:
        node.peers.add(server_card, "bench")
        for i in range(200):  # warm up: connection, curve handshake, caches
            await node.request(
                server_card.address, Ping(n=i), protocol="bench", version="1", expect=(Pong,)
            )
        samples = []
        for i in range(requests):
            start = time.perf_counter()
            await node.request(
                server_card.address, Ping(n=i), protocol="bench", version="1", expect=(Pong,)
            )
            samples.append(time.perf_counter() - start)
        start = time.perf_counter()
        for i in range(messages):
            await node.send(server_card.address, Tick(n=i), protocol="bench", version="1")
        reply = await node.request(
            server_card.address,
            CountQuery(want=messages),
            protocol="bench",
            version="1",
            expect=(CountReply,),
            timeout=120,
            retries=0,
        )
        elapsed = time.perf_counter() - start
        assert reply.seen >= messages, reply
    return samples, elapsed


def mesh_runs(requests: int, messages: int) -> tuple[list[float], float]:
    home = tempfile.mkdtemp(prefix="agentmesh-bench-")
    queue: Any = mp.Queue()
    server = mp.Process(target=_mesh_server, args=(queue, home, bytes(Account.create().key)))
    server.start()
    try:
        card_json = queue.get(timeout=30)
        return asyncio.run(mesh_client(card_json, home, requests, messages))
    finally:
        server.terminate()
        server.join(10)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--messages", type=int, default=20000)
    args = parser.parse_args()
    if args.requests < 10 or args.messages < 10:
        sys.exit("error: --requests and --messages must be at least 10")

    raw = raw_round_trips(args.requests)
    mesh, elapsed = mesh_runs(args.requests, args.messages)
    table = Table(title=f"request/response round trip, 2 processes, loopback, n={args.requests}")
    for col in ("", "p50 ms", "p99 ms"):
        table.add_column(col, justify="right" if col else "left")
    table.add_row("raw pyzmq REQ/REP (floor)", f"{pct(raw, 0.5):.3f}", f"{pct(raw, 0.99):.3f}")
    table.add_row(
        "agentmesh signed + curve + persisted", f"{pct(mesh, 0.5):.3f}", f"{pct(mesh, 0.99):.3f}"
    )
    table.add_row(
        "ratio agentmesh / raw",
        f"{pct(mesh, 0.5) / pct(raw, 0.5):.1f}x",
        f"{pct(mesh, 0.99) / pct(raw, 0.99):.1f}x",
    )
    console.print(table)
    console.print(
        f"one-way signed+verified+persisted messages: {args.messages} in {elapsed:.2f}s "
        f"= [bold]{args.messages / elapsed:,.0f} msg/s[/]"
    )
    console.print(f"cpus: {os.cpu_count()}")


if __name__ == "__main__":
    mp.set_start_method("spawn")
    main()
