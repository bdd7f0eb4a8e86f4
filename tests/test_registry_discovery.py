"""The on-chain registry as a discovery source, against a real anvil and real sockets."""

from __future__ import annotations

from agentmesh.config import MeshConfig
from agentmesh.mesh.card import ServicePrice
from agentmesh.mesh.discovery import Discovery, wait_for_peers
from agentmesh.mesh.node import MeshNode
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import RegistryClient
from agentmesh.wallets.registry_sync import register_card, registry_source
from tests.helpers import WalletFactory

FAST = MeshConfig(heartbeat_s=0.2)


async def test_agent_found_through_the_registry_alone(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    provider_wallet = await make_wallet(eth=1, musd=0)
    seeker_wallet = await make_wallet(eth=1, musd=0)
    provider = MeshNode(
        bytes(provider_wallet.account.key),
        name="provider",
        config=FAST,
        services=[ServicePrice(name="summarize", price=50_000)],
    )
    seeker = MeshNode(bytes(seeker_wallet.account.key), name="seeker", config=FAST)
    provider_discovery = Discovery(provider)
    seeker_discovery = Discovery(
        seeker, sources=[registry_source(chain, seeker_wallet, exclude=[seeker.address])]
    )
    async with provider:
        assert provider.card is not None
        await register_card(chain, provider_wallet, provider.card)
        onchain = await RegistryClient(
            seeker_wallet, chain.deployment.address("AgentRegistry")
        ).get_agent(provider.address)
        assert onchain.endpoint == provider.card.bootstrap_address
        assert onchain.services[0].name == "summarize"
        await provider_discovery.start()
        async with seeker:
            await seeker_discovery.start()
            try:
                # No bootstrap configured: the seeker learns the provider from the chain.
                assert await wait_for_peers(seeker, 2, timeout=10)
                found = seeker.peers.offering("summarize")
                assert [r.address for r in found] == [provider.address]
                assert found[0].card.verify() == provider.address
            finally:
                await seeker_discovery.stop()
        await provider_discovery.stop()


async def test_register_twice_updates_the_card(chain: Chain, make_wallet: WalletFactory) -> None:
    wallet = await make_wallet(eth=1, musd=0)
    node = MeshNode(bytes(wallet.account.key), name="v1", config=FAST)
    async with node:
        assert node.card is not None
        await register_card(chain, wallet, node.card)
        renamed = node.card.model_copy(update={"name": "v2"})
        await register_card(chain, wallet, renamed)
    registry = RegistryClient(wallet, chain.deployment.address("AgentRegistry"))
    assert (await registry.get_agent(wallet.address)).name == "v2"
    assert await registry.agents(0, 100) == [wallet.address]


async def test_a_broken_registry_source_does_not_stop_bootstrap() -> None:
    async def broken() -> list[str]:
        raise RuntimeError("chain down")

    boot = MeshNode(bytes(32 * [7]), name="boot", config=FAST)
    async with boot:
        boot_discovery = Discovery(boot)
        await boot_discovery.start()
        assert boot.card is not None
        config = FAST.model_copy(update={"bootstrap": (boot.card.bootstrap_address,)})
        joiner = MeshNode(bytes(32 * [8]), name="joiner", config=config)
        async with joiner:
            discovery = Discovery(joiner, sources=[broken])
            await discovery.start()
            try:
                assert await wait_for_peers(joiner, 2, timeout=10)
            finally:
                await discovery.stop()
        await boot_discovery.stop()
