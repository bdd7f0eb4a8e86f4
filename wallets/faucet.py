"""The devnet faucet: an empty agent wallet gets gas and mUSD from anvil's dev funds."""

from __future__ import annotations

import asyncio
import random

from web3.types import Wei

from agentmesh.errors import TransactionError
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import TokenClient
from agentmesh.wallets.deployer import dev_deployer
from agentmesh.wallets.wallet import Wallet

MIN_ETH = 10**18  # below this an agent gets 10 ETH for gas
MIN_MUSD = 100 * 10**6  # below this it gets 1,000 mUSD minted
ATTEMPTS = 5


async def top_up(chain: Chain, wallet: Wallet) -> None:
    """On an anvil devnet, give ``wallet`` gas and mUSD if it runs low (elsewhere: no-op)."""
    client = str(await chain.w3.client_version).lower()
    if "anvil" not in client:
        return
    faucet = dev_deployer(chain.w3)
    token = TokenClient(faucet, chain.token_address)
    # Agents starting together each send from the dev account with their own nonce
    # count; a collision is rejected by the node, and a retry reads the nonce anew.
    for attempt in range(ATTEMPTS):
        try:
            if await wallet.eth_balance() < MIN_ETH:
                await faucet.send({"to": wallet.address, "value": Wei(10 * MIN_ETH)})
            if await token.balance_of(wallet.address) < MIN_MUSD:
                await token.mint(wallet.address, 1_000 * 10**6)
            return
        except TransactionError:
            if attempt == ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.1 + random.random() * 0.3)
