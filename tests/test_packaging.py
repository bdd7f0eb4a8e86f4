"""The distribution: one top-level package, contract artifacts inside, CLI entry point."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
import zipfile
from pathlib import Path

import pytest

from agentmesh.contracts import CONTRACT_NAMES, load_artifact

GENERIC_NAMES = ("agents", "cli", "wallets", "protocols", "contracts")


def _source_files(repo_root: Path) -> list[str]:
    """The files a fresh clone would have once the working tree is committed: tracked
    and new (not ignored) files, without deleted ones."""
    listed = (
        subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=repo_root,
            capture_output=True,
            check=True,
        )
        .stdout.decode()
        .split("\0")
    )
    return [name for name in listed if name and (repo_root / name).is_file()]


def _source_copy(repo_root: Path, dest: Path) -> Path:
    """A copy of the source files, as a fresh clone would have them."""
    for name in _source_files(repo_root):
        source = repo_root / name
        target = dest / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, target)
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


@pytest.mark.slow
def test_wheel_has_every_module_and_py_typed(wheel: Path, repo_root: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "agentmesh/py.typed" in names
    package_dir: dict[str, str] = tomllib.loads((repo_root / "pyproject.toml").read_text())["tool"][
        "setuptools"
    ]["package-dir"]
    missing = []
    for name in _source_files(repo_root):
        # The longest package-dir folder holding the file gives its place in the wheel.
        owners = [
            (package, folder)
            for package, folder in package_dir.items()
            if name.startswith(folder + "/")
        ]
        if not name.endswith(".py") or not owners:
            continue
        package, folder = max(owners, key=lambda owner: len(owner[1]))
        in_wheel = package.replace(".", "/") + name.removeprefix(folder)
        if in_wheel not in names:
            missing.append(name if in_wheel == name else f"{name} (as {in_wheel})")
    lacking = ", ".join(missing)
    assert not missing, f"the wheel lacks {lacking}: list their packages in pyproject.toml"


def _python_in(venv: Path) -> Path:
    return venv / "bin" / "python"


def _env_without_checkout() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}


@pytest.fixture(scope="module")
def wheel_venv(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with only the built wheel installed (``--no-deps``).

    The dependencies come from this venv's site-packages, added by a ``.pth`` line. A path
    added that way is not a site dir, so its own ``.pth`` files (the editable install's
    import hook among them) are not run: ``agentmesh`` can only come from the wheel.
    """
    venv = tmp_path_factory.mktemp("wheel-venv")
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = _python_in(venv)
    site_packages = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (Path(site_packages) / "agentmesh-test-deps.pth").write_text("\n".join(ours) + "\n")
    subprocess.run(
        [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps"]
        + ["--no-index", "--quiet", str(wheel)],
        check=True,
    )
    return venv


WHEEL_CHECK = """
import importlib.resources, json, sys
import agentmesh
from agentmesh import Agent, AgentMeshError, LocalModel, ServiceContext, TaskOutcome
from agentmesh import Message, TaskFailed, local_market
for name in agentmesh.__all__:
    getattr(agentmesh, name)  # an ImportError here names the module the wheel lacks
print(json.dumps({
    "file": agentmesh.__file__,
    "version": agentmesh.__version__,
    "py_typed": importlib.resources.files("agentmesh").joinpath("py.typed").is_file(),
    "agents": sys.modules["agentmesh.agents.agent"].__file__,
}))
"""


@pytest.mark.slow
def test_wheel_alone_exports_the_public_api(
    wheel_venv: Path, repo_root: Path, tmp_path: Path
) -> None:
    result = subprocess.run(
        [str(_python_in(wheel_venv)), "-c", WHEEL_CHECK],
        cwd=tmp_path,
        env=_env_without_checkout(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout.strip().splitlines()[-1])
    for module in ("file", "agents"):  # the wheel's copy, not the checkout's
        assert Path(found[module]).is_relative_to(wheel_venv), found
    assert found["py_typed"]
    pyproject = tomllib.loads((repo_root / "pyproject.toml").read_text())
    assert found["version"] == pyproject["project"]["version"]


@pytest.mark.slow
def test_wheel_alone_runs_the_cli(wheel_venv: Path, tmp_path: Path) -> None:
    result = subprocess.run(
        [str(wheel_venv / "bin" / "agentmesh"), "--help"],
        cwd=tmp_path,
        env=_env_without_checkout(),
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "devnet" in result.stdout


TYPED_USE = """
from agentmesh import Agent, ChatModel, LocalModel, ServiceContext

model: ChatModel = LocalModel("model.gguf")  # LocalModel satisfies the protocol
agent = Agent("typed", model=model)
reveal_type(agent)
reveal_type(ServiceContext.model)
"""


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("mypy") is None, reason="mypy is not installed")
def test_wheel_alone_is_typed_for_mypy(wheel_venv: Path, tmp_path: Path) -> None:
    # Without py.typed mypy would treat the installed package as untyped (Any everywhere).
    (tmp_path / "use.py").write_text(TYPED_USE)
    (tmp_path / "typo.py").write_text("from agentmesh import Agnet\n")
    result = subprocess.run(
        [str(_python_in(wheel_venv)), "-m", "mypy", "--strict", "--no-incremental"]
        + ["--follow-imports=silent", "use.py", "typo.py"],
        cwd=tmp_path,
        env=_env_without_checkout(),
        capture_output=True,
        text=True,
        check=False,
    )
    lines = result.stdout.splitlines()
    assert 'use.py:6: note: Revealed type is "agentmesh.agents.agent.Agent"' in lines, lines
    assert any("use.py:7: note: Revealed type is" in line and "ChatModel" in line for line in lines)
    errors = [line for line in lines if ": error:" in line]
    assert len(errors) == 1 and errors[0].startswith(
        'typo.py:1: error: Module "agentmesh" has no attribute "Agnet"'
    ), lines
