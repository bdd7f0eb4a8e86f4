"""`agentmesh demo validation` end to end (real devnet, real agents on the real model),
its report, and the read-only commands that show what the validators and the jury
decided (`agentmesh validators`, `epoch show`, `dispute show`) against the same kind
of chain."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from agentmesh.wallets.deployer import JURY_SLASH_BPS
from tests.console_support import demo_in_browser


def agentmesh(home: Path, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
    """``agentmesh ARGS`` as its own process, with ``home`` as its home."""
    return subprocess.run(
        [sys.executable, "-m", "agentmesh.cli.app", *args],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "AGENTMESH_HOME": str(home)},
        stdin=subprocess.DEVNULL,
        timeout=timeout,
    )


async def test_demo_validation_rewards_the_honest_provider_and_the_jury_slashes(
    tmp_path: Path,
) -> None:
    # The console watches it: a finalized epoch with each provider's score and the chart.
    result = await demo_in_browser(
        tmp_path / "home",
        ["demo", "validation", "--json"],
        "/validators",
        [".epoch[data-epoch]", "svg.chart"],
        "validators-live",
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout)
    epochs = report["epochs"]
    assert len(epochs) == 2 and epochs[1]["epoch"] == epochs[0]["epoch"] + 1
    for epoch in epochs:
        providers = epoch["providers"]
        assert set(providers) == {"honest", "garbage", "impostor"}
        assert providers["honest"]["score"] == 10_000 and providers["honest"]["incentive"] == 1.0
        for dishonest in ("garbage", "impostor"):
            assert providers[dishonest]["score"] == 0 and providers[dishonest]["incentive"] == 0
        # Half of the pool to providers by incentive, half to validators by dividend.
        assert providers["honest"]["reward"] == epoch["pool"] // 2
        validators = epoch["validators"]
        assert sum(v["reward"] for v in validators.values()) <= epoch["pool"] - epoch["pool"] // 2
        # Every validator agreed with consensus: dividends follow stake (40:30:20).
        assert [round(v["dividend"], 3) for v in validators.values()] == [0.444, 0.333, 0.222]
        assert epoch["probe_seconds_per_provider"] > 0
    (dispute,) = report["disputes"]
    assert dispute["provider"] == "garbage" and dispute["verdict"] == "refund"
    assert dispute["slashed"] == 20 * 10**6 * JURY_SLASH_BPS // 10_000
    assert set(dispute["votes"].values()) == {"refund"} and len(dispute["jurors"]) == 3
    assert report["purchase"] == {"winner": "honest", "price": 500, "settled": True}
    conservation = report["conservation"]
    assert conservation["ok"] is True and conservation["before"] == conservation["after"]
    balances = report["balances"]
    probes = [name for name in balances if name.startswith("probe ")]
    assert len(probes) == 6 and all(balances[p]["after"] == 0 for p in probes)
    assert balances["Jury"]["after"] == balances["TaskEscrow"]["after"] == 0
    assert "validators" not in result.stdout.split("{", 1)[0]  # stdout is only the JSON


def test_the_validation_commands_refuse_without_a_chain(tmp_path: Path) -> None:
    for args in (["validators"], ["epoch", "show"], ["dispute", "show", "1"]):
        result = agentmesh(tmp_path / "home", *args, timeout=120)
        assert result.returncode == 1, (args, result.stdout, result.stderr)
        assert "no chain to use" in result.stderr
    bad = agentmesh(tmp_path / "home", "dispute", "show", "0", timeout=120)
    assert bad.returncode == 2 and "greater than or equal to 1" in bad.stderr
