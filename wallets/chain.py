"""Open a chain for library code: configured, the home's devnet, or a throw-away anvil.

``async with open_chain(home, config) as chain`` resolves the chain in this order:

1. ``chain.rpc_url`` in the config (any EVM JSON-RPC URL; on an anvil without an
   agentmesh deployment, the suite is deployed with the dev key);
2. the devnet that ``agentmesh devnet up`` keeps running for this home;
3. a throw-away anvil on a free loopback port, deployed and funded, stopped on exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import ClientSession, TCPConnector
from eth_typing import ChecksumAddress
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.contract import AsyncContract
from web3.types import RPCEndpoint

from agentmesh.chain.deployment import Deployment
from agentmesh.chain.devnet import AnvilProcess, start_anvil
from agentmesh.chain.home import DevnetPaths, running_devnet
from agentmesh.config import Config
from agentmesh.contracts import load_artifact
from agentmesh.errors import DevnetError, ToolMissingError
from agentmesh.wallets.deployer import (
    LATER_CONTRACTS,
    deploy_suite,
    dev_deployer,
    fund_dev_accounts,
    suite_is_deployed,
)
from agentmesh.wallets.exchange import deploy_exchange, deploy_oracle
from agentmesh.wallets.wallet import Wallet, guard_rpc

log = logging.getLogger("agentmesh.chain")

KEEPALIVE_S = 15.0  # idle pooled connections close after this


class KeepAliveHTTPProvider(AsyncHTTPProvider):
    """web3's HTTP provider with a connection pool that keeps connections open.

    web3 builds its aiohttp session with ``force_close=True``: every JSON-RPC request
    opens and closes its own TCP connection (~70 requests per purchase; measured: one
    connect per request). This provider caches a keep-alive session per event loop in
    web3's own session cache, so ``disconnect()`` still closes it.
    """

    _pooled_loop: asyncio.AbstractEventLoop | None = None

    async def _make_request(self, method: RPCEndpoint, request_data: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        if self._pooled_loop is not loop:
            self._pooled_loop = loop
            mine = ClientSession(
                raise_for_status=True,
                connector=TCPConnector(limit=64, keepalive_timeout=KEEPALIVE_S),
            )
            if await self.cache_async_session(mine) is not mine:
                await mine.close()  # this loop already had one: keep that
        return await super()._make_request(method, request_data)


# Default web3 middleware that costs CPU on every call and guards nothing here:
# ``validation`` compares each transaction's chainId with the node's (Wallet signs with
# the node's chain id, and a node refuses a transaction for another chain) and
# ``ens_name_to_address`` resolves ENS names (agentmesh takes addresses only).
# Measured: an eth_call 1.61 -> 1.13 ms CPU, a transaction 2.98 -> 2.32 ms.
UNUSED_MIDDLEWARE = ("validation", "ens_name_to_address")


def connect(rpc_url: str, timeout: float = 30.0) -> AsyncWeb3[Any]:
    """An AsyncWeb3 on ``rpc_url``, keeping its HTTP connections open."""
    # Request caching answers repeat eth_chainId lookups from memory.
    provider = KeepAliveHTTPProvider(
        rpc_url, request_kwargs={"timeout": timeout}, cache_allowed_requests=True
    )
    w3 = AsyncWeb3(provider)
    for name in UNUSED_MIDDLEWARE:
        w3.middleware_onion.remove(name)
    return w3


@dataclass
class Chain:
    """A connection plus the agentmesh deployment on it."""

    w3: AsyncWeb3[Any]
    rpc_url: str
    deployment: Deployment
    source: str  # "configured", "devnet" or "embedded"
    anvil: AnvilProcess | None = None

    def contract(self, name: str, address: str | None = None) -> AsyncContract:
        """A contract object for ``name`` at its deployed (or the given) address."""
        target = address or self.deployment.address(name)
        return self.w3.eth.contract(
            address=AsyncWeb3.to_checksum_address(target), abi=load_artifact(name).abi
        )

    @property
    def token_address(self) -> ChecksumAddress:
        return AsyncWeb3.to_checksum_address(self.deployment.address("MeshUSD"))


async def _deploy_fresh(w3: AsyncWeb3[Any], rpc_url: str, musd: int) -> Deployment:
    deployer = dev_deployer(w3)
    deployment = await deploy_suite(w3, rpc_url, deployer)
    await fund_dev_accounts(w3, deployment, deployer, musd)
    return await _with_exchange(w3, deployment, deployer)


async def _with_exchange(
    w3: AsyncWeb3[Any], deployment: Deployment, deployer: Wallet
) -> Deployment:
    """``deployment`` with Uniswap V2 deployed and seeded next to it; unchanged (with a
    warning) where the npm packages are not installed: the market does not need it."""
    try:
        exchange = await deploy_exchange(w3, deployer, deployment.address("MeshUSD"))
    except ToolMissingError as exc:
        log.warning("no Uniswap V2 on this devnet: %s", exc.user_message)
        return deployment
    return deployment.model_copy(update={"exchange": exchange})


async def _upgrade_exchange(
    w3: AsyncWeb3[Any], deployment: Deployment, deployer: Wallet
) -> Deployment:
    if deployment.exchange is None:
        return await _with_exchange(w3, deployment, deployer)
    exchange = await deploy_oracle(w3, deployer, deployment.exchange)
    return deployment.model_copy(update={"exchange": exchange})


async def ensure_deployment(w3: AsyncWeb3[Any], rpc_url: str, path: Path, musd: int) -> Deployment:
    """The deployment recorded at ``path`` if it is live on ``w3``, else a fresh one."""
    if path.exists():
        recorded = Deployment.load(path)
        if await guard_rpc(suite_is_deployed(w3, recorded), rpc_url):
            deployer = dev_deployer(w3)
            if (
                (recorded.exchange is None or recorded.exchange.oracle is None)
                and recorded.deployer == deployer.address
                and "anvil" in str(await guard_rpc(w3.client_version, rpc_url)).lower()
            ):
                # A devnet deployed before the exchange (or its oracle) existed: add it.
                recorded = await guard_rpc(_upgrade_exchange(w3, recorded, deployer), rpc_url)
                recorded.save(path)
            missing = [name for name in LATER_CONTRACTS if name not in recorded.contracts]
            if (
                missing
                and recorded.deployer == deployer.address
                and "anvil" in str(await guard_rpc(w3.client_version, rpc_url)).lower()
            ):
                # A devnet deployed before these contracts existed: add them.
                contracts = dict(recorded.contracts)
                for later in missing:
                    name, record = await guard_rpc(
                        LATER_CONTRACTS[later](deployer, contracts), rpc_url
                    )
                    contracts[name] = record
                recorded = recorded.model_copy(update={"contracts": contracts})
                recorded.save(path)
            if recorded.rpc_url != rpc_url:
                recorded = recorded.model_copy(update={"rpc_url": rpc_url})
                recorded.save(path)
            return recorded
    client = str(await guard_rpc(w3.client_version, rpc_url)).lower()
    if "anvil" not in client:
        raise DevnetError(
            f"no agentmesh deployment for {rpc_url} in {path}, and the chain is not an "
            "anvil devnet that agentmesh could deploy to"
        )
    deployment = await _deploy_fresh(w3, rpc_url, musd)
    deployment.save(path)
    return deployment


@contextlib.asynccontextmanager
async def open_chain(
    home: Path, config: Config, *, allow_embedded: bool = True
) -> AsyncIterator[Chain]:
    """Resolve, connect to and (for a throw-away devnet) own a chain; see module doc.

    With ``allow_embedded=False`` (CLI commands whose effects must outlast them) a
    missing chain is an error instead of a throw-away anvil.
    """
    timeout = config.chain.confirmations_timeout
    musd = config.devnet.dev_account_musd
    anvil: AnvilProcess | None = None
    record = None if config.chain.rpc_url else running_devnet(home)
    if config.chain.rpc_url:
        url, source = config.chain.rpc_url, "configured"
    elif record is not None:
        url, source = record.rpc_url, "devnet"
    elif allow_embedded:
        anvil = start_anvil(config.devnet)
        url, source = anvil.rpc_url, "embedded"
    else:
        raise DevnetError(
            "no chain to use: start one with `agentmesh devnet up` or set chain.rpc_url "
            "in config.toml"
        )
    w3 = connect(url, timeout)
    try:
        if source == "configured":
            chain_id = int(await guard_rpc(w3.eth.chain_id, url))
            path = home / "deployments" / f"{chain_id}.json"
            deployment = await ensure_deployment(w3, url, path, musd)
        elif source == "devnet":
            deployment = await ensure_deployment(w3, url, DevnetPaths.of(home).deployment, musd)
        else:
            deployment = await _deploy_fresh(w3, url, musd)
        yield Chain(w3, url, deployment, source, anvil)
    finally:
        await w3.provider.disconnect()  # close the HTTP session with the connection
        if anvil is not None:
            anvil.stop()
            anvil.log_path.unlink(missing_ok=True)
