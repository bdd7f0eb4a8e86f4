"""The DeFi agent against a real anvil with real Uniswap V2: owner-signed intents in,
swaps through the owner's AgentWallet out (an in-process ``Agent`` with ``DefiDesk``).

Chain time only moves when a test moves it; the agent's runner resumes what is due by
chain time, keeps the oracle fresh, and records every step, filled or not, with its
reason. Every test that trades ends with a per-token conservation check across the
wallet, the owner, the pools and the trader.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from web3 import AsyncWeb3

from agentmesh.agents.agent import Agent
from agentmesh.agents.defi_client import DefiClient, sign_cancel, sign_intent
from agentmesh.agents.defi_desk import DefiDesk, IntentRefused
from agentmesh.agents.defi_graph import reconcile_step
from agentmesh.agents.defi_store import DefiStore, IntentRow
from agentmesh.agents.records import ApprovalStatus
from agentmesh.config import Config
from agentmesh.errors import AgentMeshValueError
from agentmesh.mesh.node import RemoteError
from agentmesh.protocols.defi import (
    AnyIntent,
    DcaIntent,
    IntentPhase,
    SwapIntent,
    TriggerIntent,
)
from agentmesh.wallets import exchange as ex
from agentmesh.wallets.agent_wallet import AgentWalletClient, CapMode, SwapCall, SwapPolicy
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import TokenClient
from agentmesh.wallets.delegation import Cap, DelegationTerms, create_delegation
from agentmesh.wallets.oracle import TwapOracleClient
from agentmesh.wallets.wallet import Wallet
from tests.helpers import (
    WalletFactory,
    advance_time,
    bind_home,
    chain_now,
    eventually,
    new_key,
    observe_pools,
)

MUSD = 10**6
WETH = 10**18
PERIOD = ex.ORACLE_PERIOD
WINDOW = 2 * PERIOD
FAR = 2**40  # a valid_until far away


@dataclass
class Desk:
    chain: Chain
    agent: Agent
    desk: DefiDesk
    owner: Wallet
    trader: Wallet
    wallet: AgentWalletClient  # as the owner
    tokens: dict[str, str]
    oracle: TwapOracleClient
    key: bytes  # the agent's
    home: Path
    config: Config

    async def intent_state(self, intent_id: str) -> Any:
        assert self.desk.store is not None
        return self.desk.store.state(intent_id)

    @property
    def router(self) -> Any:
        exchange = self.chain.deployment.exchange
        assert exchange is not None
        return self.chain.w3.eth.contract(
            address=AsyncWeb3.to_checksum_address(exchange.router),
            abi=ex.npm_artifact("UniswapV2Router02").abi,
        )

    async def dump(self, trader_sells: str, amount: int, buys: str) -> None:
        """The trader swaps straight through the router (moves the pool's spot price)."""
        await TokenClient(self.trader, self.tokens[trader_sells]).approve(
            self.router.address, amount
        )
        await self.trader.transact(
            self.router.functions.swapExactTokensForTokens(
                amount,
                0,
                [self.tokens[trader_sells], self.tokens[buys]],
                self.trader.address,
                await chain_now(self.chain) + 60,
            )
        )

    async def wrap(self, who: Wallet, amount: int) -> None:
        weth = self.chain.w3.eth.contract(
            address=AsyncWeb3.to_checksum_address(self.tokens["WETH"]),
            abi=ex.npm_artifact("WETH9").abi,
        )
        await who.transact(weth.functions.deposit(), value=amount)

    async def tick(self, seconds: int) -> None:
        """Chain time moves on; the pools get this period's observation (what the
        agent's keeper does every few seconds, made deterministic here)."""
        await advance_time(self.chain, seconds)
        await observe_pools(self.chain, self.oracle, 0)
        assert self.desk.runner is not None
        await eventually(self.desk.runner.idle.is_set)

    async def settle(self, intent_id: str, phase: str, timeout: float = 30.0) -> Any:
        state = await eventually(
            lambda: self.intent_state(intent_id), lambda s: s.phase == phase, timeout=timeout
        )
        assert state.phase == phase, state
        return state


async def holdings(d: Desk) -> dict[str, int]:
    """Every holder's balance of every exchange token, summed per token."""
    exchange = d.chain.deployment.exchange
    assert exchange is not None
    holders = [d.wallet.address, d.owner.address, d.trader.address, *exchange.pairs.values()]
    totals = {}
    for symbol, address in d.tokens.items():
        token = TokenClient(d.owner, address)
        totals[symbol] = sum([await token.balance_of(h) for h in holders])
    return totals


@pytest.fixture
async def d(
    home: Path, chain: Chain, make_wallet: WalletFactory, deployer: Wallet
) -> AsyncIterator[Desk]:
    exchange = chain.deployment.exchange
    assert exchange is not None and exchange.oracle is not None
    config: Config = bind_home(home, chain)
    owner = await make_wallet(eth=20, musd=1_000, name="owner")
    trader = await make_wallet(eth=20, musd=100_000, name="trader")
    key = new_key()
    await deployer.send({"to": Account.from_key(key).address, "value": 10**19})
    tokens = dict(exchange.tokens)
    terms = DelegationTerms(
        agent=Account.from_key(key).address,
        router=exchange.router,
        tokens=(tokens["mUSD"], tokens["WETH"]),
        caps={tokens["mUSD"]: Cap(300 * MUSD, CapMode.DAILY)},
        policy=SwapPolicy(
            oracle=exchange.oracle,
            twap_window=WINDOW,
            max_deadline_delay=600,
            max_slippage_bps=100,
            max_path_length=3,
        ),
        valid_until=FAR,
    )
    wallet = await create_delegation(owner, terms)
    await TokenClient(owner, tokens["mUSD"]).transfer(wallet.address, 500 * MUSD)
    oracle = TwapOracleClient(deployer, exchange.oracle)
    await observe_pools(chain, oracle, 3)
    agent = Agent("defi", wallet=key, home=home, config=config)
    desk = DefiDesk(agent, retry_s=PERIOD)
    async with agent:
        yield Desk(chain, agent, desk, owner, trader, wallet, tokens, oracle, key, home, config)


def swap_intent(d: Desk, amount: int, **changes: Any) -> SwapIntent:
    fields: dict[str, Any] = {
        "wallet": d.wallet.address,
        "nonce": int.from_bytes(new_key()[:7], "big"),
        "valid_until": FAR,
        "max_slippage_bps": 100,
        "token_in": d.tokens["mUSD"],
        "token_out": d.tokens["WETH"],
        "amount_in": str(amount),
        **changes,
    }
    return SwapIntent(**fields)


async def submit(d: Desk, intent: AnyIntent, signer: Wallet | None = None) -> str:
    state = await d.desk.submit(await sign_intent(signer or d.owner, intent))
    return str(state.intent_id)


# ---------------------------------------------------------------------- happy paths


async def test_a_swap_intent_fills_through_the_wallet_and_money_is_conserved(d: Desk) -> None:
    before = await holdings(d)
    intent_id = await submit(d, swap_intent(d, 100 * MUSD))
    state = await d.settle(intent_id, IntentPhase.DONE)
    (fill,) = state.fills
    assert fill.status == "filled" and fill.tx.startswith("0x")
    weth = await TokenClient(d.owner, d.tokens["WETH"]).balance_of(d.wallet.address)
    assert int(fill.amount_out) == weth > 0
    assert int(fill.amount_in) == 100 * MUSD
    # Realized within 1% of what the TWAP said it was worth.
    assert int(fill.amount_out) >= int(fill.twap_out) * 99 // 100
    assert await holdings(d) == before
    # The same signed intent again is the same intent: no second trade.
    again = await d.desk.submit(await sign_intent(d.owner, swap_intent(d, 100 * MUSD)))
    assert again.intent_id != intent_id  # a new nonce is a new intent


async def test_a_dca_runs_each_period_once_by_chain_time(d: Desk) -> None:
    before = await holdings(d)
    start = await chain_now(d.chain) + 5
    intent = DcaIntent(
        wallet=d.wallet.address,
        nonce=7,
        valid_until=FAR,
        max_slippage_bps=100,
        token_in=d.tokens["mUSD"],
        token_out=d.tokens["WETH"],
        amount_per_period=str(20 * MUSD),
        period_s=PERIOD,
        periods=3,
        start_at=start,
    )
    intent_id = await submit(d, intent)
    for period in range(1, 4):
        await d.tick(PERIOD if period > 1 else 10)
        state = await eventually(
            lambda: d.intent_state(intent_id),
            lambda s, n=period: len([f for f in s.fills if f.status == "filled"]) >= n,
            timeout=30,
        )
    state = await d.settle(intent_id, IntentPhase.DONE)
    assert [f.status for f in state.fills] == ["filled"] * 3
    assert [f.step for f in state.fills] == [0, 1, 2]
    spent = 500 * MUSD - await TokenClient(d.owner, d.tokens["mUSD"]).balance_of(d.wallet.address)
    assert spent == 60 * MUSD
    assert await holdings(d) == before


async def test_a_stop_fires_when_the_twap_crosses_and_not_before(d: Desk) -> None:
    """Sell WETH when its TWAP falls to 1,950 mUSD or below: the trader dumps WETH, the
    average follows over the window, and the stop fires once it has crossed."""
    await d.wrap(d.owner, WETH)
    await TokenClient(d.owner, d.tokens["WETH"]).transfer(d.wallet.address, WETH)
    await d.wallet.set_cap(d.tokens["WETH"], WETH, CapMode.DAILY)
    intent = TriggerIntent(
        kind="stop",
        side="sell",
        wallet=d.wallet.address,
        nonce=11,
        valid_until=FAR,
        max_slippage_bps=100,
        base=d.tokens["WETH"],
        quote=d.tokens["mUSD"],
        amount=str(WETH // 2),
        price="1950",
    )
    intent_id = await submit(d, intent)
    state = await eventually(lambda: d.intent_state(intent_id), lambda s: "TWAP" in s.reason)
    assert state.phase == IntentPhase.ACTIVE and not state.fills, state
    assert "fires at or below 1950" in state.reason
    # The trader sells 5 WETH: spot ~1,814 mUSD; the average follows over the window.
    await d.wrap(d.trader, 5 * WETH)
    await d.dump("WETH", 5 * WETH, "mUSD")
    for _ in range(4):
        await d.tick(PERIOD)
    state = await d.settle(intent_id, IntentPhase.DONE, timeout=60)
    (fill,) = state.fills
    assert fill.status == "filled" and int(fill.amount_in) == WETH // 2


# ---------------------------------------------------------------------- refusals


async def test_an_intent_signed_by_someone_else_is_refused(
    d: Desk, make_wallet: WalletFactory
) -> None:
    stranger = await make_wallet(eth=1, musd=0)
    with pytest.raises(IntentRefused) as exc:
        await submit(d, swap_intent(d, 10 * MUSD), signer=stranger)
    assert exc.value.code == "not_owner"
    assert stranger.address in exc.value.user_message
    assert d.desk.store is not None and d.desk.store.intents() == []


async def test_intents_the_policy_could_never_allow_are_refused_at_once(d: Desk) -> None:
    nonce = await d.chain.w3.eth.get_transaction_count(d.agent.address)
    cases = {
        "over the wallet's cap": swap_intent(d, 301 * MUSD),
        "not on the wallet's token list": swap_intent(d, 10 * MUSD, token_out=d.tokens["MGLD"]),
        "before the intent": swap_intent(d, 10 * MUSD, valid_until=FAR + 1),
    }
    await d.wallet.set_valid_until(FAR)
    for words, intent in cases.items():
        with pytest.raises(IntentRefused) as exc:
            await submit(d, intent)
        assert exc.value.code == "impossible"
        assert words in exc.value.user_message, exc.value.user_message
    await d.wallet.pause()
    with pytest.raises(IntentRefused, match="paused"):
        await submit(d, swap_intent(d, 10 * MUSD))
    # Nothing was sent by the agent for any of them.
    assert await d.chain.w3.eth.get_transaction_count(d.agent.address) == nonce


async def test_only_the_owner_cancels_and_a_cancelled_dca_trades_no_more(
    d: Desk, make_wallet: WalletFactory
) -> None:
    intent = DcaIntent(
        wallet=d.wallet.address,
        nonce=8,
        valid_until=FAR,
        max_slippage_bps=100,
        token_in=d.tokens["mUSD"],
        token_out=d.tokens["WETH"],
        amount_per_period=str(10 * MUSD),
        period_s=PERIOD,
        periods=5,
        start_at=await chain_now(d.chain) + 1,
    )
    intent_id = await submit(d, intent)
    await d.settle(intent_id, IntentPhase.ACTIVE)
    await eventually(
        lambda: d.intent_state(intent_id),
        lambda s: [f.status for f in s.fills] == ["filled"],  # mined and recorded
    )
    stranger = await make_wallet(eth=1, musd=0)
    with pytest.raises(IntentRefused) as exc:
        await d.desk.cancel(await sign_cancel(stranger, intent))
    assert exc.value.code == "not_owner"
    state = await d.desk.cancel(await sign_cancel(d.owner, intent))
    assert state.phase == IntentPhase.CANCELLED
    for _ in range(3):
        await d.tick(PERIOD)
    state = await d.intent_state(intent_id)
    assert state.phase == IntentPhase.CANCELLED and len(state.fills) == 1


async def test_a_pumped_price_defers_the_step_with_the_rule_named(d: Desk) -> None:
    """The trader pumps WETH right before the swap: the price is worse than the TWAP
    (the swap's minimum out, set from the TWAP, is not met in the simulation), nothing is
    sent, and the step waits with the reason recorded."""
    await d.dump("mUSD", 50_000 * MUSD, "WETH")
    before = await TokenClient(d.owner, d.tokens["mUSD"]).balance_of(d.wallet.address)
    intent_id = await submit(d, swap_intent(d, 100 * MUSD))
    state = await eventually(lambda: d.intent_state(intent_id), lambda s: "deferred" in s.reason)
    assert "worse than its TWAP" in state.reason, state
    assert await TokenClient(d.owner, d.tokens["mUSD"]).balance_of(d.wallet.address) == before
    # Once the new price has held for the window, the step goes through.
    for _ in range(4):
        await d.tick(PERIOD)
    await d.settle(intent_id, IntentPhase.DONE, timeout=60)


async def test_a_trade_above_the_threshold_waits_for_the_owners_approval(d: Desk) -> None:
    intent_id = await submit(d, swap_intent(d, 50 * MUSD, approval_above=str(10 * MUSD)))
    state = await d.settle(intent_id, IntentPhase.AWAITING_APPROVAL)
    assert "waiting for approval" in state.reason and not state.fills
    (approval,) = d.agent.records.approvals(status=ApprovalStatus.PENDING)
    assert approval.amount == 50 * MUSD and "swap 50 mUSD" in approval.description
    d.agent.records.decide(approval.id, True)
    state = await d.settle(intent_id, IntentPhase.DONE)
    assert state.fills[0].status == "filled"


async def test_a_swap_whose_receipt_was_lost_is_reconciled_not_sent_twice(d: Desk) -> None:
    """The swap is mined but the agent loses the answer (an RPC failure): on the retry
    the agent finds the swap on chain and records it; it does not swap again."""
    wallet = d.desk.wallet(d.wallet.address)
    real_swap = wallet.swap
    calls = 0

    async def flaky_swap(call: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        await real_swap(call, **kwargs)
        if calls == 1:
            raise ConnectionError("connection reset while waiting for the receipt")
        raise AssertionError("the agent sent the swap a second time")

    wallet.swap = flaky_swap  # type: ignore[method-assign]
    intent_id = await submit(d, swap_intent(d, 100 * MUSD))
    state = await d.settle(intent_id, IntentPhase.DONE, timeout=60)
    assert calls == 1
    (fill,) = state.fills
    assert fill.status == "filled" and fill.tx.startswith("0x")
    spent = 500 * MUSD - await TokenClient(d.owner, d.tokens["mUSD"]).balance_of(d.wallet.address)
    assert spent == 100 * MUSD


async def test_a_dca_survives_a_restart_without_running_a_period_twice(d: Desk) -> None:
    """The agent stops after the first period; the second period passes while it is
    down (recorded as missed, with that reason); after the restart the third period runs
    once and the intent ends. Nothing runs twice."""
    intent = DcaIntent(
        wallet=d.wallet.address,
        nonce=9,
        valid_until=FAR,
        max_slippage_bps=100,
        token_in=d.tokens["mUSD"],
        token_out=d.tokens["WETH"],
        amount_per_period=str(10 * MUSD),
        period_s=PERIOD,
        periods=3,
        start_at=await chain_now(d.chain) + 1,
    )
    intent_id = await submit(d, intent)
    await eventually(
        lambda: d.intent_state(intent_id),
        lambda s: [f.status for f in s.fills] == ["filled"],  # mined and recorded
    )
    await d.agent.stop()
    await advance_time(d.chain, PERIOD)
    await observe_pools(d.chain, d.oracle, 0)
    await advance_time(d.chain, PERIOD)  # period 2 (index 1) is over unrun; period 3 is due
    await observe_pools(d.chain, d.oracle, 0)
    again = Agent("defi", wallet=d.key, home=d.home, config=d.config)
    desk = DefiDesk(again, retry_s=PERIOD)
    async with again:
        assert desk.store is not None
        store = desk.store
        state = await eventually(
            lambda: store.state(intent_id),
            lambda s: s is not None and s.phase == IntentPhase.DONE,
            timeout=30,
        )
    assert state is not None and state.phase == IntentPhase.DONE, state
    assert [(f.step, f.status) for f in state.fills] == [
        (0, "filled"),
        (1, "skipped"),
        (2, "filled"),
    ]
    assert state.fills[1].reason == "missed: the agent was not running"
    spent = 500 * MUSD - await TokenClient(d.owner, d.tokens["mUSD"]).balance_of(d.wallet.address)
    assert spent == 20 * MUSD


async def test_the_owner_sends_and_cancels_intents_over_the_mesh(d: Desk) -> None:
    """The owner's own node (signed envelopes, real ZeroMQ) submits, queries and
    cancels; a refusal comes back as a RemoteError naming the rule."""
    owner_agent = Agent("owner-node", wallet=d.owner.account, home=d.home, config=d.config)
    async with owner_agent:
        client = DefiClient(owner_agent.node)
        card = d.agent.node.card
        intent = swap_intent(d, 10 * MUSD, valid_until=await chain_now(d.chain) + 10 * PERIOD)
        state = await client.submit(card, await sign_intent(d.owner, intent))
        assert state.phase in (IntentPhase.ACTIVE, IntentPhase.EXECUTING, IntentPhase.DONE)
        done = await eventually(
            lambda: client.query(card, state.intent_id),
            lambda s: s.phase == IntentPhase.DONE,
            timeout=30,
        )
        assert done.fills[0].status == "filled"
        with pytest.raises(RemoteError) as exc:
            await client.submit(card, await sign_intent(d.owner, swap_intent(d, 301 * MUSD)))
        assert exc.value.code == "impossible" and "cap" in str(exc.value)
        cancelled = await client.cancel(card, await sign_cancel(d.owner, intent))
        assert cancelled.phase == IntentPhase.DONE  # already over: a cancel changes nothing
        with pytest.raises(RemoteError) as exc:
            await client.query(card, "0x" + "ab" * 32)
        assert exc.value.code == "unknown_intent"


async def test_a_swap_sent_just_before_a_crash_is_found_on_chain_not_skipped(d: Desk) -> None:
    """The agent wrote the step's pending row and sent its swap, then died before
    recording it; by the time it is back the period is over. The step is recorded as
    filled from the chain (the Swapped event), not as missed, and not sent again."""
    intent = DcaIntent(
        wallet=d.wallet.address,
        nonce=10,
        valid_until=FAR,
        max_slippage_bps=100,
        token_in=d.tokens["mUSD"],
        token_out=d.tokens["WETH"],
        amount_per_period=str(10 * MUSD),
        period_s=PERIOD,
        periods=2,
        start_at=await chain_now(d.chain) + 1,
    )
    intent_id = await submit(d, intent)
    await eventually(
        lambda: d.intent_state(intent_id),
        lambda s: [f.status for f in s.fills] == ["filled"],  # mined and recorded
    )
    await d.agent.stop()
    # What the dead agent did for period 2: the row, then the swap, then nothing.
    await advance_time(d.chain, PERIOD)
    await observe_pools(d.chain, d.oracle, 0)
    store = DefiStore(d.home / "agents" / "defi" / "defi.db")
    store.begin_step(
        intent_id,
        1,
        from_block=int(await d.chain.w3.eth.block_number),
        token_in=d.tokens["mUSD"],
        token_out=d.tokens["WETH"],
        amount_in=10 * MUSD,
    )
    store.close()
    as_agent = AgentWalletClient(Wallet(Account.from_key(d.key), d.chain.w3), d.wallet.address)
    receipt = await as_agent.swap(
        SwapCall(
            router=d.router.address,
            path=(d.tokens["mUSD"], d.tokens["WETH"]),
            amount_in=10 * MUSD,
            min_out=0,
            recipient=d.wallet.address,
            deadline=await chain_now(d.chain) + 60,
        )
    )
    await advance_time(d.chain, PERIOD)  # period 2 is over by the time the agent is back
    again = Agent("defi", wallet=d.key, home=d.home, config=d.config)
    desk = DefiDesk(again, retry_s=PERIOD)
    async with again:
        assert desk.store is not None
        state = await eventually(
            lambda: desk.store.state(intent_id),  # type: ignore[union-attr]
            lambda s: s is not None and s.phase == IntentPhase.DONE,
            timeout=30,
        )
    assert state is not None
    assert [(f.step, f.status) for f in state.fills] == [(0, "filled"), (1, "filled")]
    assert state.fills[1].tx == "0x" + bytes(receipt["transactionHash"]).hex()
    spent = 500 * MUSD - await TokenClient(d.owner, d.tokens["mUSD"]).balance_of(d.wallet.address)
    assert spent == 20 * MUSD  # two periods, two swaps: nothing sent twice


async def test_an_approval_nobody_gives_in_time_expires_and_nothing_trades(d: Desk) -> None:
    until = await chain_now(d.chain) + 2 * PERIOD
    intent = swap_intent(d, 50 * MUSD, approval_above=str(10 * MUSD), valid_until=until)
    intent_id = await submit(d, intent)
    await d.settle(intent_id, IntentPhase.AWAITING_APPROVAL)
    (approval,) = d.agent.records.approvals(status=ApprovalStatus.PENDING)
    for _ in range(3):
        await d.tick(PERIOD)
    state = await d.settle(intent_id, IntentPhase.FAILED)
    assert state.fills[0].status == "refused" and state.fills[0].reason == "no decision"
    with pytest.raises(AgentMeshValueError, match="already expired"):
        d.agent.records.decide(approval.id, True)
    assert await TokenClient(d.owner, d.tokens["mUSD"]).balance_of(d.wallet.address) == 500 * MUSD


async def test_a_swap_still_in_flight_is_waited_for_never_sent_again(d: Desk) -> None:
    """The step's swap is with the node but not mined (the agent lost it while waiting):
    the chain is asked about that transaction, which says "in flight" (wait, send
    nothing), then, once mined, gives the fill."""
    assert d.desk.store is not None and d.desk.runner is not None
    store, ctx = d.desk.store, d.desk.runner.ctx
    intent_id = await submit(d, swap_intent(d, 10 * MUSD, valid_until=FAR - 1))
    await d.settle(intent_id, IntentPhase.DONE)
    await d.agent.stop()  # nothing else sends while the chain stops mining
    provider: Any = d.chain.w3.provider
    store.begin_step(
        intent_id,
        7,
        from_block=int(await d.chain.w3.eth.block_number) + 1,
        token_in=d.tokens["mUSD"],
        token_out=d.tokens["WETH"],
        amount_in=10 * MUSD,
    )
    await provider.make_request("evm_setAutomine", [False])
    as_agent = AgentWalletClient(Wallet(Account.from_key(d.key), d.chain.w3), d.wallet.address)
    call = SwapCall(
        router=d.router.address,
        path=(d.tokens["mUSD"], d.tokens["WETH"]),
        amount_in=10 * MUSD,
        min_out=0,
        recipient=d.wallet.address,
        deadline=await chain_now(d.chain) + 600,
    )
    hashes: list[str] = []
    in_flight = asyncio.create_task(
        as_agent.swap(call, sent=lambda h: hashes.append("0x" + h.hex()))
    )
    try:
        await eventually(lambda: hashes or in_flight.done())
        if in_flight.done():
            in_flight.result()  # raises what went wrong
        store.note_sent(intent_id, 7, hashes[0])
        assert await reconcile_step(ctx, as_agent, intent_id, 7) == "in_flight"
        assert store.fill(intent_id, 7).status == "pending"  # type: ignore[union-attr]
        await provider.make_request("evm_setAutomine", [True])
        await provider.make_request("evm_mine", [])
        await in_flight
    finally:
        await provider.make_request("evm_setAutomine", [True])
        if not in_flight.done():
            in_flight.cancel()
    assert await reconcile_step(ctx, as_agent, intent_id, 7) == "filled"
    row = store.fill(intent_id, 7)
    assert row is not None and (row.status, row.tx) == ("filled", hashes[0])
    assert int(row.amount_in) == 10 * MUSD and int(row.amount_out) > 0


def test_a_final_phase_sticks(tmp_path: Path) -> None:
    store = DefiStore(tmp_path / "defi.db")
    store.add_intent(
        IntentRow(id="0x" + "ab" * 32, kind="swap", body="{}", signature="", owner="", wallet="")
    )
    store.update_intent("0x" + "ab" * 32, phase=IntentPhase.CANCELLED)
    row = store.update_intent("0x" + "ab" * 32, phase=IntentPhase.ACTIVE, next_due=5, reason="x")
    assert (row.phase, row.next_due, row.reason) == (IntentPhase.CANCELLED, 0, "x")
    store.close()
