"""Shared setup for agent tests: a home bound to the session chain, funded agents."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from agentmesh.config import AgentConfig, ChainConfig, Config, MeshConfig, WalletConfig
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import TokenClient
from agentmesh.wallets.wallet import Wallet
from tests.conftest import ONE_MUSD, TEST_SCRYPT_N

T = TypeVar("T")
SUMMARY_SYSTEM = "Summarize the user's text in one sentence."
TEXT = (
    "The quick brown fox jumps over the lazy dog. It was a sunny day, and the fox was "
    "happy to be out in the fields."
)


def bind_home(
    home: Path,
    chain: Chain,
    *,
    approval_threshold: str | None = None,
    review_window_s: int = 120,
) -> Config:
    """Point ``home`` at the session chain and its deployment (no faucet: tests fund)."""
    (home / "deployments").mkdir(exist_ok=True)
    chain.deployment.save(home / "deployments" / f"{chain.deployment.chain_id}.json")
    threshold = f'approval_threshold = "{approval_threshold}"\n' if approval_threshold else ""
    (home / "config.toml").write_text(
        f'[wallet]\nscrypt_n = {TEST_SCRYPT_N}\n[chain]\nrpc_url = "{chain.rpc_url}"\n'
        f"[agent]\nfaucet = false\nproposal_window_s = 30\ndecision_timeout_s = 25\n{threshold}"
        f"review_window_s = {review_window_s}\n"
        "[mesh]\nheartbeat_s = 0.2\n"
    )
    return Config(
        wallet=WalletConfig(scrypt_n=TEST_SCRYPT_N),
        chain=ChainConfig(rpc_url=chain.rpc_url),
        agent=AgentConfig(
            faucet=False,
            proposal_window_s=30,
            # Inside the proposal window, and long enough that a loaded test machine
            # still gets the model's answer (the tests check it came from the model).
            decision_timeout_s=25,
            approval_threshold=approval_threshold,
            review_window_s=review_window_s,
        ),
        mesh=MeshConfig(heartbeat_s=0.2),
    )


def with_agent_settings(config: Config, **changes: object) -> Config:
    """``config`` with some ``[agent]`` settings changed (one agent's own settings)."""
    return config.model_copy(update={"agent": config.agent.model_copy(update=changes)})


async def fund(deployer: Wallet, token: TokenClient, address: str, musd: int = 100) -> None:
    await deployer.send({"to": address, "value": 10**19})
    if musd:
        await token.mint(address, musd * ONE_MUSD)


def new_key() -> bytes:
    return os.urandom(32)


async def eventually(probe: Callable[[], T], done: Callable[[T], bool], timeout: float = 10.0) -> T:
    """Call ``probe`` every 0.1 s until ``done(value)`` or ``timeout``; the last value, for
    the caller to assert on (agents record what other agents do a moment later)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = probe()
        if done(value) or loop.time() >= deadline:
            return value
        await asyncio.sleep(0.1)
