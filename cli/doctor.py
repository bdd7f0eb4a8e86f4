"""``agentmesh doctor``: check the environment and say what to run for each problem."""

from __future__ import annotations

import platform
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from agentmesh.cli.context import AppState, console, print_json, state
from agentmesh.config import CONFIG_FILE_NAME
from agentmesh.errors import AgentMeshError, ConfigError

MIN_PYTHON = (3, 11)


@dataclass(frozen=True, slots=True)
class Check:
    """One line of the report: ``fix`` says what to run when ``ok`` is False."""

    name: str
    ok: bool
    detail: str
    fix: str = ""


def check_python() -> Check:
    version = platform.python_version()
    if sys.version_info[:2] >= MIN_PYTHON:
        return Check("python", True, f"{version} ({sys.executable})")
    return Check("python", False, f"{version} is too old", "use Python 3.11 or newer")


def check_llama() -> Check:
    try:
        import llama_cpp
    except ImportError as exc:
        return Check("llama-cpp", False, f"not importable: {exc}", "run `make setup`")
    offload = bool(llama_cpp.llama_supports_gpu_offload())
    backend = "GPU offload available" if offload else "CPU only (no GPU offload in this build)"
    if not offload:
        import shutil

        if shutil.which("nvcc") and not shutil.which("nvidia-smi"):
            backend += (
                "; a CUDA toolkit is installed but no NVIDIA driver/GPU, so the setup "
                "built for the CPU"
            )
        elif shutil.which("nvcc"):
            backend += "; rebuild with CUDA: rm .venv/.llama-* && make setup"
    return Check("llama-cpp", True, f"llama-cpp-python {llama_cpp.__version__}: {backend}")


def check_anvil(app_state: AppState) -> Check:
    from agentmesh.tools import find_anvil

    configured = app_state.config.devnet.anvil_path  # an invalid config.toml: see _run_check
    try:
        path = find_anvil(configured)
    except AgentMeshError as exc:
        return Check("anvil", False, exc.user_message, "run `make setup` or set AGENTMESH_ANVIL")
    try:
        version = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.splitlines()[0]
    except (OSError, subprocess.SubprocessError, IndexError) as exc:
        return Check("anvil", False, f"{path} does not run: {exc}", "run `make setup` again")
    return Check("anvil", True, f"{version} ({path})")


def check_model(model: Path | None) -> Check:
    from agentmesh.llm import check_gguf, default_model_path

    try:
        path = model if model is not None else default_model_path()
        check_gguf(path)
    except AgentMeshError as exc:
        fix = "give a GGUF file with --model" if model is not None else "run `make setup`"
        return Check("model", False, exc.user_message, fix)
    size = path.stat().st_size / 2**20
    return Check("model", True, f"{path.name}, {size:.0f} MiB ({path})")


def _config_fix(config_path: Path, exc: ConfigError) -> str:
    """The fix for an invalid config.toml: correct it, naming the error."""
    problem = exc.user_message.removeprefix(f"{config_path}: ")
    return f"correct {config_path}: {problem}"


def check_home(app_state: AppState) -> Check:
    home = app_state.home
    loose = []
    if stat.S_IMODE(home.stat().st_mode) & 0o077:
        loose.append(f"{home} is {oct(stat.S_IMODE(home.stat().st_mode))}")
    keystores = home / "keystores"
    for keyfile in sorted(keystores.glob("*.json")) if keystores.is_dir() else []:
        mode = stat.S_IMODE(keyfile.stat().st_mode)
        if mode & 0o077:
            loose.append(f"{keyfile.name} is {oct(mode)}")
    if loose:
        return Check(
            "home",
            False,
            "readable by others: " + ", ".join(loose),
            f"chmod 700 {home} {keystores} && chmod 600 {keystores}/*.json",
        )
    try:
        app_state.config  # noqa: B018 - validates config.toml
    except ConfigError as exc:
        return Check("home", False, exc.user_message, _config_fix(home / CONFIG_FILE_NAME, exc))
    return Check("home", True, f"{home} (0700, keystores 0600, config valid)")


def check_chain(app_state: AppState) -> Check:
    from agentmesh.chain.home import running_devnet
    from agentmesh.chain.rpc import rpc_call

    url = app_state.config.chain.rpc_url
    if url:
        try:
            chain_id = int(rpc_call(url, "eth_chainId"), 16)
        except AgentMeshError as exc:
            return Check("chain", False, exc.user_message, "start that node, or fix chain.rpc_url")
        return Check("chain", True, f"configured {url} answers (chain {chain_id})")
    record = running_devnet(app_state.home)
    if record is not None:
        return Check("chain", True, f"devnet running at {record.rpc_url} (pid {record.pid})")
    return Check(
        "chain",
        True,
        "no chain running: agents start a throw-away anvil (`agentmesh devnet up` keeps one)",
    )


def _run_check(name: str, run_check: Callable[[], Check], app_state: AppState) -> Check:
    """Run one check; one that cannot even run is a failed check under its own name."""
    try:
        return run_check()
    except ConfigError as exc:  # anvil and chain read config.toml
        try:
            config_path = app_state.home / CONFIG_FILE_NAME
        except (AgentMeshError, OSError):  # the home itself is unusable
            return Check(
                name,
                False,
                f"not checked: {exc.user_message}",
                "give a usable folder with --home or AGENTMESH_HOME",
            )
        return Check(
            name, False, f"not checked: {config_path} is invalid", _config_fix(config_path, exc)
        )
    except (AgentMeshError, OSError) as exc:
        detail = exc.user_message if isinstance(exc, AgentMeshError) else str(exc)
        return Check(
            name, False, f"the check failed: {detail}", "correct the cause above and run again"
        )


def doctor(
    ctx: typer.Context,
    model: Annotated[
        Path | None, typer.Option(help="check this GGUF instead of the default")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print JSON")] = False,
) -> None:
    """Check python, llama-cpp backend, anvil, model, home permissions and the chain."""
    app_state = state(ctx)
    checks: list[tuple[str, Callable[[], Check]]] = [
        ("python", check_python),
        ("llama-cpp", check_llama),
        ("anvil", lambda: check_anvil(app_state)),
        ("model", lambda: check_model(model)),
        ("home", lambda: check_home(app_state)),
        ("chain", lambda: check_chain(app_state)),
    ]
    results = [_run_check(name, run_check, app_state) for name, run_check in checks]
    if json_out:
        print_json([asdict(r) for r in results])
    else:
        table = Table("check", "", "detail", title="agentmesh doctor")
        for result in results:
            mark = "[green]✓[/]" if result.ok else "[red]✗[/]"
            detail = escape(result.detail)
            if not result.ok:
                detail += f"\n[bold]fix:[/] {escape(result.fix)}"
            table.add_row(result.name, mark, detail)
        console.print(table)
    if not all(r.ok for r in results):
        raise typer.Exit(1)
    if not json_out:
        console.print("[green]all checks passed[/]")
