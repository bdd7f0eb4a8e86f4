"""A provider killed (SIGKILL) mid-task resumes the task from its LangGraph checkpoint."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from eth_account import Account

from agentmesh.agents.agent import Agent
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import JobStatus, TokenClient
from agentmesh.wallets.keystore import Keystore
from agentmesh.wallets.wallet import Wallet
from tests.agent_fixtures import TEXT, bind_home, fund, new_key
from tests.conftest import TEST_SCRYPT_N, escrow_for, wait_gone

PASSWORD = "correct horse battery staple"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


SLOW_PROVIDER = Path(__file__).parent / "agents" / "slow_provider.py"


def start_provider(
    home: Path,
    port: int,
    gate: Path,
    log: Path,
    agent_file: Path = SLOW_PROVIDER,
    wallet: str = "slow",
) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """Run ``agentmesh run agent_file`` and wait for its ready file."""
    ready = home / "provider.ready"
    ready.unlink(missing_ok=True)
    env = {**os.environ, "AGENTMESH_PASSWORD": PASSWORD, "AGENTMESH_TEST_GATE": str(gate)}
    command = [
        sys.executable,
        "-m",
        "agentmesh.cli.app",
        "--home",
        str(home),
        "run",
        str(agent_file),
        "--wallet",
        wallet,
        "--port",
        str(port),
        "--ready-file",
        str(ready),
    ]
    with log.open("ab") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    for _ in range(600):
        if ready.exists():
            return process, json.loads(ready.read_text())
        if process.poll() is not None:
            raise AssertionError(f"provider exited {process.returncode}: {log.read_text()}")
        time.sleep(0.05)
    process.kill()
    raise AssertionError(f"provider did not start: {log.read_text()}")


async def wait_for_status(
    chain: Chain,
    wallet: Wallet,
    status: JobStatus,
    timeout: float = 60,
    watching: asyncio.Task[Any] | None = None,
) -> int:
    """The newest job once it has ``status``; fails at once if ``watching`` ended."""
    escrow = escrow_for(chain, wallet)
    for _ in range(int(timeout / 0.1)):
        count = await escrow.contract.functions.jobCount().call()
        if count and (await escrow.get_job(count)).status == status:
            return int(count)
        if watching is not None and watching.done():
            watching.result()  # its error explains why no job got there
            raise AssertionError(f"the task ended before a job reached {status.name}")
        await asyncio.sleep(0.1)
    raise AssertionError(f"no job reached {status.name}")


async def test_provider_killed_after_accepting_finishes_from_its_checkpoint(
    home: Path, chain: Chain, deployer: Wallet, token: TokenClient
) -> None:
    config = bind_home(home, chain)
    entry = Keystore(home, scrypt_n=TEST_SCRYPT_N).create("slow", PASSWORD)
    await fund(deployer, token, entry.address, musd=0)
    key = new_key()
    await fund(deployer, token, Account.from_key(key).address, musd=100)
    gate, log, port = home / "gate", home / "provider.log", free_port()
    process, info = start_provider(home, port, gate, log)
    try:
        async with Agent("buyer", wallet=key, home=home, config=config) as requester:
            await requester.wait_for_providers("summarize", timeout=30)
            buying = asyncio.create_task(requester.buy("summarize", text=TEXT, budget="0.5"))
            job_id = await wait_for_status(
                chain, requester.wallet, JobStatus.ACCEPTED, watching=buying
            )
            process.send_signal(signal.SIGKILL)
            assert wait_gone(process.pid)
            process.wait()
            await asyncio.sleep(0.5)
            escrow = escrow_for(chain, requester.wallet)
            assert (await escrow.get_job(job_id)).status == JobStatus.ACCEPTED  # mid-task
            assert not buying.done()
            gate.touch()
            process, _ = start_provider(home, port, gate, log)
            outcome = await asyncio.wait_for(buying, 120)
            assert outcome.settled and outcome.job_id == job_id
            assert outcome.provider == info["address"]
            assert isinstance(outcome.result, str) and outcome.result.strip()
            job = await escrow.get_job(job_id)
            assert job.status == JobStatus.RELEASED
            assert await token.balance_of(info["address"]) == 50_000
            # Killed in `execute` (or, if the kill beat the checkpoint write, just after
            # the accept transaction: then the re-run `verify_accept` finds it done).
            resumed = re.search(
                rf"resuming task p:{outcome.conversation} from (\w+)", log.read_text()
            )
            assert resumed is not None and resumed.group(1) in ("accepted", "funded")
    finally:
        stop(process)


def stop(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM an agent process (SIGKILL if it does not leave within 20 s)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
