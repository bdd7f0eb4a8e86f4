"""agentmesh on a chain that behaves like a shared network, not a devnet.

An anvil mining a block every second (never on demand), whose suite was deployed by
``agentmesh chain deploy`` from a keystore wallet funded from outside (see
tests/live_support.py): agents wait for two confirmations, pay EIP-1559 fees under a
cap, get no faucet. Here:

- ``chain deploy``, ``chain status`` and ``chain use``, and what they refuse;
- a purchase, with its confirmations and without a faucet;
- the devnet's market fault tests, a channel session and a DeFi intent, unchanged: the
  ``chain`` and ``deployer`` fixtures below hand them the live chain and its operator;
- an RPC outage in the middle of a purchase (anvil stopped, restarted with its state);
- a transaction stuck under a fee spike, replaced with the same nonce and more fee;
- a reorganization that drops the block holding a funding transaction.

Every test that moves money ends with a conservation check.
"""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from agentmesh.agents.agent import Agent
from agentmesh.agents.service import ServiceContext
from agentmesh.chain.deployment import Deployment
from agentmesh.config import load_config
from agentmesh.errors import InsufficientFundsError
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import EscrowClient, JobStatus, TokenClient
from agentmesh.wallets.keystore import Keystore
from agentmesh.wallets.sending import TxPolicy, set_tx_policy
from agentmesh.wallets.wallet import Wallet
from tests.helpers import (
    PASSWORD,
    TEST_SCRYPT_N,
    Ledger,
    eventually,
    fee_of,
    net,
    new_key,
    wait_for_status,
    with_agent_settings,
)
from tests.live_support import (
    CONFIRMATIONS,
    OPS,
    LiveChain,
    bind_live_home,
    cli,
    copy_of,
    rpc,
    start_live_anvil,
)

# The devnet's tests, run on the live chain (collected here under the fixtures below).
from tests.test_channel_calls import (  # noqa: F401 - fixtures and a test, collected here
    config,
    pair,
    test_calls_share_one_channel_and_a_cooperative_close_settles,
)
from tests.test_defi_agent import (  # noqa: F401
    d,
    test_a_swap_intent_fills_through_the_wallet_and_money_is_conserved,
)
from tests.test_market_faults import (  # noqa: F401
    test_requester_killed_after_delivery_provider_claims_after_review,
)

PRICE = 50_000  # 0.05 mUSD


@pytest.fixture
def chain(live_chain: Chain) -> Chain:
    """The live chain, for every test here (and those collected from the devnet's)."""
    return live_chain


@pytest.fixture
def deployer(live: LiveChain, live_chain: Chain) -> Wallet:
    """The operator: it deployed the suite, owns MeshUSD, and funds the test wallets."""
    return Wallet(live.ops_account, live_chain.w3, name=OPS)


def record_home(live: LiveChain, root: Path) -> Path:
    """A home holding the deployment record (copied, as a second machine would)."""
    home = root / "home"
    (home / "deployments").mkdir(parents=True, mode=0o700)
    (home / "config.toml").write_text(f"[wallet]\nscrypt_n = {TEST_SCRYPT_N}\n")
    shutil.copy(live.deploy_report["record"], home / "deployments" / "31337.json")
    return home


async def run_cli(home: Path, *args: str) -> Any:
    return await asyncio.to_thread(cli, home, *args)


# ---------------------------------------------------------------------- deploy, status, use


async def test_chain_deploy_recorded_a_suite_whose_code_matches(
    live: LiveChain, tmp_path: Path
) -> None:
    report = live.deploy_report
    assert report["deployer"] == live.ops_account.address
    assert report["confirmations"] == CONFIRMATIONS  # the default off an automine devnet
    assert set(report["code"].values()) == {"matches"} and len(report["code"]) == 7
    assert Decimal(report["paid_eth"]) <= Decimal(report["estimated_eth"])
    assert Decimal(report["paid_eth"]) > 0
    exchange = report["exchange"]
    assert list(exchange["pairs"]) == ["WETH/mUSD"] and exchange["oracle"]
    home = record_home(live, tmp_path)

    used = await run_cli(home, "chain", "use", live.rpc_url)
    assert used.exit_code == 0, used.output
    assert load_config(home).chain.rpc_url == live.rpc_url
    status = await run_cli(home, "chain", "status", "--json")
    assert status.exit_code == 0, status.output
    info = json.loads(status.stdout)
    assert info["chain_id"] == 31337 and info["head"] > 0
    # A quiet chain's base fee falls block after block (to 0 here); the tip stays.
    assert info["base_fee_wei"] >= 0 and info["tip_wei"] > 0
    assert info["confirmations"] == CONFIRMATIONS
    assert info["code_matches"] and info["record"]["deployer"] == live.ops_account.address


async def test_chain_deploy_and_use_refuse_what_would_go_wrong(
    live: LiveChain, tmp_path: Path
) -> None:
    home = record_home(live, tmp_path)
    Keystore(home, scrypt_n=TEST_SCRYPT_N).create("empty", PASSWORD)
    url = live.rpc_url

    # A wallet without the ETH the deployment is estimated to cost: nothing is sent.
    broke = await run_cli(home, "chain", "deploy", "--rpc-url", url, "--wallet", "empty", "--force")
    assert broke.exit_code == 1 and isinstance(broke.exception, InsufficientFundsError)
    message = broke.exception.user_message
    assert "holds 0 ETH" in message and "deploying the suite may cost up to" in message
    # Another chain than the one meant.
    wrong = await run_cli(
        home, "chain", "deploy", "--rpc-url", url, "--wallet", "empty", "--chain-id", "1"
    )
    assert wrong.exit_code == 1 and "has id 31337, not 1" in wrong.exception.user_message
    # The recorded suite is live: a second deployment needs --force.
    again = await run_cli(home, "chain", "deploy", "--rpc-url", url, "--wallet", "empty")
    assert again.exit_code == 1 and "--force deploys a new one" in again.exception.user_message

    record = home / "deployments" / "31337.json"
    good = Deployment.load(record)
    # Code on chain that is not the artifact's: TaskEscrow pointed at the registry.
    contracts = dict(good.contracts)
    contracts["TaskEscrow"] = contracts["TaskEscrow"].model_copy(
        update={"address": good.address("AgentRegistry")}
    )
    good.model_copy(update={"contracts": contracts}).save(record)
    status = await run_cli(home, "chain", "status", "--rpc-url", url, "--json")
    info = json.loads(status.stdout)
    assert info["code"]["TaskEscrow"] == "differs" and not info["code_matches"]
    refused = await run_cli(home, "chain", "use", url)
    assert refused.exit_code == 1 and "does not match" in refused.exception.user_message
    assert load_config(home).chain.rpc_url is None  # config.toml left as it was
    # A record for another chain id under this chain's name.
    good.model_copy(update={"chain_id": 5}).save(record)
    other = await run_cli(home, "chain", "status", "--rpc-url", url)
    assert other.exit_code == 1
    assert "records a deployment on chain 5" in other.exception.user_message
    # Not an URL.
    bad = await run_cli(home, "chain", "use", "ftp://x")
    assert bad.exit_code == 1 and "not an http" in bad.exception.user_message


# ---------------------------------------------------------------------- the market


async def fund_key(ops: Wallet, token: TokenClient, eth: float, musd: int) -> bytes:
    """A new key holding ``eth`` ETH and ``musd`` whole mUSD, sent by the operator."""
    key = new_key()
    address = Account.from_key(key).address
    await ops.send({"to": address, "value": int(eth * 10**18)})
    if musd:
        await token.mint(address, musd * 10**6)
    return key


def echo_seller(
    key: bytes, home: Path, agent_config: Any, gate: asyncio.Event | None = None
) -> Agent:
    seller = Agent("seller", wallet=key, home=home, config=agent_config)
    seller.work = []  # type: ignore[attr-defined]

    @seller.service("echo", price="0.05 mUSD")
    async def echo(ctx: ServiceContext, text: str) -> str:
        seller.work.append(text)  # type: ignore[attr-defined]
        if gate is not None:
            await gate.wait()
        return text.upper()

    return seller


async def block_of(chain: Chain, tx: str) -> int:
    return int((await chain.w3.eth.get_transaction_receipt(tx))["blockNumber"])  # type: ignore[arg-type]


async def test_a_purchase_waits_for_confirmations_and_no_faucet_tops_anyone_up(
    home: Path, chain: Chain, deployer: Wallet, token: TokenClient, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agentmesh")
    # The faucet is on in [agent] (the default), but this is not a devnet.
    settings = with_agent_settings(bind_live_home(home, chain), faucet=True)
    seller_key = await fund_key(deployer, token, eth=1, musd=0)
    buyer_key = await fund_key(deployer, token, eth=1, musd=1)
    seller = echo_seller(seller_key, home, settings)
    async with seller, Agent("buyer", wallet=buyer_key, home=home, config=settings) as buyer:
        assert "no devnet faucet or dev accounts here" in caplog.text
        assert await token.balance_of(seller.address) == 0  # nothing minted to it
        assert await seller.wallet.eth_balance() <= 10**18
        ledger = await Ledger(token, buyer.escrow.address, seller.address, buyer.address).open()
        await buyer.wait_for_providers("echo", timeout=30)
        outcome = await buyer.buy("echo", text="live", budget="0.5")
        assert outcome.settled and outcome.result == "LIVE"
        assert await ledger.conserved() == [net(PRICE), -PRICE, 0, fee_of(PRICE)]
        sale = await eventually(
            lambda: seller.records.tasks()[0], lambda t: t.status == "done", timeout=60
        )
        accept = json.loads(sale.txs)["accept"]
        # The provider heard of the job only once the buyer had its confirmations, so
        # its accept is at least that many blocks after the open.
        opened = await block_of(chain, outcome.txs["open"])
        assert await block_of(chain, accept) - opened >= CONFIRMATIONS
        tx = await chain.w3.eth.get_transaction(outcome.txs["open"])  # type: ignore[arg-type]
        assert tx["type"] == 2 and tx["maxFeePerGas"] <= 100 * 10**9  # EIP-1559, capped


# ---------------------------------------------------------------------- outages and reorgs


async def test_an_rpc_outage_mid_purchase_resumes_it_and_nothing_is_paid_twice(
    live: LiveChain, home: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agentmesh")
    state = tmp_path / "anvil-state.json"
    anvil = copy_of(live, state)
    chain = live.chain(anvil.rpc_url)
    restarted = None
    try:
        ops = Wallet(live.ops_account, chain.w3, name=OPS)
        token = TokenClient(ops, chain.token_address)
        settings = bind_live_home(home, chain)
        gate = asyncio.Event()
        seller = echo_seller(await fund_key(ops, token, 1, 0), home, settings, gate)
        buyer_key = await fund_key(ops, token, 1, 1)
        async with seller, Agent("buyer", wallet=buyer_key, home=home, config=settings) as buyer:
            ledger = await Ledger(token, buyer.escrow.address, seller.address, buyer.address).open()
            await buyer.wait_for_providers("echo", timeout=30)
            buying = asyncio.create_task(buyer.buy("echo", text="outage", budget="0.5"))
            job_id = await wait_for_status(chain, buyer.wallet, JobStatus.ACCEPTED, watching=buying)
            anvil.stop()  # the endpoint goes away (SIGTERM: anvil writes its state)
            gate.set()  # the work ends during the outage: its submit must wait
            await asyncio.sleep(4)
            assert not buying.done()
            # The mesh side still answers: the seller is up for the buyer, and the
            # buyer's own node answers its peers.
            assert await buyer.wait_for_providers("echo", timeout=5) >= 1
            restarted = start_live_anvil(state, port=anvil.port)  # back, with its state
            outcome = await asyncio.wait_for(buying, 180)
            assert outcome.settled and outcome.result == "OUTAGE" and outcome.job_id == job_id
            assert seller.work == ["outage"]  # worked once
            assert await ledger.conserved() == [net(PRICE), -PRICE, 0, fee_of(PRICE)]
            escrow = EscrowClient(ops, chain.deployment.address("TaskEscrow"))
            assert int(await escrow.contract.functions.jobCount().call()) == job_id  # one job
            noisy = [r for r in caplog.records if r.levelno >= logging.ERROR]
            assert not noisy, [f"{r.name}: {r.getMessage()}" for r in noisy]
            assert "timers wait until it is back" in caplog.text
    finally:
        await chain.w3.provider.disconnect()
        for process in (anvil, restarted):
            if process is not None:
                process.stop()


async def test_a_reorg_dropping_the_funding_block_is_noticed_and_the_buyer_pays_once(
    live: LiveChain, home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agentmesh")
    anvil = copy_of(live)
    chain = live.chain(anvil.rpc_url)
    try:
        ops = Wallet(live.ops_account, chain.w3, name=OPS)
        token = TokenClient(ops, chain.token_address)
        settings = bind_live_home(home, chain)
        seller = echo_seller(await fund_key(ops, token, 1, 0), home, settings)
        buyer_key = await fund_key(ops, token, 1, 1)
        escrow_address = chain.deployment.address("TaskEscrow")
        # Approved ahead, so funding is one transaction: the open.
        await TokenClient(Wallet(Account.from_key(buyer_key), chain.w3), token.address).approve(
            escrow_address, 10**6
        )
        async with seller, Agent("buyer", wallet=buyer_key, home=home, config=settings) as buyer:
            ledger = await Ledger(token, escrow_address, seller.address, buyer.address).open()
            await buyer.wait_for_providers("echo", timeout=30)
            rpc(chain, "evm_setIntervalMining", 0)  # blocks only when the test mines
            buying = asyncio.create_task(buyer.buy("echo", text="reorg", budget="0.5"))

            def pending_open() -> bool:
                pool = rpc(chain, "txpool_content")["pending"]
                mine = {k.lower(): v for k, v in pool.items()}.get(buyer.address.lower(), {})
                return any(tx["to"].lower() == escrow_address.lower() for tx in mine.values())

            assert await eventually(pending_open, timeout=60, interval=0.02)
            dropped = int(rpc(chain, "eth_blockNumber"), 16) + 1
            rpc(chain, "evm_mine")  # the block holding the funding...
            await asyncio.sleep(1.0)  # ...seen mined by the buyer, one block short
            rpc(chain, "anvil_rollback", 1)  # ...and dropped from the chain
            assert int(rpc(chain, "eth_blockNumber"), 16) == dropped - 1
            rpc(chain, "evm_setIntervalMining", 1)
            outcome = await asyncio.wait_for(buying, 120)
            assert outcome.settled and outcome.result == "REORG"
            assert "which the chain no longer has" in caplog.text
            assert await block_of(chain, outcome.txs["open"]) >= dropped
            escrow = EscrowClient(ops, escrow_address)
            assert int(await escrow.contract.functions.jobCount().call()) == 1  # opened once
            assert seller.work == ["reorg"]
            assert await ledger.conserved() == [net(PRICE), -PRICE, 0, fee_of(PRICE)]
    finally:
        await chain.w3.provider.disconnect()
        anvil.stop()


async def test_a_transaction_stuck_under_a_fee_spike_is_replaced_with_the_same_nonce(
    live: LiveChain, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="agentmesh")
    anvil = copy_of(live)
    chain = live.chain(anvil.rpc_url)
    policy = TxPolicy(confirmations=1, max_fee_per_gas=10**13, replace_after_s=2.0, timeout_s=60)
    set_tx_policy(chain.w3, policy)
    try:
        ops = Wallet(live.ops_account, chain.w3, name=OPS)
        sender = Wallet(Account.create(), chain.w3, name="sender")
        await ops.send({"to": sender.address, "value": 10**18})
        sink = Account.create().address
        rpc(chain, "evm_setIntervalMining", 0)  # no block while the spike is set up
        hashes: list[bytes] = []
        sending = asyncio.create_task(sender.send({"to": sink, "value": 1}, sent=hashes.append))
        assert await eventually(lambda: hashes, timeout=10)  # in the pool, priced for calm
        first = await chain.w3.eth.get_transaction(hashes[0])  # type: ignore[arg-type]
        # The next block's base fee jumps 20-fold: the transaction no longer fits, and
        # empty blocks bring the fee down only 12.5% each (some 20 s here).
        rpc(chain, "anvil_setNextBlockBaseFeePerGas", hex(20 * int(first["maxFeePerGas"])))
        rpc(chain, "evm_setIntervalMining", 1)
        receipt = await asyncio.wait_for(sending, 60)
        assert len(hashes) >= 2, "never replaced"
        mined = await chain.w3.eth.get_transaction(receipt["transactionHash"])
        assert bytes(receipt["transactionHash"]) in hashes[1:]  # a replacement was mined
        assert mined["nonce"] == first["nonce"]
        assert mined["maxFeePerGas"] > 20 * first["maxFeePerGas"] > first["maxFeePerGas"]
        assert "replaced by 0x" in caplog.text
        assert await chain.w3.eth.get_balance(sink) == 1  # sent once
        assert await chain.w3.eth.get_transaction_count(sender.address) == 1
    finally:
        await chain.w3.provider.disconnect()
        anvil.stop()
