"""Helpers shared by the Python and Solidity mutation runs: pick tests, run pytest, baseline."""

from __future__ import annotations

import glob
import os
import re
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

# Written at the top of every scratch copy; tools that mutate files refuse to run elsewhere.
SCRATCH_MARKER = ".mutants-scratch"
# The committed-artifacts check: a Solidity mutant recompiles the artifacts on purpose.
NEVER_RUN = ("tests/test_artifacts.py",)
_FAILED = re.compile(r"^(?:FAILED|ERROR) (\S+?)(?: - .*)?$", re.MULTILINE)


class InfraError(RuntimeError):
    """The mutation run itself failed (not a mutant): the tooling, the tree or a baseline."""


def require_scratch(root: Path) -> None:
    """Refuse to mutate anything outside a scratch copy made by the runner."""
    if not (root / SCRATCH_MARKER).is_file():
        raise InfraError(f"{root} is not a mutation scratch copy (no {SCRATCH_MARKER})")


def expand_tests(root: Path, patterns: Sequence[str]) -> list[str]:
    """Test paths (globs, ``file::node`` ids) that exist under ``root``, in the given order."""
    found: list[str] = []
    for pattern in patterns:
        path, sep, node = pattern.partition("::")
        matches = sorted(glob.glob(path, root_dir=root)) if glob.has_magic(path) else [path]
        for match in matches:
            if match in NEVER_RUN or not (root / match).is_file():
                continue
            item = f"{match}{sep}{node}"
            if item not in found:
                found.append(item)
    return found


FORKSERVER_ENV = "AGENTMESH_MUTANTS_FORKSERVER"  # socket of a running forkserver.py
_QUIET_FORK = ["-W", "ignore::pytest.PytestAssertRewriteWarning"]  # plugins preloaded


def pytest_command(python: str, args: Sequence[str], socket: str | None = None) -> list[str]:
    """The command that runs pytest with ``args``: through the fork server if one is given."""
    if not socket:
        return [python, "-m", "pytest", *args]
    server = str(Path(__file__).resolve().parent / "forkserver.py")
    return [python, server, "run", "--socket", socket, "--", *_QUIET_FORK, *args]


@dataclass(frozen=True, slots=True)
class PytestRun:
    returncode: int
    seconds: float
    output: str
    timed_out: bool = False

    @property
    def passed(self) -> bool:
        return self.returncode == 0 and not self.timed_out


def run_pytest(
    python: str,
    root: Path,
    args: Sequence[str],
    *,
    timeout: float | None = None,
    env: Mapping[str, str] | None = None,
) -> PytestRun:
    """pytest ``ARGS`` in ``root`` (forked from the server named in ``env``, if any).

    A run past ``timeout`` has its process group killed (the server then kills its child).
    """
    started = time.monotonic()
    socket = (env if env is not None else os.environ).get(FORKSERVER_ENV)
    proc = subprocess.Popen(
        pytest_command(python, args, socket),
        cwd=root,
        env=dict(env) if env is not None else None,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # anvil and friends die with the group on a timeout
    )
    try:
        out, _ = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, _ = proc.communicate()
        return PytestRun(-9, time.monotonic() - started, out, timed_out=True)
    return PytestRun(proc.returncode, time.monotonic() - started, out)


@dataclass(slots=True)
class Baseline:
    """The unmutated run of a test selection: its time, and tests deselected as failing."""

    tests: list[str]
    seconds: float = 0.0
    deselected: list[str] = field(default_factory=list)

    def args(self) -> list[str]:
        return [*self.tests, *(f"--deselect={node}" for node in self.deselected)]


def baseline(
    python: str,
    root: Path,
    tests: Sequence[str],
    pytest_args: Sequence[str],
    env: Mapping[str, str] | None = None,
) -> Baseline:
    """Run ``tests`` unmutated; tests that already fail are deselected (once), else raise.

    Mutation results only mean something against a green suite; a test that fails
    without any mutant (someone is mid-edit) would count every mutant as killed.
    """
    if not tests:
        raise InfraError("no test files matched")
    result = Baseline(list(tests))
    # No -x here: collect every failing test at once.
    base_args = [a for a in pytest_args if a not in ("-x", "--exitfirst")]
    for _attempt in range(2):
        run = run_pytest(python, root, [*base_args, *result.args()], env=env)
        result.seconds = run.seconds
        if run.passed:
            return result
        failing = [node for node in _FAILED.findall(run.output) if node not in result.deselected]
        if not failing:
            break
        result.deselected.extend(failing)
    tail = "\n".join(run.output.splitlines()[-30:])
    raise InfraError(f"the unmutated tests fail: {' '.join(result.args())}\n{tail}")
