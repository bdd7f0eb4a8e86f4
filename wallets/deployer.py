"""Deploy the agentmesh contract suite and fund dev accounts on a devnet."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
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

# The protocol fee on escrow releases and channel claims in mUSD: 1%, to the validators'
# reward pool (Consensus).
PROTOCOL_FEE_BPS = 100

# Staking on the devnet suite: a day to unbond, 10 mUSD to be ranked as a provider,
# permits for the 8 most-staked of at most 64 validators.
STAKING_UNBONDING_S = 24 * 3600
STAKING_MIN_PROVIDER = 10 * 10**MUSD_DECIMALS
STAKING_PERMITS = 8
STAKING_MAX_VALIDATORS = 64

# Consensus: 10-minute epochs, 2 minutes after each to reveal, half of each epoch's
# reward pool to providers (by incentive) and half to validators (by agreement).
CONSENSUS_EPOCH_S = 600
CONSENSUS_REVEAL_S = 120
CONSENSUS_PROVIDER_SHARE_BPS = 5_000

# Jury: 3 jurors, a 1 mUSD dispute fee, 20% of a losing provider's stake slashed; a day
# to bring a dispute before the jury, then an hour each for evidence, commits, reveals.
JURY_SIZE = 3
JURY_FEE = 1 * 10**MUSD_DECIMALS
JURY_SLASH_BPS = 2_000
JURY_WINDOWS_S = (24 * 3600, 3600, 3600, 3600)


Contracts = Mapping[str, DeployedContract]


def _record(name: str, address: str) -> tuple[str, DeployedContract]:
    return name, DeployedContract(address=address, artifact_sha256=load_artifact(name).sha256)


async def deploy_channels(
    deployer: Wallet, fee_sink: str, token: str
) -> tuple[str, DeployedContract]:
    """Deploy the suite's PaymentChannel (its fee to ``fee_sink``); ("PaymentChannel",
    its record)."""
    address, _ = await deployer.deploy(
        load_artifact("PaymentChannel"), CHANNEL_CHALLENGE_S, fee_sink, token, PROTOCOL_FEE_BPS
    )
    return _record("PaymentChannel", address)


async def deploy_staking(deployer: Wallet, token: str) -> tuple[str, DeployedContract]:
    """Deploy the suite's Staking for ``token`` (owned by the deployer); ("Staking", its
    record)."""
    address, _ = await deployer.deploy(
        load_artifact("Staking"),
        token,
        STAKING_UNBONDING_S,
        STAKING_MIN_PROVIDER,
        STAKING_PERMITS,
        STAKING_MAX_VALIDATORS,
        deployer.address,
    )
    return _record("Staking", address)


async def deploy_consensus(
    deployer: Wallet, staking: str, token: str
) -> tuple[str, DeployedContract]:
    """Deploy the suite's Consensus over ``staking``; ("Consensus", its record)."""
    address, _ = await deployer.deploy(
        load_artifact("Consensus"),
        staking,
        token,
        CONSENSUS_EPOCH_S,
        CONSENSUS_REVEAL_S,
        CONSENSUS_PROVIDER_SHARE_BPS,
    )
    return _record("Consensus", address)


async def deploy_jury(
    deployer: Wallet, escrow: str, staking: str, token: str, reward_pool: str
) -> tuple[str, DeployedContract]:
    """Deploy the suite's Jury and make it Staking's slasher; ("Jury", its record)."""
    address, _ = await deployer.deploy(
        load_artifact("Jury"),
        escrow,
        staking,
        token,
        reward_pool,
        JURY_SIZE,
        JURY_FEE,
        JURY_SLASH_BPS,
        list(JURY_WINDOWS_S),
    )
    staking_contract = deployer.w3.eth.contract(
        address=AsyncWeb3.to_checksum_address(staking), abi=load_artifact("Staking").abi
    )
    await deployer.transact(staking_contract.functions.setSlasher(address))
    return _record("Jury", address)


async def _later_consensus(deployer: Wallet, contracts: Contracts) -> tuple[str, DeployedContract]:
    return await deploy_consensus(
        deployer, contracts["Staking"].address, contracts["MeshUSD"].address
    )


async def _later_jury(deployer: Wallet, contracts: Contracts) -> tuple[str, DeployedContract]:
    return await deploy_jury(
        deployer,
        contracts["TaskEscrow"].address,
        contracts["Staking"].address,
        contracts["MeshUSD"].address,
        contracts["Consensus"].address,
    )


# Contracts added to the suite after devnets were first recorded, in deployment order: a
# recorded anvil devnet without one gets it on its next start (deployer, the contracts
# recorded so far) -> (name, record). A TaskEscrow deployed before the protocol fee
# keeps charging none.
LATER_CONTRACTS: dict[
    str, Callable[[Wallet, Contracts], Awaitable[tuple[str, DeployedContract]]]
] = {
    "Staking": lambda deployer, contracts: deploy_staking(deployer, contracts["MeshUSD"].address),
    "Consensus": _later_consensus,
    "PaymentChannel": lambda deployer, contracts: deploy_channels(
        deployer, contracts["Consensus"].address, contracts["MeshUSD"].address
    ),
    "Jury": _later_jury,
}


async def deploy_suite(w3: AsyncWeb3[Any], rpc_url: str, deployer: Wallet) -> Deployment:
    """Deploy MeshUSD, Staking, Consensus (the reward pool), TaskEscrow and PaymentChannel
    (both paying the protocol fee to Consensus), AgentRegistry (which trusts that escrow)
    and Jury (the escrow's arbiter and Staking's slasher)."""
    token_art = load_artifact("MeshUSD")
    token, _ = await deployer.deploy(token_art, deployer.address)
    contracts = dict([_record("MeshUSD", token)])
    contracts.update([await deploy_staking(deployer, token)])
    contracts.update([await deploy_consensus(deployer, contracts["Staking"].address, token)])
    pool = contracts["Consensus"].address
    escrow, _ = await deployer.deploy(load_artifact("TaskEscrow"), pool, token, PROTOCOL_FEE_BPS)
    contracts.update([_record("TaskEscrow", escrow)])
    registry, receipt = await deployer.deploy(load_artifact("AgentRegistry"), escrow)
    contracts.update([_record("AgentRegistry", registry)])
    contracts.update([await deploy_channels(deployer, pool, token)])
    contracts.update(
        [await deploy_jury(deployer, escrow, contracts["Staking"].address, token, pool)]
    )
    return Deployment(
        chain_id=await deployer.chain_id(),
        rpc_url=rpc_url,
        deployer=deployer.address,
        block_number=int(receipt["blockNumber"]),
        contracts=contracts,
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
