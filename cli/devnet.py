"""``agentmesh devnet up | down | status | reset``: the home's persistent anvil."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from agentmesh.chain.deployment import Deployment, Exchange
from agentmesh.chain.devnet import start_anvil
from agentmesh.chain.home import DevnetPaths, DevnetRecord, running_devnet, stop_devnet
from agentmesh.chain.rpc import rpc_call
from agentmesh.cli.context import AppState, JsonOption, console, print_json, run, state
from agentmesh.config import Config

app = typer.Typer(
    help="Run a local anvil devnet with the agentmesh contracts deployed.", no_args_is_help=True
)


async def _deploy(home: Path, config: Config, rpc_url: str) -> Deployment:
    from agentmesh.wallets.chain import connect, ensure_deployment

    w3 = connect(rpc_url)
    return await ensure_deployment(
        w3, rpc_url, DevnetPaths.of(home).deployment, config.devnet.dev_account_musd
    )


def bring_up(app_state: AppState, port: int | None) -> tuple[DevnetRecord, Deployment]:
    """Start (or find) the home's devnet and make sure the suite is deployed on it."""
    home, config = app_state.home, app_state.config
    record = running_devnet(home)
    if record is None:
        paths = DevnetPaths.of(home)
        with console.status("starting anvil..."):
            anvil = start_anvil(
                config.devnet,
                port=port,
                state_file=paths.state,
                log_path=paths.log,
                detach=True,
            )
        anvil.detach()
        record = DevnetRecord(anvil.pid, anvil.port, anvil.rpc_url, time.time())
        record.save(paths.record)
    try:
        with console.status("deploying contracts..."):
            deployment = run(_deploy(home, config, record.rpc_url))
    except BaseException:
        stop_devnet(home)
        raise
    return record, deployment


def _describe(home: Path, record: DevnetRecord | None) -> dict[str, Any]:
    paths = DevnetPaths.of(home)
    info: dict[str, Any] = {
        "running": record is not None,
        "home": str(home),
        "state_file": str(paths.state),
    }
    if record is not None:
        info.update(
            pid=record.pid,
            rpc_url=record.rpc_url,
            chain_id=int(rpc_call(record.rpc_url, "eth_chainId"), 16),
            block=int(rpc_call(record.rpc_url, "eth_blockNumber"), 16),
        )
    if paths.deployment.exists():
        deployment = Deployment.load(paths.deployment)
        info["contracts"] = {name: c.address for name, c in deployment.contracts.items()}
        exchange = deployment.exchange
        if exchange is not None:
            info["exchange"] = {
                "router": exchange.router,
                "factory": exchange.factory,
                "oracle": exchange.oracle,
                "tokens": exchange.tokens,
            }
            if record is not None:
                info["exchange"]["pools"] = run(_pools(record.rpc_url, exchange))
    return info


async def _pools(rpc_url: str, exchange: Exchange) -> dict[str, dict[str, Any]]:
    from agentmesh.wallets.chain import connect
    from agentmesh.wallets.exchange import pool_prices

    w3 = connect(rpc_url)
    try:
        return await pool_prices(w3, exchange)
    finally:
        await w3.provider.disconnect()


def _show(info: dict[str, Any]) -> None:
    table = Table(show_header=False, box=None)
    table.add_row("running", "[green]yes[/]" if info["running"] else "[yellow]no[/]")
    for key in ("rpc_url", "chain_id", "block", "pid", "home", "state_file"):
        if key in info:
            table.add_row(key, str(info[key]))
    for name, address in info.get("contracts", {}).items():
        table.add_row(name, address)
    exchange = info.get("exchange")
    if exchange is not None:
        table.add_row("UniswapV2Router02", exchange["router"])
        table.add_row("UniswapV2Factory", exchange["factory"])
        if exchange["oracle"] is not None:
            table.add_row("TwapOracle", exchange["oracle"])
        for symbol, address in exchange["tokens"].items():
            table.add_row(f"token {symbol}", address)
    console.print(table)
    if exchange is not None and "pools" in exchange:
        pools = Table(title="Uniswap V2 pools (spot)")
        for column in ("pool", "price", "reserves", "pair"):
            pools.add_column(column)
        for name, pool in exchange["pools"].items():
            base, quote = name.split("/")
            reserves = ", ".join(
                f"{amount} {symbol}" for symbol, amount in pool["reserves"].items()
            )
            pools.add_row(name, f"1 {base} = {pool['price']} {quote}", reserves, pool["pair"])
        console.print(pools)


@app.command()
def up(
    ctx: typer.Context,
    port: Annotated[
        int | None,
        typer.Option(help="port to listen on (default: config or free)", min=1, max=65535),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Start the devnet (state persists across down/up), deploy, fund dev accounts."""
    app_state = state(ctx)
    bring_up(app_state, port)
    info = _describe(app_state.home, running_devnet(app_state.home))
    if json_out:
        print_json(info)
    else:
        _show(info)


@app.command()
def down(ctx: typer.Context) -> None:
    """Stop the devnet; its chain state is saved and comes back with `up`."""
    home = state(ctx).home
    record = stop_devnet(home)
    if record is None:
        console.print("no devnet running")
    else:
        console.print(
            f"stopped devnet (pid {record.pid}); state kept in {DevnetPaths.of(home).state}"
        )


@app.command()
def status(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """Show whether the devnet runs, where, and the deployed contracts."""
    home = state(ctx).home
    info = _describe(home, running_devnet(home))
    if json_out:
        print_json(info)
    else:
        _show(info)


@app.command()
def reset(ctx: typer.Context) -> None:
    """Wipe the devnet's chain state and deployment (restarting it if it was running)."""
    app_state = state(ctx)
    was_running = stop_devnet(app_state.home)
    paths = DevnetPaths.of(app_state.home)
    for path in (paths.state, paths.deployment):
        path.unlink(missing_ok=True)
    console.print("devnet state wiped")
    if was_running is not None:
        bring_up(app_state, was_running.port)
        _show(_describe(app_state.home, running_devnet(app_state.home)))
