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
import json
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

from agentmesh import Message
from agentmesh.mesh.card import AgentCard
from agentmesh.mesh.node import MeshNode
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

        # A plain function: cheap handlers run inline (see MeshNode.on).
        @node.on(Ping, protocol="bench", version="1", replies=(Pong,))
        def on_ping(ctx: Any, msg: Ping) -> Pong:
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


def _peer_count(db: Path) -> int:
    import sqlite3

    if not db.exists():
        return 0
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            return int(conn.execute("SELECT COUNT(*) FROM peers WHERE state='up'").fetchone()[0])
    except sqlite3.Error:
        return 0


def discovery_run(count: int) -> tuple[float, float]:
    """Start one bootstrap agent, then ``count - 1`` more at once; returns (seconds until
    all processes were up, seconds until every peer table held all ``count``)."""
    import subprocess

    root = Path(tempfile.mkdtemp(prefix="agentmesh-discovery-"))
    procs: list[subprocess.Popen[bytes]] = []

    def spawn(i: int, bootstrap: list[str]) -> Path:
        home = root / f"a{i}"
        home.mkdir()
        ready = home / "ready.json"
        args = [
            sys.executable,
            "-m",
            "agentmesh.testing",
            "--home",
            str(home),
            "--ready-file",
            str(ready),
            "--name",
            f"agent{i}",
            "--heartbeat",
            "0.5",
        ]
        for b in bootstrap:
            args += ["--bootstrap", b]
        procs.append(subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        return home

    def wait_ready(homes: list[Path], deadline: float) -> None:
        while not all((h / "ready.json").exists() for h in homes):
            if time.monotonic() > deadline:
                raise SystemExit("error: agents did not start in time")
            time.sleep(0.02)

    try:
        first = spawn(0, [])
        wait_ready([first], time.monotonic() + 60)
        boot = json.loads((first / "ready.json").read_text())["bootstrap"]
        start = time.monotonic()
        homes = [first] + [spawn(i, [boot]) for i in range(1, count)]
        wait_ready(homes, start + 180)
        all_up = time.monotonic() - start
        dbs = [
            h / "mesh" / f"{json.loads((h / 'ready.json').read_text())['address']}.db"
            for h in homes
        ]
        while not all(_peer_count(db) >= count for db in dbs):
            if time.monotonic() - start > 300:
                raise SystemExit("error: discovery did not converge in 300 s")
            time.sleep(0.05)
        converged = time.monotonic() - start
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(10)
    return all_up, converged


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--messages", type=int, default=20000)
    parser.add_argument("--discovery", type=int, default=20, help="agents (0 = skip)")
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
    if args.discovery:
        up, converged = discovery_run(args.discovery)
        table = Table(title=f"discovery: {args.discovery} agent processes, one bootstrap address")
        table.add_column("")
        table.add_column("seconds", justify="right")
        table.add_row(f"all {args.discovery} processes started (baseline)", f"{up:.2f}")
        table.add_row(f"every peer table holds all {args.discovery}", f"{converged:.2f}")
        table.add_row("discovery after start-up", f"{converged - up:.2f}")
        table.add_row("ratio converged / started", f"{converged / up:.2f}x")
        console.print(table)
    console.print(f"cpus: {os.cpu_count()}")


if __name__ == "__main__":
    mp.set_start_method("spawn")
    main()
