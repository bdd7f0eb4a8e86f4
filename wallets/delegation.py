"""Set up a delegation: an ``AgentWallet`` a person owns and an agent key trades from.

``create_delegation`` deploys the wallet and sets every rule of the owner's terms in
order (what the agent may call, the swap policy and router, the tokens a swap may
touch, caps, expiry); funding it is a plain transfer the owner makes afterwards.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from agentmesh.wallets.agent_wallet import (
    SWAP_EXACT_IN,
    AgentWalletClient,
    CapMode,
    SwapPolicy,
)
from agentmesh.wallets.wallet import Wallet


@dataclass(frozen=True, slots=True)
class Cap:
    """A spending cap: ``limit`` base units per window (``mode``: daily or rolling 24 h)."""

    limit: int
    mode: CapMode = CapMode.DAILY


@dataclass(frozen=True, slots=True)
class DelegationTerms:
    """What the owner lets the agent do with the wallet."""

    agent: str  # the agent's key (address)
    router: str  # the Uniswap V2 router swaps go through
    tokens: tuple[str, ...]  # token addresses a swap path may hold
    caps: Mapping[str, Cap]  # token address -> cap on what leaves the wallet
    policy: SwapPolicy
    valid_until: int  # unix seconds; after it the agent may do nothing


async def create_delegation(owner: Wallet, terms: DelegationTerms) -> AgentWalletClient:
    """Deploy an ``AgentWallet`` owned by ``owner`` under ``terms``; returns its client
    (sending as the owner). Every rule is set before the wallet holds anything."""
    wallet = await AgentWalletClient.deploy(owner, terms.agent)
    await wallet.set_swap_policy(terms.policy)
    await wallet.set_router(terms.router)
    await wallet.set_allowed(terms.router, SWAP_EXACT_IN, True)
    # No `(token, approve)` entries: a swap's one-call allowance to the registered
    # router needs none, and an allowlisted approve would let the agent approve anyone.
    for token in terms.tokens:
        await wallet.set_swap_token(token)
    for token, cap in terms.caps.items():
        await wallet.set_cap(token, cap.limit, cap.mode)
    await wallet.set_valid_until(terms.valid_until)
    return wallet
