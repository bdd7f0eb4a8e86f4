"""Scaffold benchmark: `agentmesh new NAME && cd NAME && pytest`, timed per template.

    .venv/bin/python bench/scaffold_bench.py [--template provider ...] [--with-asyncio]

For each template, in a fresh temporary folder with a fresh agentmesh home (default
config, so the wallet is encrypted with the production scrypt work factor), as a user
would with agentmesh installed:

- ``agentmesh new myagent --template T`` (the console script of this interpreter's
  environment), then
- ``pytest`` in the new project, with pytest-asyncio disabled (``-p no:asyncio``): the
  generated tests need nothing but pytest.

Prints a table of seconds for each step and the total from `new` to passing tests, next
to a baseline measured in the same run: pytest on a one-line test in an empty folder
(interpreter and pytest start-up), and the ratio. Exits non-zero if a step fails.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

TEMPLATES = ("provider", "requester", "blank")
BIN = Path(sys.executable).parent
console = Console(width=None if sys.stdout.isatty() else 120)  # whole rows in a pipe


def _env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMESH_")}
    env["AGENTMESH_HOME"] = str(home)
    env["AGENTMESH_PASSWORD"] = "scaffold bench password"
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    return env


def _timed(command: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str, int]:
    start = time.perf_counter()
    done = subprocess.run(
        command,
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return time.perf_counter() - start, done.stdout + done.stderr, done.returncode


def _pytest(plugins: list[str]) -> list[str]:
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *plugins]


def baseline(plugins: list[str]) -> float:
    """pytest on a trivial test: what any `pytest` run costs before agentmesh does work."""
    with tempfile.TemporaryDirectory(prefix="scaffold-bench-") as tmp:
        root = Path(tmp)
        (root / "test_nothing.py").write_text("def test_nothing() -> None:\n    assert True\n")
        seconds, output, code = _timed(_pytest(plugins), root, _env(root / "home"))
        if code != 0:
            sys.exit(f"error: the baseline pytest run failed:\n{output[-2000:]}")
        return seconds


def scaffold(template: str, plugins: list[str]) -> tuple[float, float, str]:
    """(seconds for `agentmesh new`, seconds for the project's pytest, pytest summary)."""
    with tempfile.TemporaryDirectory(prefix="scaffold-bench-") as tmp:
        root = Path(tmp)
        env = _env(root / "home")
        new_s, output, code = _timed(
            [str(BIN / "agentmesh"), "new", "myagent", "--template", template], root, env
        )
        if code != 0:
            sys.exit(f"error: agentmesh new --template {template} failed:\n{output[-2000:]}")
        test_s, output, code = _timed(_pytest(plugins), root / "myagent", env)
        summary = output.strip().splitlines()[-1] if output.strip() else ""
        if code != 0:
            sys.exit(f"error: pytest in the {template} project failed:\n{output[-3000:]}")
        return new_s, test_s, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--template", action="append", choices=TEMPLATES, help="repeatable")
    parser.add_argument(
        "--with-asyncio",
        action="store_true",
        help="leave pytest-asyncio enabled if it is installed (default: -p no:asyncio)",
    )
    args = parser.parse_args()
    plugins = [] if args.with_asyncio else ["-p", "no:asyncio"]
    floor = baseline(plugins)
    table = Table(title="agentmesh new myagent && cd myagent && pytest " + " ".join(plugins))
    for column in ("template", "new (s)", "pytest (s)", "new -> passing (s)", "vs baseline"):
        table.add_column(column, justify="left" if column == "template" else "right")
    table.add_column("pytest says")
    for template in args.template or TEMPLATES:
        new_s, test_s, summary = scaffold(template, plugins)
        total = new_s + test_s
        table.add_row(
            template,
            f"{new_s:.1f}",
            f"{test_s:.1f}",
            f"{total:.1f}",
            f"{total / floor:.0f}x",
            summary,
        )
    table.add_row("baseline", "", f"{floor:.1f}", f"{floor:.1f}", "1x", "one trivial test")
    console.print(table)
    console.print(
        "baseline: pytest on a one-line test in an empty folder, same interpreter, same run"
    )


if __name__ == "__main__":
    main()
