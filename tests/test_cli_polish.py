"""CLI polish: OS errors as one red line, ``mesh ping --json``, the demo's report."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentmesh.cli.app import os_error_message
from agentmesh.cli.demo import _print_report
from tests.helpers import poll_blocking

CLI = [sys.executable, "-m", "agentmesh.cli.app"]


def agentmesh(*args: str, home: Path | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMESH_")}
    if home is not None:
        env["AGENTMESH_HOME"] = str(home)
    env["COLUMNS"] = "10000"  # content checks must not depend on wrapping
    return subprocess.run(
        [*CLI, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def one_red_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


# ------------------------------------------------------------------ OS errors


def test_an_unusable_home_is_one_red_line_naming_the_path(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    home = blocker / "home"
    line = one_red_line(agentmesh("--home", str(home), "wallet", "list"))
    assert str(home) in line and "Not a directory" in line


@pytest.mark.skipif(not Path("/sys").is_dir(), reason="needs a read-only /sys")
def test_a_folder_the_os_refuses_is_one_red_line(tmp_path: Path) -> None:
    # /sys refuses new entries even to root (PermissionError, or EROFS): a real OS refusal.
    home = "/sys/agentmesh-forbidden-home"
    line = one_red_line(agentmesh("--home", home, "wallet", "list"))
    assert home in line
    assert not Path(home).exists()


def test_debug_shows_the_traceback_of_an_os_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = agentmesh("--debug", "--home", str(blocker / "home"), "wallet", "list")
    assert result.returncode == 1
    assert "Traceback (most recent call last)" in result.stderr
    assert "NotADirectoryError" in result.stderr and str(blocker / "home") in result.stderr


def test_os_error_message_names_paths_and_problem() -> None:
    missing = FileNotFoundError(2, "No such file or directory", "/x/y")
    assert os_error_message(missing) == "/x/y: No such file or directory (FileNotFoundError)"
    moved = OSError(18, "Invalid cross-device link", "/a", None, "/b")
    assert os_error_message(moved) == "/a -> /b: Invalid cross-device link (OSError)"
    assert os_error_message(OSError("disk on fire")) == "disk on fire (OSError)"


# ------------------------------------------------------------------ mesh ping --json


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Path, dict[str, Any]]]:
    """A mesh node (throw-away key, no chain) serving in its own process; its ready info."""
    home = tmp_path / "home"
    home.mkdir(mode=0o700)
    ready = tmp_path / "alpha.ready"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMESH_")}
    env["AGENTMESH_HOME"] = str(home)
    process = subprocess.Popen(
        [*CLI, "mesh", "serve", "--name", "alpha", "--ephemeral", "--no-registry"]
        + ["--ready-file", str(ready)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        poll_blocking(lambda: ready.exists() or process.poll() is not None, timeout=60)
        assert ready.exists(), process.stdout.read().decode() if process.stdout else ""
        yield home, json.loads(ready.read_text())
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0


def test_mesh_ping_prints_its_round_trips_as_json(served: tuple[Path, dict[str, Any]]) -> None:
    home, info = served
    result = agentmesh(
        "mesh", "ping", info["bootstrap"], "--count", "3", "--timeout", "10", "--json", home=home
    )
    assert result.returncode == 0, result.stdout + result.stderr
    rounds = json.loads(result.stdout)
    assert [r["seq"] for r in rounds] == [0, 1, 2]
    for r in rounds:
        assert r["name"] == "alpha" and r["address"] == info["address"]
        assert 0 < r["ms"] < 10_000
    table = agentmesh("mesh", "ping", info["bootstrap"], "--count", "1", home=home)
    assert "pong from alpha" in table.stdout


# ------------------------------------------------------------------ demo report


def test_demo_prints_the_report_it_would_give_as_json(capsys: pytest.CaptureFixture[str]) -> None:
    # The demo's slow end-to-end test runs with --json; the tables render the same data.
    report = {
        "tasks": [
            {
                "task": 1,
                "winner": "summarizer-a",
                "provider": "0x" + "a" * 40,
                "price": 50_000,
                "price_musd": "0.05 mUSD",
                "job": 1,
                "transactions": {"open": "0x" + "1" * 64, "release": "0x" + "2" * 64},
                "gas": 400_000,
                "seconds": 3.2,
                "status": "done",
                "detail": "",
                "result": '"ZeroMQ is a messaging library. ' + "It is fast. " * 20 + '"',
            }
        ],
        "settled": 1,
        "home": "/tmp/demo-home",
        "balances": [
            {"agent": "buyer", "address": "0xB", "before": 10**7, "after": 10**7 - 50_000}
            | {"change": -50_000},
            {"agent": "summarizer-a", "address": "0xA", "before": 0, "after": 49_500}
            | {"change": 49_500},
        ],
        "escrow": {"address": "0xE", "balance": 0},
        "reward_pool": {"address": "0xC", "balance": 500},
        "pools": {"WETH/mUSD": 2 * 10**11},
        "conservation": {
            "agents": 10**7 - 500,
            "escrow": 0,
            "reward_pool": 500,
            "pools": 2 * 10**11,
            "total": 10**7 + 2 * 10**11,
            "minted": 10**7 + 2 * 10**11,
            "ok": True,
        },
    }
    _print_report(report)
    out = capsys.readouterr().out
    assert (
        "conservation: agents 9.9995 mUSD + escrow 0 mUSD + reward pool 0.0005 mUSD + pools "
        "200000 mUSD = 200010 mUSD; minted 200010 mUSD" in out
    )
    assert "reward pool" in out and "0xC" in out
    assert "pool WETH/mUSD" in out
    assert "summarizer-a" in out and "400,000" in out and "open 0x11111111…" in out
    assert "-0.05 mUSD" in out and "+0.0495 mUSD" in out
    # What was bought: each summary as text (not JSON), on one line, shortened.
    (line,) = [x for x in out.splitlines() if x.startswith("  1. summarizer-a: ")]
    assert "ZeroMQ is a messaging library. It is fast." in line and '"' not in line
    assert line.endswith("…") and len(line) < 140
    assert "--home /tmp/demo-home task show" in out
