"""``agentmesh task request | list | show``: buy a service from the command line; inspect
tasks with their on-chain state."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from agentmesh.cli.context import AppState, JsonOption, console, password, print_json, run, state
from agentmesh.errors import AgentMeshError, AgentMeshValueError, DevnetError

if TYPE_CHECKING:
    from agentmesh.agents.records import TaskRow

app = typer.Typer(help="Buy a service; list and inspect tasks.", no_args_is_help=True)


def _input(input_json: str | None, text: str | None) -> dict[str, Any]:
    if (input_json is None) == (text is None):
        raise AgentMeshValueError("give exactly one of --input JSON or --text TEXT")
    if text is not None:
        return {"text": text}
    assert input_json is not None
    raw = sys.stdin.read() if input_json == "-" else input_json
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise AgentMeshValueError(f"--input is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise AgentMeshValueError('--input must be a JSON object, e.g. \'{"text": "..."}\'')
    return value


@app.command()
def request(
    ctx: typer.Context,
    service: Annotated[str, typer.Argument(help="service name, e.g. summarize")],
    budget: Annotated[str, typer.Option(help="most you pay, in mUSD (e.g. 0.2)")],
    input_json: Annotated[
        str | None, typer.Option("--input", help="input as a JSON object ('-' reads stdin)")
    ] = None,
    text: Annotated[str | None, typer.Option(help="shortcut for --input '{\"text\": ...}'")] = None,
    wallet: Annotated[str, typer.Option(help="keystore wallet that pays")] = "requester",
    provider: Annotated[list[str] | None, typer.Option(help="only these addresses")] = None,
    deadline: Annotated[int | None, typer.Option(help="seconds for the work", min=10)] = None,
    wait: Annotated[
        bool,
        typer.Option("--wait/--no-wait", help="wait for the result, or run it in the background"),
    ] = True,
    timeout: Annotated[float, typer.Option(help="give up waiting after (s)", min=1)] = 300,
    json_out: JsonOption = False,
) -> None:
    """Buy one run of SERVICE from the best provider on the mesh, through escrow."""
    from agentmesh.agents.service import parse_price

    app_state = state(ctx)
    payload = _input(input_json, text)
    parse_price(budget)  # a bad budget fails here, before anything starts
    secret = password(f"Password for {wallet}")
    if not wait:
        _detach(app_state, ctx, secret)
        return
    outcome = run(
        _buy(app_state, service, payload, budget, wallet, secret, provider, deadline, timeout)
    )
    data = {
        "task": outcome.conversation,
        "phase": outcome.phase,
        "provider": outcome.provider,
        "price": outcome.price,
        "job_id": outcome.job_id,
        "txs": outcome.txs,
        "result": outcome.result,
    }
    if json_out:
        print_json(data)
        return
    from agentmesh.wallets.units import MUSD_DECIMALS, format_amount

    console.print(
        f"[green]✓[/] task {outcome.conversation[:12]} settled: "
        f"{format_amount(outcome.price, MUSD_DECIMALS, 'mUSD')} to {outcome.provider} "
        f"(job {outcome.job_id})"
    )
    console.print(outcome.result if isinstance(outcome.result, str) else json.dumps(outcome.result))


def _detach(app_state: AppState, ctx: typer.Context, secret: str) -> None:
    """Run this same request with --wait as a background process; its log is kept."""
    argv = [a for a in sys.argv[1:] if a != "--no-wait"]
    logs = app_state.home / "logs"
    logs.mkdir(parents=True, exist_ok=True, mode=0o700)
    log = logs / f"task-{os.getpid()}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "agentmesh.cli.app", *argv, "--wait"],
            env={**os.environ, "AGENTMESH_PASSWORD": secret, "AGENTMESH_HOME": str(app_state.home)},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    console.print(f"running in the background (pid {process.pid}); log: {log}")
    console.print("follow it with `agentmesh task list`")


async def _buy(
    app_state: AppState,
    service: str,
    payload: dict[str, Any],
    budget: str,
    wallet: str,
    secret: str,
    providers: list[str] | None,
    deadline: int | None,
    timeout: float,
) -> Any:
    from agentmesh.agents.agent import Agent
    from agentmesh.wallets.keystore import Keystore

    keystore = Keystore(app_state.home, scrypt_n=app_state.config.wallet.scrypt_n)
    account = keystore.load(wallet, secret)
    agent = Agent(f"cli-{wallet}", wallet=account, home=app_state.home, config=app_state.config)
    with console.status("joining the mesh..."):
        await agent.start()
    try:
        with console.status(f"looking for providers of {service}..."):
            await agent.wait_for_providers(service, timeout=min(timeout, 60))
        with console.status(f"buying {service} (proposals, escrow, work, check, release)..."):
            return await agent.buy(
                service,
                payload,
                budget=budget,
                providers=tuple(providers or ()),
                deadline_s=deadline,
                timeout=timeout,
            )
    finally:
        await agent.stop()


def _all_tasks(home: Path) -> list[tuple[str, TaskRow]]:
    from agentmesh.agents.records import AgentRecords

    found: list[tuple[str, TaskRow]] = []
    for path in sorted((home / "agents").glob("*/agent.db")):
        records = AgentRecords(path)
        try:
            found.extend((path.parent.name, row) for row in records.tasks())
        finally:
            records.close()
    return found


async def _onchain(app_state: AppState, job_ids: set[int]) -> dict[int, Any]:
    """On-chain state of ``job_ids``, or {} when no chain is reachable."""
    from eth_account import Account

    from agentmesh.wallets.chain import open_chain
    from agentmesh.wallets.clients import EscrowClient
    from agentmesh.wallets.wallet import Wallet

    if not job_ids:
        return {}
    try:
        async with open_chain(app_state.home, app_state.config, allow_embedded=False) as chain:
            reader = Wallet(Account.create(), chain.w3)
            escrow = EscrowClient(reader, chain.deployment.address("TaskEscrow"))
            found = {}
            for job_id in sorted(job_ids):
                with contextlib.suppress(AgentMeshError):
                    found[job_id] = await escrow.get_job(job_id)
            return found
    except DevnetError:
        return {}


def _row(agent: str, task: TaskRow, jobs: dict[int, Any]) -> dict[str, Any]:
    job = jobs.get(task.job_id) if task.job_id is not None else None
    return {
        "task": task.conversation[2:],
        "agent": agent,
        "role": task.role,
        "service": task.service,
        "state": task.state,
        "status": task.status,
        "price": task.price,
        "job_id": task.job_id,
        "onchain": job.status.name.lower() if job is not None else None,
        "peer": task.peer,
        "detail": task.detail,
        "txs": json.loads(task.txs or "{}"),
        "created_ms": task.created_ms,
        "updated_ms": task.updated_ms,
    }


@app.command("list")
def list_(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """Every task of every agent in this home, with its escrow job's on-chain state."""
    app_state = state(ctx)
    tasks = _all_tasks(app_state.home)
    jobs = run(_onchain(app_state, {t.job_id for _, t in tasks if t.job_id is not None}))
    rows = [_row(agent, task, jobs) for agent, task in tasks]
    if json_out:
        print_json(rows)
        return
    if not rows:
        console.print("no tasks in this home yet")
        return
    table = Table(title="tasks")
    for column in (
        "task",
        "agent",
        "role",
        "service",
        "state",
        "status",
        "price",
        "job",
        "on chain",
    ):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["task"][:12],
            row["agent"],
            row["role"],
            row["service"],
            row["state"],
            row["status"],
            str(row["price"]),
            str(row["job_id"] or ""),
            row["onchain"] or ("?" if row["job_id"] else ""),
        )
    console.print(table)


@app.command()
def show(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(help="task id (a unique prefix is enough)")],
    agent_name: Annotated[
        str | None, typer.Option("--agent", help="the agent whose side to show")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """One task: its record, transactions, on-chain job and (for a buyer) the result."""
    app_state = state(ctx)
    wanted = task_id.lower().removeprefix("0x")
    matches = [
        (a, t)
        for a, t in _all_tasks(app_state.home)
        if t.conversation[2:].startswith(wanted) and agent_name in (None, a)
    ]
    if not wanted or not matches:
        raise AgentMeshValueError(f"no task {task_id!r} in this home (see `agentmesh task list`)")
    if len(matches) > 1:
        sides = ", ".join(sorted(a for a, _ in matches))
        raise AgentMeshValueError(
            f"{task_id!r} matches {len(matches)} tasks (agents: {sides}); give more "
            "characters or --agent NAME"
        )
    agent, task = matches[0]
    jobs = run(_onchain(app_state, {task.job_id} if task.job_id is not None else set()))
    data = _row(agent, task, jobs)
    values = _checkpoint(app_state.home / "agents" / agent / "checkpoints.db", task.conversation)
    data["result"] = values.get("result")
    data["proposals"] = [
        {k: p.get(k) for k in ("provider", "price", "latency_ms", "reputation")}
        for p in values.get("proposals", [])
    ]
    job = jobs.get(task.job_id) if task.job_id is not None else None
    if job is not None:
        data["job"] = {
            "status": job.status.name.lower(),
            "client": job.client,
            "provider": job.provider,
            "amount": job.amount,
            "deadline": job.deadline,
            "review_window": job.review_window,
            "result_hash": "0x" + job.result_hash.hex(),
        }
    if json_out:
        print_json(data)
        return
    table = Table(show_header=False, box=None, title=f"task {data['task']}")
    for key, value in data.items():
        if value in (None, "", [], {}):
            continue
        shown = json.dumps(value, indent=1) if isinstance(value, dict | list) else str(value)
        table.add_row(key, shown)
    console.print(table)


def _checkpoint(path: Path, thread: str) -> dict[str, Any]:
    """The latest LangGraph state of ``thread`` (empty if none)."""
    if not path.exists():
        return {}
    from agentmesh.agents.checkpoints import read_checkpoints

    with read_checkpoints(path) as saver:
        found = saver.get_tuple({"configurable": {"thread_id": thread}})
    if found is None:
        return {}
    return dict(found.checkpoint.get("channel_values", {}))
