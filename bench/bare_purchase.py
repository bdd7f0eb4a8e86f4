"""The floor both market benches measure against: a purchase's own transactions sent
directly from two wallets, with no agents and no mesh.

open (approving as the agents do, with the default standing allowance), accept,
submit, release, feedback.
"""

from __future__ import annotations

import hashlib
import time

from agentmesh.agents.service import parse_price
from agentmesh.config import AgentConfig
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import EscrowClient, RegistryClient, TokenClient
from agentmesh.wallets.wallet import Wallet


class BarePurchase:
    """Sends one purchase's transactions between ``client`` and ``provider``."""

    def __init__(self, chain: Chain, client: Wallet, provider: Wallet) -> None:
        escrow = chain.deployment.address("TaskEscrow")
        allowance = parse_price(AgentConfig().escrow_allowance)  # as the agents approve
        self.arbiter = chain.deployment.deployer
        self.provider = provider.address
        self.by_client = EscrowClient(client, escrow, standing_allowance=allowance)
        self.by_provider = EscrowClient(provider, escrow)
        self.registry = RegistryClient(client, chain.deployment.address("AgentRegistry"))
        self.token = TokenClient(client, chain.token_address)

    async def run(self, label: str, *, amount: int, deadline: int, review_window: int) -> None:
        terms = hashlib.sha256(f"bare {label} {time.time()}".encode()).digest()
        job_id, _ = await self.by_client.open(
            provider=self.provider,
            token=self.token,
            amount=amount,
            deadline=deadline,
            review_window=review_window,
            arbiter=self.arbiter,
            terms_hash=terms,
        )
        await self.by_provider.accept(job_id)
        await self.by_provider.submit(job_id, hashlib.sha256(terms).digest())
        await self.by_client.release(job_id)
        await self.registry.give_feedback(job_id, 100, bytes(32))
