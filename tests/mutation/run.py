"""``make mutants``: mutation testing of the money and security paths, with a score per target.

Nothing in the tree being tested is ever mutated. The runner

1. copies the git-tracked and untracked-but-not-ignored files of ``--root`` (default:
   this checkout, uncommitted edits included) into ``.mutants/<label>/work``, with this
   runner's own ``tests/mutation`` laid over it, and gives the copy a venv that reuses
   the main ``.venv``'s site-packages plus its own editable install (so
   ``agentmesh.agents`` & co. resolve to the copy: setuptools ``package-dir`` mapping);
2. per Python target (``targets.toml``): runs its tests unmutated (tests that already
   fail are deselected and reported), then ``cosmic-ray init``, the scope filter
   (``tests/mutation/scope.py``: listed functions only, lean operator set) and
   ``cosmic-ray exec`` with that target's own test command and a timeout per mutant;
   test runs are forked from a server that has the third-party imports done
   (``tests/mutation/forkserver.py``), which saves ~3 s per mutant;
3. plants the listed Solidity mutants (``tests/mutation/solidity.py``);
4. prints a table per target and every survivor (file:line, operator, diff, and the
   note from ``notes.toml`` that explains it), and writes ``.mutants/<label>/report.json``
   (after each target, so an interrupted run keeps what it finished).

``--resume`` continues an interrupted run on the same copy (finished sessions are
reused, a mutant left applied is put back from ``.mutants/<label>/pristine``);
``--report`` prints the last report again with the current notes.

Exit status: 0 when the run completed (survivors are findings, not failures), 2 when
the tooling or a baseline failed.
"""

from __future__ import annotations

import argparse
import fcntl
import io
import json
import os
import shlex
import shutil
import sqlite3
import subprocess
import sys
import sysconfig
import time
import tomllib
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cosmic_ray.work_db import WorkDB, use_db  # type: ignore[import-untyped]
from cosmic_ray.work_item import TestOutcome, WorkerOutcome  # type: ignore[import-untyped]
from rich.console import Console
from rich.table import Table

from tests.mutation import scope as scope_filter
from tests.mutation.common import (
    FORKSERVER_ENV,
    SCRATCH_MARKER,
    Baseline,
    InfraError,
    baseline,
    expand_tests,
    pytest_command,
)

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
# Wide enough for the score table also when piped to a file (rich would take 80).
console = Console(highlight=False, width=None if sys.stdout.isatty() else 120)


# ---------------------------------------------------------------------------- config


@dataclass(frozen=True, slots=True)
class Target:
    name: str
    what: str
    scope: dict[str, list[str]]  # module path -> scope entries
    tests: list[str]
    timeout_slack_s: float | None = None  # overrides [settings] for this target


@dataclass(frozen=True, slots=True)
class Note:
    file: str
    match: str
    kind: str  # equivalent | gap
    why: str
    operator: str = ""


@dataclass(frozen=True, slots=True)
class Config:
    pytest_args: list[str]
    timeout_factor: float
    timeout_slack_s: float
    targets: list[Target]
    solidity: dict[str, list[str]]
    notes: list[Note]


def _read_targets(path: Path) -> dict[str, Any]:
    """A target file; with ``extends``, its targets replace the base file's of the same name."""
    data = tomllib.loads(path.read_text())
    if "extends" not in data:
        return data
    base = _read_targets(path.parent / str(data.pop("extends")))
    own = {t["name"]: t for t in data.pop("target", [])}
    merged = [own.pop(t["name"], t) for t in base.get("target", [])] + list(own.values())
    return {**base, **data, "target": merged}


def load_config(path: Path, notes_path: Path) -> Config:
    data = _read_targets(path)
    settings = data.get("settings", {})
    notes = tomllib.loads(notes_path.read_text()).get("note", []) if notes_path.is_file() else []
    return Config(
        pytest_args=list(settings.get("pytest_args", ["-x", "-q", "-p", "no:cacheprovider"])),
        timeout_factor=float(settings.get("timeout_factor", 2.0)),
        timeout_slack_s=float(settings.get("timeout_slack_s", 20.0)),
        targets=[
            Target(
                t["name"],
                t.get("what", ""),
                dict(t["scope"]),
                list(t["tests"]),
                t.get("timeout_slack_s"),
            )
            for t in data.get("target", [])
        ],
        solidity={k: list(v) for k, v in data.get("solidity", {}).items()},
        notes=[Note(**n) for n in notes],
    )


# ---------------------------------------------------------------------------- scratch copy


def snapshot(root: Path, dest: Path) -> int:
    """Copy ``root``'s tracked and untracked-not-ignored files to ``dest``; returns the count.

    The copy is taken twice: ``pristine/`` stays untouched, so an interrupted run
    (a mutant still applied) can be repaired before ``--resume``.
    """
    listing = subprocess.run(
        ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        capture_output=True,
        check=True,
    ).stdout.decode()
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    copied = 0
    for rel in sorted(set(filter(None, listing.split("\0")))):
        src, out = root / rel, dest / rel
        if src.is_dir() and not src.is_symlink():  # a submodule: not part of the package
            continue
        if not src.exists() and not src.is_symlink():  # deleted, not yet committed
            continue
        out.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            out.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, out)
        copied += 1
    # This runner's own tooling, also when measuring an older tree.
    mutation = dest / "tests" / "mutation"
    mutation.mkdir(parents=True, exist_ok=True)
    for item in HERE.iterdir():
        if item.is_file() and item.suffix in (".py", ".toml", ".md"):
            shutil.copy2(item, mutation / item.name)
    if (REPO / ".tools").is_dir():
        (dest / ".tools").symlink_to(REPO / ".tools")
    (dest / SCRATCH_MARKER).write_text("agentmesh mutation scratch copy: files here get mutated\n")
    pristine = dest.parent / "pristine"
    if pristine.exists():
        shutil.rmtree(pristine)
    shutil.copytree(dest, pristine, symlinks=True)
    return copied


def repair(dest: Path) -> list[str]:
    """Put back every file of the copy that differs from ``pristine/`` (a left-over mutant)."""
    pristine = dest.parent / "pristine"
    if not pristine.is_dir():
        raise InfraError(f"nothing to resume: {pristine} is missing")
    repaired = []
    for src in pristine.rglob("*"):
        if src.is_symlink() or not src.is_file():
            continue
        rel = src.relative_to(pristine)
        if rel.parts[:2] == ("tests", "mutation"):  # the tooling: laid over again anyway
            continue
        out = dest / rel
        if not out.is_file() or out.read_bytes() != src.read_bytes():
            shutil.copy2(src, out)
            repaired.append(str(rel))
    return repaired


def make_venv(dest: Path) -> str:
    """A venv for the copy: the main site-packages via a .pth, plus an editable install."""
    venv = dest / ".venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    # A plain path line: the main site-packages' own .pth files (the main checkout's
    # editable finder among them) are not run, so nothing maps agentmesh to /work/main.
    Path(purelib, "_agentmesh_main_venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    install = subprocess.run(
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check"]
        + ["--no-deps", "--no-build-isolation", "--no-index", "-e", str(dest)],
        capture_output=True,
        text=True,
        check=False,
    )
    if install.returncode != 0:
        raise InfraError(f"editable install in the scratch copy failed:\n{install.stderr[-3000:]}")
    probe = subprocess.run(
        [
            str(python),
            "-c",
            "import agentmesh, agentmesh.agents as a, agentmesh.wallets as w, "
            "cosmic_ray; print(agentmesh.__file__); print(a.__file__); print(w.__file__)",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
    )
    paths = probe.stdout.split()
    if probe.returncode != 0 or len(paths) != 3 or not all(p.startswith(str(dest)) for p in paths):
        raise InfraError(
            f"the scratch venv does not import the copy:\n{probe.stdout}{probe.stderr}"
        )
    console.print(f"  agentmesh.agents -> {paths[1]}")
    return str(python)


def scratch_env(dest: Path, socket: str | None = None) -> dict[str, str]:
    env = dict(os.environ)
    env["VIRTUAL_ENV"] = str(dest / ".venv")
    env["PATH"] = f"{dest / '.venv' / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["AGENTMESH_TOOLS"] = str(REPO / ".tools")
    env.pop("PYTHONPATH", None)
    env.pop(FORKSERVER_ENV, None)
    if socket:
        env[FORKSERVER_ENV] = socket
    return env


class ForkServer:
    """``forkserver.py serve`` for the scratch copy, stopped on exit."""

    def __init__(self, python: str, dest: Path) -> None:
        self.socket = f"/tmp/agentmesh-mutants-{os.getpid()}.sock"
        self.proc = subprocess.Popen(
            [python, str(dest / "tests" / "mutation" / "forkserver.py"), "serve"]
            + ["--socket", self.socket],
            cwd=dest,
            env=scratch_env(dest),
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # "ready", or EOF when it failed
        if "ready" not in line:
            self.close()
            raise InfraError("the pytest fork server did not start")

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        Path(self.socket).unlink(missing_ok=True)


# ---------------------------------------------------------------------------- Python targets


@dataclass(slots=True)
class Mutant:
    file: str
    line: int
    operator: str
    outcome: str  # killed, timeout, survived, error
    diff: str = ""
    note_kind: str = ""
    note: str = ""


@dataclass(slots=True)
class TargetResult:
    name: str
    what: str
    tests: list[str] = field(default_factory=list)
    deselected: list[str] = field(default_factory=list)
    baseline_s: float = 0.0
    timeout_s: float = 0.0
    seconds: float = 0.0
    mutants: list[Mutant] = field(default_factory=list)
    error: str = ""

    def count(self, outcome: str) -> int:
        return sum(m.outcome == outcome for m in self.mutants)


def _changed_lines(diff: str) -> list[str]:
    return [
        line
        for line in diff.splitlines()
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]


def explain(mutant: Mutant, notes: Sequence[Note]) -> None:
    changed = "\n".join(_changed_lines(mutant.diff))
    for note in notes:
        if (
            note.file == mutant.file
            and note.match in changed
            and (not note.operator or note.operator in mutant.operator)
        ):
            mutant.note_kind, mutant.note = note.kind, note.why
            return


def _cosmic(python: str, dest: Path, env: dict[str, str], *args: str) -> None:
    run = subprocess.run(
        [python, "-m", "cosmic_ray.cli", *args],
        cwd=dest,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if run.returncode != 0:
        raise InfraError(f"cosmic-ray {args[0]} failed:\n{run.stdout[-2000:]}{run.stderr[-2000:]}")


def _done(session: Path) -> tuple[int, int, int]:
    """(results, skipped, survived) so far, read straight from the session database."""
    try:
        with sqlite3.connect(f"file:{session}?mode=ro", uri=True, timeout=1) as db:
            rows = db.execute(
                "SELECT worker_outcome, test_outcome, COUNT(*) FROM work_results GROUP BY 1, 2"
            ).fetchall()
    except sqlite3.Error:
        return (0, 0, 0)
    total = sum(n for _, _, n in rows)
    skipped = sum(n for w, _, n in rows if str(w).lower() == "skipped")
    survived = sum(n for _, t, n in rows if str(t).lower() == "survived")
    return total, skipped, survived


def _baseline(
    python: str, dest: Path, tests: list[str], cfg: Config, socket: str | None
) -> tuple[Baseline, str | None]:
    """The unmutated run, through the fork server when it works; (baseline, socket used)."""
    try:
        return baseline(python, dest, tests, cfg.pytest_args, scratch_env(dest, socket)), socket
    except InfraError:
        if not socket:
            raise
    # Green without the fork server only? Then run this target's mutants without it.
    base = baseline(python, dest, tests, cfg.pytest_args, scratch_env(dest))
    console.print("  [yellow]fails only through the fork server: running it directly[/]")
    return base, None


def run_target(
    target: Target,
    cfg: Config,
    python: str,
    dest: Path,
    sessions: Path,
    list_only: bool,
    socket: str | None = None,
    resume: bool = False,
) -> TargetResult:
    started = time.monotonic()
    result = TargetResult(target.name, target.what)
    config = sessions / f"{target.name}.toml"
    session = sessions / f"{target.name}.sqlite"
    sidecar = sessions / f"{target.name}.json"
    if resume and sidecar.is_file() and session.is_file() and config.is_file():
        saved = json.loads(sidecar.read_text())
        result.tests, result.deselected = saved["tests"], saved["deselected"]
        result.baseline_s, result.timeout_s = saved["baseline_s"], saved["timeout_s"]
        kept, prior_s = int(saved["kept"]), float(saved.get("seconds", 0.0))
        _write_config(config, target, result, cfg, python, socket)
        console.print(f"  {target.name}: resuming the session ({kept} mutants in scope)")
    else:
        kept, prior_s = (
            _prepare(target, cfg, python, dest, sessions, result, list_only, socket),
            0.0,
        )
    if list_only:
        _list_mutants(session, dest)
        return result
    _execute(target.name, python, dest, config, session, kept, started)
    result.mutants = _collect(session, cfg.notes)
    result.seconds = round(prior_s + time.monotonic() - started, 1)
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "seconds": result.seconds}))
    return result


def _write_config(
    config: Path,
    target: Target,
    result: TargetResult,
    cfg: Config,
    python: str,
    socket: str | None,
) -> None:
    """The cosmic-ray config of a target (rewritten on resume: the server socket changes)."""
    test_args = [*result.tests, *(f"--deselect={node}" for node in result.deselected)]
    command = shlex.join(pytest_command(python, [*cfg.pytest_args, *test_args], socket))
    config.write_text(
        "[cosmic-ray]\n"
        f"module-path = {json.dumps(sorted(target.scope))}\n"
        f"timeout = {result.timeout_s}\n"
        "excluded-modules = []\n"
        f"test-command = {json.dumps(command)}\n\n"
        '[cosmic-ray.distributor]\nname = "local"\n'
    )


def _prepare(
    target: Target,
    cfg: Config,
    python: str,
    dest: Path,
    sessions: Path,
    result: TargetResult,
    list_only: bool,
    socket: str | None,
) -> int:
    """Baseline, cosmic-ray config and init, scope filter; returns the mutants in scope."""
    env = scratch_env(dest)
    result.tests = expand_tests(dest, target.tests)
    if not list_only:
        base, socket = _baseline(python, dest, result.tests, cfg, socket)
        result.deselected, result.baseline_s = base.deselected, round(base.seconds, 1)
    slack = cfg.timeout_slack_s if target.timeout_slack_s is None else target.timeout_slack_s
    result.timeout_s = round(result.baseline_s * cfg.timeout_factor + slack, 1)
    config = sessions / f"{target.name}.toml"
    session = sessions / f"{target.name}.sqlite"
    sidecar = sessions / f"{target.name}.json"
    session.unlink(missing_ok=True)
    sidecar.unlink(missing_ok=True)
    _write_config(config, target, result, cfg, python, socket)
    _cosmic(python, dest, env, "init", str(config), str(session))
    counts = scope_filter.apply(session, dest, target.scope)
    console.print(
        f"  {target.name}: {counts.kept} mutants in scope "
        f"({counts.skipped_scope} out of scope, {counts.skipped_operator} other operators); "
        f"baseline {result.baseline_s}s, timeout {result.timeout_s}s per mutant"
    )
    if not list_only:
        sidecar.write_text(
            json.dumps(
                {
                    "tests": result.tests,
                    "deselected": result.deselected,
                    "baseline_s": result.baseline_s,
                    "timeout_s": result.timeout_s,
                    "kept": counts.kept,
                }
            )
        )
    return int(counts.kept)


def _execute(
    name: str, python: str, dest: Path, config: Path, session: Path, kept: int, started: float
) -> None:
    """``cosmic-ray exec`` (it runs only what is still pending), with progress lines."""
    env = scratch_env(dest)
    proc = subprocess.Popen(
        [python, "-m", "cosmic_ray.cli", "exec", str(config), str(session)],
        cwd=dest,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    while True:
        try:
            out, _ = proc.communicate(timeout=30)
            break
        except subprocess.TimeoutExpired:
            done, skipped, survived = _done(session)
            console.print(
                f"    {name}: {done - skipped}/{kept} done, {survived} survived, "
                f"{time.monotonic() - started:.0f}s"
            )
    if proc.returncode != 0:
        raise InfraError(f"cosmic-ray exec failed:\n{out[-3000:]}")


def _collect(session: Path, notes: Sequence[Note]) -> list[Mutant]:
    """Every executed mutant of a finished session, with its note."""
    mutants = []
    with use_db(str(session), WorkDB.Mode.open) as db:
        completed = db.completed_work_items
    for item, outcome in completed:
        if outcome.worker_outcome == WorkerOutcome.SKIPPED:
            continue
        spec = item.mutations[0]
        if outcome.worker_outcome != WorkerOutcome.NORMAL:
            kind = "error"
        elif outcome.test_outcome == TestOutcome.SURVIVED:
            kind = "survived"
        elif outcome.test_outcome == TestOutcome.KILLED:
            kind = "timeout" if outcome.output == "timeout" else "killed"
        else:
            kind = "error"
        mutant = Mutant(
            Path(spec.module_path).as_posix(),
            int(spec.start_pos[0]),
            str(spec.operator_name).removeprefix("core/"),
            kind,
            outcome.diff or "",
        )
        explain(mutant, notes)
        mutants.append(mutant)
    return sorted(mutants, key=lambda m: (m.file, m.line, m.operator))


def _list_mutants(session: Path, dest: Path) -> None:
    with use_db(str(session), WorkDB.Mode.open) as db:
        done = {job for job, _ in db.results}
        items = [i for i in db.work_items if i.job_id not in done]
    for item in sorted(
        items, key=lambda i: (str(i.mutations[0].module_path), i.mutations[0].start_pos)
    ):
        spec = item.mutations[0]
        line = (dest / spec.module_path).read_text().splitlines()[spec.start_pos[0] - 1].strip()
        op = str(spec.operator_name).removeprefix("core/")
        console.print(
            f"    {spec.module_path}:{spec.start_pos[0]} {op}  {line}", markup=False, soft_wrap=True
        )


# ---------------------------------------------------------------------------- Solidity


def _solidity_notes(report: dict[str, Any], notes: Sequence[Note]) -> None:
    for m in report.get("mutants", []):
        # A Solidity note names the contract file and the mutant id (match = "E18").
        for note in notes:
            if note.file == f"{m['contract']}.sol" and note.match == m["id"]:
                m.update(note_kind=note.kind, note=note.why, equivalent=note.kind == "equivalent")


def run_solidity(
    cfg: Config,
    python: str,
    dest: Path,
    sessions: Path,
    only: Sequence[str],
    socket: str | None = None,
) -> dict[str, Any]:
    config = sessions / "solidity.json"
    out = sessions / "solidity-result.json"
    out.unlink(missing_ok=True)
    config.write_text(
        json.dumps(
            {
                "pytest_args": cfg.pytest_args,
                "timeout_factor": cfg.timeout_factor,
                "timeout_slack_s": cfg.timeout_slack_s,
                "tests": cfg.solidity,
            }
        )
    )
    run = subprocess.run(
        [python, "-m", "tests.mutation.solidity", "--config", str(config), "--out", str(out)]
        + (["--only", *only] if only else []),
        cwd=dest,
        env=scratch_env(dest, socket),
        check=False,
    )
    report: dict[str, Any] = json.loads(out.read_text()) if out.is_file() else {}
    if run.returncode != 0:
        report.setdefault("error", f"solidity mutants: exit status {run.returncode}")
    _solidity_notes(report, cfg.notes)
    return report


# ---------------------------------------------------------------------------- report


def _score(killed: int, survived: int) -> str:
    total = killed + survived
    return f"{100 * killed / total:.1f}" if total else "-"


def _summary(results: list[TargetResult], solidity: dict[str, Any] | None) -> Table:
    table = Table(title="Mutation score per target (killed includes timeouts)")
    for column in ("target", "mutants", "killed", "timeouts", "survived", "errors", "score %"):
        table.add_column(column, justify="left" if column == "target" else "right")
    table.add_column("w/o equiv. %", justify="right")
    table.add_column("time s", justify="right")
    for r in results:
        if r.error:
            table.add_row(r.name, "-", "-", "-", "-", "-", "[red]failed[/]", "-", str(r.seconds))
            continue
        killed, timeouts, survived = r.count("killed"), r.count("timeout"), r.count("survived")
        equivalent = sum(m.outcome == "survived" and m.note_kind == "equivalent" for m in r.mutants)
        table.add_row(
            r.name,
            str(killed + timeouts + survived),
            str(killed),
            str(timeouts),
            str(survived),
            str(r.count("error")),
            _score(killed + timeouts, survived),
            _score(killed + timeouts, survived - equivalent),
            str(r.seconds),
        )
    by_contract: dict[str, list[dict[str, Any]]] = {}
    for m in (solidity or {}).get("mutants", []):
        by_contract.setdefault(m["contract"], []).append(m)
    for contract, ms in by_contract.items():
        outcomes = [m["outcome"] for m in ms]
        killed, timeouts = outcomes.count("killed"), outcomes.count("timeout")
        survived = outcomes.count("survived")
        equivalent = sum(m["outcome"] == "survived" and m.get("equivalent", False) for m in ms)
        table.add_row(
            f"{contract}.sol",
            str(killed + timeouts + survived),
            str(killed),
            str(timeouts),
            str(survived),
            str(outcomes.count("stillborn")),
            _score(killed + timeouts, survived),
            _score(killed + timeouts, survived - equivalent),
            f"{sum(m['seconds'] for m in ms):.1f}",
        )
    return table


def _print_diff(lines: Sequence[str]) -> None:
    for line in lines:
        console.print(f"    {line}", style="red" if line.startswith("-") else "green", markup=False)


def _print_survivors(r: TargetResult) -> None:
    if r.error:
        console.print(f"{r.name}: {r.error}", style="red", markup=False)
    if r.deselected:
        console.print(
            f"{r.name}: failing before mutation, deselected: {' '.join(r.deselected)}",
            style="yellow",
            markup=False,
        )
    survivors = [m for m in r.mutants if m.outcome in ("survived", "error")]
    if not survivors:
        return
    console.rule(f"{r.name}: {len(survivors)} survivors / errors")
    for m in survivors:
        tag = f"[{m.note_kind}]" if m.note_kind else "[unexplained]"
        console.print(
            f"{m.file}:{m.line} {m.operator} ({m.outcome}) {tag} {m.note}",
            markup=False,
            style="bold",
        )
        _print_diff(_changed_lines(m.diff))


def _print_solidity(solidity: dict[str, Any]) -> None:
    if solidity.get("error"):
        console.print(f"solidity: {solidity['error']}", style="red", markup=False)
    for contract, info in solidity.get("contracts", {}).items():
        if info.get("deselected"):
            console.print(
                f"{contract}: deselected failing tests: {' '.join(info['deselected'])}",
                style="yellow",
                markup=False,
            )
    living = [m for m in solidity.get("mutants", []) if m["outcome"] != "killed"]
    if living:
        console.rule(f"Solidity: {len(living)} not killed")
    for m in living:
        tag = f"[{m['note_kind']}] {m['note']}" if m.get("note_kind") else "[unexplained]"
        console.print(
            f"{m['id']} {m['contract']} ({m['outcome']}) {m['what']}\n    {tag}",
            markup=False,
            style="bold",
        )
        _print_diff(m["diff"].splitlines())


def print_report(results: list[TargetResult], solidity: dict[str, Any] | None) -> None:
    console.print(_summary(results, solidity))
    for r in results:
        _print_survivors(r)
    if solidity:
        _print_solidity(solidity)


def reprint(path: Path, notes: Sequence[Note]) -> None:
    """Print a saved report again, with the current notes applied (and saved)."""
    report = json.loads(path.read_text())
    results = []
    for data in report["targets"]:
        mutants = [Mutant(**m) for m in data.pop("mutants")]
        result = TargetResult(**data, mutants=mutants)
        for m in result.mutants:
            m.note_kind = m.note = ""
            explain(m, notes)
        results.append(result)
    if report.get("solidity"):
        _solidity_notes(report["solidity"], notes)
    report["targets"] = [asdict(r) for r in results]
    path.write_text(json.dumps(report, indent=1))
    console.rule(
        f"report '{report['label']}': {report['tree']}, {report['elapsed_s'] / 60:.1f} min"
    )
    print_report(results, report.get("solidity"))


def _git_describe(root: Path) -> str:
    head = subprocess.run(
        ["git", "-C", str(root), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=normal"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    return f"{head}{' + uncommitted changes' if dirty else ''}"


# ---------------------------------------------------------------------------- main


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--root", type=Path, default=REPO, help="tree to measure (default: here)")
    parser.add_argument("--config", type=Path, default=HERE / "targets.toml", help="target list")
    parser.add_argument("--notes", type=Path, default=HERE / "notes.toml", help="survivor notes")
    parser.add_argument("--label", help="run folder under .mutants/ (default: the root's name)")
    parser.add_argument(
        "--only",
        nargs="*",
        default=[],
        help="target names; 'solidity', a contract or mutant ids (E01, W03) for Solidity",
    )
    parser.add_argument("--no-solidity", action="store_true", help="skip the Solidity mutants")
    parser.add_argument("--list", action="store_true", help="list the Python mutants, run nothing")
    parser.add_argument(
        "--no-fork", action="store_true", help="start a fresh interpreter per test run"
    )
    parser.add_argument(
        "--resume",
        action="store_true",
        help="continue the last run of this label: same copy, finished sessions reused",
    )
    parser.add_argument(
        "--report", action="store_true", help="print the last report again (current notes)"
    )
    return parser


def _prepare_copy(root: Path, dest: Path, resume: bool) -> str:
    """The scratch copy and its venv: fresh, or (``resume``) the last one, repaired."""
    python = dest / ".venv" / "bin" / "python"
    if resume and (dest / SCRATCH_MARKER).is_file() and python.is_file():
        for rel in repair(dest):
            console.print(f"  restored {rel} (a mutant was left applied)", markup=False)
        for item in HERE.iterdir():  # the tooling may have been fixed since
            if item.is_file() and item.suffix in (".py", ".toml", ".md"):
                shutil.copy2(item, dest / "tests" / "mutation" / item.name)
        console.print(f"resuming in {dest}")
        return str(python)
    files = snapshot(root, dest)
    console.print(f"copied {files} files to {dest}")
    sessions = dest.parent / "sessions"
    if sessions.is_dir():  # results of an older copy must never be resumed against this one
        shutil.rmtree(sessions)
    return make_venv(dest)


def _run_one(
    target: Target,
    cfg: Config,
    python: str,
    dest: Path,
    args: argparse.Namespace,
    socket: str | None,
    report: dict[str, Any],
) -> bool:
    """Run one Python target into ``report`` (saved at once: kept if the run dies later)."""
    console.rule(f"{target.name}: {target.what}")
    sessions = dest.parent / "sessions"
    ok = True
    try:
        result = run_target(target, cfg, python, dest, sessions, args.list, socket, args.resume)
    except (InfraError, scope_filter.ScopeError, OSError) as exc:
        ok = False
        result = TargetResult(target.name, target.what, error=str(exc))
        console.print(f"{target.name}: {exc}", style="red", markup=False)
    if not args.list:
        report["targets"] = [t for t in report["targets"] if t["name"] != target.name]
        report["targets"].append(asdict(result))
        (dest.parent / "report.json").write_text(json.dumps(report, indent=1))
    return ok


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(line_buffering=True)  # progress shows up in a piped log too
    started = time.monotonic()
    root = args.root.resolve()
    label = args.label or ("current" if root == REPO else root.name)
    workdir = REPO / ".mutants" / label
    dest, sessions = workdir / "work", workdir / "sessions"
    report_path = workdir / "report.json"
    cfg = load_config(args.config, args.notes)
    if args.report:
        reprint(report_path, cfg.notes)
        return 0
    wanted = set(args.only)
    targets = [t for t in cfg.targets if not wanted or t.name in wanted]
    sol_only = [o for o in args.only if o not in {t.name for t in cfg.targets} and o != "solidity"]
    do_solidity = (
        not args.no_solidity
        and not args.list
        and (not wanted or "solidity" in wanted or bool(sol_only))
    )
    # One run per label at a time: a second one waits instead of sharing the copy.
    workdir.mkdir(parents=True, exist_ok=True)
    lock = (workdir / ".lock").open("w")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        console.print(f"another mutation run of '{label}' is going on: waiting for it")
        fcntl.flock(lock, fcntl.LOCK_EX)
    console.rule(f"mutation run '{label}': {root} ({_git_describe(root)})")
    try:
        python = _prepare_copy(root, dest, args.resume)
        sessions.mkdir(parents=True, exist_ok=True)
    except (InfraError, subprocess.CalledProcessError, OSError) as exc:
        console.print(f"error: could not prepare the scratch copy: {exc}", style="red")
        return 2

    previous: dict[str, Any] = {}
    if args.resume and report_path.is_file():
        previous = json.loads(report_path.read_text())
    report: dict[str, Any] = {
        "label": label,
        "root": str(root),
        "tree": previous.get("tree") or _git_describe(root),
        "config": str(args.config),
        "operators": sorted(scope_filter.KEEP_OPERATORS),
        "targets": [t for t in previous.get("targets", []) if t["name"] not in wanted],
        "solidity": None if do_solidity else previous.get("solidity"),
        "complete": False,
    }
    failed = False
    server: ForkServer | None = None
    try:
        if not args.list and not args.no_fork:
            try:
                server = ForkServer(python, dest)
            except InfraError as exc:
                console.print(f"{exc}: every test run starts its own interpreter", style="yellow")
        socket = server.socket if server else None
        for target in targets:
            failed = not _run_one(target, cfg, python, dest, args, socket, report) or failed
        if do_solidity:
            console.rule("Solidity mutants")
            report["solidity"] = run_solidity(cfg, python, dest, sessions, sol_only, socket)
            failed = failed or bool(report["solidity"].get("error"))
    finally:
        if server:
            server.close()
    if args.list:
        return 2 if failed else 0

    elapsed = time.monotonic() - started
    report["elapsed_s"] = round(elapsed + float(previous.get("elapsed_s", 0.0)), 1)
    report["complete"] = True
    order = {t.name: i for i, t in enumerate(cfg.targets)}
    report["targets"].sort(key=lambda t: order.get(t["name"], len(order)))
    report_path.write_text(json.dumps(report, indent=1))
    reprint(report_path, cfg.notes)
    console.print(f"report: {report_path}")
    console.print(f"elapsed: {elapsed / 60:.1f} min ({elapsed:.0f}s)")
    return 2 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
