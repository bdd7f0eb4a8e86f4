"""Uniswap V2 on the devnet, from the pinned npm packages (real anvil, real bytecode):
seeded pools at known prices, Router02's init-code hash matching the core pair, swaps
through one and two pools that conserve every token, and the upgrade of a devnet
deployed before the exchange existed."""

from __future__ import annotations

from typing import Any

import pytest
from eth_utils.crypto import keccak
from web3 import AsyncWeb3

from agentmesh.chain.devnet import start_anvil
from agentmesh.config import DevnetConfig
from agentmesh.contracts import load_artifact
from agentmesh.errors import ToolMissingError
from agentmesh.wallets import exchange as ex
from agentmesh.wallets.chain import Chain, _deploy_fresh, connect, ensure_deployment
from agentmesh.wallets.deployer import deploy_suite, dev_deployer
from agentmesh.wallets.wallet import Wallet
from tests.helpers import WalletFactory, chain_now

WETH = 10**18
MUSD = 10**6


def contract(chain: Chain, address: str, name: str) -> Any:
    return chain.w3.eth.contract(
        address=AsyncWeb3.to_checksum_address(address), abi=ex.npm_artifact(name).abi
    )


def amount_out(amount_in: int, reserve_in: int, reserve_out: int) -> int:
    """Uniswap V2's constant-product output with its 0.3% fee."""
    with_fee = amount_in * 997
    return with_fee * reserve_out // (reserve_in * 1000 + with_fee)


async def reserves(chain: Chain, pool: str, first: str) -> tuple[int, int]:
    """The pool's reserves, ``first``'s side first."""
    exchange = chain.deployment.exchange
    assert exchange is not None
    pair = contract(chain, exchange.pairs[pool], "UniswapV2Pair")
    r0, r1, _ = await pair.functions.getReserves().call()
    token0 = str(await pair.functions.token0().call()).lower()
    return (r0, r1) if token0 == exchange.tokens[first].lower() else (r1, r0)


async def balance(chain: Chain, symbol: str, owner: str) -> int:
    exchange = chain.deployment.exchange
    assert exchange is not None
    token = contract(chain, exchange.tokens[symbol], "WETH9")  # the ERC-20 subset
    return int(await token.functions.balanceOf(AsyncWeb3.to_checksum_address(owner)).call())


async def test_pools_are_seeded_at_known_prices(chain: Chain) -> None:
    exchange = chain.deployment.exchange
    assert exchange is not None
    assert await reserves(chain, "WETH/mUSD", "WETH") == (100 * WETH, 200_000 * MUSD)
    assert await reserves(chain, "MGLD/WETH", "MGLD") == (5_000 * 10**18, 50 * WETH)
    prices = await ex.pool_prices(chain.w3, exchange)
    assert {name: p["price"] for name, p in prices.items()} == {
        "WETH/mUSD": "2000",
        "MGLD/WETH": "0.01",
    }


async def test_router_init_code_hash_matches_the_core_pair(chain: Chain) -> None:
    """Router02 finds pairs by a hard-coded CREATE2 init-code hash: it must be the hash
    of the npm core pair's creation code, or every swap would go to an empty address."""
    exchange = chain.deployment.exchange
    assert exchange is not None
    init_hash = keccak(hexstr=ex.npm_artifact("UniswapV2Pair").bytecode)
    weth, musd = exchange.tokens["WETH"], exchange.tokens["mUSD"]
    token0, token1 = sorted([weth, musd], key=lambda a: int(a, 16))
    salt = keccak(bytes.fromhex(token0[2:]) + bytes.fromhex(token1[2:]))
    factory = bytes.fromhex(exchange.factory[2:])
    created = keccak(b"\xff" + factory + salt + init_hash)[12:]
    assert AsyncWeb3.to_checksum_address(created) == exchange.pairs["WETH/mUSD"]
    # The router's own view of the pair (through its library) agrees.
    router = contract(chain, exchange.router, "UniswapV2Router02")
    quoted = await router.functions.getAmountsOut(1_000 * MUSD, [musd, weth]).call()
    assert quoted[-1] == amount_out(1_000 * MUSD, 200_000 * MUSD, 100 * WETH)


async def swap(
    chain: Chain, trader: Wallet, path: list[str], amount_in: int, min_out: int = 0
) -> None:
    exchange = chain.deployment.exchange
    assert exchange is not None
    tokens = [exchange.tokens[symbol] for symbol in path]
    first = contract(chain, tokens[0], "WETH9")
    await trader.transact(first.functions.approve(exchange.router, amount_in))
    router = contract(chain, exchange.router, "UniswapV2Router02")
    await trader.transact(
        router.functions.swapExactTokensForTokens(
            amount_in, min_out, tokens, trader.address, await chain_now(chain) + 60
        )
    )


async def test_a_swap_through_the_router_pays_the_constant_product_price(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    trader = await make_wallet(eth=1, musd=1_000)
    expected = amount_out(1_000 * MUSD, 200_000 * MUSD, 100 * WETH)
    await swap(chain, trader, ["mUSD", "WETH"], 1_000 * MUSD)
    assert await balance(chain, "WETH", trader.address) == expected
    assert await balance(chain, "mUSD", trader.address) == 0
    # Conserved: what the trader gave and got is what the pool got and gave.
    assert await reserves(chain, "WETH/mUSD", "WETH") == (
        100 * WETH - expected,
        201_000 * MUSD,
    )


async def test_a_two_hop_swap_goes_through_both_pools(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    trader = await make_wallet(eth=1, musd=2_000)
    weth_out = amount_out(2_000 * MUSD, 200_000 * MUSD, 100 * WETH)
    gold_out = amount_out(weth_out, 50 * WETH, 5_000 * 10**18)
    await swap(chain, trader, ["mUSD", "WETH", "MGLD"], 2_000 * MUSD, min_out=gold_out)
    assert await balance(chain, "MGLD", trader.address) == gold_out
    assert await balance(chain, "WETH", trader.address) == 0  # only passed through
    assert await reserves(chain, "MGLD/WETH", "MGLD") == (
        5_000 * 10**18 - gold_out,
        50 * WETH + weth_out,
    )


async def test_a_swap_below_its_minimum_is_refused_and_moves_nothing(
    chain: Chain, make_wallet: WalletFactory
) -> None:
    trader = await make_wallet(eth=1, musd=1_000)
    fair = amount_out(1_000 * MUSD, 200_000 * MUSD, 100 * WETH)
    with pytest.raises(Exception, match="INSUFFICIENT_OUTPUT_AMOUNT"):
        await swap(chain, trader, ["mUSD", "WETH"], 1_000 * MUSD, min_out=fair + 1)
    assert await balance(chain, "mUSD", trader.address) == 1_000 * MUSD
    assert await reserves(chain, "WETH/mUSD", "WETH") == (100 * WETH, 200_000 * MUSD)


async def test_a_devnet_deployed_before_the_exchange_gets_one(tmp_path: Any) -> None:
    with start_anvil(DevnetConfig()) as anvil:
        w3 = connect(anvil.rpc_url)
        try:
            old = await deploy_suite(w3, anvil.rpc_url, dev_deployer(w3))
            assert old.exchange is None
            path = tmp_path / "deployment.json"
            old.save(path)
            upgraded = await ensure_deployment(w3, anvil.rpc_url, path, 0)
            assert upgraded.contracts == old.contracts  # the suite is kept
            assert upgraded.exchange is not None
            assert set(upgraded.exchange.pairs) == {"WETH/mUSD", "MGLD/WETH"}
            again = await ensure_deployment(w3, anvil.rpc_url, path, 0)
            assert again.exchange == upgraded.exchange  # recorded: not deployed twice
            assert upgraded.exchange.oracle is not None
            # A devnet whose exchange predates the oracle gets only the oracle.
            without = upgraded.model_copy(
                update={"exchange": upgraded.exchange.model_copy(update={"oracle": None})}
            )
            without.save(path)
            # And one recorded before payment channels, staking, consensus and the jury
            # gets those contracts.
            later = ("PaymentChannel", "Staking", "Consensus", "Jury")
            without = without.model_copy(
                update={"contracts": {k: v for k, v in without.contracts.items() if k not in later}}
            )
            without.save(path)
            oracled = await ensure_deployment(w3, anvil.rpc_url, path, 0)
            for name in later:
                added = oracled.contracts[name].address
                assert added != upgraded.contracts[name].address
                code = await w3.eth.get_code(AsyncWeb3.to_checksum_address(added))
                assert len(code) > 0
            staking = w3.eth.contract(
                address=AsyncWeb3.to_checksum_address(oracled.contracts["Staking"].address),
                abi=load_artifact("Staking").abi,
            )
            assert await staking.functions.token().call() == oracled.address("MeshUSD")
            assert await staking.functions.slasher().call() == oracled.address("Jury")
            assert {k: v for k, v in oracled.contracts.items() if k not in later} == {
                k: v for k, v in upgraded.contracts.items() if k not in later
            }
            assert oracled.exchange is not None and oracled.exchange.oracle is not None
            assert oracled.exchange.oracle != upgraded.exchange.oracle
            assert oracled.exchange.model_copy(update={"oracle": None}) == without.exchange
            code = await w3.eth.get_code(AsyncWeb3.to_checksum_address(oracled.exchange.oracle))
            assert len(code) > 0
        finally:
            await w3.provider.disconnect()


async def test_without_the_packages_a_devnet_still_serves_the_market(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "node_modules").mkdir()  # a tools folder without the Uniswap packages
    ex.npm_artifact.cache_clear()
    try:
        with start_anvil(DevnetConfig()) as anvil:  # the real tools' anvil
            monkeypatch.setenv("AGENTMESH_TOOLS", str(tmp_path))
            w3 = connect(anvil.rpc_url)
            try:
                deployment = await _deploy_fresh(w3, anvil.rpc_url, 0)
            finally:
                await w3.provider.disconnect()
    finally:
        ex.npm_artifact.cache_clear()
    assert deployment.exchange is None
    assert set(deployment.contracts) == {
        "MeshUSD",
        "TaskEscrow",
        "AgentRegistry",
        "PaymentChannel",
        "Staking",
        "Consensus",
        "Jury",
    }
    assert "no Uniswap V2 on this devnet" in caplog.text and "make setup" in caplog.text


def test_missing_packages_are_named_with_the_fix(
    tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "node_modules").mkdir()  # a tools folder without the Uniswap packages
    monkeypatch.setenv("AGENTMESH_TOOLS", str(tmp_path))
    ex.npm_artifact.cache_clear()
    try:
        with pytest.raises(ToolMissingError, match="UniswapV2Router02.json.*make setup"):
            ex.npm_artifact("UniswapV2Router02")
    finally:
        ex.npm_artifact.cache_clear()
