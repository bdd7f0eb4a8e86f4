"""Test helpers for agent projects: a throw-away market to run agents in.

    from agentmesh.agents.testing import local_market

    async def test_sells_once(tmp_path):
        async with local_market(tmp_path) as market:
            async with market.adopt(agent), market.buyer() as buyer:
                outcome = await buyer.buy("summarize", text="...", budget="1")
                assert outcome.settled

``local_market`` starts an anvil on a free port, deploys the agentmesh contracts and
makes an agentmesh home bound to it; every agent it hands out gets a fresh key that
the devnet faucet funds on start. Everything is real: chain, mesh, model.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from agentmesh.agents.agent import Agent
from agentmesh.agents.context import TaskContext
from agentmesh.agents.pricing import PricingPacer
from agentmesh.agents.service import Service, ServiceContext
from agentmesh.config import AgentConfig, ChainConfig, Config, MeshConfig, WalletConfig


@dataclass
class LocalMarket:
    """A throw-away devnet plus an agentmesh home bound to it."""

    home: Path
    config: Config
    rpc_url: str

    def adopt(self, agent: Agent) -> Agent:
        """Bind ``agent`` to this market with a fresh, funded key; returns it."""
        agent.bind(home=self.home, config=self.config, wallet=os.urandom(32))
        return agent

    def buyer(self, name: str = "test-buyer") -> Agent:
        """A requester agent in this market."""
        return self.adopt(Agent(name))

    def seller(
        self,
        service: str,
        fn: Callable[[str], Awaitable[Any] | Any],
        *,
        price: str = "0.01 mUSD",
        name: str = "test-seller",
    ) -> Agent:
        """A provider selling ``service`` (input ``text``) computed by ``fn(text)``."""
        agent = Agent(name)

        @agent.service(service, price=price)
        async def run(ctx: ServiceContext, text: str) -> Any:
            value = fn(text)
            return await value if isinstance(value, Awaitable) else value

        return self.adopt(agent)


@contextlib.asynccontextmanager
async def local_market(root: Path) -> AsyncIterator[LocalMarket]:
    """Start a devnet under ``root`` for the duration of the block."""
    from agentmesh.chain.devnet import start_anvil
    from agentmesh.config import DevnetConfig
    from agentmesh.wallets.chain import _deploy_fresh, connect

    home = root / "agentmesh-home"
    home.mkdir(parents=True, exist_ok=True, mode=0o700)
    with start_anvil(DevnetConfig()) as anvil:
        w3 = connect(anvil.rpc_url)
        try:
            deployment = await _deploy_fresh(w3, anvil.rpc_url, 0)
        finally:
            await w3.provider.disconnect()
        deployment.save(home / "deployments" / f"{deployment.chain_id}.json")
        config = Config(
            chain=ChainConfig(rpc_url=anvil.rpc_url),
            wallet=WalletConfig(scrypt_n=2**14),
            agent=AgentConfig(faucet=True),
            mesh=MeshConfig(heartbeat_s=0.2),
        )
        yield LocalMarket(home, config, anvil.rpc_url)


def unit_context(
    records_path: Path,
    *,
    ledger: Any = None,
    address: str | None = None,
    services: Mapping[str, Service] | None = None,
    messenger: Any = None,
    model: Any = None,
    settings: AgentConfig | None = None,
    approval_threshold: int | None = None,
) -> TaskContext:
    """A ``TaskContext`` of fakes for unit tests of graph nodes and handlers.

    The escrow and registry are the in-memory ``ledger``'s clients for ``address`` (a
    fresh ``InMemoryLedger`` by default; the address defaults to the card of
    ``messenger``, a ``ScriptedMessenger`` with a random card by default), the records
    real SQLite at ``records_path``. Background work (``spawn``) runs on the current loop.
    """
    import asyncio
    from collections import Counter

    from agentmesh.agents.records import AgentRecords
    from agentmesh.testing import InMemoryLedger, ScriptedMessenger
    from agentmesh.testing_fakes import fake_card

    messenger = messenger or ScriptedMessenger(card=fake_card("unit", os.urandom(32)))
    # This agent is the one whose card its messenger sends: a call for proposals carries
    # it, and the provider checks that it is the sender's.
    address = address or messenger.card.address
    ledger = ledger or InMemoryLedger()
    escrow = ledger.escrow_for(address)
    return TaskContext(
        address=address,
        name="unit",
        token=escrow.token,
        escrow=escrow,
        registry=ledger.registry_for(address),
        messenger=messenger,
        clock=ledger.clock,
        settings=settings or AgentConfig(faucet=False),
        records=AgentRecords(records_path),
        services=dict(services or {}),
        model=model,
        counters=Counter(),
        arbiter="0x" + "a7" * 20,
        approval_threshold=approval_threshold,
        buyer_checks={},
        spawn=asyncio.ensure_future,
        pricing=PricingPacer((settings or AgentConfig(faucet=False)).decision_timeout_s),
    )
