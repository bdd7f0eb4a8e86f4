"""``agentmesh demo``: three agents trade summaries on a throw-away devnet.

Starts anvil and deploys the contracts; creates encrypted wallets for a requester and
two summarizer providers with different prices and funds them; runs each agent as its
own ``agentmesh run`` process (all on the local model); the requester buys N
summaries. Progress is shown live; at the end a table lists each task's winner, price,
transactions, gas and time, then every agent's balance before and after, and the
conservation check (balances + escrow + reward pool + exchange pools = minted). Exits
non-zero if a task did not settle or the check fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.table import Table

from agentmesh.cli.console.homes import demo_folder
from agentmesh.cli.context import JsonOption, console, err_console, print_json, run, state
from agentmesh.errors import AgentMeshError

PROVIDERS = (("summarizer-a", "0.05"), ("summarizer-b", "0.08"))
REQUESTER = "buyer"
BUYER_MUSD = 10


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
    from agentmesh.protocols.negotiation import TaskStatus

    table = Table(title=f"{len(tasks)} of {count} tasks started, {elapsed:.0f}s")
    for column in ("task", "phase", "status", "provider", "price"):
        table.add_column(column)
    for number, task in enumerate(tasks, 1):
        colour = {TaskStatus.DONE: "green", TaskStatus.ACTIVE: "yellow"}.get(task.status, "red")
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


async def _demo(app_home: Path, tasks: int, timeout: float, json_out: bool) -> None:
    from web3.types import Wei

    from agentmesh.config import Config, DevnetConfig, WalletConfig
    from agentmesh.wallets.chain import open_chain
    from agentmesh.wallets.clients import TokenClient
    from agentmesh.wallets.deployer import dev_deployer
    from agentmesh.wallets.keystore import Keystore
    from agentmesh.wallets.units import MUSD_DECIMALS

    # With --json, stdout carries one JSON object and nothing else: progress goes to stderr.
    out = err_console if json_out else console
    started = time.monotonic()
    scrypt_n = 2**14  # throw-away demo keys: fast keystores
    with demo_folder(app_home, "market") as home:
        config = Config(
            devnet=DevnetConfig(dev_account_musd=0), wallet=WalletConfig(scrypt_n=scrypt_n)
        )
        agents: list[AgentProcess] = []
        async with contextlib.AsyncExitStack() as stack:
            with out.status("starting devnet and deploying contracts..."):
                chain = await stack.enter_async_context(open_chain(home, config))
            chain.deployment.save(home / "deployments" / f"{chain.deployment.chain_id}.json")
            (home / "config.toml").write_text(
                f'[chain]\nrpc_url = "{chain.rpc_url}"\n[wallet]\nscrypt_n = {scrypt_n}\n'
                "[agent]\nfaucet = false\nproposal_window_s = 60\n[mesh]\nheartbeat_s = 0.5\n"
            )
            out.print(f"[green]✓[/] devnet {chain.rpc_url}, contracts deployed")

            password = secrets.token_urlsafe(16)
            keystore = Keystore(home, scrypt_n=scrypt_n)
            faucet = dev_deployer(chain.w3)
            token = TokenClient(faucet, chain.token_address)
            addresses: dict[str, str] = {}
            with out.status("creating and funding encrypted agent wallets..."):
                for name in (REQUESTER, *(n for n, _ in PROVIDERS)):
                    addresses[name] = keystore.create(name, password).address
                    await faucet.send({"to": addresses[name], "value": Wei(10**19)})
                await token.mint(addresses[REQUESTER], BUYER_MUSD * 10**MUSD_DECIMALS)
            before = {n: await token.balance_of(a) for n, a in addresses.items()}
            out.print(
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
            with out.status("starting two summarizer agents (loading the model)..."):
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
                out.print(f"[green]✓[/] {name} {agent.address} sells summaries at {price} mUSD")
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
            with Live(console=out, refresh_per_second=4) as live:
                while buyer.process.poll() is None:
                    if time.monotonic() - started > timeout:
                        raise AgentMeshError(f"the demo did not finish within {timeout:g}s")
                    live.update(_progress(_tasks(home), names, tasks, time.monotonic() - started))
                    await asyncio.sleep(0.25)
                rows = _tasks(home)
                live.update(_progress(rows, names, tasks, time.monotonic() - started))
            if not out.is_terminal:
                out.line()  # rich leaves a non-terminal Live's last line unterminated
            report = await _report(home, chain, rows, names, addresses, before)
            report["requested"] = tasks
            report["home"] = str(home)
            report["seconds"] = round(time.monotonic() - started, 1)
            if json_out:
                print_json(report)
            else:
                _print_report(report)
            _check(report, tasks, buyer)
            out.print(f"[green]✓[/] {report['settled']} of {tasks} tasks settled")
    out.print(f"demo finished in {time.monotonic() - started:.1f}s")


async def _report(
    home: Path,
    chain: Any,
    rows: list[Any],
    names: dict[str, str],
    addresses: dict[str, str],
    before: dict[str, int],
) -> dict[str, Any]:
    """Tasks, balances and the conservation check, as data (``--json`` prints it as is;
    amounts in mUSD base units, plus a display string)."""
    from agentmesh.agents.accounting import task_gas
    from agentmesh.protocols.negotiation import TaskStatus
    from agentmesh.wallets.clients import TokenClient
    from agentmesh.wallets.deployer import dev_deployer

    task_rows = []
    from agentmesh.cli.task_results import checkpoint_values

    for number, task in enumerate(rows, 1):
        txs = json.loads(task.txs or "{}")
        bought = checkpoint_values(
            home / "agents" / REQUESTER / "checkpoints.db", task.conversation
        )
        gas, steps = (0, {}) if task.job_id is None else await task_gas(chain, task.job_id, txs)
        task_rows.append(
            {
                "task": number,
                "conversation": task.conversation,
                "winner": names.get(task.peer.lower(), task.peer),
                "provider": task.peer,
                "price": task.price,
                "price_musd": _musd(task.price),
                "job": task.job_id,
                "transactions": steps,
                "gas": gas,
                "seconds": round((task.updated_ms - task.created_ms) / 1000, 1),
                "status": task.status,
                "detail": task.detail,
                "result": bought.get("result"),
            }
        )
    token = TokenClient(dev_deployer(chain.w3), chain.token_address)
    escrow = chain.deployment.address("TaskEscrow")
    after = {n: await token.balance_of(a) for n, a in addresses.items()}
    balances = [
        {
            "agent": name,
            "address": address,
            "before": before[name],
            "after": after[name],
            "change": after[name] - before[name],
        }
        for name, address in addresses.items()
    ]
    in_escrow = await token.balance_of(escrow)
    # The protocol fee on each release goes to the validators' reward pool.
    reward_pool = chain.deployment.address("Consensus")
    in_reward_pool = await token.balance_of(reward_pool)
    # The devnet's Uniswap pools hold mUSD too (seeded by the deployer): every holder
    # counts.
    exchange = chain.deployment.exchange
    pools = {
        name: await token.balance_of(pair)
        for name, pair in (exchange.pairs if exchange is not None else {}).items()
        if "mUSD" in name.split("/")
    }
    in_pools = sum(pools.values())
    minted = await token.total_supply()
    agents_total = sum(after.values())
    return {
        "tasks": task_rows,
        "settled": sum(t["status"] == TaskStatus.DONE for t in task_rows),
        "balances": balances,
        "escrow": {"address": escrow, "balance": in_escrow},
        "reward_pool": {"address": reward_pool, "balance": in_reward_pool},
        "pools": pools,
        "conservation": {
            "agents": agents_total,
            "escrow": in_escrow,
            "reward_pool": in_reward_pool,
            "pools": in_pools,
            "total": agents_total + in_escrow + in_reward_pool + in_pools,
            "minted": minted,
            "ok": agents_total + in_escrow + in_reward_pool + in_pools == minted,
        },
    }


def _print_report(report: dict[str, Any]) -> None:
    from agentmesh.protocols.negotiation import TaskStatus

    table = Table(title="tasks")
    for column in ("task", "winner", "price", "job", "transactions", "gas", "seconds", "status"):
        table.add_column(column)
    for task in report["tasks"]:
        status = task["status"]
        table.add_row(
            str(task["task"]),
            task["winner"] if task["winner"] != task["provider"] else task["provider"][:10],
            task["price_musd"],
            str(task["job"] or ""),
            "\n".join(f"{step} {tx[:10]}…" for step, tx in task["transactions"].items()),
            f"{task['gas']:,}",
            f"{task['seconds']:.1f}",
            status if status == TaskStatus.DONE else f"[red]{status}: {task['detail'][:80]}[/]",
        )
    console.print(table)
    from rich.markup import escape

    from agentmesh.cli.task_results import result_text

    console.print("[bold]what was bought[/]")
    for task in report["tasks"]:
        if task["result"] is not None:
            text = result_text(task["result"], limit=110).replace("\n", " ")
            console.print(f"  {task['task']}. {task['winner']}: {escape(text)}", highlight=False)
    console.print(
        f"  (whole results: agentmesh --home {report['home']} task show TASK, or agentmesh ui)",
        highlight=False,
    )

    balances = Table("agent", "address", "before", "after", "change", title="balances (mUSD)")
    for row in report["balances"]:
        change = row["change"]
        balances.add_row(
            row["agent"],
            row["address"],
            _musd(row["before"]),
            _musd(row["after"]),
            ("+" if change > 0 else "") + _musd(change) if change >= 0 else "-" + _musd(-change),
        )
    escrow = report["escrow"]
    balances.add_row("escrow", escrow["address"], "", _musd(escrow["balance"]), "")
    fees = report["reward_pool"]
    balances.add_row("reward pool", fees["address"], "", _musd(fees["balance"]), "")
    for name, held in report["pools"].items():
        balances.add_row(f"pool {name}", "", "", _musd(held), "")
    console.print(balances)
    check = report["conservation"]
    mark = "[green]✓[/]" if check["ok"] else "[red]✗[/]"
    console.print(
        f"conservation: agents {_musd(check['agents'])} + escrow {_musd(check['escrow'])} "
        f"+ reward pool {_musd(check['reward_pool'])} + pools {_musd(check['pools'])} "
        f"= {_musd(check['total'])}; "
        f"minted {_musd(check['minted'])}  {mark}"
    )


def _check(report: dict[str, Any], tasks: int, buyer: AgentProcess) -> None:
    """Raise unless the buyer exited cleanly, every task settled and funds are conserved."""
    settled = report["settled"]
    if buyer.process.returncode != 0 or settled != tasks:
        tail = buyer.log.read_text()[-600:]
        raise AgentMeshError(f"{settled} of {tasks} tasks settled; buyer log: {tail}")
    if not report["conservation"]["ok"]:
        raise AgentMeshError("conservation check failed: mUSD was lost or created")


app = typer.Typer(
    help="End-to-end demos on a throw-away devnet.",
    invoke_without_command=True,
    no_args_is_help=False,
)


@app.callback()
def demo(
    ctx: typer.Context,
    tasks: Annotated[int, typer.Option(help="summaries to buy", min=1, max=50)] = 5,
    timeout: Annotated[float, typer.Option(help="give up after this many seconds", min=10)] = 600,
    json_out: JsonOption = False,
) -> None:
    """Three agents trade summaries on a throw-away devnet; prints tasks and balances.
    (`agentmesh demo defi`: a person delegates a wallet to a DeFi agent.)

    With --json, stdout is one JSON object (tasks, balances, conservation check; amounts
    in mUSD base units) and the progress display goes to stderr."""
    app_home = state(ctx).home
    if ctx.invoked_subcommand is not None:
        return
    run(_demo(app_home, tasks, timeout, json_out))


@app.command("defi")
def defi(
    ctx: typer.Context,
    timeout: Annotated[float, typer.Option(help="give up after this many seconds", min=10)] = 600,
    json_out: JsonOption = False,
) -> None:
    """A person delegates 100 mUSD to a DeFi agent, asks in words for a DCA and a stop;
    the agent trades on Uniswap V2 within the wallet contract's rules.

    With --json, stdout is one JSON object: fills, refused (each with its rule), policy,
    gas and conservation (per token, with ok); exit 1 if a fill that should have happened
    did not or the check fails."""
    from .demo_defi import run_demo

    run_demo(state(ctx).home, timeout, json_out)


@app.command("channels")
def channels(
    ctx: typer.Context,
    calls: Annotated[int, typer.Option(help="paid calls to make", min=1, max=100_000)] = 1_000,
    timeout: Annotated[float, typer.Option(help="give up after this many seconds", min=10)] = 600,
    json_out: JsonOption = False,
) -> None:
    """A caller makes 1,000 paid calls to an embedding provider over one payment channel
    (one deposit, claims and a close on chain), then closes it and gets the rest back.

    With --json, stdout is one JSON object: calls, paid, claimed, gas_per_call,
    calls_per_s, balances and conservation (with ok); exit 1 if a call was lost or the
    check fails."""
    from .demo_channels import run_demo

    run_demo(state(ctx).home, calls, timeout, json_out)


@app.command("validation")
def validation(
    ctx: typer.Context,
    epochs: Annotated[int, typer.Option(help="epochs to run (at least 2)", min=2, max=10)] = 2,
    json_out: JsonOption = False,
) -> None:
    """Three validators score three providers of embeddings (honest, garbage, an impostor
    of its declared model) over epochs, and a jury of them decides a disputed purchase.

    With --json, stdout is one JSON object: epochs (each with per-provider score and
    incentive, and the rewards), disputes (each with verdict and slashed) and
    conservation (with ok); exit 1 if a check fails."""
    from .demo_validation import run_demo

    run_demo(state(ctx).home, epochs, json_out)
