"""The devnet faucet: an empty agent wallet gets gas and mUSD from anvil's dev funds."""

from __future__ import annotations

import asyncio
import logging
import random

from web3.types import Wei

from agentmesh.errors import TransactionError
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import TokenClient
from agentmesh.wallets.deployer import dev_deployer
from agentmesh.wallets.units import MUSD_DECIMALS, format_amount
from agentmesh.wallets.wallet import Wallet

MIN_ETH = 10**18  # below this an agent gets 10 ETH for gas
MIN_MUSD = 100 * 10**6  # below this it gets 1,000 mUSD minted
ATTEMPTS = 5
GAS_TOP_UP = 10 * MIN_ETH
MUSD_TOP_UP = 1_000 * 10**6

log = logging.getLogger("agentmesh.faucet")


async def top_up(chain: Chain, wallet: Wallet) -> None:
    """On an anvil devnet, give ``wallet`` gas and mUSD if it runs low (elsewhere: no-op,
    said once when the chain is opened)."""
    if not chain.devnet:
        return
    faucet = dev_deployer(chain.w3)
    token = TokenClient(faucet, chain.token_address)
    # Agents starting together each send from the dev account with their own nonce
    # count; a collision is rejected by the node, and a retry reads the nonce anew.
    for attempt in range(ATTEMPTS):
        try:
            if (eth := await wallet.eth_balance()) < MIN_ETH:
                await faucet.send({"to": wallet.address, "value": Wei(GAS_TOP_UP)})
                log.warning(
                    "faucet: %s had %.4f ETH, sent it 10 ETH for gas (devnet only)",
                    wallet.address,
                    eth / 10**18,
                )
            if (musd := await token.balance_of(wallet.address)) < MIN_MUSD:
                await token.mint(wallet.address, MUSD_TOP_UP)
                # Said out loud: a balance that grows by itself looks like a bug.
                log.warning(
                    "faucet: %s had %s mUSD (under %s mUSD), minted it 1,000 mUSD (devnet only; "
                    "`faucet = false` in [agent] turns this off)",
                    wallet.address,
                    format_amount(musd, MUSD_DECIMALS),
                    format_amount(MIN_MUSD, MUSD_DECIMALS),
                )
            return
        except TransactionError:
            if attempt == ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.1 + random.random() * 0.3)
