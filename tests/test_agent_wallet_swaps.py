"""AgentWallet's parameter-level swap policy against real Uniswap V2 on a real anvil.

Each rule of the owner's swap policy (recipient, token list, path length, deadline,
realized price against the ``TwapOracle``, expiry, caps, pause, revocation) is hit
once with everything else in order, and every refusal is asserted by its custom error
and shown to move nothing. The oracle's average is checked against the same average
computed here from the pool's reserves over time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
from eth_account import Account
from eth_utils import function_signature_to_4byte_selector
from web3 import AsyncWeb3

from agentmesh.contracts import load_artifact
from agentmesh.errors import ContractRevertError, PolicyViolation
from agentmesh.wallets import exchange as ex
from agentmesh.wallets.agent_wallet import (
    AgentWalletClient,
    CapMode,
    SwapCall,
    SwapPolicy,
)
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.oracle import TwapOracleClient
from agentmesh.wallets.wallet import Wallet
from tests.helpers import WalletFactory, advance_time, chain_now, observe_pools, rpc

WETH = 10**18
MUSD = 10**6
GOLD = 10**18
PERIOD = ex.ORACLE_PERIOD
WINDOW = 2 * PERIOD
APPROVE = function_signature_to_4byte_selector("approve(address,uint256)")
SWAP_IN = function_signature_to_4byte_selector(
    "swapExactTokensForTokens(uint256,uint256,address[],address,uint256)"
)
SWAP_OUT = function_signature_to_4byte_selector(
    "swapTokensForExactTokens(uint256,uint256,address[],address,uint256)"
)
ADD_LIQUIDITY = function_signature_to_4byte_selector(
    "addLiquidity(address,address,uint256,uint256,uint256,uint256,address,uint256)"
)
POLICY = {"twap_window": WINDOW, "max_deadline_delay": 300, "max_slippage_bps": 100}
WALLET_MUSD = 1_000


@dataclass
class Delegated:
    chain: Chain
    owner: Wallet
    agent: Wallet
    trader: Wallet  # moves pool prices
    wallet: AgentWalletClient  # as the owner
    as_agent: AgentWalletClient
    oracle: TwapOracleClient
    tokens: dict[str, str]
    router: str

    def path(self, *symbols: str) -> tuple[str, ...]:
        return tuple(self.tokens[s] for s in symbols)

    async def call(
        self,
        *symbols: str,
        amount: int,
        min_out: int = 0,
        to: str | None = None,
        deadline_in: int = 60,
    ) -> SwapCall:
        return SwapCall(
            router=self.router,
            path=self.path(*symbols),
            amount_in=amount,
            min_out=min_out,
            recipient=to or self.wallet.address,
            deadline=await chain_now(self.chain) + deadline_in,
        )

    async def balances(self) -> dict[str, int]:
        return {s: await balance(self.chain, s, self.wallet.address) for s in self.tokens}


def erc20(chain: Chain, address: str) -> Any:
    return chain.w3.eth.contract(
        address=AsyncWeb3.to_checksum_address(address), abi=ex.npm_artifact("WETH9").abi
    )


async def balance(chain: Chain, symbol: str, owner: str) -> int:
    exchange = chain.deployment.exchange
    assert exchange is not None
    token = erc20(chain, exchange.tokens[symbol])
    return int(await token.functions.balanceOf(AsyncWeb3.to_checksum_address(owner)).call())


async def trade(
    d: Delegated, symbols: tuple[str, ...], amount: int, swap_at: int | None = None
) -> None:
    """The trader swaps straight through the router (moves the pool's spot price); with
    ``swap_at``, the swap's block gets that timestamp (the approve goes before it)."""
    path = d.path(*symbols)
    await d.trader.transact(erc20(d.chain, path[0]).functions.approve(d.router, amount))
    if swap_at is not None:
        await at(d, swap_at)
    router = d.chain.w3.eth.contract(
        address=AsyncWeb3.to_checksum_address(d.router),
        abi=ex.npm_artifact("UniswapV2Router02").abi,
    )
    await d.trader.transact(
        router.functions.swapExactTokensForTokens(
            amount, 0, list(path), d.trader.address, (swap_at or await chain_now(d.chain)) + 60
        )
    )


@pytest.fixture
async def d(chain: Chain, make_wallet: WalletFactory) -> Delegated:
    exchange = chain.deployment.exchange
    assert exchange is not None and exchange.oracle is not None
    owner = await make_wallet(eth=20, musd=WALLET_MUSD, name="owner")
    agent = await make_wallet(eth=10, musd=0, name="agent")
    trader = await make_wallet(eth=200, musd=100_000, name="trader")
    wallet = await AgentWalletClient.deploy(owner, agent.address)
    tokens = dict(exchange.tokens)
    await owner.transact(
        erc20(chain, tokens["mUSD"]).functions.transfer(wallet.address, WALLET_MUSD * MUSD)
    )
    await wallet.set_allowed(exchange.router, SWAP_IN, True)  # no approve entries needed
    await wallet.set_cap(tokens["mUSD"], 500 * MUSD, CapMode.DAILY)
    await wallet.set_swap_policy(SwapPolicy(oracle=exchange.oracle, max_path_length=3, **POLICY))
    await wallet.set_router(exchange.router)
    for symbol in ("mUSD", "WETH"):
        await wallet.set_swap_token(tokens[symbol])
    setup = Delegated(
        chain=chain,
        owner=owner,
        agent=agent,
        trader=trader,
        wallet=wallet,
        as_agent=wallet.as_wallet(agent),
        oracle=TwapOracleClient(agent, exchange.oracle),
        tokens=tokens,
        router=exchange.router,
    )
    await observe_pools(setup.chain, setup.oracle, 3)
    return setup


def assert_refused(exc: pytest.ExceptionInfo[Any], name: str, *args: Any) -> None:
    assert isinstance(exc.value, PolicyViolation), str(exc.value)
    assert exc.value.error_name == name, str(exc.value)
    if args:
        assert exc.value.error_args[: len(args)] == args, str(exc.value)


def constant_product(amount_in: int, reserve_in: int, reserve_out: int) -> int:
    with_fee = amount_in * 997
    return with_fee * reserve_out // (reserve_in * 1000 + with_fee)


# ---------------------------------------------------------------------- within policy


async def test_a_swap_within_policy_fills_and_reports_the_twap(d: Delegated) -> None:
    before = await d.balances()
    call = await d.call("mUSD", "WETH", amount=100 * MUSD)  # amountOutMin = 0 is fine here
    expected = constant_product(100 * MUSD, 200_000 * MUSD, 100 * WETH)
    receipt = await d.as_agent.swap(call)
    fill = d.as_agent.swapped(receipt)
    assert (fill.amount_in, fill.amount_out) == (100 * MUSD, expected)
    # The pool has sat at 2,000 mUSD per WETH for the whole window.
    assert fill.twap_out == 100 * MUSD * WETH // (2_000 * MUSD)
    after = await d.balances()
    assert after["mUSD"] == before["mUSD"] - 100 * MUSD
    assert after["WETH"] == before["WETH"] + expected
    assert await d.wallet.spendable(d.tokens["mUSD"]) == (100 * MUSD, 400 * MUSD)
    # The one-call allowance to the router is gone.
    allowance = erc20(d.chain, d.tokens["mUSD"]).functions.allowance(d.wallet.address, d.router)
    assert await allowance.call() == 0


async def test_a_two_hop_swap_is_priced_through_both_pools(d: Delegated) -> None:
    await d.wallet.set_swap_token(d.tokens["MGLD"])
    receipt = await d.as_agent.swap(await d.call("mUSD", "WETH", "MGLD", amount=100 * MUSD))
    fill = d.as_agent.swapped(receipt)
    weth = constant_product(100 * MUSD, 200_000 * MUSD, 100 * WETH)
    assert fill.amount_out == constant_product(weth, 50 * WETH, 5_000 * GOLD)
    # 100 mUSD = 0.05 WETH = 5 MGLD at the (unmoved) averages; integer rounding aside.
    assert abs(fill.twap_out - 5 * GOLD) <= 10**6


async def test_the_policy_reads_back_as_set(d: Delegated) -> None:
    exchange = d.chain.deployment.exchange
    assert exchange is not None and exchange.oracle is not None
    assert await d.wallet.swap_policy() == SwapPolicy(
        oracle=exchange.oracle, max_path_length=3, **POLICY
    )
    assert await d.wallet.is_router(d.router)
    assert await d.wallet.is_swap_token(d.tokens["WETH"])
    assert not await d.wallet.is_swap_token(d.tokens["MGLD"])
    assert await d.wallet.valid_until() == 2**64 - 1


# ---------------------------------------------------------------------- each rule


async def test_a_swap_to_anyone_but_the_wallet_is_refused(d: Delegated) -> None:
    thief = Account.create().address
    before = await d.balances()
    with pytest.raises(PolicyViolation) as exc:
        await d.as_agent.swap(await d.call("mUSD", "WETH", amount=100 * MUSD, to=thief))
    assert_refused(exc, "SwapRecipientNotWallet", thief)
    assert "recipient must be the wallet itself" in str(exc.value)
    assert await d.balances() == before
    assert await balance(d.chain, "WETH", thief) == 0


async def test_an_exact_out_swap_is_held_to_the_same_rules(d: Delegated) -> None:
    thief = Account.create().address
    await d.wallet.set_allowed(d.router, SWAP_OUT, True)
    data = SWAP_OUT + (await d.call("mUSD", "WETH", amount=0, to=thief)).calldata()[4:]
    with pytest.raises(PolicyViolation) as exc:
        await d.as_agent.execute_with_approval(
            d.tokens["mUSD"], d.router, 100 * MUSD, d.router, 0, data
        )
    assert_refused(exc, "SwapRecipientNotWallet", thief)


async def test_a_token_off_the_list_is_refused_anywhere_on_the_path(d: Delegated) -> None:
    with pytest.raises(PolicyViolation) as exc:
        await d.as_agent.swap(await d.call("mUSD", "WETH", "MGLD", amount=10 * MUSD))
    assert_refused(exc, "TokenNotAllowed", d.tokens["MGLD"])
    await d.wallet.set_swap_token(d.tokens["WETH"], False)  # now the middle hop
    await d.wallet.set_swap_token(d.tokens["MGLD"])
    with pytest.raises(PolicyViolation) as exc:
        await d.as_agent.swap(await d.call("mUSD", "WETH", "MGLD", amount=10 * MUSD))
    assert_refused(exc, "TokenNotAllowed", d.tokens["WETH"])


async def test_a_path_longer_than_allowed_or_circular_is_refused(d: Delegated) -> None:
    await d.wallet.set_swap_token(d.tokens["MGLD"])
    exchange = d.chain.deployment.exchange
    assert exchange is not None and exchange.oracle is not None
    await d.wallet.set_swap_policy(SwapPolicy(oracle=exchange.oracle, max_path_length=2, **POLICY))
    with pytest.raises(PolicyViolation) as exc:
        await d.as_agent.swap(await d.call("mUSD", "WETH", "MGLD", amount=10 * MUSD))
    assert_refused(exc, "PathLengthOutOfRange", 3, 2)
    with pytest.raises(PolicyViolation) as exc:
        await d.as_agent.swap(await d.call("mUSD", amount=10 * MUSD))
    assert_refused(exc, "PathLengthOutOfRange", 1, 2)
    await d.wallet.set_swap_policy(SwapPolicy(oracle=exchange.oracle, max_path_length=3, **POLICY))
    with pytest.raises(PolicyViolation) as exc:
        await d.as_agent.swap(await d.call("mUSD", "WETH", "mUSD", amount=10 * MUSD))
    assert_refused(exc, "CircularPath", d.tokens["mUSD"])


async def test_a_deadline_beyond_the_owners_delay_is_refused(d: Delegated) -> None:
    call = await d.call("mUSD", "WETH", amount=10 * MUSD, deadline_in=3_600)
    with pytest.raises(PolicyViolation) as exc:
        await d.as_agent.swap(call)
    assert_refused(exc, "DeadlineTooFar", call.deadline)
    latest = exc.value.error_args[1]
    assert latest < call.deadline and latest >= call.deadline - 3_600 + 300
    # At the limit it goes through.
    await d.as_agent.swap(await d.call("mUSD", "WETH", amount=10 * MUSD, deadline_in=290))


async def test_a_manipulated_price_gains_nothing_even_with_no_minimum(d: Delegated) -> None:
    """The trader pumps WETH's spot price (buys 20% of the pool); the agent's buy at the
    pumped price, sent with amountOutMin = 0, is refused against the TWAP. Once the
    new price has held for the window, the average agrees and the same swap fills."""
    await trade(d, ("mUSD", "WETH"), 50_000 * MUSD)
    before = await d.balances()
    call = await d.call("mUSD", "WETH", amount=100 * MUSD, min_out=0)
    with pytest.raises(PolicyViolation) as exc:
        await d.as_agent.swap(call)
    assert_refused(exc, "PriceBelowTwap")
    got, minimum = exc.value.error_args
    assert got < minimum
    assert "worse than the pool's TWAP" in str(exc.value)
    assert await d.balances() == before
    # Deferred, not lost: after a window at the new price, it is the fair price.
    await observe_pools(d.chain, d.oracle, 3)
    await d.as_agent.swap(await d.call("mUSD", "WETH", amount=100 * MUSD))
    assert (await d.balances())["mUSD"] == before["mUSD"] - 100 * MUSD


async def test_a_window_without_observations_has_no_price_and_no_swap(d: Delegated) -> None:
    await advance_time(d.chain, 10 * PERIOD)  # nobody kept the oracle fresh
    with pytest.raises(PolicyViolation) as exc:
        await d.as_agent.swap(await d.call("mUSD", "WETH", amount=10 * MUSD))
    assert_refused(exc, "TwapUnavailable")
    assert exc.value.error_args[1] == WINDOW


async def test_the_cap_counts_what_a_swap_spends(d: Delegated) -> None:
    await d.as_agent.swap(await d.call("mUSD", "WETH", amount=400 * MUSD))
    with pytest.raises(PolicyViolation) as exc:
        await d.as_agent.swap(await d.call("mUSD", "WETH", amount=101 * MUSD))
    assert_refused(exc, "CapExceeded", d.tokens["mUSD"], 101 * MUSD, 100 * MUSD)


async def test_an_expired_delegation_refuses_the_agent_but_not_the_owner(
    d: Delegated,
) -> None:
    until = await chain_now(d.chain) + 100
    await d.wallet.set_valid_until(until)
    await d.as_agent.swap(await d.call("mUSD", "WETH", amount=10 * MUSD))
    await advance_time(d.chain, 200)
    with pytest.raises(PolicyViolation) as exc:
        await d.as_agent.swap(await d.call("mUSD", "WETH", amount=10 * MUSD))
    assert_refused(exc, "DelegationExpired", until)
    # The owner takes the funds out as ever.
    left = await balance(d.chain, "mUSD", d.wallet.address)
    await d.wallet.withdraw(d.tokens["mUSD"], d.owner.address, left)
    assert await balance(d.chain, "mUSD", d.wallet.address) == 0


async def test_paused_and_revoked_wallets_make_no_swaps(d: Delegated) -> None:
    await d.wallet.pause()
    with pytest.raises(PolicyViolation) as exc:
        await d.as_agent.swap(await d.call("mUSD", "WETH", amount=10 * MUSD))
    assert_refused(exc, "EnforcedPause")
    await d.wallet.unpause()
    await d.wallet.revoke_agent()
    with pytest.raises(PolicyViolation) as exc:
        await d.as_agent.swap(await d.call("mUSD", "WETH", amount=10 * MUSD))
    assert_refused(exc, "NotAgent", d.agent.address)


async def test_swaps_only_through_registered_routers_and_only_swaps(d: Delegated) -> None:
    # A swap selector sent to some other allowlisted contract is refused...
    other = Account.create().address
    await d.wallet.set_allowed(other, SWAP_IN, True)
    call = await d.call("mUSD", "WETH", amount=10 * MUSD)
    with pytest.raises(PolicyViolation) as exc:
        await d.as_agent.execute(other, 0, call.calldata())
    assert_refused(exc, "RouterNotRegistered", other)
    # ...and a registered router may not be called for anything else.
    await d.wallet.set_allowed(d.router, ADD_LIQUIDITY, True)
    with pytest.raises(PolicyViolation) as exc:
        await d.as_agent.execute(d.router, 0, ADD_LIQUIDITY + bytes(256))
    assert_refused(exc, "RouterCallNotSwap", d.router, ADD_LIQUIDITY)
    # Dropping the router stops its swaps.
    await d.wallet.set_router(d.router, False)
    with pytest.raises(PolicyViolation) as exc:
        await d.as_agent.swap(call)
    assert_refused(exc, "RouterNotRegistered", d.router)


async def test_the_agent_cannot_approve_anyone_around_the_swap_rules(d: Delegated) -> None:
    """A one-call allowance goes only to the registered router the call goes to: no
    allowance to an attacker, whether as a call of its own or as the one-call spender."""
    thief = Account.create().address
    weth = erc20(d.chain, d.tokens["WETH"])
    approve = bytes.fromhex(
        weth.functions.approve(thief, 2**256 - 1)._encode_transaction_data().removeprefix("0x")
    )
    with pytest.raises(PolicyViolation) as exc:
        await d.as_agent.execute(d.tokens["WETH"], 0, approve)
    assert_refused(exc, "TargetNotAllowed", d.tokens["WETH"], APPROVE)
    call = await d.call("mUSD", "WETH", amount=10 * MUSD)
    with pytest.raises(PolicyViolation) as exc:
        await d.as_agent.execute_with_approval(
            d.tokens["mUSD"], thief, 10 * MUSD, d.router, 0, call.calldata()
        )
    assert_refused(exc, "TargetNotAllowed", d.tokens["mUSD"], APPROVE)
    assert await weth.functions.allowance(d.wallet.address, thief).call() == 0


async def test_a_simulated_swap_names_the_rule_and_sends_nothing(d: Delegated) -> None:
    nonce = await d.chain.w3.eth.get_transaction_count(d.agent.address)
    thief = Account.create().address
    with pytest.raises(PolicyViolation) as exc:
        await d.as_agent.simulate_swap(await d.call("mUSD", "WETH", amount=10 * MUSD, to=thief))
    assert_refused(exc, "SwapRecipientNotWallet", thief)
    await d.as_agent.simulate_swap(await d.call("mUSD", "WETH", amount=10 * MUSD))
    assert await d.chain.w3.eth.get_transaction_count(d.agent.address) == nonce


# ---------------------------------------------------------------------- owner's settings


async def test_the_owner_cannot_set_a_policy_that_means_nothing(d: Delegated) -> None:
    exchange = d.chain.deployment.exchange
    assert exchange is not None and exchange.oracle is not None
    oracle = exchange.oracle

    async def refused(**changes: Any) -> ContractRevertError:
        fields = {"oracle": oracle, "max_path_length": 3, **POLICY, **changes}
        with pytest.raises(ContractRevertError) as exc:
            await d.wallet.set_swap_policy(SwapPolicy(**fields))
        return exc.value

    assert (await refused(max_slippage_bps=10_000)).error_name == "SlippageOutOfRange"
    assert (await refused(max_path_length=1)).error_args == (1,)
    assert (await refused(max_path_length=5)).error_name == "MaxPathOutOfRange"
    short = await refused(twap_window=PERIOD)
    assert (short.error_name, short.error_args) == (
        "TwapWindowOutOfRange",
        (PERIOD, 2 * PERIOD, (ex.ORACLE_GRANULARITY - 2) * PERIOD),
    )
    assert (await refused(oracle="0x" + "00" * 20)).error_name == "ZeroAddress"
    stranger = d.as_agent  # the agent is not the owner
    with pytest.raises(ContractRevertError) as exc:
        await stranger.set_swap_policy(SwapPolicy(oracle=oracle, max_path_length=3, **POLICY))
    assert exc.value.error_name == "OwnableUnauthorizedAccount"
    with pytest.raises(ContractRevertError) as exc:
        await stranger.set_valid_until(2**63)
    assert exc.value.error_name == "OwnableUnauthorizedAccount"


async def test_a_router_must_trade_on_the_oracles_factory(d: Delegated) -> None:
    exchange = d.chain.deployment.exchange
    assert exchange is not None
    # A second Uniswap deployment: its pools are not the ones the oracle averages.
    factory, _ = await d.owner.deploy(ex.npm_artifact("UniswapV2Factory"), d.owner.address)
    router, _ = await d.owner.deploy(ex.npm_artifact("UniswapV2Router02"), factory, exchange.weth)
    with pytest.raises(ContractRevertError) as exc:
        await d.wallet.set_router(router)
    assert (exc.value.error_name, exc.value.error_args) == (
        "RouterFactoryMismatch",
        (router, factory),
    )
    # A wallet without a swap policy registers no router at all.
    bare = await AgentWalletClient.deploy(d.owner, d.agent.address)
    with pytest.raises(ContractRevertError) as exc:
        await bare.set_router(exchange.router)
    assert exc.value.error_name == "SwapPolicyNotSet"


# ---------------------------------------------------------------------- the oracle


async def at(d: Delegated, timestamp: int) -> None:
    """The next block is mined at ``timestamp``."""
    await rpc(d.chain, "evm_setNextBlockTimestamp", timestamp)


async def test_the_oracle_averages_the_price_over_time(d: Delegated) -> None:
    """Half the window at one price and half at another: the average is their mean, in
    the pair's own UQ112x112 prices, from the observation taken where the window starts."""
    exchange = d.chain.deployment.exchange
    assert exchange is not None
    weth, musd = d.tokens["WETH"], d.tokens["mUSD"]
    pair = d.chain.w3.eth.contract(
        address=AsyncWeb3.to_checksum_address(exchange.pairs["WETH/mUSD"]),
        abi=ex.npm_artifact("UniswapV2Pair").abi,
    )
    weth_is_0 = str(await pair.functions.token0().call()).lower() == weth.lower()

    async def weth_price() -> int:
        r0, r1, _ = await pair.functions.getReserves().call()
        r_weth, r_musd = (r0, r1) if weth_is_0 else (r1, r0)
        return (r_musd << 112) // r_weth

    base = (await chain_now(d.chain) // PERIOD + 1) * PERIOD  # the next period's start
    before = await weth_price()
    await at(d, base + 1)
    await d.oracle.update(weth, musd)
    assert await d.oracle.observed_at(weth, musd, base) == base + 1
    await trade(d, ("mUSD", "WETH"), 50_000 * MUSD, swap_at=base + PERIOD + 1)
    after = await weth_price()
    assert after > before
    await at(d, base + 2 * PERIOD + 1)
    await rpc(d.chain, "evm_mine")
    average = (before * PERIOD + after * PERIOD) // (2 * PERIOD)
    assert await d.oracle.consult(weth, musd, WETH, 2 * PERIOD) == (average * WETH) >> 112
    # The spot price moved ~56%; the average only half of that.
    assert await d.oracle.consult(weth, musd, WETH, 2 * PERIOD) < (after * WETH) >> 112


async def test_the_oracle_refuses_what_it_cannot_answer(d: Delegated) -> None:
    weth, musd, gold = d.tokens["WETH"], d.tokens["mUSD"], d.tokens["MGLD"]
    with pytest.raises(ContractRevertError) as exc:
        await d.oracle.consult(weth, musd, WETH, PERIOD)
    assert exc.value.error_name == "WindowOutOfRange"
    with pytest.raises(ContractRevertError) as exc:
        await d.oracle.consult(gold, musd, GOLD, WINDOW)  # no MGLD/mUSD pool
    assert exc.value.error_name == "TwapUnavailable"
    with pytest.raises(ContractRevertError) as exc:
        await d.oracle.update(gold, musd)
    assert (exc.value.error_name, exc.value.error_args) == ("UnknownPair", (gold, musd))
    # One observation per period: a second update in it records nothing.
    base = (await chain_now(d.chain) // PERIOD + 1) * PERIOD
    await at(d, base + 1)
    assert len((await d.oracle.update(weth, musd))["logs"]) == 1
    await at(d, base + 2)
    assert (await d.oracle.update(weth, musd))["logs"] == []
    assert await d.oracle.observed_at(weth, musd, base + 2) == base + 1
    with pytest.raises(ContractRevertError) as exc:
        await d.owner.deploy(load_artifact("TwapOracle"), d.router, bytes(32), 0, 50)
    assert exc.value.error_name == "BadConfig"
    # An oracle told the wrong pair init-code hash records nothing it could not find.
    exchange = d.chain.deployment.exchange
    assert exchange is not None
    wrong, _ = await d.owner.deploy(
        load_artifact("TwapOracle"), exchange.factory, bytes(32), PERIOD, 50
    )
    with pytest.raises(ContractRevertError) as exc:
        await TwapOracleClient(d.owner, wrong).update(weth, musd)
    assert exc.value.error_name == "BadConfig"


async def test_an_observation_from_the_rings_last_lap_is_not_used(d: Delegated) -> None:
    """After exactly one lap of the ring the window's slot holds an observation from
    ``granularity`` periods ago: it is no start for this window."""
    await advance_time(d.chain, ex.ORACLE_GRANULARITY * PERIOD)
    with pytest.raises(ContractRevertError) as exc:
        await d.oracle.consult(d.tokens["WETH"], d.tokens["mUSD"], WETH, WINDOW)
    assert exc.value.error_name == "TwapUnavailable"
