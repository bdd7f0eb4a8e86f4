"""Trades that recover: a requester that was away when its result came, a dishonest
early delivery, an approval that outlives the offer. Real anvil, real mesh, in-process
agents with deterministic services (the model is not what these test)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from agentmesh.agents.agent import Agent, TaskFailed
from agentmesh.agents.service import Service, ServiceContext
from agentmesh.canonical import canonical_json, sha256_hex
from agentmesh.cli.app import app
from agentmesh.config import Config
from agentmesh.mesh.card import AgentCard
from agentmesh.mesh.node import MeshNode, RemoteError
from agentmesh.protocols.negotiation import PROTOCOL, VERSION, Delivery, Redeliver
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import JobStatus, TokenClient
from agentmesh.wallets.wallet import Wallet
from tests.helpers import (
    TEXT,
    Ledger,
    advance_time,
    assert_settled_for_good,
    bind_home,
    eventually,
    fee_of,
    funded_key,
    net,
    new_key,
    wait_for_status,
    with_agent_settings,
)

REVIEW_S = 30
PRICE = 50_000


@pytest.fixture
def config(home: Path, chain: Chain) -> Config:
    return bind_home(home, chain, review_window_s=REVIEW_S, arbiter="deployer")


@pytest.fixture
async def buyer_key(deployer: Wallet, token: TokenClient) -> bytes:
    return await funded_key(deployer, token, musd=10)


@pytest.fixture
async def seller_key(deployer: Wallet, token: TokenClient) -> bytes:
    return await funded_key(deployer, token, musd=0)


@pytest.fixture
def work_gate() -> asyncio.Event:
    return asyncio.Event()


@pytest.fixture
async def gated_seller(
    home: Path, config: Config, seller_key: bytes, work_gate: asyncio.Event
) -> AsyncIterator[Agent]:
    """Holds each job until the gate opens; tries a delivery once, quickly."""
    seller_config = with_agent_settings(config, delivery_attempts=1, reply_timeout_s=3)
    agent = Agent("seller", wallet=seller_key, home=home, config=seller_config)

    @agent.service("summarize", price="0.05 mUSD")
    async def summarize(ctx: ServiceContext, text: str) -> str:
        await work_gate.wait()
        return text[:30]

    async with agent:
        yield agent


async def test_a_requester_away_when_the_result_came_fetches_it_after_restart(
    home: Path,
    chain: Chain,
    token: TokenClient,
    config: Config,
    buyer_key: bytes,
    gated_seller: Agent,
    work_gate: asyncio.Event,
) -> None:
    buyer = Agent("buyer", wallet=buyer_key, home=home, config=config)
    await buyer.start()
    ledger = await Ledger(token, buyer.escrow.address, gated_seller.address, buyer.address).open()
    await buyer.wait_for_providers("summarize", timeout=30)
    buying = asyncio.create_task(buyer.buy("summarize", text=TEXT, budget="0.5"))
    job_id = await wait_for_status(chain, buyer.wallet, JobStatus.ACCEPTED, watching=buying)
    await buyer.stop()  # away: mid-task, waiting for the delivery
    buying.cancel()
    work_gate.set()
    # The seller does the work, commits the hash and fails to hand the result over.
    job_id = await wait_for_status(chain, gated_seller.wallet, JobStatus.SUBMITTED)
    seller_task = await eventually(
        lambda: gated_seller.records.tasks()[0], lambda t: t.state == "delivered", timeout=30
    )
    assert "unreachable" in seller_task.detail

    again = Agent("buyer", wallet=buyer_key, home=home, config=config)
    async with again:
        # Its delivery timer (a third of the review window) comes due: it looks at the
        # job, finds a result committed on chain, and asks for it again.
        await advance_time(chain, REVIEW_S // 3 + 1)
        task = await eventually(
            lambda: again.records.tasks()[0], lambda t: t.status != "active", timeout=30
        )
        assert (task.state, task.status) == ("settled", "done"), task.detail
        assert again.counters["redeliveries"] == 1
        job = await again.escrow.get_job(job_id)
        assert job.status == JobStatus.RELEASED
        assert await ledger.conserved() == [net(PRICE), -PRICE, 0, fee_of(PRICE)]
        await assert_settled_for_good(chain, job_id)


async def test_redeliver_is_answered_only_to_the_requester_once_committed(
    home: Path,
    chain: Chain,
    config: Config,
    buyer_key: bytes,
    gated_seller: Agent,
    work_gate: asyncio.Event,
) -> None:
    work_gate.set()
    async with Agent("buyer", wallet=buyer_key, home=home, config=config) as buyer:
        await buyer.wait_for_providers("summarize", timeout=30)
        outcome = await buyer.buy("summarize", text=TEXT, budget="0.5")
        conversation = bytes.fromhex(outcome.conversation)
        card = gated_seller.node.card
        assert card is not None
        again = await buyer.node.request(
            card,
            Redeliver(),
            protocol=PROTOCOL,
            version=VERSION,
            expect=(Delivery,),
            conversation=conversation,
        )
        assert isinstance(again, Delivery)
        assert again.result == canonical_json(TEXT[:30])
        assert again.result_sha256 == sha256_hex(again.result)
        async with MeshNode(new_key(), name="mallory", config=config.mesh) as mallory:
            with pytest.raises(RemoteError) as stranger:
                await mallory.request(
                    card,
                    Redeliver(),
                    protocol=PROTOCOL,
                    version=VERSION,
                    expect=(Delivery,),
                    conversation=conversation,
                )
            assert stranger.value.code == "not_party"
            with pytest.raises(RemoteError) as unknown:
                await mallory.request(
                    card,
                    Redeliver(),
                    protocol=PROTOCOL,
                    version=VERSION,
                    expect=(Delivery,),
                    conversation=bytes(16),
                )
            assert unknown.value.code == "unknown_task"


async def test_garbage_delivered_before_its_hash_is_disputed_once_committed(
    home: Path,
    chain: Chain,
    token: TokenClient,
    config: Config,
    buyer_key: bytes,
    seller_key: bytes,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A dishonest seller: no check of its own result, and it hands the result over
    # before committing its hash (hoping the buyer gives up and it can claim later).
    monkeypatch.setattr(Service, "accepts_result", lambda self, text: (True, ""))
    seller = Agent("cheat", wallet=seller_key, home=home, config=config)
    buyer = Agent("buyer", wallet=buyer_key, home=home, config=config)

    @seller.service("summarize", price="0.05 mUSD")
    async def summarize(ctx: ServiceContext, text: str) -> str:
        garbage = canonical_json("   ")
        task = {"configurable": {"thread_id": "p:" + ctx.conversation}}
        state = (await seller.provider_graph.aget_state(task)).values
        buyer_card = AgentCard.model_validate(state["requester_card"])
        early = Delivery(result=garbage, result_sha256=sha256_hex(garbage))
        await seller.messenger.ask(buyer_card, early, ctx.conversation)
        # Commit the hash only once the buyer has looked at the early delivery.
        await eventually(lambda: buyer.counters["deliveries_refused"], bool, timeout=20)
        return "   "

    async with seller, buyer:
        ledger = await Ledger(token, buyer.escrow.address, seller.address, buyer.address).open()
        await buyer.wait_for_providers("summarize", timeout=30)
        with pytest.raises(TaskFailed, match="blank") as failed:
            await buyer.buy("summarize", text=TEXT, budget="0.5")
        outcome = failed.value.outcome
        assert outcome.phase == "disputed" and outcome.txs.get("dispute", "").startswith("0x")
        assert buyer.counters["deliveries_refused"] == 1  # the early one, not yet on chain
        job = await buyer.escrow.get_job(outcome.job_id or 0)
        assert job.status == JobStatus.DISPUTED  # the seller cannot claim it
        await advance_time(chain, REVIEW_S + 1)
        assert (await buyer.escrow.get_job(outcome.job_id or 0)).status == JobStatus.DISPUTED
        assert await ledger.conserved() == [0, -PRICE, PRICE, 0]  # frozen for the arbiter


async def test_an_approval_that_outlives_the_offer_expires_and_spends_nothing(
    home: Path,
    chain: Chain,
    token: TokenClient,
    config: Config,
    buyer_key: bytes,
    seller_key: bytes,
) -> None:
    seller = Agent(
        "seller", wallet=seller_key, home=home, config=with_agent_settings(config, offer_ttl_s=20)
    )

    @seller.service("summarize", price="0.05 mUSD")
    async def summarize(ctx: ServiceContext, text: str) -> str:
        return text[:30]

    buyer_config = with_agent_settings(config, approval_threshold="0.01")
    async with seller, Agent("buyer", wallet=buyer_key, home=home, config=buyer_config) as buyer:
        ledger = await Ledger(token, buyer.escrow.address, seller.address, buyer.address).open()
        jobs = await buyer.escrow.contract.functions.jobCount().call()
        await buyer.wait_for_providers("summarize", timeout=30)
        buying = asyncio.create_task(buyer.buy("summarize", text=TEXT, budget="0.5"))
        pending = await eventually(lambda: buyer.records.approvals("pending"), bool, timeout=30)
        assert pending, "no approval was requested"
        await advance_time(chain, 21)  # nobody approved while the offer stood
        with pytest.raises(TaskFailed, match="offer lapsed") as failed:
            await asyncio.wait_for(buying, 30)
        assert failed.value.outcome.phase == "expired"
        late = CliRunner().invoke(app, ["--home", str(home), "approve", pending[0].id])
        assert late.exit_code == 1 and "already expired" in str(late.exception)
        assert await buyer.escrow.contract.functions.jobCount().call() == jobs  # no job
        assert await ledger.conserved() == [0, 0, 0, 0]


async def test_an_approval_given_while_the_buyer_is_down_applies_when_it_starts(
    home: Path,
    chain: Chain,
    token: TokenClient,
    config: Config,
    buyer_key: bytes,
    gated_seller: Agent,
    work_gate: asyncio.Event,
) -> None:
    work_gate.set()
    buyer_config = with_agent_settings(config, approval_threshold="0.01")
    buyer = Agent("buyer", wallet=buyer_key, home=home, config=buyer_config)
    await buyer.start()
    ledger = await Ledger(token, buyer.escrow.address, gated_seller.address, buyer.address).open()
    await buyer.wait_for_providers("summarize", timeout=30)
    buying = asyncio.create_task(buyer.buy("summarize", text=TEXT, budget="0.5"))
    pending = await eventually(lambda: buyer.records.approvals("pending"), bool, timeout=30)
    assert pending, "no approval was requested"
    await buyer.stop()  # the owner approves while the agent is down
    buying.cancel()
    approved = CliRunner().invoke(app, ["--home", str(home), "approve", pending[0].id])
    assert approved.exit_code == 0, approved.output
    assert await ledger.conserved() == [0, 0, 0, 0]  # nothing paid while it was down
    async with Agent("buyer", wallet=buyer_key, home=home, config=buyer_config) as again:
        task = await eventually(
            lambda: again.records.tasks()[0], lambda t: t.status != "active", timeout=60
        )
        assert (task.state, task.status) == ("settled", "done"), task.detail
        assert await ledger.conserved() == [net(PRICE), -PRICE, 0, fee_of(PRICE)]
        await assert_settled_for_good(chain, task.job_id or 0)
