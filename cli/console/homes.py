"""Which homes the console shows, and when what they hold last changed.

The console serves one home (``--home``) and the demo homes under it
(``<home>/demos/<name>``, kept by ``agentmesh demo`` so the console can watch a demo
run). Pages say which home they show with ``?home=KEY``: ``""`` for the home itself,
the demo's name for a demo.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from agentmesh.errors import AgentMeshValueError

DEMOS = "demos"
_KEY = re.compile(r"^[a-z0-9_-]{1,32}$")


@dataclass(frozen=True, slots=True)
class Home:
    """One agentmesh home the console shows."""

    key: str  # "" for the main home, else the demo's name
    path: Path

    @property
    def label(self) -> str:
        return f"demo {self.key}" if self.key else "home"


def demo_home(home: Path, name: str) -> Path:
    """A fresh folder for demo ``name`` under ``home``: what the last run left is
    removed first (a demo's devnet is throw-away; its records are kept until the next
    run so ``agentmesh ui`` can show them)."""
    import shutil

    if not _KEY.fullmatch(name):
        raise AgentMeshValueError(f"invalid demo name {name!r}")
    folder = home / DEMOS / name
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True, mode=0o700)
    (home / DEMOS).chmod(0o700)
    return folder


def homes(main: Path) -> list[Home]:
    """The main home, then each demo home that holds agents, by name."""
    found = [Home("", main)]
    demos = main / DEMOS
    try:
        listed = sorted(demos.iterdir()) if demos.is_dir() else []
    except OSError:  # removed while listed
        listed = []
    for path in listed:
        if _KEY.fullmatch(path.name) and (path / "agents").is_dir():
            found.append(Home(path.name, path))
    return found


def pick(main: Path, key: str | None) -> Home:
    """The home ``key`` names; with no key, the one whose agents changed last (a demo
    that is running, or the home itself)."""
    known = homes(main)
    if key is None:
        return max(known, key=lambda h: (_latest_change(h.path), h.key == ""))
    for home in known:
        if home.key == key:
            return home
    names = ", ".join(repr(h.key) for h in known)
    raise AgentMeshValueError(f"no home {key!r} here (known: {names})")


def _watched(path: Path, scope: str) -> Iterator[Path]:
    """The files whose changes a page of ``scope`` follows."""
    agents = path / "agents"
    try:
        folders = list(agents.iterdir()) if agents.is_dir() else []
    except OSError:  # removed while listed (a demo starting again)
        folders = []
    for folder in folders:
        if scope == "all":
            yield folder / "agent.pid"  # started or stopped
        if scope in ("all", "tasks"):
            yield from _db(folder, "agent.db")
            yield from _db(folder, "checkpoints.db")
        if scope in ("all", "money"):
            for name in ("channels.db", "defi.db", "validator.db"):
                yield from _db(folder, name)
    if scope in ("all", "money") and (path / "delegations").is_dir():
        yield from (path / "delegations").glob("*.json")
    if scope in ("all", "mesh") and (path / "mesh").is_dir():
        for store in (path / "mesh").glob("*.db"):
            yield from _db(store.parent, store.name)


def _db(folder: Path, name: str) -> Iterator[Path]:
    """A SQLite file and its WAL: every commit changes one of them. (Not the -shm
    index, which a reader's connection creates and changes without any write.)"""
    yield folder / name
    yield folder / f"{name}-wal"


def _latest_change(path: Path) -> int:
    stamps = [0]
    for file in _watched(path, "all"):
        try:
            stamps.append(file.stat().st_mtime_ns)
        except OSError:  # removed while listed
            continue
    return max(stamps)


def version(main: Path, key: str | None, scope: str) -> tuple[Home, str]:
    """The home a page shows (``key`` as ``pick``) and the version of what it shows:
    it changes when a file the page reads is written or a home appears or goes."""
    home = pick(main, key)
    known = ",".join(h.key for h in homes(main))
    return home, f"{home.key}:{known}:{fingerprint(home.path, scope)}"


def fingerprint(path: Path, scope: str) -> str:
    """Changes whenever a file a page of ``scope`` shows is written (SQLite's WAL files
    change on every commit)."""
    parts = []
    for file in sorted(_watched(path, scope)):
        try:
            st = file.stat()
        except OSError:
            continue
        parts.append(f"{file.relative_to(path)}:{st.st_mtime_ns}:{st.st_size}")
    return str(hash("|".join(parts)))


@contextlib.contextmanager
def demo_folder(home: Path, name: str) -> Iterator[Path]:
    """``demo_home`` as a ``with`` block (the folder stays after it, for the console)."""
    yield demo_home(home, name)
