"""``agentmesh demo``: three agents trade summaries on a throw-away devnet.

Starts anvil and deploys the contracts; creates encrypted wallets for a requester and
two summarizer providers with different prices and funds them; runs each agent as its
own ``agentmesh run`` process (all on the local model); the requester buys N
summaries. Progress is shown live; at the end a table lists each task's winner, price,
transactions, gas and time, then every agent's balance before and after, and the
conservation check (balances + escrow = minted). Exits non-zero if a task did not
settle or the check fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from agentmesh.cli.context import console, run, state
from agentmesh.errors import AgentMeshError

PROVIDERS = (("summarizer-a", "0.05"), ("summarizer-b", "0.08"))
REQUESTER = "buyer"
BUYER_MUSD = 10
FINAL = {"done", "failed", "cancelled", "disputed", "refunded", "expired", "declined"}


@dataclass
class AgentProcess:
    name: str
    process: subprocess.Popen[bytes]
    log: Path
    ready: Path
    address: str = ""


def _spawn(home: Path, name: str, target: str, env: dict[str, str]) -> AgentProcess:
    log, ready = home / f"{name}.log", home / f"{name}.ready"
    command = [
        sys.executable,
        "-m",
        "agentmesh.cli.app",
        "--home",
        str(home),
        "run",
        target,
        "--wallet",
        name,
        "--name",
        name,
        "--ready-file",
        str(ready),
    ]
    with log.open("wb") as out:
        process = subprocess.Popen(
            command, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )
    return AgentProcess(name, process, log, ready)


async def _wait_ready(agent: AgentProcess, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not agent.ready.exists():
        if agent.process.poll() is not None:
            raise AgentMeshError(f"agent {agent.name} exited: {agent.log.read_text()[-400:]}")
        if time.monotonic() > deadline:
            raise AgentMeshError(f"agent {agent.name} did not start within {timeout:g}s")
        await asyncio.sleep(0.1)
    agent.address = json.loads(agent.ready.read_text())["address"]


def _tasks(home: Path) -> list[Any]:
    from agentmesh.agents.records import AgentRecords

    path = home / "agents" / REQUESTER / "agent.db"
    if not path.exists():
        return []
    records = AgentRecords(path)
    try:
        return records.tasks()
    finally:
        records.close()


def _progress(tasks: list[Any], names: dict[str, str], count: int, elapsed: float) -> Table:
    table = Table(title=f"{len(tasks)} of {count} tasks started, {elapsed:.0f}s")
    for column in ("task", "phase", "status", "provider", "price"):
        table.add_column(column)
    for number, task in enumerate(tasks, 1):
        colour = {"done": "green", "active": "yellow"}.get(task.status, "red")
        table.add_row(
            f"{number} {task.conversation[2:10]}",
            task.state,
            f"[{colour}]{task.status}[/]",
            names.get(task.peer.lower(), task.peer[:10]),
            _musd(task.price) if task.price else "",
        )
    return table


def _musd(units: int) -> str:
    from agentmesh.wallets.units import MUSD_DECIMALS, format_amount

    return format_amount(units, MUSD_DECIMALS, "mUSD")


async def _demo(tasks: int, timeout: float) -> None:

    from agentmesh.config import Config, DevnetConfig, WalletConfig
    from agentmesh.wallets.chain import open_chain
    from agentmesh.wallets.clients import TokenClient
    from agentmesh.wallets.deployer import dev_deployer
    from agentmesh.wallets.keystore import Keystore
    from agentmesh.wallets.units import MUSD_DECIMALS

    started = time.monotonic()
    scrypt_n = 2**14  # throw-away demo keys: fast keystores
    with tempfile.TemporaryDirectory(prefix="agentmesh-demo-") as tmp:
        home = Path(tmp)
        config = Config(
            devnet=DevnetConfig(dev_account_musd=0), wallet=WalletConfig(scrypt_n=scrypt_n)
        )
        agents: list[AgentProcess] = []
        async with contextlib.AsyncExitStack() as stack:
            with console.status("starting devnet and deploying contracts..."):
                chain = await stack.enter_async_context(open_chain(home, config))
            chain.deployment.save(home / "deployments" / f"{chain.deployment.chain_id}.json")
            (home / "config.toml").write_text(
                f'[chain]\nrpc_url = "{chain.rpc_url}"\n[wallet]\nscrypt_n = {scrypt_n}\n'
                "[agent]\nfaucet = false\nproposal_window_s = 60\n[mesh]\nheartbeat_s = 0.5\n"
            )
            console.print(f"[green]✓[/] devnet {chain.rpc_url}, contracts deployed")

            password = secrets.token_urlsafe(16)
            keystore = Keystore(home, scrypt_n=scrypt_n)
            faucet = dev_deployer(chain.w3)
            token = TokenClient(faucet, chain.token_address)
            addresses: dict[str, str] = {}
            with console.status("creating and funding encrypted agent wallets..."):
                for name in (REQUESTER, *(n for n, _ in PROVIDERS)):
                    addresses[name] = keystore.create(name, password).address
                    await faucet.send({"to": addresses[name], "value": 10**19})
                await token.mint(addresses[REQUESTER], BUYER_MUSD * 10**MUSD_DECIMALS)
            before = {n: await token.balance_of(a) for n, a in addresses.items()}
            console.print(
                f"[green]✓[/] wallets for {', '.join(addresses)}; "
                f"{BUYER_MUSD} mUSD minted to {REQUESTER}"
            )

            env = {"AGENTMESH_PASSWORD": password}

            def stop_all() -> None:
                for agent in agents:
                    if agent.process.poll() is None:
                        agent.process.terminate()
                for agent in agents:
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        agent.process.wait(20)
                    if agent.process.poll() is None:
                        agent.process.kill()

            stack.callback(stop_all)
            with console.status("starting two summarizer agents (loading the model)..."):
                for name, price in PROVIDERS:
                    agents.append(
                        _spawn(
                            home,
                            name,
                            "agentmesh.agents.provider",
                            {**env, "AGENTMESH_PRICE": f"{price} mUSD"},
                        )
                    )
                for agent in agents:
                    await _wait_ready(agent)
            for (name, price), agent in zip(PROVIDERS, agents, strict=True):
                console.print(f"[green]✓[/] {name} {agent.address} sells summaries at {price} mUSD")
            buyer = _spawn(
                home,
                REQUESTER,
                "agentmesh.agents.requester",
                {
                    **env,
                    "AGENTMESH_BUY_COUNT": str(tasks),
                    "AGENTMESH_CONCURRENCY": str(tasks),
                    "AGENTMESH_PROVIDERS": str(len(PROVIDERS)),
                    "AGENTMESH_BUDGET": "0.5",
                },
            )
            agents.append(buyer)
            names = {a.lower(): n for n, a in addresses.items()}
            with Live(console=console, refresh_per_second=4) as live:
                while buyer.process.poll() is None:
                    if time.monotonic() - started > timeout:
                        raise AgentMeshError(f"the demo did not finish within {timeout:g}s")
                    live.update(_progress(_tasks(home), names, tasks, time.monotonic() - started))
                    await asyncio.sleep(0.25)
                rows = _tasks(home)
                live.update(_progress(rows, names, tasks, time.monotonic() - started))
            await _report(chain, home, rows, names, addresses, before, tasks, buyer)
    console.print(f"demo finished in {time.monotonic() - started:.1f}s")


async def _report(
    chain: Any,
    home: Path,
    rows: list[Any],
    names: dict[str, str],
    addresses: dict[str, str],
    before: dict[str, int],
    tasks: int,
    buyer: AgentProcess,
) -> None:
    from agentmesh.agents.accounting import task_gas
    from agentmesh.wallets.clients import TokenClient
    from agentmesh.wallets.deployer import dev_deployer

    table = Table(title="tasks")
    for column in ("task", "winner", "price", "job", "transactions", "gas", "seconds", "status"):
        table.add_column(column)
    settled = 0
    for number, task in enumerate(rows, 1):
        txs = json.loads(task.txs or "{}")
        gas, steps = (0, {}) if task.job_id is None else await task_gas(chain, task.job_id, txs)
        hashes = [f"{step} {tx[:10]}…" for step, tx in steps.items()]
        settled += task.status == "done"
        table.add_row(
            str(number),
            names.get(task.peer.lower(), task.peer[:10]),
            _musd(task.price),
            str(task.job_id or ""),
            "\n".join(hashes),
            f"{gas:,}",
            f"{(task.updated_ms - task.created_ms) / 1000:.1f}",
            task.status if task.status == "done" else f"[red]{task.status}: {task.detail[:80]}[/]",
        )
    console.print(table)

    token = TokenClient(dev_deployer(chain.w3), chain.token_address)
    escrow = chain.deployment.address("TaskEscrow")
    balances = Table("agent", "address", "before", "after", "change", title="balances (mUSD)")
    after = {n: await token.balance_of(a) for n, a in addresses.items()}
    for name, address in addresses.items():
        change = after[name] - before[name]
        balances.add_row(
            name,
            address,
            _musd(before[name]),
            _musd(after[name]),
            ("+" if change > 0 else "") + _musd(change) if change >= 0 else "-" + _musd(-change),
        )
    in_escrow = await token.balance_of(escrow)
    balances.add_row("escrow", escrow, "", _musd(in_escrow), "")
    console.print(balances)
    minted = await token.total_supply()
    conserved = sum(after.values()) + in_escrow == minted
    mark = "[green]✓[/]" if conserved else "[red]✗[/]"
    console.print(
        f"conservation: agents {_musd(sum(after.values()))} + escrow {_musd(in_escrow)} "
        f"= {_musd(sum(after.values()) + in_escrow)}; minted {_musd(minted)}  {mark}"
    )
    if buyer.process.returncode != 0 or settled != tasks:
        tail = buyer.log.read_text()[-600:]
        raise AgentMeshError(f"{settled} of {tasks} tasks settled; buyer log: {tail}")
    if not conserved:
        raise AgentMeshError("conservation check failed: mUSD was lost or created")
    console.print(f"[green]✓[/] {settled} of {tasks} tasks settled")


def demo(
    ctx: typer.Context,
    tasks: Annotated[int, typer.Option(help="summaries to buy", min=1, max=50)] = 5,
    timeout: Annotated[float, typer.Option(help="give up after this many seconds", min=10)] = 600,
) -> None:
    """Three agents trade summaries on a throw-away devnet; prints tasks and balances."""
    state(ctx)
    run(_demo(tasks, timeout))
