"""The ``agentmesh`` command line: one typer app, one module per command group."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, NoReturn

import typer
from rich.markup import escape

from agentmesh.cli import agent as agent_cmd
from agentmesh.cli import chain as chain_cmd
from agentmesh.cli import channel as channel_cmd
from agentmesh.cli import defi as defi_cmd
from agentmesh.cli import delegate as delegate_cmd
from agentmesh.cli import demo as demo_cmd
from agentmesh.cli import devnet as devnet_cmd
from agentmesh.cli import doctor as doctor_cmd
from agentmesh.cli import mesh as mesh_cmd
from agentmesh.cli import model as model_cmd
from agentmesh.cli import new as new_cmd
from agentmesh.cli import stake as stake_cmd
from agentmesh.cli import task as task_cmd
from agentmesh.cli import ui as ui_cmd
from agentmesh.cli import validation as validation_cmd
from agentmesh.cli import wallet as wallet_cmd
from agentmesh.cli.context import AppState, err_console
from agentmesh.errors import AgentMeshError

app = typer.Typer(
    name="agentmesh",
    help="Autonomous agents with their own wallets on a ZeroMQ mesh and a local devnet.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)
app.add_typer(devnet_cmd.app, name="devnet")
app.add_typer(chain_cmd.app, name="chain")
app.add_typer(wallet_cmd.app, name="wallet")
app.add_typer(mesh_cmd.app, name="mesh")
app.add_typer(model_cmd.app, name="model")
app.add_typer(task_cmd.app, name="task")
app.add_typer(delegate_cmd.app, name="delegate")
app.add_typer(defi_cmd.app, name="defi")
app.add_typer(channel_cmd.app, name="channel")
app.add_typer(stake_cmd.app, name="stake")
app.command("validators")(validation_cmd.validators)
app.add_typer(validation_cmd.epoch_app, name="epoch")
app.add_typer(validation_cmd.dispute_app, name="dispute")
app.command("new")(new_cmd.new)
app.command("doctor")(doctor_cmd.doctor)
app.add_typer(demo_cmd.app, name="demo")
app.command("run")(agent_cmd.run_agent)
app.command("approve")(agent_cmd.approve)
app.command("reject")(agent_cmd.reject)
app.command("approvals")(agent_cmd.approvals)
app.command("ui")(ui_cmd.ui)


@app.callback()
def root(
    ctx: typer.Context,
    home: Annotated[
        Path | None,
        typer.Option(
            "--home", envvar="AGENTMESH_HOME", help="agentmesh home folder (keys, devnet, config)"
        ),
    ] = None,
    debug: Annotated[bool, typer.Option("--debug", help="show tracebacks on errors")] = False,
) -> None:
    """agentmesh: local models, a signed mesh, and on-chain settlement."""
    ctx.obj = AppState(home_option=home, debug=debug)


def os_error_message(exc: OSError) -> str:
    """One line for a failed file or system operation: the path(s), then the problem."""
    problem = exc.strerror or str(exc) or type(exc).__name__
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    if not paths:
        return f"{problem} ({type(exc).__name__})"
    return f"{' -> '.join(paths)}: {problem} ({type(exc).__name__})"


def _fail(message: str) -> NoReturn:
    # Messages quote user input and paths: escape them so "[bold]" is shown, not parsed.
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False)
    sys.exit(1)


def main() -> None:
    """Console entry point: errors print as one red line with the fix, exit code 1;
    ``--debug`` shows the traceback instead."""
    try:
        app()
    except AgentMeshError as exc:
        if "--debug" in sys.argv:
            raise
        _fail(exc.user_message)
    except OSError as exc:  # a path that cannot be made, read or written; a full disk
        if "--debug" in sys.argv:
            raise
        _fail(os_error_message(exc))
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        sys.exit(130)


if __name__ == "__main__":
    main()
