"""`agentmesh new` projects pass their own tests; `doctor`; `--json` on every listing."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agentmesh.cli.app import app
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import TokenClient
from agentmesh.wallets.keystore import Keystore
from agentmesh.wallets.wallet import Wallet
from tests.helpers import TEST_SCRYPT_N, bind_home, eventually, fund

PASSWORD = "scaffold password"


def agentmesh(
    home: Path, cwd: Path, *args: str, password: str = PASSWORD
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AGENTMESH_HOME": str(home), "AGENTMESH_PASSWORD": password}
    return subprocess.run(
        [sys.executable, "-m", "agentmesh.cli.app", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.mark.parametrize("template", ["provider", "requester", "blank"])
def test_new_project_passes_its_own_tests(
    home: Path,
    tmp_path: Path,
    template: str,
    capsys: pytest.CaptureFixture[str],
    record_property: Callable[[str, object], None],
) -> None:
    started = time.perf_counter()
    made = agentmesh(home, tmp_path, "new", "myagent", "--template", template)
    assert made.returncode == 0, made.stdout + made.stderr
    project = tmp_path / "myagent"
    assert sorted(p.name for p in project.iterdir()) == [
        ".gitignore",
        "README.md",
        "agent.py",
        "agentmesh.toml",
        "pyproject.toml",
        "tests",
    ]
    assert "created wallet myagent 0x" in made.stdout and "cd myagent" in made.stdout
    assert "AGENTMESH_PASSWORD=... agentmesh run agent.py" in made.stdout
    keystore = home / "keystores" / "myagent.json"
    assert keystore.stat().st_mode & 0o777 == 0o600
    pyproject = tomllib.loads((project / "pyproject.toml").read_text())
    assert pyproject["project"]["optional-dependencies"]["test"] == ["pytest>=8"]
    assert "asyncio_mode" not in pyproject["tool"]["pytest"]["ini_options"]
    made_s = time.perf_counter() - started
    # pytest-asyncio is installed here (agentmesh's own [test] extra); a user's
    # environment need not have it: the generated tests must pass without it.
    tested = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:asyncio"],
        cwd=project,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        env={**os.environ, "AGENTMESH_HOME": str(home)},
    )
    assert tested.returncode == 0, tested.stdout[-3000:] + tested.stderr[-2000:]
    assert "1 passed" in tested.stdout
    assert "warning" not in tested.stdout.lower(), tested.stdout
    total_s = time.perf_counter() - started
    record_property("new_to_passing_s", round(total_s, 1))
    with capsys.disabled():  # reaches the terminal without -s
        print(
            f"\n[{template}] agentmesh new {made_s:.1f}s + pytest {total_s - made_s:.1f}s "
            f"= new -> passing tests in {total_s:.1f}s"
        )


def test_new_refuses_bad_names_and_non_empty_folders(home: Path, tmp_path: Path) -> None:
    for bad in ("MyAgent", "1agent", "a b", "x" * 41):
        result = agentmesh(home, tmp_path, "new", bad, "--no-wallet")
        assert result.returncode == 1 and "invalid project name" in result.stderr, bad
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("mine")
    refused = agentmesh(home, tmp_path, "new", "taken", "--no-wallet")
    assert refused.returncode == 1 and "is not empty" in refused.stderr
    assert "--force" in refused.stderr
    assert sorted(p.name for p in (tmp_path / "taken").iterdir()) == ["notes.txt"]
    forced = agentmesh(home, tmp_path, "new", "taken", "--no-wallet", "--force")
    assert forced.returncode == 0, forced.stderr
    assert (tmp_path / "taken" / "notes.txt").read_text() == "mine"
    assert (tmp_path / "taken" / "agent.py").exists()
    bad_template = agentmesh(home, tmp_path, "new", "other", "--template", "oracle")
    assert bad_template.returncode == 2 and "oracle" in bad_template.stderr


def test_new_creates_or_reuses_the_wallet(home: Path, tmp_path: Path) -> None:
    first = agentmesh(home, tmp_path, "new", "alpha")
    assert first.returncode == 0, first.stderr
    again = agentmesh(home, tmp_path, "new", "alpha", "--dir", str(tmp_path / "alpha2"))
    assert again.returncode == 1 and "reuse it with --wallet alpha" in again.stderr
    assert not (tmp_path / "alpha2").exists()  # nothing written on an error
    reuse = agentmesh(home, tmp_path, "new", "beta", "--wallet", "alpha")
    assert reuse.returncode == 0 and "reusing wallet alpha" in reuse.stdout
    assert 'wallet = "alpha"' in (tmp_path / "beta" / "agentmesh.toml").read_text()
    missing = agentmesh(home, tmp_path, "new", "gamma", "--wallet", "nobody")
    assert missing.returncode == 1 and "no wallet named 'nobody'" in missing.stderr
    assert sorted(p.name for p in (home / "keystores").iterdir()) == ["alpha.json"]


def test_new_without_a_password_skips_the_wallet(home: Path, tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "AGENTMESH_PASSWORD"}
    result = subprocess.run(
        [sys.executable, "-m", "agentmesh.cli.app", "--home", str(home), "new", "quiet"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "agentmesh wallet new quiet" in result.stdout
    assert (tmp_path / "quiet" / "agent.py").exists()


def one_red_line(result: subprocess.CompletedProcess[str]) -> str:
    """Assert ``result`` failed as the CLI should: exit 1, one ``error:`` line, no traceback."""
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


def test_new_with_an_empty_password_is_an_error_naming_it(home: Path, tmp_path: Path) -> None:
    # As everywhere in the CLI (cli/context.py): set but empty is a mistake, not "unset".
    line = one_red_line(agentmesh(home, tmp_path, "new", "quiet", password=""))
    assert "AGENTMESH_PASSWORD is set but empty" in line
    assert not (tmp_path / "quiet").exists()
    assert not (home / "keystores" / "quiet.json").exists()


def test_new_leaves_nothing_when_the_wallet_cannot_be_written(home: Path, tmp_path: Path) -> None:
    (home / "keystores").write_text("a file where the keystore folder should be")
    line = one_red_line(agentmesh(home, tmp_path, "new", "broken"))
    assert str(home / "keystores") in line and "File exists" in line
    assert not (tmp_path / "broken").exists()  # no half project without its wallet


def test_new_into_an_unusable_folder_is_one_red_line(home: Path, tmp_path: Path) -> None:
    line = one_red_line(agentmesh(home, tmp_path, "new", "x", "--dir", "/proc/forbidden"))
    assert "/proc/forbidden" in line and "No such file or directory" in line
    assert not (home / "keystores" / "x.json").exists()  # the folder failed first
    debug = agentmesh(home, tmp_path, "--debug", "new", "x", "--dir", "/proc/forbidden")
    assert debug.returncode == 1
    assert "Traceback (most recent call last)" in debug.stderr
    assert "FileNotFoundError" in debug.stderr and "/proc/forbidden" in debug.stderr


def test_new_without_a_wallet_says_how_to_make_one(home: Path, tmp_path: Path) -> None:
    made = agentmesh(home, tmp_path, "new", "later", "--no-wallet")
    assert made.returncode == 0, made.stderr
    assert "agentmesh wallet new later" in made.stdout
    assert "AGENTMESH_PASSWORD=... agentmesh run agent.py" in made.stdout
    assert not (home / "keystores").exists()


def doctor(home: Path, *args: str) -> tuple[int, dict[str, dict[str, object]]]:
    result = CliRunner().invoke(app, ["--home", str(home), "doctor", "--json", *args])
    return result.exit_code, {c["name"]: c for c in json.loads(result.output)}


def test_doctor_passes_on_this_machine(home: Path) -> None:
    code, checks = doctor(home)
    assert code == 0, checks
    assert set(checks) == {"python", "llama-cpp", "anvil", "model", "home", "chain"}
    import llama_cpp

    backend = "GPU offload" if llama_cpp.llama_supports_gpu_offload() else "CPU only"
    assert backend in str(checks["llama-cpp"]["detail"])
    assert all(c["ok"] for c in checks.values())


def test_doctor_names_the_fix_when_anvil_is_missing(home: Path) -> None:
    (home / "config.toml").write_text('[devnet]\nanvil_path = "/nonexistent/anvil"\n')
    code, checks = doctor(home)
    assert code == 1
    assert not checks["anvil"]["ok"] and "make setup" in str(checks["anvil"]["fix"])
    assert checks["model"]["ok"]


@pytest.mark.parametrize(
    ("content", "error"),
    [
        ('[chain]\nrpc_ur = "x"\n', "unknown key 'chain.rpc_ur'"),
        ("[chain\n", "not valid TOML"),
    ],
    ids=["unknown-key", "bad-toml"],
)
def test_doctor_with_an_invalid_config_keeps_each_check_and_names_the_fix(
    home: Path, content: str, error: str
) -> None:
    config = home / "config.toml"
    config.write_text(content)
    code, checks = doctor(home)
    assert code == 1
    assert set(checks) == {"python", "llama-cpp", "anvil", "model", "home", "chain"}
    for name in ("anvil", "home", "chain"):  # the checks that read config.toml
        assert not checks[name]["ok"], checks[name]
        fix = str(checks[name]["fix"])
        assert fix.startswith(f"correct {config}") and error in fix, fix
    assert "not checked" in str(checks["anvil"]["detail"])
    assert checks["python"]["ok"] and checks["model"]["ok"]
    table = CliRunner().invoke(app, ["--home", str(home), "doctor"])
    assert table.exit_code == 1 and "?" not in table.output


def test_doctor_names_the_fix_when_the_model_is_missing(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, checks = doctor(home, "--model", str(tmp_path / "gone.gguf"))
    assert code == 1 and not checks["model"]["ok"]
    assert "does not exist" in str(checks["model"]["detail"])
    monkeypatch.setattr("agentmesh.llm.DEFAULT_MODEL_PACKAGE", "no_such_model_package")
    code, checks = doctor(home)
    assert code == 1 and "make setup" in str(checks["model"]["fix"])


def test_doctor_flags_a_loose_home_and_an_unreachable_chain(home: Path) -> None:
    (home / "config.toml").write_text('[chain]\nrpc_url = "http://127.0.0.1:9"\n')
    home.chmod(0o755)
    try:
        code, checks = doctor(home)
    finally:
        home.chmod(0o700)
    assert code == 1
    assert not checks["home"]["ok"] and "chmod 700" in str(checks["home"]["fix"])
    assert not checks["chain"]["ok"] and "chain.rpc_url" in str(checks["chain"]["fix"])


def _is_list(data: object) -> bool:
    return isinstance(data, list)


LISTINGS: list[tuple[list[str], Callable[[Any], bool]]] = [
    (["wallet", "list"], lambda d: [w["name"] for w in d] == ["listed"]),
    (["mesh", "peers"], lambda d: d == []),
    (["mesh", "stats"], lambda d: d == {}),
    (["approvals"], _is_list),
    (["task", "list"], lambda d: d == []),
    (["devnet", "status"], lambda d: d["running"] is False),
    (["model", "info"], lambda d: len(d["sha256"]) == 64 and str(d["path"]).endswith(".gguf")),
    (["doctor"], lambda d: {c["name"] for c in d} >= {"python", "anvil", "model", "home"}),
]


@pytest.mark.parametrize(("command", "check"), LISTINGS, ids=[" ".join(c) for c, _ in LISTINGS])
def test_every_listing_command_prints_parseable_json(
    home: Path, command: list[str], check: Callable[[Any], bool]
) -> None:
    Keystore(home, scrypt_n=TEST_SCRYPT_N).create("listed", PASSWORD)
    result = CliRunner().invoke(app, ["--home", str(home), *command, "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert check(data), data


async def test_scaffolded_provider_runs_on_the_mesh_and_sells(
    home: Path, tmp_path: Path, chain: Chain, deployer: Wallet, token: TokenClient
) -> None:
    bind_home(home, chain)
    made = agentmesh(home, tmp_path, "new", "shop")
    assert made.returncode == 0, made.stderr
    seller = Keystore(home, scrypt_n=TEST_SCRYPT_N).entry("shop").address
    await fund(deployer, token, seller, musd=0)
    buyer = Keystore(home, scrypt_n=TEST_SCRYPT_N).create("buyer", PASSWORD)
    await fund(deployer, token, buyer.address, musd=5)
    ready = tmp_path / "shop.ready"
    env = {**os.environ, "AGENTMESH_HOME": str(home), "AGENTMESH_PASSWORD": PASSWORD}
    process = subprocess.Popen(
        [sys.executable, "-m", "agentmesh.cli.app", "run", "agent.py", "--ready-file", str(ready)],
        cwd=tmp_path / "shop",
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    try:
        await eventually(lambda: ready.exists() or process.poll() is not None, timeout=30)
        assert ready.exists(), process.stdout.read().decode() if process.stdout else ""
        bought = await asyncio.to_thread(
            agentmesh,
            home,
            tmp_path,
            "task",
            "request",
            "summarize",
            "--text",
            "Scaffolded agents sell on the mesh.",
            "--budget",
            "0.5",
            "--wallet",
            "buyer",
            "--json",
        )
        assert bought.returncode == 0, bought.stdout + bought.stderr
        outcome = json.loads(bought.stdout)
        assert outcome["phase"] == "settled" and outcome["provider"] == seller
        peers = await asyncio.to_thread(agentmesh, home, tmp_path, "mesh", "peers", "--json")
        assert any(p["address"] == seller for p in json.loads(peers.stdout))
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0
