"""Open a chain for library code: configured, the home's devnet, or a throw-away anvil.

``async with open_chain(home, config) as chain`` resolves the chain in this order:

1. ``chain.rpc_url`` in the config (any EVM JSON-RPC URL; on an anvil without an
   agentmesh deployment, the suite is deployed with the dev key);
2. the devnet that ``agentmesh devnet up`` keeps running for this home;
3. a throw-away anvil on a free loopback port, deployed and funded, stopped on exit.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_typing import ChecksumAddress
from web3 import AsyncWeb3
from web3.contract import AsyncContract
from web3.exceptions import Web3RPCError
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
from agentmesh.wallets.endpoints import connect
from agentmesh.wallets.exchange import deploy_exchange, deploy_oracle
from agentmesh.wallets.sending import GWEI, TxPolicy, set_tx_policy
from agentmesh.wallets.wallet import Wallet, guard_rpc

__all__ = ["Chain", "connect", "ensure_deployment", "open_chain"]

log = logging.getLogger("agentmesh.chain")


@dataclass
class Chain:
    """A connection plus the agentmesh deployment on it."""

    w3: AsyncWeb3[Any]
    rpc_url: str
    deployment: Deployment
    source: str  # "configured", "devnet" or "embedded"
    anvil: AnvilProcess | None = None
    # How transactions are sent here (fees, confirmations, replacement).
    policy: TxPolicy = TxPolicy()
    # An anvil whose suite the dev key deployed: the faucet and dev accounts may be
    # used. Off on any other chain, and on an anvil deployed with `chain deploy`.
    devnet: bool = True

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
            "anvil devnet that agentmesh could deploy to: deploy with `agentmesh chain "
            "deploy --rpc-url URL --wallet NAME`, or copy the record of an existing one there"
        )
    if path.exists() and Deployment.load(path).deployer != dev_deployer(w3).address:
        raise DevnetError(
            f"the contracts recorded in {path} (deployed with `agentmesh chain deploy`) "
            f"are not on the chain at {rpc_url}: was it reset? Deploy again with "
            "`agentmesh chain deploy`"
        )
    deployment = await _deploy_fresh(w3, rpc_url, musd)
    deployment.save(path)
    return deployment


async def is_anvil(w3: AsyncWeb3[Any], rpc_url: str = "the chain") -> bool:
    """True when the node is an anvil."""
    return "anvil" in str(await guard_rpc(w3.client_version, rpc_url)).lower()


async def automines(w3: AsyncWeb3[Any], rpc_url: str = "the chain") -> bool:
    """True on an anvil that mines each transaction as it arrives (no block time)."""
    request = w3.provider.make_request(RPCEndpoint("anvil_getAutomine"), [])
    try:
        reply = await guard_rpc(request, rpc_url)
    except Web3RPCError:
        return False
    return bool(reply.get("result"))


async def tx_policy_for(
    w3: AsyncWeb3[Any], config: Config, *, anvil: bool, rpc_url: str
) -> TxPolicy:
    """The transaction policy ``[chain]`` asks for on this chain (see ``ChainConfig``)."""
    settings = config.chain
    confirmations = settings.confirmations
    if confirmations is None:
        confirmations = 1 if anvil and await automines(w3, rpc_url) else 2
    return TxPolicy(
        confirmations=confirmations,
        max_fee_per_gas=int(settings.max_fee_gwei * GWEI),
        replace_after_s=settings.replace_after_s,
        timeout_s=settings.confirmations_timeout,
    )


@contextlib.asynccontextmanager
async def open_chain(
    home: Path, config: Config, *, allow_embedded: bool = True
) -> AsyncIterator[Chain]:
    """Resolve, connect to and (for a throw-away devnet) own a chain; see module doc.

    With ``allow_embedded=False`` (CLI commands whose effects must outlast them) a
    missing chain is an error instead of a throw-away anvil.
    """
    settings = config.chain
    musd = config.devnet.dev_account_musd
    anvil: AnvilProcess | None = None
    record = None if settings.rpc_url else running_devnet(home)
    urls: tuple[str, ...]
    if settings.rpc_url:
        urls, source = settings.rpc_urls, "configured"
    elif record is not None:
        urls, source = (record.rpc_url,), "devnet"
    elif allow_embedded:
        anvil = start_anvil(config.devnet)
        urls, source = (anvil.rpc_url,), "embedded"
    else:
        raise DevnetError(
            "no chain to use: start one with `agentmesh devnet up` or set chain.rpc_url "
            "in config.toml"
        )
    url = urls[0]
    w3 = connect(urls, settings.request_timeout_s, retry_first_s=settings.endpoint_retry_s)
    try:
        if source == "configured":
            chain_id = int(await guard_rpc(w3.eth.chain_id, url))
            path = home / "deployments" / f"{chain_id}.json"
            deployment = await ensure_deployment(w3, url, path, musd)
        elif source == "devnet":
            deployment = await ensure_deployment(w3, url, DevnetPaths.of(home).deployment, musd)
        else:
            deployment = await _deploy_fresh(w3, url, musd)
        anvil_node = await is_anvil(w3, url)
        policy = await tx_policy_for(w3, config, anvil=anvil_node, rpc_url=url)
        set_tx_policy(w3, policy)
        devnet = anvil_node and deployment.deployer == dev_deployer(w3).address
        if not devnet:
            # Said once, where an agent or command starts: no money appears by itself.
            log.info(
                "chain %d at %s: no devnet faucet or dev accounts here; %d confirmation(s), "
                "fees up to %s gwei, a stuck transaction replaced after %.0fs",
                deployment.chain_id,
                url,
                policy.confirmations,
                f"{settings.max_fee_gwei:g}",
                policy.replace_after_s,
            )
        yield Chain(w3, url, deployment, source, anvil, policy, devnet)
    finally:
        await w3.provider.disconnect()  # close the HTTP session with the connection
        if anvil is not None:
            anvil.stop()
            anvil.log_path.unlink(missing_ok=True)
