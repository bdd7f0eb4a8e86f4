"""A provider killed (SIGKILL) mid-task resumes the task from its LangGraph checkpoint."""

from __future__ import annotations

import asyncio
import re
import signal
from pathlib import Path

from eth_account import Account

from agentmesh.agents.agent import Agent
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import JobStatus, TokenClient
from agentmesh.wallets.keystore import Keystore
from agentmesh.wallets.wallet import Wallet
from tests.helpers import (
    PASSWORD,
    TEST_SCRYPT_N,
    TEXT,
    bind_home,
    escrow_for,
    free_port,
    fund,
    net,
    new_key,
    start_provider,
    stop_agent,
    wait_for_status,
    wait_gone,
)


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
            # Let time pass on purpose: with the provider gone, nothing may move the job.
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
            assert await token.balance_of(info["address"]) == net(50_000)
            # Killed in `execute` (or, if the kill beat the checkpoint write, just after
            # the accept transaction: then the re-run `verify_accept` finds it done).
            resumed = re.search(
                rf"resuming task p:{outcome.conversation} from (\w+)", log.read_text()
            )
            assert resumed is not None and resumed.group(1) in ("accepted", "funded")
    finally:
        stop_agent(process)
