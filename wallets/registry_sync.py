"""The mesh's on-chain discovery source: ``AgentRegistry``.

An agent with a funded wallet registers (or updates) its card on start: the registry's
``endpoint`` holds the agent's bootstrap address (``<curve key>@tcp://host:port``) and
``curveKey`` the raw 32-byte CurveZMQ key. Other agents read the registry and join
through those endpoints; the signed off-chain card then arrives over the mesh, so the
chain vouches for who registered and the card signature for what it says.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Iterable

from zmq.utils import z85

from agentmesh.errors import AgentMeshError
from agentmesh.mesh.card import AgentCard
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import RegistryCard, RegistryClient, ServiceOffer
from agentmesh.wallets.wallet import Wallet

log = logging.getLogger("agentmesh.registry")
PAGE = 100


def registry_card(card: AgentCard) -> RegistryCard:
    """The on-chain form of a mesh card."""
    sha = bytes.fromhex(card.model_sha256) if card.model_sha256 else bytes(32)
    return RegistryCard(
        name=card.name,
        endpoint=card.bootstrap_address,
        curve_key=z85.decode(card.curve_key.encode()),
        model_sha256=sha.ljust(32, b"\0")[:32],
        metadata_uri=card.presence_endpoint,
        services=tuple(ServiceOffer(s.name, s.price) for s in card.services),
    )


async def register_card(chain: Chain, wallet: Wallet, card: AgentCard) -> str:
    """Register ``card`` for ``wallet`` (update it if already registered); returns the tx."""
    registry = RegistryClient(wallet, chain.deployment.address("AgentRegistry"))
    onchain = registry_card(card)
    if await registry.is_registered(wallet.address):
        receipt = await registry.update(onchain)
    else:
        receipt = await registry.register(onchain)
    return "0x" + bytes(receipt["transactionHash"]).hex()


def registry_source(
    chain: Chain, reader: Wallet, exclude: Iterable[str] = ()
) -> Callable[[], Awaitable[list[str]]]:
    """A discovery source: the bootstrap addresses of every registered agent."""
    skip = {a.lower() for a in exclude}

    async def source() -> list[str]:
        registry = RegistryClient(reader, chain.deployment.address("AgentRegistry"))
        found: list[str] = []
        offset = 0
        while True:
            page = await registry.agents(offset, PAGE)
            for address in page:
                if address.lower() in skip:
                    continue
                try:
                    card = await registry.get_agent(address)
                except AgentMeshError as exc:  # deregistered between the two reads
                    log.info("registry entry %s vanished: %s", address, exc.user_message)
                    continue
                if "@tcp://" in card.endpoint:
                    found.append(card.endpoint)
            if len(page) < PAGE:
                return found
            offset += PAGE

    return source
