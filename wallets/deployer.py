"""Deploy the agentmesh contract suite and fund dev accounts on a devnet."""

from __future__ import annotations

from typing import Any

from eth_account import Account
from web3 import AsyncWeb3

from agentmesh.chain.deployment import DeployedContract, Deployment
from agentmesh.chain.devnet import DEV_DEPLOYER_KEY
from agentmesh.contracts import load_artifact
from agentmesh.wallets.units import MUSD_DECIMALS
from agentmesh.wallets.wallet import Wallet


def dev_deployer(w3: AsyncWeb3[Any]) -> Wallet:
    """The devnet deployer and faucet: anvil's first, publicly known dev account."""
    return Wallet(Account.from_key(DEV_DEPLOYER_KEY), w3, name="devnet-deployer")


# Seconds a payee has to claim after a payer asks to close a channel (devnet suite).
CHANNEL_CHALLENGE_S = 3600


async def deploy_channels(deployer: Wallet) -> tuple[str, DeployedContract]:
    """Deploy the suite's PaymentChannel; ("PaymentChannel", its record)."""
    artifact = load_artifact("PaymentChannel")
    address, _ = await deployer.deploy(artifact, CHANNEL_CHALLENGE_S)
    return "PaymentChannel", DeployedContract(address=address, artifact_sha256=artifact.sha256)


# Staking on the devnet suite: a day to unbond, 10 mUSD to be ranked as a provider,
# permits for the 8 most-staked of at most 64 validators.
STAKING_UNBONDING_S = 24 * 3600
STAKING_MIN_PROVIDER = 10 * 10**MUSD_DECIMALS
STAKING_PERMITS = 8
STAKING_MAX_VALIDATORS = 64


async def deploy_staking(deployer: Wallet, token: str) -> tuple[str, DeployedContract]:
    """Deploy the suite's Staking for ``token`` (owned by the deployer); ("Staking", its
    record)."""
    artifact = load_artifact("Staking")
    address, _ = await deployer.deploy(
        artifact,
        token,
        STAKING_UNBONDING_S,
        STAKING_MIN_PROVIDER,
        STAKING_PERMITS,
        STAKING_MAX_VALIDATORS,
        deployer.address,
    )
    return "Staking", DeployedContract(address=address, artifact_sha256=artifact.sha256)


# Contracts added to the suite after devnets were first recorded: a recorded anvil
# devnet without one gets it on its next start (deployer, token) -> (name, record).
LATER_CONTRACTS = {
    "PaymentChannel": lambda deployer, token: deploy_channels(deployer),
    "Staking": deploy_staking,
}


async def deploy_suite(w3: AsyncWeb3[Any], rpc_url: str, deployer: Wallet) -> Deployment:
    """Deploy MeshUSD, TaskEscrow, AgentRegistry (which trusts that escrow),
    PaymentChannel and Staking."""
    token_art = load_artifact("MeshUSD")
    escrow_art = load_artifact("TaskEscrow")
    registry_art = load_artifact("AgentRegistry")
    token, _ = await deployer.deploy(token_art, deployer.address)
    escrow, _ = await deployer.deploy(escrow_art)
    registry, receipt = await deployer.deploy(registry_art, escrow)
    channel_name, channels = await deploy_channels(deployer)
    staking_name, staking = await deploy_staking(deployer, token)
    return Deployment(
        chain_id=await deployer.chain_id(),
        rpc_url=rpc_url,
        deployer=deployer.address,
        block_number=int(receipt["blockNumber"]),
        contracts={
            "MeshUSD": DeployedContract(address=token, artifact_sha256=token_art.sha256),
            "TaskEscrow": DeployedContract(address=escrow, artifact_sha256=escrow_art.sha256),
            "AgentRegistry": DeployedContract(
                address=registry, artifact_sha256=registry_art.sha256
            ),
            channel_name: channels,
            staking_name: staking,
        },
    )


async def fund_dev_accounts(
    w3: AsyncWeb3[Any], deployment: Deployment, deployer: Wallet, whole_musd: int
) -> None:
    """Mint ``whole_musd`` mUSD to each of anvil's dev accounts (they already hold ETH)."""
    if whole_musd <= 0:
        return
    address = AsyncWeb3.to_checksum_address(deployment.address("MeshUSD"))
    token = w3.eth.contract(address=address, abi=load_artifact("MeshUSD").abi)
    for account in await w3.eth.accounts:
        await deployer.transact(token.functions.mint(account, whole_musd * 10**MUSD_DECIMALS))


async def suite_is_deployed(w3: AsyncWeb3[Any], deployment: Deployment) -> bool:
    """True when every contract of ``deployment`` has code on the chain ``w3`` talks to."""
    if int(await w3.eth.chain_id) != deployment.chain_id:
        return False
    addresses = [contract.address for contract in deployment.contracts.values()]
    if deployment.exchange is not None:
        exchange = deployment.exchange
        addresses += [exchange.router, exchange.factory, *exchange.pairs.values()]
        if exchange.oracle is not None:
            addresses.append(exchange.oracle)
    for address in addresses:
        code = await w3.eth.get_code(AsyncWeb3.to_checksum_address(address))
        if len(code) == 0:
            return False
    return True
