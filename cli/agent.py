"""``agentmesh run | approve | reject | approvals``: run an agent file; decide spends."""

from __future__ import annotations

import importlib
import importlib.util
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from agentmesh.cli.context import (
    JsonOption,
    console,
    log_to_stderr,
    print_json,
    state,
    write_ready_file,
)
from agentmesh.errors import AgentMeshValueError
from agentmesh.wallets.units import local_time

if TYPE_CHECKING:
    from agentmesh.agents.agent import Agent


def load_agent(target: str) -> Agent:
    """The ``Agent`` defined by a Python file (or a module path such as ``pkg.mod``).

    The file's variable ``agent`` is used; failing that, its only ``Agent`` instance.
    """
    from agentmesh.agents.agent import Agent

    path = Path(target)
    if target.endswith(".py"):
        if not path.is_file():
            raise AgentMeshValueError(f"agent file {target} does not exist")
        name = f"agentmesh_user_agent_{abs(hash(str(path.resolve())))}"
        spec = importlib.util.spec_from_file_location(name, path)
        if spec is None or spec.loader is None:
            raise AgentMeshValueError(f"cannot load {target} as Python")
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        # The agent's own folder first, so it can import its helper modules.
        sys.path.insert(0, str(path.resolve().parent))
        try:
            spec.loader.exec_module(module)
        except SyntaxError as exc:
            raise AgentMeshValueError(f"{target}:{exc.lineno}: syntax error: {exc.msg}") from None
    else:
        try:
            module = importlib.import_module(target)
        except ImportError as exc:
            raise AgentMeshValueError(
                f"cannot import {target!r} ({exc}); give a path ending in .py or a module name"
            ) from None
    found = getattr(module, "agent", None)
    if isinstance(found, Agent):
        return found
    agents = [value for value in vars(module).values() if isinstance(value, Agent)]
    if len(agents) != 1:
        raise AgentMeshValueError(
            f"{target} defines {len(agents)} Agent objects; name the one to run `agent`"
        )
    return agents[0]


def run_agent(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="agent file (path/to/agent.py) or module")],
    name: Annotated[str | None, typer.Option(help="override the agent's name")] = None,
    wallet: Annotated[str | None, typer.Option(help="keystore wallet to use")] = None,
    bootstrap: Annotated[list[str] | None, typer.Option(help="<key>@tcp://host:port")] = None,
    port: Annotated[int | None, typer.Option(help="mesh ROUTER port", min=0, max=65535)] = None,
    ready_file: Annotated[Path | None, typer.Option(help="write address/endpoints here")] = None,
) -> None:
    """Run an agent on the mesh until SIGTERM/Ctrl-C (or until its main job ends)."""
    import asyncio

    app_state = state(ctx)
    agent = load_agent(target)
    if name is not None:
        from agentmesh.agents.agent import AGENT_NAME

        if not re.match(AGENT_NAME, name):
            raise AgentMeshValueError(f"invalid agent name {name!r}")
        agent.name = name
    if wallet is not None:
        agent._wallet_spec = wallet
    if agent._home_option is None:
        agent._home_option = app_state.home
    mesh = app_state.config.mesh
    updates: dict[str, Any] = {}
    if bootstrap:
        updates["bootstrap"] = (*mesh.bootstrap, *bootstrap)
    if port is not None:
        updates["port"] = port
    if updates:
        agent._mesh_option = mesh.model_copy(update=updates)

    from agentmesh.wallets.units import MUSD_DECIMALS, format_amount

    def ready(running: Agent) -> None:
        card = running.node.card
        assert card is not None
        info = {
            "name": running.name,
            "address": running.address,
            "endpoint": card.endpoint,
            "bootstrap": card.bootstrap_address,
            "services": [s.name for s in card.services],
            "pid": os.getpid(),
        }
        if ready_file is not None:
            write_ready_file(ready_file, info)
        console.print(f"agent [bold]{running.name}[/] {running.address} on {card.endpoint}")
        if card.services:
            offered = ", ".join(
                f"{s.name} ({format_amount(s.price, MUSD_DECIMALS, 'mUSD')})" for s in card.services
            )
            console.print(f"selling: {offered}")

    log_to_stderr(app_state.debug)
    console.print(f"starting agent {agent.name}...")
    # A spinner while the chain connects, contracts deploy (throw-away devnet), the mesh
    # binds and the model loads; it stops when the agent is ready (or fails to start).
    spinner = console.status(f"starting {agent.name}: chain, contracts, mesh, model...")
    spinner.start()

    def started(running: Agent) -> None:
        spinner.stop()
        ready(running)

    try:
        asyncio.run(agent.serve(ready=started))
    finally:
        spinner.stop()


def _decide(ctx: typer.Context, approval_id: str, approved: bool) -> None:
    from agentmesh.agents.records import find_approval

    app_state = state(ctx)
    records, row = find_approval(app_state.home, approval_id)
    try:
        row = records.decide(approval_id, approved)
    finally:
        records.close()
    verb = "approved" if approved else "rejected"
    console.print(f"{verb} {row.id}: {row.description}")
    console.print("the agent resumes the task within a second (or when it next starts)")


def approve(
    ctx: typer.Context, approval_id: Annotated[str, typer.Argument(help="approval id")]
) -> None:
    """Let a paused spend go ahead."""
    _decide(ctx, approval_id, True)


def reject(
    ctx: typer.Context, approval_id: Annotated[str, typer.Argument(help="approval id")]
) -> None:
    """Refuse a paused spend; the task is cancelled and nothing is paid."""
    _decide(ctx, approval_id, False)


def approvals(ctx: typer.Context, json_out: JsonOption = False) -> None:
    """Spends waiting for a decision (and past decisions) of every agent in this home."""
    from agentmesh.agents.records import ApprovalStatus, each_agent

    app_state = state(ctx)
    rows: list[dict[str, Any]] = []
    for agent, records in each_agent(app_state.home):
        rows.extend({"agent": agent, **row.model_dump()} for row in records.approvals())
    if json_out:
        print_json(rows)
        return
    from agentmesh.wallets.units import MUSD_DECIMALS, format_amount

    table = Table(title="approvals (* decided, not yet applied by its agent; times are local)")
    for column in ("id", "agent", "status", "amount", "what", "asked"):
        table.add_column(column)
    for entry in rows:
        shown = entry["status"]
        if not entry["applied"] and shown != ApprovalStatus.PENDING:
            shown += " *"
        amount = format_amount(entry["amount"], MUSD_DECIMALS, "mUSD")
        asked = local_time(entry["created_ms"] / 1000)
        table.add_row(entry["id"], entry["agent"], shown, amount, entry["description"], asked)
    console.print(table)
