"""``agentmesh task request | resume | refund | resolve | list | show``: buy a service
from the command line through the wallet's agent; inspect tasks with their on-chain
state and the money they hold; settle a dispute as its arbiter. Tables show mUSD and
local times; ``--json`` keeps base units and epoch times (ms for records, s for the
chain)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from agentmesh.cli.context import (
    AppState,
    JsonOption,
    console,
    log_to_stderr,
    password,
    print_json,
    run,
    state,
)
from agentmesh.cli.task_results import checkpoint_values, result_text
from agentmesh.errors import AgentMeshError, AgentMeshValueError, DevnetError
from agentmesh.wallets.units import local_time

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


AGENT_START_S = 60.0  # loading the keystore, joining the chain and the mesh
GRACE_S = 60  # beyond the deadline and the review window: proposals, transactions


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
    provider: Annotated[
        list[str] | None, typer.Option(help="only this provider address (repeatable)")
    ] = None,
    deadline: Annotated[
        int | None, typer.Option(help="seconds for the work (default: config deadline_s)", min=10)
    ] = None,
    wait: Annotated[
        bool,
        typer.Option("--wait/--no-wait", help="wait for the result, or hand it over and return"),
    ] = True,
    timeout: Annotated[
        float | None,
        typer.Option(
            help="stop waiting after (s); default: the deadline plus the review window",
            min=1,
        ),
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Buy one run of SERVICE from the best provider on the mesh, through escrow.

    The purchase is carried by the wallet's agent (started when not running), so it
    goes on to its end whether or not this command still waits: see `task list`.
    """
    from agentmesh.agents.control import Buy, parse_budget

    app_state = state(ctx)
    payload = _input(input_json, text)
    parse_budget(budget)  # a bad budget fails here, before anything starts
    purchase = Buy(
        service=service,
        input=payload,
        budget=budget,
        providers=tuple(_address(p) for p in provider or ()),
        deadline_s=deadline,
        wait=wait,
    )
    agent_settings = app_state.config.agent
    limit = timeout or (
        (deadline or agent_settings.deadline_s)
        + agent_settings.review_window_s
        + agent_settings.proposal_window_s
        + GRACE_S
    )
    run(_carry(app_state, wallet, purchase, limit, json_out))


def _address(value: str) -> str:
    from agentmesh.agents.control import ADDRESS

    if not re.fullmatch(ADDRESS, value):
        raise AgentMeshValueError(f"--provider {value!r} is not an address (0x and 40 hex digits)")
    return value


@app.command()
def resume(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(help="task id (a unique prefix is enough)")],
    wait: Annotated[bool, typer.Option("--wait/--no-wait", help="follow it to its end")] = True,
    timeout: Annotated[float, typer.Option(help="stop waiting after (s)", min=1)] = 600,
    json_out: JsonOption = False,
) -> None:
    """Carry an unfinished purchase on now (a stalled one is retried at once)."""
    from agentmesh.agents.control import Resume

    app_state = state(ctx)
    agent, task = _find_task(app_state.home, task_id, role="requester")
    run(
        _carry(
            app_state,
            _wallet_of(agent),
            Resume(task=task.conversation[2:], wait=wait),
            timeout,
            json_out,
        )
    )


@app.command()
def refund(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(help="task id (a unique prefix is enough)")],
    json_out: JsonOption = False,
) -> None:
    """Take back the deposit of a purchase whose deadline passed with nothing delivered."""
    from agentmesh.agents.control import Refund

    app_state = state(ctx)
    agent, task = _find_task(app_state.home, task_id, role="requester")
    run(_carry(app_state, _wallet_of(agent), Refund(task=task.conversation[2:]), 120, json_out))


@app.command()
def resolve(
    ctx: typer.Context,
    job_id: Annotated[int, typer.Argument(help="escrow job id (`task show` names it)", min=1)],
    to_provider: Annotated[
        str, typer.Option(help="the provider's share in mUSD, e.g. 0.02 (the rest: buyer)")
    ],
    wallet: Annotated[str | None, typer.Option(help="keystore wallet of the job's arbiter")] = None,
    devnet_arbiter: Annotated[
        bool,
        typer.Option(help="sign as the devnet deployer, the default arbiter on a devnet"),
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Arbiter: split the deposit of a disputed job between its provider and its buyer
    (within the dispute timeout; after it, `task refund` returns it to the buyer)."""
    from agentmesh.wallets.units import MUSD_DECIMALS, parse_amount

    app_state = state(ctx)
    if (wallet is None) == (not devnet_arbiter):
        raise AgentMeshValueError("name the arbiter: --wallet NAME or --devnet-arbiter")
    share = parse_amount(to_provider, MUSD_DECIMALS, symbol="mUSD")
    account = None
    if wallet is not None:
        from agentmesh.cli.wallet import _load_wallet

        account = _load_wallet(app_state, wallet)
    done = run(_resolve(app_state, job_id, share, account))
    if json_out:
        print_json(done)
        return
    console.print(
        f"job {job_id} resolved: {musd(done['provider_amount'])} to the provider "
        f"{done['provider']}, {musd(done['client_amount'])} back to the buyer "
        f"{done['client']} (tx {done['tx']})"
    )


async def _resolve(
    app_state: AppState, job_id: int, share: int, account: Any | None
) -> dict[str, Any]:
    from agentmesh.agents.context import tx_hex
    from agentmesh.chain.home import running_devnet
    from agentmesh.wallets.chain import open_chain
    from agentmesh.wallets.chain_clock import ChainClock
    from agentmesh.wallets.clients import EscrowClient
    from agentmesh.wallets.deployer import dev_deployer
    from agentmesh.wallets.wallet import Wallet

    _chain_url(app_state)  # a clear error when no chain is up
    async with open_chain(app_state.home, app_state.config, allow_embedded=False) as chain:
        if account is None:
            if running_devnet(app_state.home) is None or app_state.config.chain.rpc_url:
                raise AgentMeshValueError(
                    "--devnet-arbiter signs with the devnet's public deployer key: only for "
                    "this home's `agentmesh devnet up`; name the arbiter's --wallet"
                )
            signer = dev_deployer(chain.w3)
        else:
            signer = Wallet(account, chain.w3)
        escrow = EscrowClient(signer, chain.deployment.address("TaskEscrow"))
        job = await escrow.get_job(job_id)
        ends = job.dispute_ends_at()
        if ends is None:
            raise AgentMeshValueError(
                f"job {job_id} is {job.status.name.lower()}, not disputed: nothing to resolve"
            )
        if job.arbiter.lower() != signer.address.lower():
            raise AgentMeshValueError(
                f"{signer.address} is not the arbiter of job {job_id} (its arbiter is "
                f"{job.arbiter})"
            )
        now = await ChainClock(chain.w3).now()
        if now > ends:
            raise AgentMeshValueError(
                f"the dispute of job {job_id} timed out at {local_time(ends)}: the arbiter "
                "can no longer split it; the buyer's `task refund` returns the deposit"
            )
        if share > job.amount:
            raise AgentMeshValueError(
                f"--to-provider {musd(share)} is more than the deposit of job {job_id} "
                f"({musd(job.amount)})"
            )
        with console.status(f"resolving job {job_id}..."):
            receipt = await escrow.resolve(job_id, share)
    return {
        "job_id": job_id,
        "provider": job.provider,
        "client": job.client,
        "provider_amount": share,
        "client_amount": job.amount - share,
        "tx": tx_hex(receipt),
    }


@app.command("agent", hidden=True)
def wallet_agent(
    ctx: typer.Context,
    wallet: Annotated[str, typer.Option(help="keystore wallet")] = "requester",
) -> None:
    """Run the wallet's agent that carries CLI purchases (started by `task request`)."""
    run(_serve_wallet(state(ctx), wallet))


async def _serve_wallet(app_state: AppState, wallet: str) -> None:
    import signal

    from agentmesh.agents.control import (
        lock_path,
        single_instance,
        socket_path,
        wallet_agent_name,
    )
    from agentmesh.wallets.keystore import Keystore

    home, config = app_state.home, app_state.config
    name = wallet_agent_name(wallet)
    log_to_stderr(app_state.debug)
    with single_instance(lock_path(home, name)) as mine:
        if not mine:
            console.print(f"the agent of wallet {wallet!r} is already running")
            return
        secret = password(f"Password for {wallet}")
        keystore = Keystore(home, scrypt_n=config.wallet.scrypt_n)
        # Decrypting (scrypt, ~0.6 s) runs in a thread while the agent's modules import
        # (~1.1 s): a cold `task request` waits for the longer of the two, not both.
        loop = asyncio.get_running_loop()
        decrypting = loop.run_in_executor(None, keystore.load, wallet, secret)
        from agentmesh.agents.agent import Agent
        from agentmesh.agents.wallet_agent import WalletAgentServer

        account = await decrypting
        agent = Agent(name, wallet=account, home=home, config=config, throwaway_devnet=False)
        stop = asyncio.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await agent.start()
        try:
            server = WalletAgentServer(
                agent, socket_path(home, name), config.agent.wallet_agent_idle_s
            )
            await server.run(stop)
        finally:
            await agent.stop()


# ---------------------------------------------------------------------- talking to it


def _chain_url(app_state: AppState) -> str:
    """The chain a purchase uses; a clear error (not a throw-away devnet) if none is up."""
    from agentmesh.chain.home import running_devnet
    from agentmesh.chain.rpc import is_up

    configured = app_state.config.chain.rpc_url
    if configured:
        if not is_up(configured):
            raise DevnetError(
                f"the chain at {configured} (chain.rpc_url in config.toml) does not answer"
            )
        return configured
    record = running_devnet(app_state.home)
    if record is None:
        raise DevnetError(
            "no chain to buy on: start one with `agentmesh devnet up` (or set chain.rpc_url "
            "in config.toml); a purchase never runs on a throw-away devnet"
        )
    return record.rpc_url


async def _ensure_wallet_agent(app_state: AppState, wallet: str) -> Path:
    """The control socket of the wallet's agent, starting the agent if none runs."""
    from agentmesh.agents.control import connect, socket_path, wallet_agent_name

    home = app_state.home
    name = wallet_agent_name(wallet)
    path = socket_path(home, name)
    streams = await connect(path)
    if streams is not None:
        streams[1].close()
        return path
    _chain_url(app_state)  # a clear error now if there is no chain to buy on
    if not (home / "keystores" / f"{wallet}.json").exists():
        raise AgentMeshValueError(
            f"no wallet {wallet!r} in {home / 'keystores'} (create it with "
            f"`agentmesh wallet new {wallet}`)"
        )
    secret = password(f"Password for {wallet}")
    logs = home / "logs"
    logs.mkdir(parents=True, exist_ok=True, mode=0o700)
    log = logs / f"{name}.log"
    command = [sys.executable, "-m", "agentmesh.cli.app", "--home", str(home)]
    command += ["task", "agent", "--wallet", wallet]
    with log.open("ab") as out:
        process = subprocess.Popen(
            command,
            env={**os.environ, "AGENTMESH_PASSWORD": secret},
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # it outlives this command (and its Ctrl-C)
        )
    started = time.monotonic()
    with console.status(f"starting the agent of wallet {wallet!r}..."):
        while time.monotonic() - started < AGENT_START_S:
            streams = await connect(path)
            if streams is not None:
                streams[1].close()
                return path
            # Exit 0: another command started the agent first (it holds the lock).
            if process.poll() not in (None, 0):
                raise AgentMeshError(
                    f"the agent of wallet {wallet!r} did not start: {_last_line(log)} (log: {log})"
                )
            await asyncio.sleep(0.05)
    raise AgentMeshError(
        f"the agent of wallet {wallet!r} did not start within {AGENT_START_S:g} s (log: {log})"
    )


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else "no output"


async def _carry(
    app_state: AppState, wallet: str, request: Any, limit: float, json_out: bool
) -> None:
    """Hand ``request`` to the wallet's agent and show what it reports."""
    from agentmesh.agents.control import exchange

    path = await _ensure_wallet_agent(app_state, wallet)
    accepted: dict[str, Any] = {}
    phase = "started"
    try:
        async with asyncio.timeout(limit):
            with console.status("handing over to the wallet's agent...") as status:
                async for event in exchange(path, request):
                    kind = event["event"]
                    if kind == "error":
                        raise AgentMeshError(event.get("message", "the wallet's agent failed"))
                    if kind == "accepted":
                        accepted = event
                        if not getattr(request, "wait", True):
                            _handed_over(event, json_out)
                            return
                    elif kind == "phase":
                        phase = event["phase"]
                        status.update(f"task {accepted.get('task', '')[:12]}: {phase}...")
                    elif kind == "outcome":
                        _show_outcome(event, json_out)
                        return
                    elif kind in ("refunded", "status"):
                        _show_event(event, json_out)
                        return
    except TimeoutError:
        task = accepted.get("task", "")
        raise AgentMeshError(
            f"task {task[:12]} is still {phase} after {limit:g} s; the wallet's agent (pid "
            f"{accepted.get('pid', '?')}) carries it on to its end: see `agentmesh task "
            f"show {task[:12]}`"
        ) from None
    raise AgentMeshError("the wallet's agent closed the connection without an answer")


def _handed_over(event: dict[str, Any], json_out: bool) -> None:
    if json_out:
        print_json({"task": event["task"], "agent": event["agent"], "pid": event["pid"]})
        return
    console.print(
        f"task {event['task'][:12]} handed to the wallet's agent {event['agent']} (pid "
        f"{event['pid']}), which carries it to its end; follow it with `agentmesh task show "
        f"{event['task'][:12]}`"
    )


def _show_outcome(event: dict[str, Any], json_out: bool) -> None:
    data = {
        "task": event["conversation"],
        "phase": event["phase"],
        "provider": event["provider"],
        "price": event["price"],
        "job_id": event["job_id"],
        "txs": event["txs"],
        "result": event["result"],
    }
    if event["phase"] != "settled":
        raise AgentMeshError(
            f"task {event['conversation'][:12]} ended {event['phase']}: "
            f"{event['error'] or 'no reason given'}"
        )
    if json_out:
        print_json(data)
        return
    console.print(
        f"[green]✓[/] task {data['task'][:12]} settled: {musd(data['price'])} to "
        f"{data['provider']} (job {data['job_id']})"
    )
    result = data["result"]
    console.print(result if isinstance(result, str) else json.dumps(result), markup=False)


def _show_event(event: dict[str, Any], json_out: bool) -> None:
    if json_out:
        print_json(event)
        return
    if event["event"] == "refunded":
        how = (
            "was refunded already, by the wallet's agent at the deadline"
            if event.get("already")
            else "refunded"
        )
        console.print(
            f"[green]✓[/] job {event['job_id']} {how}: {musd(event['amount'])} back to the "
            f"wallet (tx {event['tx']})"
        )


def _all_tasks(home: Path) -> list[tuple[str, TaskRow]]:
    from agentmesh.agents.records import each_agent

    return [(agent, row) for agent, records in each_agent(home) for row in records.tasks()]


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


def musd(amount: int) -> str:
    """Base units as mUSD for a person (``--json`` keeps base units)."""
    from agentmesh.wallets.units import MUSD_DECIMALS, format_amount

    return format_amount(amount, MUSD_DECIMALS, "mUSD")


def locked_money(job: Any) -> dict[str, Any] | None:
    """What holds the deposit of ``job`` in escrow and when it is released, or None if
    it is not held (paid out, refunded, never funded)."""
    status = job.status.name.lower()
    amount = job.amount
    if status == "open":
        return {
            "amount": amount,
            "until": job.deadline,
            "release": "the provider accepts, or it returns to the buyer after the deadline",
        }
    if status == "accepted":
        return {
            "amount": amount,
            "until": job.deadline,
            "release": "paid on delivery and release, or back to the buyer after the deadline",
        }
    if status == "submitted":
        return {
            "amount": amount,
            "until": job.submitted_at + job.review_window,
            "release": "paid when the buyer releases, or claimable by the provider after "
            "the review window",
        }
    if status == "disputed":
        return {
            "amount": amount,
            "until": job.dispute_ends_at(),
            "release": f"split by the arbiter {job.arbiter} (`task resolve`), or back to "
            "the buyer (`task refund`) if it has not by the dispute timeout",
        }
    return None


def _lock_text(locked: dict[str, Any] | None) -> str:
    if locked is None:
        return ""
    when = f" (by {local_time(locked['until'])})" if locked["until"] else ""
    return f"{musd(locked['amount'])} locked: {locked['release']}{when}"


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
        "locked": locked_money(job) if job is not None else None,
        "peer": task.peer,
        "detail": task.detail,
        "txs": json.loads(task.txs or "{}"),
        "trace": json.loads(task.trace or "[]"),
        "created_ms": task.created_ms,
        "updated_ms": task.updated_ms,
    }


@app.command("list")
def list_(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """Every task of every agent in this home, with its escrow job's on-chain state and
    any money it still holds (what releases it, and when)."""
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
    table = Table(title="tasks (times are local)")
    for column in (
        "task",
        "agent",
        "role",
        "service",
        "state",
        "price",
        "job",
        "on chain",
        "money held",
        "updated",
    ):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row["task"][:12],
            row["agent"],
            row["role"],
            row["service"],
            row["state"] if row["status"] != "stalled" else f"{row['state']} (stalled)",
            musd(row["price"]) if row["price"] else "",
            str(row["job_id"] or ""),
            row["onchain"] or ("?" if row["job_id"] else ""),
            _lock_text(row["locked"]),
            local_time(row["updated_ms"] / 1000),
        )
    console.print(table)


def _find_task(
    home: Path, task_id: str, *, agent_name: str | None = None, role: str | None = None
) -> tuple[str, TaskRow]:
    """The one task ``task_id`` (a prefix) names in this home, and its agent."""
    wanted = task_id.lower().removeprefix("0x")
    matches = [
        (a, t)
        for a, t in _all_tasks(home)
        if t.conversation[2:].startswith(wanted)
        and agent_name in (None, a)
        and role in (None, t.role)
    ]
    kind = "purchase" if role == "requester" else "task"
    if not wanted or not matches:
        raise AgentMeshValueError(f"no {kind} {task_id!r} in this home (see `agentmesh task list`)")
    if len(matches) > 1:
        sides = ", ".join(sorted(a for a, _ in matches))
        raise AgentMeshValueError(
            f"{task_id!r} matches {len(matches)} tasks (agents: {sides}); give more "
            "characters or --agent NAME"
        )
    return matches[0]


def _wallet_of(agent: str) -> str:
    """The wallet whose CLI agent owns a purchase by ``agent``."""
    from agentmesh.agents.control import wallet_agent_name

    wallet = agent.removeprefix("cli-")
    if wallet_agent_name(wallet) != agent:
        raise AgentMeshValueError(
            f"this purchase belongs to agent {agent!r}, not to a wallet's CLI agent: it goes "
            "on when that agent runs (`agentmesh run ...`), which resumes its tasks itself"
        )
    return wallet


@app.command()
def show(
    ctx: typer.Context,
    task_id: Annotated[str, typer.Argument(help="task id (a unique prefix is enough)")],
    agent_name: Annotated[
        str | None, typer.Option("--agent", help="the agent whose side to show")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """One task: its record, where its time went, transactions, on-chain job, the money
    it holds and (for a buyer) the result."""
    app_state = state(ctx)
    agent, task = _find_task(app_state.home, task_id, agent_name=agent_name)
    jobs = run(_onchain(app_state, {task.job_id} if task.job_id is not None else set()))
    data = _row(agent, task, jobs)
    values = checkpoint_values(
        app_state.home / "agents" / agent / "checkpoints.db", task.conversation
    )
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
    console.print(_show_table(data))


def _show_table(data: dict[str, Any]) -> Table:
    """``task show`` for a person: mUSD, local times, the trace as durations."""
    table = Table(show_header=False, box=None, title=f"task {data['task']} (times are local)")
    shown: dict[str, str] = {}
    for key, value in data.items():
        if value in (None, "", [], {}):
            continue
        if key == "trace":
            shown[key] = trace_text(value)
        elif key == "price":
            shown[key] = musd(value)
        elif key == "locked":
            shown["money held"] = _lock_text(value)
        elif key in ("created_ms", "updated_ms"):
            shown[key.removesuffix("_ms")] = local_time(value / 1000)
        elif key == "job":
            job = dict(value)
            job["amount"] = musd(job["amount"])
            job["deadline"] = local_time(job["deadline"])
            job["review_window"] = f"{job['review_window']} s"
            shown[key] = "\n".join(f"{k}: {v}" for k, v in job.items())
        elif key == "result":
            shown["delivered result"] = result_text(value)
        elif key == "proposals":
            shown[key] = "\n".join(
                f"{p['provider']}: {musd(p['price'])}, answered in {p['latency_ms']} ms"
                for p in value
            )
        else:
            shown[key] = (
                json.dumps(value, indent=1) if isinstance(value, dict | list) else str(value)
            )
    for key, text in shown.items():
        table.add_row(key, text)
    return table


def trace_text(trace: list[list[Any]]) -> str:
    """One line per phase: seconds since the task started, and how long the step took."""
    lines = []
    start = trace[0][1] if trace else 0
    for i, (phase, ms) in enumerate(trace):
        took = (trace[i + 1][1] - ms) / 1000 if i + 1 < len(trace) else None
        step = f"  ({took:.3f} s in it)" if took is not None else ""
        lines.append(f"+{(ms - start) / 1000:7.3f} s  {phase}{step}")
    return "\n".join(lines)
