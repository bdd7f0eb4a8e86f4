"""``agentmesh new NAME``: scaffold an agent project that runs and passes its tests."""

from __future__ import annotations

import contextlib
import enum
import os
import re
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from agentmesh.cli import scaffold_templates as templates
from agentmesh.cli.context import PASSWORD_ENV, console, password, state
from agentmesh.errors import AgentMeshValueError, WalletExistsError

if TYPE_CHECKING:
    from agentmesh.wallets.keystore import Keystore, KeystoreEntry

PROJECT_NAME = r"^[a-z][a-z0-9_-]{0,39}$"


class Template(enum.StrEnum):
    provider = "provider"
    requester = "requester"
    blank = "blank"


def project_files(name: str, template: Template, wallet: str) -> dict[str, str]:
    """Relative path -> content of every file of a new project."""
    kind = template.value
    return {
        "pyproject.toml": templates.PYPROJECT.format(name=name),
        "agentmesh.toml": templates.TOML[kind].format(name=name, wallet=wallet),
        "agent.py": templates.AGENT[kind].format(name=name),
        "tests/test_agent.py": templates.TEST[kind],
        "README.md": templates.README[kind].format(name=name),
        ".gitignore": templates.GITIGNORE,
    }


def _wallet_password() -> str | None:
    """The new wallet's password: ``AGENTMESH_PASSWORD`` (an error if set but empty, as
    everywhere in the CLI), else a prompt in a terminal, else None (no wallet yet)."""
    if PASSWORD_ENV not in os.environ and not sys.stdin.isatty():
        return None
    return password("Password for the agent's wallet", confirm=True)


def _make_dirs(folder: Path, made: list[Path]) -> None:
    """``mkdir -p folder``, noting each folder it creates (outermost first) in ``made``."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    for path in reversed(missing):
        path.mkdir()
        made.append(path)


def _undo(made: list[Path]) -> None:
    """Remove what a failed ``new`` created, newest first; never anything that was there."""
    for path in reversed(made):
        with contextlib.suppress(OSError):
            if path.is_dir() and not path.is_symlink():
                path.rmdir()
            else:
                path.unlink()


def _write_project(
    target: Path, files: dict[str, str], keystore: Keystore, name: str, secret: str | None
) -> KeystoreEntry | None:
    """Make the folder, then the wallet (when ``secret`` is given), then the files. A
    failure anywhere removes what this made: no project without its wallet, no half
    project, and a fresh key no one has seen is not kept."""
    made: list[Path] = []
    entry = None
    try:
        _make_dirs(target, made)  # an unusable --dir fails before the slow scrypt
        if secret is not None:
            with console.status("encrypting the agent's wallet (scrypt)..."):
                entry = keystore.create(name, secret)
            made.insert(0, entry.path)  # removed last
        for relative, content in files.items():
            path = target / relative
            _make_dirs(path.parent, made)
            existed = path.exists()
            path.write_text(content, encoding="utf-8")
            if not existed:
                made.append(path)
    except BaseException:
        _undo(made)
        raise
    return entry


def new(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="project and agent name (a-z, 0-9, '-', '_')")],
    template: Annotated[Template, typer.Option(help="what the agent does")] = Template.provider,
    directory: Annotated[
        Path | None, typer.Option("--dir", help="where to create it (default: ./NAME)")
    ] = None,
    force: Annotated[bool, typer.Option(help="write into a non-empty folder")] = False,
    wallet: Annotated[
        str | None, typer.Option(help="reuse this existing wallet instead of creating one")
    ] = None,
    no_wallet: Annotated[bool, typer.Option(help="do not create a wallet now")] = False,
) -> None:
    """Create an agent project: agent.py, agentmesh.toml, tests, README, a wallet."""
    from agentmesh.wallets.keystore import Keystore

    started = time.perf_counter()
    if not re.match(PROJECT_NAME, name):
        raise AgentMeshValueError(
            f"invalid project name {name!r}: start with a lowercase letter; then lowercase "
            "letters, digits, '-' or '_' (at most 40)"
        )
    target = (directory or Path(name)).expanduser().resolve()
    if target.exists() and not target.is_dir():
        raise AgentMeshValueError(f"{target} exists and is not a folder")
    if target.exists() and any(target.iterdir()) and not force:
        raise AgentMeshValueError(
            f"{target} is not empty; choose another --dir or pass --force to write into it"
        )
    app_state = state(ctx)
    keystore = Keystore(app_state.home, scrypt_n=app_state.config.wallet.scrypt_n)
    wallet_name = wallet or name
    wallet_note = ""
    if wallet is not None:
        entry = keystore.entry(wallet)  # a clear error if it does not exist
        wallet_note = f"reusing wallet {wallet} {entry.address}"
    elif no_wallet:
        wallet_note = f"no wallet yet: create it with `agentmesh wallet new {name}`"
    elif keystore.path_for(name).exists():
        raise WalletExistsError(
            f"a wallet named {name!r} already exists; reuse it with --wallet {name}, or "
            "pass --no-wallet"
        )
    secret = None if wallet_note else _wallet_password()  # ask before writing anything
    if not wallet_note and secret is None:
        wallet_note = (
            f"no wallet yet (no {PASSWORD_ENV} and no terminal): create it with "
            f"`agentmesh wallet new {name}`"
        )
    # Everything is checked: now write.
    files = project_files(name, template, wallet_name)
    created = _write_project(target, files, keystore, name, secret)
    if created is not None:
        wallet_note = f"created wallet {name} {created.address} (encrypted, mode 0600)"
    console.print(
        f"[green]✓[/] created {template.value} agent [bold]{name}[/] in {target} "
        f"({len(files)} files, {time.perf_counter() - started:.1f}s)"
    )
    console.print(f"[green]✓[/] {wallet_note}")
    console.print("next:")
    try:
        shown = target.relative_to(Path.cwd())
    except ValueError:
        shown = target
    console.print(f"  cd {shown}")
    console.print("  pytest                   # its tests, on a throw-away devnet (needs pytest)")
    if secret is None and wallet is None:
        console.print(f"  agentmesh wallet new {name}")
    console.print(
        f"  {PASSWORD_ENV}=... agentmesh run agent.py   # on the mesh; the password "
        f"unlocks wallet {wallet_name}"
    )
