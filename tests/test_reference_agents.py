"""The reference agents run with `agentmesh run` and trade; bad agent files are refused."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentmesh.cli.app import app
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import TokenClient
from agentmesh.wallets.keystore import Keystore
from agentmesh.wallets.wallet import Wallet
from tests.helpers import (
    PASSWORD,
    TEST_SCRYPT_N,
    bind_home,
    free_port,
    fund,
    net,
    start_provider,
)

AGENTS = Path(__file__).resolve().parent.parent / "agents"


async def test_reference_requester_buys_from_reference_provider(
    home: Path, chain: Chain, deployer: Wallet, token: TokenClient
) -> None:
    bind_home(home, chain)
    keystore = Keystore(home, scrypt_n=TEST_SCRYPT_N)
    seller = keystore.create("summarizer", PASSWORD)
    buyer = keystore.create("buyer", PASSWORD)
    await fund(deployer, token, seller.address, musd=0)
    await fund(deployer, token, buyer.address, musd=10)
    log = home / "provider.log"
    provider, _ = start_provider(
        home, free_port(), home / "unused", log, AGENTS / "provider.py", "summarizer"
    )
    try:
        env = {**os.environ, "AGENTMESH_PASSWORD": PASSWORD, "AGENTMESH_BUY_COUNT": "2"}
        done = subprocess.run(
            [
                sys.executable,
                "-m",
                "agentmesh.cli.app",
                "--home",
                str(home),
                "run",
                str(AGENTS / "requester.py"),
                "--wallet",
                "buyer",
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=180,
            check=False,
        )
        assert done.returncode == 0, done.stdout + done.stderr
        assert "summary 1 from" in done.stdout and "summary 2 from" in done.stdout
        assert await token.balance_of(seller.address) == 2 * net(50_000)
        assert await token.balance_of(buyer.address) == 10 * 10**6 - 2 * 50_000
    finally:
        provider.send_signal(signal.SIGTERM)
        assert provider.wait(20) == 0, log.read_text()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "does not exist"),
        ("x = 1\n", "defines 0 Agent objects"),
        ("def broken(:\n", "syntax error"),
    ],
)
def test_run_refuses_bad_agent_files(
    home: Path, tmp_path: Path, content: str | None, message: str
) -> None:
    path = tmp_path / "agent.py"
    if content is not None:
        path.write_text(content)
    result = CliRunner().invoke(app, ["--home", str(home), "run", str(path)])
    assert result.exit_code == 1
    assert message in str(result.exception)


def test_run_refuses_an_unknown_module(home: Path) -> None:
    result = CliRunner().invoke(app, ["--home", str(home), "run", "no_such_module_xyz"])
    assert result.exit_code == 1
    assert "cannot import 'no_such_module_xyz'" in str(result.exception)
