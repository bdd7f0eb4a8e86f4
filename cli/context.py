"""What every CLI command shares: the home, its config, output, passwords, async."""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections.abc import Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console

from agentmesh.config import Config, load_config, resolve_home
from agentmesh.errors import AgentMeshValueError

T = TypeVar("T")

# soft_wrap: never break a line because output is a pipe (rich assumes 80 columns);
# an error stays one line, an address stays whole.
_PIPE_WIDTH = None if sys.stdout.isatty() else 200  # tables keep whole addresses in pipes
console = Console(soft_wrap=True, width=_PIPE_WIDTH)
err_console = Console(stderr=True, soft_wrap=True)

PASSWORD_ENV = "AGENTMESH_PASSWORD"
# Every listing command takes --json (machine-readable output on stdout only).
JsonOption = Annotated[bool, typer.Option("--json", help="print JSON instead of a table")]


@dataclass
class AppState:
    """Resolved once per invocation by the root callback."""

    home_option: Path | None = None
    debug: bool = False
    _home: Path | None = field(default=None, repr=False)
    _config: Config | None = field(default=None, repr=False)

    @property
    def home(self) -> Path:
        if self._home is None:
            self._home = resolve_home(self.home_option)
        return self._home

    @property
    def config(self) -> Config:
        if self._config is None:
            self._config = load_config(self.home)
        return self._config


def state(ctx: typer.Context) -> AppState:
    """The AppState stored on the root context."""
    root = ctx.find_root()
    if not isinstance(root.obj, AppState):
        root.obj = AppState()
    return root.obj


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run an async command body."""
    return asyncio.run(coro)


def password(prompt: str = "Password", *, confirm: bool = False) -> str:
    """The keystore password: ``AGENTMESH_PASSWORD``, else a hidden prompt."""
    from_env = os.environ.get(PASSWORD_ENV)
    if from_env is not None:
        if not from_env:
            raise AgentMeshValueError(f"{PASSWORD_ENV} is set but empty")
        return from_env
    if not sys.stdin.isatty():
        raise AgentMeshValueError(
            f"no password: set {PASSWORD_ENV} or run the command in a terminal"
        )
    value: str = typer.prompt(prompt, hide_input=True, confirmation_prompt=confirm)
    return value


def log_to_stderr(debug: bool) -> None:
    """Send the agent's log (resumed tasks, approvals needed, failures) to stderr."""
    import logging

    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    agent_log = logging.getLogger("agentmesh")
    agent_log.addHandler(handler)
    agent_log.setLevel(logging.DEBUG if debug else logging.INFO)


def write_ready_file(path: Path, info: dict[str, Any]) -> None:
    """Announce a started agent to whoever waits on ``path`` (written atomically, so a
    reader never sees half a file)."""
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(info))
    tmp.replace(path)


def print_json(data: Any) -> None:
    """Machine-readable output for ``--json``: plain JSON on stdout, nothing else."""
    sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def musd_amount(text: str, what: str) -> int:
    """An mUSD amount typed on the command line (``"5"``, ``"0.5 mUSD"``) in base units:
    above zero and within uint128, or an error naming ``what`` was wrong."""
    from agentmesh.agents.service import parse_price
    from agentmesh.errors import AgentMeshValueError

    try:
        units = parse_price(text)
    except AgentMeshValueError as exc:
        raise AgentMeshValueError(f"invalid {what}: {exc.user_message}") from None
    if units <= 0:
        raise AgentMeshValueError(f"invalid {what} {text!r}: must be above zero")
    if units >= 2**128:
        raise AgentMeshValueError(f"invalid {what} {text!r}: too large")
    return units


def tx_hash(receipt: Any) -> str:
    """A receipt's transaction hash as 0x-hex."""
    return "0x" + bytes(receipt["transactionHash"]).hex()
