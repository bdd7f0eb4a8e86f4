"""A validator agent process killed with SIGKILL after committing an epoch's scores and
started again: it neither probes nor commits that epoch again, reveals the sheet it
kept (which matches its commit), and finalizes the epoch. Real anvil, real mesh, real
SQLite, the real default model, and the reference validator
(``agents/validator_agent.py``) as its own ``agentmesh run`` process."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from eth_account import Account

from agentmesh.agents.agent import Agent
from agentmesh.agents.validation_cast import honest_embedder
from agentmesh.llm import LocalModel
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import TokenClient
from agentmesh.wallets.consensus import MAX_SCORE, ConsensusClient
from agentmesh.wallets.keystore import Keystore
from agentmesh.wallets.staking import StakingClient
from agentmesh.wallets.wallet import Wallet
from tests.helpers import (
    ONE_MUSD,
    PASSWORD,
    TEST_SCRYPT_N,
    advance_time,
    bind_home,
    chain_now,
    eventually,
    fund,
    new_key,
    wait_gone,
)

VALIDATOR = Path(__file__).resolve().parent.parent / "agents" / "validator_agent.py"
START_S = 120  # loading the model on a loaded machine


@pytest.fixture
async def provider(
    chain: Chain, home: Path, deployer: Wallet, token: TokenClient
) -> AsyncIterator[Agent]:
    """An honest embedding provider, staked, in this process."""
    config = bind_home(home, chain)
    model = LocalModel.default(n_threads=1)
    agent = honest_embedder("honest", model=model)
    key = new_key()
    await fund(deployer, token, Account.from_key(key).address, musd=100)
    staking = StakingClient(
        Wallet(Account.from_key(key), chain.w3), chain.deployment.address("Staking")
    )
    await staking.stake(20 * ONE_MUSD)
    agent.bind(home=home, config=config, wallet=key)
    async with agent:
        yield agent
    model.close()


def start(home: Path, log: Path) -> subprocess.Popen[bytes]:
    command = [
        *(sys.executable, "-m", "agentmesh.cli.app", "--home", str(home), "run"),
        *(str(VALIDATOR), "--wallet", "validator"),
    ]
    with log.open("ab") as out:
        return subprocess.Popen(
            command,
            env={**os.environ, "AGENTMESH_PASSWORD": PASSWORD},
            stdout=out,
            stderr=subprocess.STDOUT,
        )


def committed_rows(home: Path) -> list[tuple[int, str | None, str | None]]:
    db = home / "agents" / "validator" / "validator.db"
    if not db.exists():
        return []
    try:
        with sqlite3.connect(db) as raw:
            return list(raw.execute("SELECT epoch, commit_tx, reveal_tx FROM epochs"))
    except sqlite3.OperationalError:  # the process is creating it right now
        return []


async def test_a_validator_killed_after_its_commit_resumes_without_a_second_commit(
    chain: Chain, home: Path, deployer: Wallet, token: TokenClient, provider: Agent
) -> None:
    account = Keystore(home, scrypt_n=TEST_SCRYPT_N).create("validator", PASSWORD)
    await fund(deployer, token, account.address, musd=100)
    wallet = Wallet(Keystore(home, scrypt_n=TEST_SCRYPT_N).load("validator", PASSWORD), chain.w3)
    staking = StakingClient(wallet, chain.deployment.address("Staking"))
    await staking.stake(20 * ONE_MUSD)
    await staking.register_validator()
    consensus = ConsensusClient(deployer, chain.deployment.address("Consensus"))
    epoch = await consensus.current_epoch()
    await advance_time(chain, await consensus.epoch_end(epoch) - await chain_now(chain) + 1)
    epoch += 1
    log = home / "validator.log"
    process = start(home, log)
    try:
        # Its sheet is kept and its commit on chain: kill it there.
        rows = await eventually(
            lambda: committed_rows(home),
            lambda r: any(e == epoch and tx for e, tx, _ in r),
            timeout=START_S,
            interval=0.2,
        )
        assert any(e == epoch and tx for e, tx, _ in rows), log.read_text()[-3000:]
        os.kill(process.pid, signal.SIGKILL)
        assert wait_gone(process.pid)
        commitment = await consensus.commit_of(epoch, account.address)
        assert commitment != bytes(32)

        process = start(home, log)
        # The epoch's end comes: the restarted validator reveals its kept sheet.
        await advance_time(chain, await consensus.epoch_end(epoch) - await chain_now(chain) + 1)
        rows = await eventually(
            lambda: committed_rows(home),
            lambda r: any(e == epoch and revealed for e, _, revealed in r),
            timeout=START_S,
            interval=0.2,
        )
        assert any(e == epoch and revealed for e, _, revealed in rows), log.read_text()[-3000:]
        committed = await consensus.contract.events.Committed().get_logs(
            from_block=0, argument_filters={"epoch": epoch, "validator": account.address}
        )
        assert len(committed) == 1  # one commit, before the kill
        assert await consensus.commit_of(epoch, account.address) == commitment
        (scored, score) = await consensus.contract.functions.scoreOf(
            epoch, account.address, provider.address
        ).call()
        assert scored and score == MAX_SCORE
        # And it finalizes the epoch once the reveal window is over.
        await advance_time(chain, await consensus.reveal_window())
        assert await eventually(lambda: consensus.finalized(epoch), timeout=60, interval=0.2)
        assert "Traceback" not in log.read_text()
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
