"""``agentmesh mesh serve | peers | stats | ping``: run a node and inspect the mesh."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from agentmesh.cli.context import (
    AppState,
    JsonOption,
    console,
    password,
    print_json,
    run,
    state,
    write_ready_file,
)
from agentmesh.errors import AgentMeshValueError

app = typer.Typer(
    help="Run a mesh node; list peers and counters; ping agents.", no_args_is_help=True
)


def mesh_dir(home: Path) -> Path:
    return home / "mesh"


def _stores(home: Path) -> list[Path]:
    return sorted(mesh_dir(home).glob("0x*.db"))


def _parse_service(text: str) -> tuple[str, int]:
    name, sep, price = text.partition("=")
    if not sep or not name or not price.isdigit():
        raise AgentMeshValueError(
            f"invalid --service {text!r}: expected NAME=PRICE (price in token base units)"
        )
    return name, int(price)


async def _registry_hookup(
    app_state: AppState, key: bytes, stack: contextlib.AsyncExitStack
) -> tuple[Any, Any] | None:
    """(chain, wallet) when a chain is configured or `devnet up` runs; else None."""
    from eth_account import Account

    from agentmesh.errors import DevnetError
    from agentmesh.wallets.chain import open_chain
    from agentmesh.wallets.wallet import Wallet

    try:
        chain = await stack.enter_async_context(
            open_chain(app_state.home, app_state.config, allow_embedded=False)
        )
    except DevnetError:
        return None
    return chain, Wallet(Account.from_key(key), chain.w3)


def _key(app_state: AppState, wallet: str | None, ephemeral: bool) -> bytes:
    if ephemeral == (wallet is not None):
        raise AgentMeshValueError("give exactly one of --wallet NAME or --ephemeral")
    if ephemeral:
        return os.urandom(32)
    from agentmesh.wallets.keystore import Keystore

    keystore = Keystore(app_state.home, scrypt_n=app_state.config.wallet.scrypt_n)
    assert wallet is not None
    keystore.entry(wallet)
    return bytes(keystore.load(wallet, password(f"Password for {wallet}")).key)


@app.command()
def serve(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="agent name shown to peers")],
    wallet: Annotated[str | None, typer.Option(help="wallet (keystore) of the agent")] = None,
    ephemeral: Annotated[bool, typer.Option(help="use a throw-away key")] = False,
    host: Annotated[str | None, typer.Option(help="interface to bind")] = None,
    port: Annotated[int | None, typer.Option(help="ROUTER port", min=0, max=65535)] = None,
    presence_port: Annotated[int | None, typer.Option(min=0, max=65535)] = None,
    advertise_host: Annotated[str | None, typer.Option(help="host peers dial")] = None,
    bootstrap: Annotated[list[str] | None, typer.Option(help="<key>@tcp://host:port")] = None,
    service: Annotated[list[str] | None, typer.Option(help="NAME=PRICE offered")] = None,
    heartbeat: Annotated[float | None, typer.Option(help="heartbeat seconds", min=0.05)] = None,
    ready_file: Annotated[Path | None, typer.Option(help="write address/endpoints here")] = None,
    registry: Annotated[
        bool,
        typer.Option(
            help="register on, and discover through, the "
            "on-chain AgentRegistry when a chain is "
            "configured or `devnet up` runs"
        ),
    ] = True,
) -> None:
    """Run a mesh node until SIGTERM/Ctrl-C: discovery, presence, ping."""
    from agentmesh.mesh.card import ServicePrice
    from agentmesh.mesh.discovery import Discovery
    from agentmesh.mesh.node import MeshNode
    from agentmesh.store import Store

    app_state = state(ctx)
    key = _key(app_state, wallet, ephemeral)
    updates: dict[str, Any] = {}
    for option, value in (
        ("host", host),
        ("port", port),
        ("presence_port", presence_port),
        ("advertise_host", advertise_host),
        ("heartbeat_s", heartbeat),
    ):
        if value is not None:
            updates[option] = value
    if bootstrap:
        updates["bootstrap"] = tuple(bootstrap)
    config = app_state.config.mesh.model_copy(update=updates)
    services = [ServicePrice(name=n, price=p) for n, p in map(_parse_service, service or [])]

    async def body() -> None:
        from agentmesh.envelope import EnvelopeSigner
        from agentmesh.errors import AgentMeshError
        from agentmesh.wallets.registry_sync import register_card, registry_source

        address = EnvelopeSigner(key).address
        store = Store(mesh_dir(app_state.home) / f"{address}.db")
        node = MeshNode(key, name=name, config=config, store=store, services=services)
        async with contextlib.AsyncExitStack() as stack:
            hookup = await _registry_hookup(app_state, key, stack) if registry else None
            sources = []
            if hookup is not None:
                sources.append(registry_source(hookup[0], hookup[1], exclude=[address]))
            discovery = Discovery(node, sources=sources)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, stop.set)
            await node.start()
            assert node.card is not None
            if hookup is not None:
                try:
                    tx = await register_card(hookup[0], hookup[1], node.card)
                    console.print(f"registered in AgentRegistry (tx {tx})")
                except AgentMeshError as exc:
                    console.print(f"[yellow]not registered on chain:[/] {exc.user_message}")
            await discovery.start()
            await _serve_until(stop, node, discovery, store, name, ready_file)

    run(body())


async def _serve_until(
    stop: asyncio.Event,
    node: Any,
    discovery: Any,
    store: Any,
    name: str,
    ready_file: Path | None,
) -> None:
    """Announce the running node (console and ready file), then serve until ``stop``."""
    assert node.card is not None
    info = {
        "name": name,
        "address": node.address,
        "endpoint": node.card.endpoint,
        "presence_endpoint": node.card.presence_endpoint,
        "bootstrap": node.card.bootstrap_address,
        "pid": os.getpid(),
    }
    if ready_file is not None:
        write_ready_file(ready_file, info)
    console.print(f"agent [bold]{name}[/] {node.address} on {node.card.endpoint}")
    console.print(f"bootstrap address: {node.card.bootstrap_address}")
    try:
        await stop.wait()
    finally:
        await discovery.stop()
        await node.stop()
        store.close()


def _peer_rows(home: Path) -> list[dict[str, Any]]:
    from agentmesh.store import Store

    merged: dict[str, dict[str, Any]] = {}
    for path in _stores(home):
        store = Store(path)
        try:
            for row in store.peers():
                seen = merged.get(row.address)
                if seen is not None and seen["last_seen_ms"] >= row.last_seen_ms:
                    continue
                merged[row.address] = {
                    "address": row.address,
                    "name": row.name,
                    "endpoint": row.endpoint,
                    "services": json.loads(row.services_json),
                    "state": row.state,
                    "source": row.source,
                    "last_seen_ms": row.last_seen_ms,
                }
        finally:
            store.close()
    return sorted(merged.values(), key=lambda r: (r["name"], r["address"]))


@app.command()
def peers(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """The peer tables of the agents in this home (merged)."""
    rows = _peer_rows(state(ctx).home)
    if json_out:
        print_json(rows)
        return
    if not rows:
        console.print("no peers known: start an agent with `agentmesh mesh serve`")
        return
    now = time.time() * 1000
    table = Table("address", "name", "endpoint", "services (price)", "state", "last seen", "source")
    table.columns[0].no_wrap = True
    for r in rows:
        services = ", ".join(f"{s['name']} ({s['price']})" for s in r["services"]) or "-"
        ago = f"{max(0.0, (now - r['last_seen_ms']) / 1000):.1f}s ago"
        table.add_row(
            r["address"], r["name"], r["endpoint"], services, r["state"], ago, r["source"]
        )
    console.print(table)


@app.command()
def stats(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """Message counters of the agents in this home (received, handled, rejected, ...)."""
    from agentmesh.store import Store

    result: dict[str, dict[str, int]] = {}
    for path in _stores(state(ctx).home):
        store = Store(path)
        try:
            result[path.stem] = {
                **store.stats(),
                **{f"stored.{k}": v for k, v in store.message_counts().items()},
            }
        finally:
            store.close()
    if json_out:
        print_json(result)
        return
    if not result:
        console.print("no agents in this home yet")
        return
    for agent, counters in result.items():
        table = Table("counter", "value", title=agent)
        for name, value in sorted(counters.items()):
            table.add_row(name, str(value))
        console.print(table)


@app.command()
def ping(
    ctx: typer.Context,
    target: Annotated[
        str,
        typer.Argument(
            help="agent address (from `mesh peers`) or bootstrap address <key>@tcp://host:port"
        ),
    ],
    count: Annotated[int, typer.Option(min=1, max=10_000)] = 3,
    timeout: Annotated[float, typer.Option(min=0.01)] = 2.0,
    json_out: JsonOption = False,
) -> None:
    """Send signed pings from a throw-away identity and print round-trip times."""
    from agentmesh.config import MeshConfig
    from agentmesh.errors import PeerUnreachable
    from agentmesh.mesh.card import AgentCard
    from agentmesh.mesh.discovery import Ping, Pong
    from agentmesh.mesh.node import MeshNode
    from agentmesh.mesh.routes import MESH_PROTOCOL, MESH_VERSION

    app_state = state(ctx)
    card: AgentCard | None = None
    if not target.startswith("0x"):
        if "@tcp://" not in target:
            raise AgentMeshValueError(
                f"invalid target {target!r}: give an address or a "
                "bootstrap address <key>@tcp://host:port"
            )
    else:
        from agentmesh.store import Store

        for path in _stores(app_state.home):
            store = Store(path)
            try:
                row = next((p for p in store.peers() if p.address.lower() == target.lower()), None)
            finally:
                store.close()
            if row is not None:
                card = AgentCard.model_validate_json(row.card_json)
                break
        if card is None:
            raise PeerUnreachable(f"unknown agent {target}: not in any peer table of this home")

    async def body() -> list[tuple[str, str, float]]:
        node = MeshNode(os.urandom(32), name="cli-ping", config=MeshConfig(curve=True))
        results = []
        async with node:
            for i in range(count):
                start = time.perf_counter()
                address = card.address if card is not None else ""
                if card is not None:
                    pong = await node.request(
                        card,
                        Ping(note=str(i)),
                        protocol=MESH_PROTOCOL,
                        version=MESH_VERSION,
                        expect=(Pong,),
                        timeout=timeout,
                        retries=0,
                    )
                else:
                    pong, envelope = await node.request_endpoint(
                        target,
                        Ping(note=str(i)),
                        protocol=MESH_PROTOCOL,
                        version=MESH_VERSION,
                        expect=(Pong,),
                        timeout=timeout,
                    )
                    address = envelope.sender
                results.append((pong.name, address, (time.perf_counter() - start) * 1000))
        return results

    rounds = run(body())
    if json_out:
        print_json(
            [
                {"seq": i, "name": name, "address": address, "ms": round(ms, 3)}
                for i, (name, address, ms) in enumerate(rounds)
            ]
        )
        return
    for name, _, ms in rounds:
        console.print(f"pong from {name}: {ms:.2f} ms (signed, verified)")
