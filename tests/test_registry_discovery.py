"""The on-chain registry as a discovery source, against a real anvil and real sockets."""

from __future__ import annotations

import asyncio
from typing import Any

from agentmesh.config import MeshConfig
from agentmesh.mesh.card import ServicePrice
from agentmesh.mesh.discovery import Discovery, wait_for_peers
from agentmesh.mesh.node import MeshNode
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import RegistryClient
from agentmesh.wallets.registry_sync import register_card, registry_source
from tests.helpers import WalletFactory, eventually

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


async def test_a_dead_registry_entry_does_not_delay_the_live_ones(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    # A killed agent stays listed: its entry points at a port nobody listens on.
    dead_wallet = await make_wallet(eth=1, musd=0)
    dead = MeshNode(bytes(dead_wallet.account.key), name="dead", config=FAST)
    async with dead:
        assert dead.card is not None
        await register_card(chain, dead_wallet, dead.card)
    live_wallet = await make_wallet(eth=1, musd=0)
    live = MeshNode(bytes(live_wallet.account.key), name="live", config=FAST)
    seeker_wallet = await make_wallet(eth=1, musd=0)
    seeker = MeshNode(bytes(seeker_wallet.account.key), name="seeker", config=FAST)
    tried: list[str] = []
    discovery = Discovery(
        seeker, sources=[registry_source(chain, seeker_wallet, exclude=[seeker.address])]
    )
    original_join = discovery.join

    failed: list[str] = []

    async def join(address: str, source: str = "bootstrap") -> Any:
        tried.append(address)
        try:
            return await original_join(address, source)
        except Exception:
            failed.append(address)
            raise

    discovery.join = join  # type: ignore[method-assign]
    async with live:
        assert live.card is not None
        await register_card(chain, live_wallet, live.card)
        live_discovery = Discovery(live)
        await live_discovery.start()
        async with seeker:
            await discovery.start()
            try:
                # Entries are tried at once: the live agent is known while the dead
                # entry's single try is still waiting for its answer.
                assert await wait_for_peers(seeker, 2, timeout=10)
                assert dead.card.bootstrap_address in tried
                assert seeker.peers.get(dead.address) is None
                gone = await eventually(lambda: failed, timeout=10)
                assert gone == [dead.card.bootstrap_address]
                await asyncio.sleep(FAST.heartbeat_s * 3)  # when a retry would come
                assert tried.count(dead.card.bootstrap_address) == 1  # no retries
            finally:
                await discovery.stop()
        await live_discovery.stop()


async def test_a_leaving_peer_is_down_at_once() -> None:
    # Liveness alone would take 30 beats.
    slow = MeshConfig(heartbeat_s=1.0, down_after_missed=30, remove_after_missed=60)
    boot = MeshNode(bytes(32 * [21]), name="boot", config=slow)
    async with boot:
        boot_discovery = Discovery(boot)
        await boot_discovery.start()
        assert boot.card is not None
        config = slow.model_copy(update={"bootstrap": (boot.card.bootstrap_address,)})
        leaver = MeshNode(bytes(32 * [22]), name="leaver", config=config)
        async with leaver:
            discovery = Discovery(leaver)
            await discovery.start()
            assert await wait_for_peers(boot, 2, timeout=10)
            # The presence subscription needs a beat to connect before a goodbye
            # can be heard.
            beats = await eventually(
                lambda: boot.counters["heartbeats"], lambda n: n > 0, timeout=10
            )
            assert beats > 0
            await discovery.stop()
        record = await eventually(
            lambda: boot.peers.get(leaver.address),
            lambda found: found is not None and found.state == "down",
            timeout=5,
        )
        assert record is not None and record.state == "down"
        assert boot.counters["peers_left"] == 1
        await boot_discovery.stop()
