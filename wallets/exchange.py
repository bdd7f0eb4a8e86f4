"""Uniswap V2 on the devnet: WETH9, the factory and Router02 from the npm packages.

``make setup`` installs ``@uniswap/v2-core`` and ``@uniswap/v2-periphery`` (pinned) into
``.tools/``; their build artifacts are deployed as they are (GPL-3.0, so they are read
from the installed packages, never copied into this repository). The devnet deployer
also deploys a volatile test asset (``DevToken`` "Mesh Gold", MGLD) and seeds two pools
at known prices, so that a two-hop path mUSD -> WETH -> MGLD exists:

- WETH/mUSD: 100 WETH and 200,000 mUSD (1 WETH = 2,000 mUSD);
- MGLD/WETH: 5,000 MGLD and 50 WETH (1 MGLD = 0.01 WETH = 20 mUSD).

Next to them, agentmesh's own ``TwapOracle`` for the factory's pairs (observations every
``ORACLE_PERIOD`` seconds, windows up to ``ORACLE_GRANULARITY - 2`` periods): the price
an ``AgentWallet`` checks its swaps against. The deployer records each pool's first
observation; after that whoever trades keeps it fresh (``update`` is open to anyone).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

from eth_utils.crypto import keccak
from web3 import AsyncWeb3

from agentmesh.chain.deployment import Exchange
from agentmesh.contracts import Artifact, load_artifact
from agentmesh.errors import ToolMissingError
from agentmesh.tools import SETUP_HINT, find_tools_dir
from agentmesh.wallets.oracle import TwapOracleClient
from agentmesh.wallets.units import MUSD_DECIMALS
from agentmesh.wallets.wallet import Wallet

WETH_DECIMALS = GOLD_DECIMALS = 18
GOLD_NAME, GOLD_SYMBOL = "Mesh Gold", "MGLD"
# Five-minute observations kept for a little over four hours: windows of 10 min to 4 h.
ORACLE_PERIOD = 300
ORACLE_GRANULARITY = 50


@dataclass(frozen=True, slots=True)
class Seed:
    """One pool the deployer seeds: whole units of each side."""

    a: str
    b: str
    amount_a: int
    amount_b: int


# "BASE/QUOTE": a pool's price is quote per base (1 WETH = 2,000 mUSD).
SEEDS = (Seed("WETH", "mUSD", 100, 200_000), Seed("MGLD", "WETH", 5_000, 50))
# Where each npm artifact lives under node_modules.
NPM_ARTIFACTS = {
    "WETH9": "@uniswap/v2-periphery/build/WETH9.json",
    "UniswapV2Factory": "@uniswap/v2-core/build/UniswapV2Factory.json",
    "UniswapV2Pair": "@uniswap/v2-core/build/UniswapV2Pair.json",
    "UniswapV2Router02": "@uniswap/v2-periphery/build/UniswapV2Router02.json",
}


@cache
def npm_artifact(name: str) -> Artifact:
    """An artifact of the installed Uniswap V2 packages (``make setup`` puts them in
    ``.tools``); a clear error if they are missing."""
    try:
        path = find_tools_dir() / "node_modules" / NPM_ARTIFACTS[name]
    except ToolMissingError:
        raise ToolMissingError(f"Uniswap V2 artifact {name}", SETUP_HINT) from None
    if not path.is_file():
        raise ToolMissingError(f"Uniswap V2 artifact {path}", SETUP_HINT)
    data = json.loads(path.read_text())
    bytecode = data.get("bytecode") or data["evm"]["bytecode"]["object"]
    deployed = data.get("evm", {}).get("deployedBytecode", {}).get("object", "")
    return Artifact(
        name=name,
        abi=data["abi"],
        bytecode=bytecode if bytecode.startswith("0x") else "0x" + bytecode,
        deployed_bytecode=deployed,
        sha256=_sha256(path),
    )


def pair_init_code_hash() -> bytes:
    """keccak256 of the npm core pair's creation code: what the factory's CREATE2 uses
    (and Router02 hard-codes) to place each pair."""
    return keccak(hexstr=npm_artifact("UniswapV2Pair").bytecode)


def _sha256(path: Path) -> str:
    return "0x" + hashlib.sha256(path.read_bytes()).hexdigest()


async def deploy_exchange(w3: AsyncWeb3[Any], deployer: Wallet, musd: str) -> Exchange:
    """Deploy WETH9, the factory, Router02 and MGLD, and seed the pools (see the module
    doc). ``musd``: the suite's MeshUSD, which the deployer owns and mints."""
    weth, _ = await deployer.deploy(npm_artifact("WETH9"))
    factory, _ = await deployer.deploy(npm_artifact("UniswapV2Factory"), deployer.address)
    router, _ = await deployer.deploy(npm_artifact("UniswapV2Router02"), factory, weth)
    gold, _ = await deployer.deploy(
        load_artifact("DevToken"), GOLD_NAME, GOLD_SYMBOL, GOLD_DECIMALS, deployer.address
    )
    tokens = {"mUSD": musd, "WETH": weth, "MGLD": gold}
    decimals = {"mUSD": MUSD_DECIMALS, "WETH": WETH_DECIMALS, "MGLD": GOLD_DECIMALS}

    def units(symbol: str, whole: int) -> int:
        return int(whole * 10 ** decimals[symbol])

    need = {symbol: 0 for symbol in tokens}
    for seed in SEEDS:
        need[seed.a] += units(seed.a, seed.amount_a)
        need[seed.b] += units(seed.b, seed.amount_b)
    weth_c = _erc20(w3, weth, npm_artifact("WETH9").abi)
    await deployer.transact(weth_c.functions.deposit(), value=need["WETH"])
    for symbol, artifact in (("mUSD", "MeshUSD"), ("MGLD", "DevToken")):
        minter = _erc20(w3, tokens[symbol], load_artifact(artifact).abi)
        await deployer.transact(minter.functions.mint(deployer.address, need[symbol]))
    for symbol, address in tokens.items():
        token = _erc20(w3, address, weth_c.abi)  # WETH9's ABI holds the ERC-20 approve
        await deployer.transact(token.functions.approve(router, need[symbol]))
    router_c = w3.eth.contract(address=router, abi=npm_artifact("UniswapV2Router02").abi)
    factory_c = w3.eth.contract(address=factory, abi=npm_artifact("UniswapV2Factory").abi)
    latest = await w3.eth.get_block("latest")
    pairs = {}
    for seed in SEEDS:
        a, b = tokens[seed.a], tokens[seed.b]
        await deployer.transact(
            router_c.functions.addLiquidity(
                a,
                b,
                units(seed.a, seed.amount_a),
                units(seed.b, seed.amount_b),
                units(seed.a, seed.amount_a),
                units(seed.b, seed.amount_b),
                deployer.address,
                int(latest["timestamp"]) + 3600,
            )
        )
        pairs[f"{seed.a}/{seed.b}"] = str(await factory_c.functions.getPair(a, b).call())
    exchange = Exchange(
        weth=weth, factory=factory, router=router, tokens=tokens, decimals=decimals, pairs=pairs
    )
    return await deploy_oracle(w3, deployer, exchange)


async def deploy_oracle(w3: AsyncWeb3[Any], deployer: Wallet, exchange: Exchange) -> Exchange:
    """Deploy the ``TwapOracle`` of ``exchange``'s factory and record each pool's first
    observation; returns ``exchange`` with the oracle's address."""
    oracle, _ = await deployer.deploy(
        load_artifact("TwapOracle"),
        exchange.factory,
        pair_init_code_hash(),
        ORACLE_PERIOD,
        ORACLE_GRANULARITY,
    )
    await TwapOracleClient(deployer, oracle).update_pools(exchange)
    return exchange.model_copy(update={"oracle": oracle})


def _erc20(w3: AsyncWeb3[Any], address: str, abi: list[dict[str, Any]]) -> Any:
    return w3.eth.contract(address=AsyncWeb3.to_checksum_address(address), abi=abi)


async def pool_prices(w3: AsyncWeb3[Any], exchange: Exchange) -> dict[str, dict[str, Any]]:
    """Each pool's address, reserves (whole units) and spot price (quote per base)."""
    pair_abi = npm_artifact("UniswapV2Pair").abi
    by_address = {address.lower(): symbol for symbol, address in exchange.tokens.items()}
    prices: dict[str, dict[str, Any]] = {}
    for name, address in exchange.pairs.items():
        pair = w3.eth.contract(address=AsyncWeb3.to_checksum_address(address), abi=pair_abi)
        token0 = str(await pair.functions.token0().call()).lower()
        reserve0, reserve1, _ = await pair.functions.getReserves().call()
        a, b = name.split("/")
        reserves = {by_address[token0]: reserve0}
        other = b if by_address[token0] == a else a
        reserves[other] = reserve1
        whole = {
            symbol: Decimal(amount) / Decimal(10 ** exchange.decimals[symbol])
            for symbol, amount in reserves.items()
        }
        prices[name] = {
            "pair": address,
            "reserves": {symbol: str(amount) for symbol, amount in whole.items()},
            "price": f"{(whole[b] / whole[a]).normalize():f}" if whole[a] else "0",
        }
    return prices
