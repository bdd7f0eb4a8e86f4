"""Deploy the agentmesh suite to any EVM chain from a funded wallet, and check it.

``agentmesh chain deploy`` is the way onto a chain agentmesh does not run itself (a
public testnet, an L2, a company chain, an anvil run by someone else). Unlike the
devnet, nothing is free there: the deploying wallet pays every fee, so the cost is
estimated first and a wallet that cannot cover it is refused before anything is sent.
Each contract's code on chain is then compared with the artifact it came from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import rlp  # type: ignore[import-untyped]  # eth-account's RLP
from eth_typing import ChecksumAddress
from eth_utils.crypto import keccak
from web3 import AsyncWeb3
from web3.exceptions import ContractLogicError, Web3RPCError
from web3.types import TxParams, TxReceipt

from agentmesh.chain.deployment import Deployment, Exchange
from agentmesh.contracts import Artifact, load_artifact
from agentmesh.errors import DevnetError, InsufficientFundsError, TransactionError
from agentmesh.wallets.deployer import deploy_suite
from agentmesh.wallets.exchange import (
    WETH_DECIMALS,
    _erc20,
    deploy_oracle,
    npm_artifact,
)
from agentmesh.wallets.units import ETH_DECIMALS, MUSD_DECIMALS, format_amount
from agentmesh.wallets.wallet import GAS_MARGIN, Wallet, guard_rpc

PUSH1, PUSH32 = 0x60, 0x7F
SETUP_CALL_GAS = 150_000  # what a setup call (setSlasher, ...) is counted at


def create_address(sender: str, nonce: int) -> ChecksumAddress:
    """The address a CREATE from ``sender`` with ``nonce`` makes."""
    encoded = rlp.encode([bytes.fromhex(sender[2:]), nonce])
    return AsyncWeb3.to_checksum_address(keccak(encoded)[12:])


class _CostProbe(Wallet):
    """A wallet that estimates what it is asked to send instead of sending it: running
    the real deployment code through it prices exactly what that code would send.

    Each contract it "deploys" gets its runtime code at its future address in a state
    override, so later estimates (a constructor reading an earlier contract, a setup
    call) run against it.
    """

    def __init__(self, wallet: Wallet, nonce: int) -> None:
        super().__init__(wallet.account, wallet.w3, name=wallet.name)
        self.nonce = nonce
        self.gas = 0
        self.transactions = 0
        self.overrides: dict[str, dict[str, str]] = {}
        self._runtime: str | None = None

    async def deploy(self, artifact: Artifact, *args: Any) -> tuple[ChecksumAddress, TxReceipt]:
        self._runtime = artifact.deployed_bytecode
        return await super().deploy(artifact, *args)

    async def send(self, tx: TxParams, *, sent: Any = None) -> TxReceipt:
        probe: dict[str, Any] = {"from": self.address, "value": 0, **tx}
        address = create_address(self.address, self.nonce) if "to" not in probe else None
        # The sender's nonce as it will be then: a creation lands where it will for real.
        self.overrides[self.address] = {"nonce": hex(self.nonce)}
        estimate = self.w3.eth.estimate_gas(probe, "latest", self.overrides)  # type: ignore[arg-type]
        try:
            gas = int(await guard_rpc(estimate, self.rpc_url))
        except (ContractLogicError, Web3RPCError):
            if address is not None:
                raise  # a creation must estimate: its cost is most of the total
            # A setup call on a contract that exists here only as code, without the
            # storage its constructor writes (its owner): priced at a generous fixed cost.
            gas = SETUP_CALL_GAS
        if address is not None and self._runtime:
            runtime = self._runtime
            self.overrides[address] = {
                "code": runtime if runtime.startswith("0x") else "0x" + runtime
            }
        self._runtime = None
        self.nonce += 1
        self.gas += int(gas * GAS_MARGIN)
        self.transactions += 1
        receipt: dict[str, Any] = {
            "contractAddress": address,
            "blockNumber": 0,
            "status": 1,
            "transactionHash": b"\0" * 32,
            "gasUsed": gas,
            "logs": [],
        }
        return receipt  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class Cost:
    """What a deployment is estimated to cost."""

    gas: int
    transactions: int
    max_fee_per_gas: int

    @property
    def wei(self) -> int:
        return self.gas * self.max_fee_per_gas


async def estimate_suite(wallet: Wallet, rpc_url: str) -> Cost:
    """Gas and the most it can cost to deploy the suite from ``wallet`` now."""
    nonce = int(
        await guard_rpc(wallet.w3.eth.get_transaction_count(wallet.address, "pending"), rpc_url)
    )
    probe = _CostProbe(wallet, nonce)
    await deploy_suite(wallet.w3, rpc_url, probe)
    max_fee, _ = await wallet._fee_fields()
    return Cost(probe.gas, probe.transactions, max_fee)


async def check_funds(wallet: Wallet, cost: Cost, *, also: int = 0) -> int:
    """The wallet's balance; ``InsufficientFundsError`` when it cannot pay ``cost`` plus
    ``also`` wei it will send (ETH for a pool)."""
    balance = await wallet.eth_balance()
    if balance < cost.wei + also:
        extra = f", plus {format_amount(also, ETH_DECIMALS, 'ETH')} for the pool" if also else ""
        raise InsufficientFundsError(
            f"{wallet.name or wallet.address} holds "
            f"{format_amount(balance, ETH_DECIMALS, 'ETH')}; deploying the suite may cost up "
            f"to {format_amount(cost.wei, ETH_DECIMALS, 'ETH')} ({cost.transactions} "
            f"transactions, {cost.gas:,} gas at up to {cost.max_fee_per_gas / 10**9:.3f} gwei)"
            f"{extra}: send it ETH first"
        )
    return balance


async def deploy_to_chain(
    wallet: Wallet,
    rpc_url: str,
    *,
    router: str | None = None,
    pool: tuple[int, int] | None = None,
    record: Path | None = None,
) -> Deployment:
    """Deploy the suite from ``wallet`` (which pays, and owns MeshUSD); with ``router``,
    record that existing Uniswap V2 Router02 (its factory and WETH) and deploy the TWAP
    oracle of its factory. ``pool``: (wei, mUSD units) to open the WETH/mUSD pool with,
    minted and wrapped by ``wallet``. ``record``: where the deployment record is saved,
    as soon as the suite is deployed and again with the exchange."""
    deployment = await deploy_suite(wallet.w3, rpc_url, wallet)
    if record is not None:
        deployment.save(record)  # paid for: never lost to a later failure
    if router is None:
        return deployment
    exchange = await existing_exchange(wallet, router, deployment.address("MeshUSD"), pool)
    exchange = await deploy_oracle(wallet.w3, wallet, exchange)
    deployment = deployment.model_copy(update={"exchange": exchange})
    if record is not None:
        deployment.save(record)
    return deployment


async def existing_exchange(
    wallet: Wallet, router: str, musd: str, pool: tuple[int, int] | None
) -> Exchange:
    """The Exchange record of the Uniswap V2 behind ``router`` for mUSD and WETH."""
    w3 = wallet.w3
    address = AsyncWeb3.to_checksum_address(router)
    if len(await w3.eth.get_code(address)) == 0:
        raise DevnetError(f"no contract at router address {router}")
    router_c = w3.eth.contract(address=address, abi=npm_artifact("UniswapV2Router02").abi)
    try:
        factory = str(await router_c.functions.factory().call())
        weth = str(await router_c.functions.WETH().call())
    except Exception as exc:  # noqa: BLE001 - any failure means: not a Router02
        raise DevnetError(f"{router} does not answer as a Uniswap V2 Router02: {exc}") from None
    factory_c = w3.eth.contract(
        address=AsyncWeb3.to_checksum_address(factory), abi=npm_artifact("UniswapV2Factory").abi
    )
    if pool is not None:
        await _open_pool(wallet, router_c, weth, musd, pool)
    pair = str(await factory_c.functions.getPair(weth, musd).call())
    pairs = {} if int(pair, 16) == 0 else {"WETH/mUSD": pair}
    return Exchange(
        weth=weth,
        factory=factory,
        router=address,
        tokens={"mUSD": musd, "WETH": weth},
        decimals={"mUSD": MUSD_DECIMALS, "WETH": WETH_DECIMALS},
        pairs=pairs,
    )


async def _open_pool(
    wallet: Wallet, router_c: Any, weth: str, musd: str, pool: tuple[int, int]
) -> None:
    """Add ``pool`` liquidity to WETH/mUSD: ``wallet`` mints the mUSD (it owns MeshUSD)
    and wraps the ETH."""
    wei, units = pool
    w3 = wallet.w3
    weth_c = _erc20(w3, weth, npm_artifact("WETH9").abi)
    await wallet.transact(weth_c.functions.deposit(), value=wei)
    minter = _erc20(w3, musd, load_artifact("MeshUSD").abi)
    await wallet.transact(minter.functions.mint(wallet.address, units))
    for token, amount in ((weth, wei), (musd, units)):
        await wallet.transact(
            _erc20(w3, token, weth_c.abi).functions.approve(router_c.address, amount)
        )
    head = await w3.eth.get_block("latest")
    await wallet.transact(
        router_c.functions.addLiquidity(
            weth, musd, wei, units, wei, units, wallet.address, int(head["timestamp"]) + 3600
        )
    )


# ---------------------------------------------------------------------- code check


def _masked(code: bytes) -> list[tuple[int, int]]:
    """Byte ranges of ``code`` that hold immutables: PUSH32 operands that are all zero
    in an artifact (the compiler fills them in at construction)."""
    spans = []
    i = 0
    while i < len(code):
        op = code[i]
        if PUSH1 <= op <= PUSH32:
            width = op - PUSH1 + 1
            if op == PUSH32 and not any(code[i + 1 : i + 1 + width]):
                spans.append((i + 1, i + 1 + width))
            i += width
        i += 1
    return spans


def code_matches(artifact_runtime: bytes, on_chain: bytes) -> bool:
    """True when ``on_chain`` is ``artifact_runtime`` with its immutables filled in."""
    if len(artifact_runtime) != len(on_chain) or not artifact_runtime:
        return False
    expected = bytearray(artifact_runtime)
    actual = bytearray(on_chain)
    for start, end in _masked(artifact_runtime):
        expected[start:end] = actual[start:end]
    return expected == actual


async def verify_code(w3: AsyncWeb3[Any], deployment: Deployment, rpc_url: str) -> dict[str, str]:
    """Each suite contract's state on chain: "matches", "no code" or "differs"."""
    states: dict[str, str] = {}
    for name, contract in deployment.contracts.items():
        artifact = load_artifact(name)
        code = await guard_rpc(
            w3.eth.get_code(AsyncWeb3.to_checksum_address(contract.address)), rpc_url
        )
        if len(code) == 0:
            states[name] = "no code"
        elif artifact.sha256 != contract.artifact_sha256:
            states[name] = "other artifact"  # deployed from an older build of the suite
        else:
            runtime = bytes.fromhex(artifact.deployed_bytecode.removeprefix("0x"))
            states[name] = "matches" if code_matches(runtime, bytes(code)) else "differs"
    return states


def require_matching(states: dict[str, str], rpc_url: str) -> None:
    """Raise naming every contract whose code is not the artifact's."""
    wrong = {name: state for name, state in states.items() if state != "matches"}
    if wrong:
        listed = ", ".join(f"{name} ({state})" for name, state in sorted(wrong.items()))
        raise TransactionError(
            f"the code on the chain at {rpc_url} does not match the agentmesh artifacts: {listed}"
        )
