"""The distribution: one top-level package, contract artifacts inside, CLI entry point."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from agentmesh.contracts import CONTRACT_NAMES, load_artifact

GENERIC_NAMES = ("agents", "cli", "wallets", "protocols", "contracts")


def _source_copy(repo_root: Path, dest: Path) -> Path:
    """A copy of the tracked files, as a fresh clone would have them."""
    listed = (
        subprocess.run(["git", "ls-files", "-z"], cwd=repo_root, capture_output=True, check=True)
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(repo_root / name, target)
    return dest


@pytest.fixture(scope="module")
def wheel(repo_root: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = _source_copy(repo_root, tmp_path_factory.mktemp("src"))
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "-w",
            str(out),
            str(src),
        ],
        check=True,
    )
    wheels = list(out.glob("agentmesh-*.whl"))
    assert len(wheels) == 1, wheels
    return wheels[0]


@pytest.mark.slow
def test_wheel_has_only_agentmesh_at_top_level(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top_level == {"agentmesh"}
    for sub in ("agents", "cli", "wallets", "protocols", "contracts", "chain"):
        assert f"agentmesh/{sub}/__init__.py" in names


@pytest.mark.slow
def test_wheel_ships_contract_artifacts_and_cli(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    names = archive.namelist()
    for contract in CONTRACT_NAMES:
        assert f"agentmesh/contracts/build/{contract}.json" in names
        assert f"agentmesh/contracts/src/{contract}.sol" in names
    entry_points = next(n for n in names if n.endswith(".dist-info/entry_points.txt"))
    assert "agentmesh = agentmesh.cli.app:main" in archive.read(entry_points).decode()


def test_generic_names_are_not_importable_top_level(tmp_path: Path) -> None:
    # Run from an empty folder so the checkout itself is not on sys.path.
    code = (
        "import importlib.util, agentmesh.agents, agentmesh.cli, agentmesh.wallets, "
        "agentmesh.protocols, agentmesh.contracts\n"
        f"leaked = [n for n in {GENERIC_NAMES!r} if importlib.util.find_spec(n)]\n"
        "print(','.join(leaked))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip() == ""


def test_artifacts_load_with_abi_and_bytecode() -> None:
    for contract in CONTRACT_NAMES:
        artifact = load_artifact(contract)
        assert artifact.bytecode.startswith("0x") and len(artifact.bytecode) > 100
        assert any(
            item.get("type") == "constructor" or item.get("type") == "function"
            for item in artifact.abi
        )
    with pytest.raises(KeyError, match="unknown contract"):
        load_artifact("NoSuchContract")


def test_cli_help_does_not_import_web3(tmp_path: Path) -> None:
    code = (
        "import sys\nfrom agentmesh.cli.app import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        "print('web3' in sys.modules, 'llama_cpp' in sys.modules)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, check=True
    )
    assert result.stdout.strip().splitlines()[-1] == "False False"
