"""Agents trading through their LangGraph graphs: real model, real anvil, real mesh."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from typer.testing import CliRunner

from agentmesh.agents.agent import Agent, TaskFailed
from agentmesh.agents.records import AgentRecords
from agentmesh.agents.service import ServiceContext
from agentmesh.canonical import canonical_json, sha256_hex
from agentmesh.cli.app import app
from agentmesh.config import Config
from agentmesh.errors import ModelOutputError
from agentmesh.llm import LocalModel
from agentmesh.mesh.node import MeshNode, RemoteError
from agentmesh.protocols.negotiation import (
    PROTOCOL,
    VERSION,
    Ack,
    Award,
    CallForProposals,
    Decline,
    Funded,
    Proposal,
)
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import JobStatus, TokenClient
from agentmesh.wallets.wallet import Wallet
from tests.helpers import (
    SUMMARY_SYSTEM,
    TEXT,
    bind_home,
    escrow_for,
    eventually,
    fund,
    net,
    new_key,
    registry_for,
)

PRICE = 50_000  # 0.05 mUSD


@pytest.fixture(scope="module")
def model() -> Iterator[LocalModel]:
    shared = LocalModel.default()
    yield shared
    shared.close()


@pytest.fixture
def config(home: Path, chain: Chain) -> Config:
    # A dispute here waits for a key's decision (the jury is tested in test_jury*.py).
    return bind_home(home, chain, approval_threshold="0.1", arbiter="deployer")


@pytest.fixture
async def provider(
    home: Path, config: Config, model: LocalModel, deployer: Wallet, token: TokenClient
) -> AsyncIterator[Agent]:
    key = new_key()
    await fund(deployer, token, Account.from_key(key).address, musd=0)
    agent = Agent("provider", wallet=key, model=model, home=home, config=config)

    @agent.service("summarize", price="0.05 mUSD")
    async def summarize(ctx: ServiceContext, text: str) -> str:
        return await ctx.model.chat(
            [{"role": "system", "content": SUMMARY_SYSTEM}, {"role": "user", "content": text}],
            max_tokens=48,
        )

    @agent.service("explode", price="0.05 mUSD")
    async def explode(ctx: ServiceContext, text: str) -> str:
        raise RuntimeError("the service broke")

    @agent.service("hollow", price="0.05 mUSD")
    async def hollow(ctx: ServiceContext, text: str) -> str:
        return "   "  # fails the provider's own (and any requester's) default check

    @agent.service("echo", price="0.05 mUSD")
    async def echo(ctx: ServiceContext, text: str) -> str:
        return text[:20]

    async with agent:
        yield agent


@pytest.fixture
async def requester(
    home: Path, config: Config, deployer: Wallet, token: TokenClient, provider: Agent
) -> AsyncIterator[Agent]:
    key = new_key()
    await fund(deployer, token, Account.from_key(key).address, musd=100)
    agent = Agent("requester", wallet=key, home=home, config=config)
    async with agent:
        await agent.wait_for_providers("summarize", timeout=20)
        yield agent


def reprice(agent: Agent, service: str, price: int) -> None:
    """Sell ``service`` at exactly ``price`` from now on (list price and floor)."""
    agent.services[service] = dataclasses.replace(agent.services[service], price=price, floor=price)


async def balances(token: TokenClient, *agents: Agent) -> list[int]:
    return [await token.balance_of(a.address) for a in agents]


async def test_requester_buys_a_summary_through_both_graphs(
    chain: Chain, token: TokenClient, provider: Agent, requester: Agent
) -> None:
    before = await balances(token, provider, requester)
    outcome = await requester.buy("summarize", text=TEXT, budget="0.5")
    assert outcome.settled and outcome.provider == provider.address
    assert isinstance(outcome.result, str) and outcome.result.strip()
    assert outcome.price == PRICE  # the model proposed the list price, within the rules
    assert await balances(token, provider, requester) == [
        before[0] + net(PRICE),  # less the protocol fee
        before[1] - PRICE,
    ]
    job = await escrow_for(chain, provider.wallet).get_job(outcome.job_id or 0)
    assert job.status == JobStatus.RELEASED and job.amount == PRICE
    assert await registry_for(chain, provider.wallet).reputation(provider.address) == (1, 100)
    # The provider's decision came from the model, under the grammar: a valid object.
    task = provider.records.tasks()[0]
    snapshot = await provider.provider_graph.aget_state(provider.runner.config(task.conversation))
    decision = snapshot.values["decision"]
    assert decision["model_action"] in ("propose", "decline") and decision["action"] == "propose"
    # The provider records the release once Settled arrives.
    recorded = await eventually(
        lambda: provider.records.task(task.conversation),
        lambda t: t is not None and t.status == "done",
    )
    assert recorded is not None and recorded.state == "settled"


async def test_budget_below_the_floor_is_declined_by_rule(
    chain: Chain, token: TokenClient, provider: Agent, requester: Agent
) -> None:
    before = await balances(token, provider, requester)
    with pytest.raises(TaskFailed, match="below the floor") as failed:
        await requester.buy("summarize", text=TEXT, budget="0.01")
    assert failed.value.outcome.phase == "no_proposal"
    assert failed.value.outcome.job_id is None
    assert await balances(token, provider, requester) == before


async def test_invalid_input_is_declined_with_the_field_named(
    provider: Agent, requester: Agent
) -> None:
    with pytest.raises(TaskFailed, match="text") as failed:
        await requester.buy("summarize", {"txt": "typo"}, budget="0.5")
    assert failed.value.outcome.phase == "no_proposal"


async def test_a_failing_service_refunds_at_once_and_the_agent_goes_on(
    chain: Chain, token: TokenClient, provider: Agent, requester: Agent
) -> None:
    before = await balances(token, provider, requester)
    with pytest.raises(TaskFailed, match="the service broke") as failed:
        await requester.buy("explode", text=TEXT, budget="0.5")
    outcome = failed.value.outcome
    assert outcome.phase == "failed" and outcome.job_id is not None
    job = await escrow_for(chain, requester.wallet).get_job(outcome.job_id)
    assert job.status == JobStatus.REFUNDED  # abandoned: no wait for the deadline
    assert await balances(token, provider, requester) == before
    assert provider.counters["service_errors"] == 1
    again = await requester.buy("summarize", text=TEXT, budget="0.5")
    assert again.settled


async def test_a_result_failing_its_own_check_is_abandoned_not_delivered(
    chain: Chain, token: TokenClient, provider: Agent, requester: Agent
) -> None:
    before = await balances(token, provider, requester)
    with pytest.raises(TaskFailed, match="blank") as failed:
        await requester.buy("hollow", text=TEXT, budget="0.5")
    outcome = failed.value.outcome
    assert outcome.phase == "failed" and outcome.job_id is not None
    job = await escrow_for(chain, requester.wallet).get_job(outcome.job_id)
    assert job.status == JobStatus.REFUNDED  # the provider gave the deposit back at once
    assert await balances(token, provider, requester) == before
    assert provider.counters["service_check_failed"] == 1


async def test_a_result_failing_the_buyers_check_is_disputed_and_frozen(
    chain: Chain, token: TokenClient, provider: Agent, requester: Agent
) -> None:
    before = await balances(token, provider, requester)
    # The provider's result is a fine string; this buyer wanted a number.
    with pytest.raises(TaskFailed, match="not a valid") as failed:
        await requester.buy("echo", text=TEXT, budget="0.5", result_type=int)
    outcome = failed.value.outcome
    assert outcome.phase == "disputed"
    job = await escrow_for(chain, requester.wallet).get_job(outcome.job_id or 0)
    assert job.status == JobStatus.DISPUTED
    escrow_address = requester.escrow.address
    assert await token.balance_of(escrow_address) >= PRICE  # frozen for the arbiter
    assert await balances(token, provider, requester) == [before[0], before[1] - PRICE]


async def test_a_custom_check_decides_before_paying(provider: Agent, requester: Agent) -> None:
    with pytest.raises(TaskFailed, match="result failed the buyer's check"):
        await requester.buy("summarize", text=TEXT, budget="0.5", check=lambda v: False)


async def _pending_approval(records: AgentRecords, timeout: float = 30.0) -> Any:
    pending = await eventually(lambda: records.approvals("pending"), timeout=timeout)
    assert pending, "no approval was requested"
    return pending[0]


async def test_a_spend_above_the_threshold_waits_for_approve(
    home: Path, chain: Chain, token: TokenClient, provider: Agent, requester: Agent
) -> None:
    reprice(provider, "summarize", 200_000)
    before = await balances(token, provider, requester)
    buying = asyncio.create_task(requester.buy("summarize", text=TEXT, budget="0.5"))
    row = await _pending_approval(requester.records)
    assert row.amount == 200_000 and row.conversation.startswith("r:")
    # A person sees what they approve: price, provider, service and input.
    text = canonical_json({"text": TEXT})
    shown = text if len(text) <= 80 else text[:77] + "..."
    assert row.description == f"pay 0.2 mUSD to {provider.address} for summarize of {shown}"
    table = CliRunner().invoke(app, ["--home", str(home), "approvals"])
    assert table.exit_code == 0, table.output
    assert "0.2 mUSD" in table.output and "200000" not in table.output
    # Let time pass on purpose: nothing may happen while the approval is pending.
    await asyncio.sleep(0.5)
    assert not buying.done()  # paused: nothing paid while waiting
    assert await balances(token, provider, requester) == before
    result = CliRunner().invoke(app, ["--home", str(home), "approve", row.id])
    assert result.exit_code == 0, result.output
    assert f"approved {row.id}" in result.output
    outcome = await asyncio.wait_for(buying, 60)
    assert outcome.settled and outcome.price == 200_000
    assert await balances(token, provider, requester) == [
        before[0] + net(200_000),
        before[1] - 200_000,
    ]
    listing = CliRunner().invoke(app, ["--home", str(home), "approvals", "--json"])
    assert '"status": "approved"' in listing.output and '"applied": true' in listing.output


async def test_reject_cancels_cleanly_and_pays_nothing(
    home: Path, chain: Chain, token: TokenClient, provider: Agent, requester: Agent
) -> None:
    reprice(provider, "summarize", 200_000)
    jobs_before = await escrow_for(chain, requester.wallet).contract.functions.jobCount().call()
    before = await balances(token, provider, requester)
    buying = asyncio.create_task(requester.buy("summarize", text=TEXT, budget="0.5"))
    row = await _pending_approval(requester.records)
    result = CliRunner().invoke(app, ["--home", str(home), "reject", row.id])
    assert result.exit_code == 0, result.output
    with pytest.raises(TaskFailed, match="rejected by its owner") as failed:
        await asyncio.wait_for(buying, 30)
    assert failed.value.outcome.phase == "rejected"
    assert await balances(token, provider, requester) == before
    jobs_after = await escrow_for(chain, requester.wallet).contract.functions.jobCount().call()
    assert jobs_after == jobs_before  # no escrow job was opened
    # The provider was told and forgot the offer.
    tasks = await eventually(
        provider.records.tasks, lambda t: bool(t) and t[-1].status == "cancelled"
    )
    assert tasks[-1].status == "cancelled"
    again = CliRunner().invoke(app, ["--home", str(home), "approve", row.id])
    assert again.exit_code == 1 and "already rejected" in str(again.exception or again.output)


def test_an_unknown_approval_id_is_a_clear_error(home: Path) -> None:
    result = CliRunner().invoke(app, ["--home", str(home), "approve", "deadbeef"])
    assert result.exit_code == 1
    assert "unknown approval id 'deadbeef'" in str(result.exception)


async def test_forged_and_out_of_order_steps_are_refused(
    chain: Chain, token: TokenClient, provider: Agent, requester: Agent
) -> None:
    outcome = await requester.buy("summarize", text=TEXT, budget="0.5")
    conversation = bytes.fromhex(outcome.conversation)
    stranger = MeshNode(new_key(), name="stranger", config=provider.node.config)
    async with stranger:
        assert provider.node.card is not None
        with pytest.raises(RemoteError) as forged:
            await stranger.request(
                provider.node.card,
                Award(price=PRICE),
                protocol=PROTOCOL,
                version=VERSION,
                expect=(Ack,),
                conversation=conversation,
            )
        assert forged.value.code == "not_party"
        with pytest.raises(RemoteError) as unknown:
            await stranger.request(
                provider.node.card,
                Funded(job_id=1, escrow=provider.escrow.address),
                protocol=PROTOCOL,
                version=VERSION,
                expect=(Ack,),
                conversation=bytes(16),
            )
        assert unknown.value.code == "unknown_task"
    with pytest.raises(RemoteError) as late:
        await requester.node.request(
            provider.node.card,
            Award(price=PRICE),
            protocol=PROTOCOL,
            version=VERSION,
            expect=(Ack,),
            conversation=conversation,
        )
    assert late.value.code == "out_of_order"
    assert "Award is accepted in state proposed" in late.value.detail
    assert provider.counters["rejected.not_party"] == 1
    assert provider.counters["rejected.out_of_order"] == 1


async def test_a_call_with_someone_elses_card_is_refused(provider: Agent, requester: Agent) -> None:
    assert provider.node.card is not None and requester.node.card is not None
    stranger = MeshNode(new_key(), name="stranger", config=provider.node.config)
    async with stranger:
        call = CallForProposals(
            service="summarize",
            input='{"text":"hi"}',
            input_sha256=sha256_hex('{"text":"hi"}'),
            budget=500_000,
            token=provider.token_address,
            deadline_s=60,
            card=requester.node.card,  # validly signed, but not by the sender
        )
        with pytest.raises(RemoteError) as refused:
            await stranger.request(
                provider.node.card,
                call,
                protocol=PROTOCOL,
                version=VERSION,
                expect=(Proposal, Decline),
            )
    assert refused.value.code == "bad_card"
    assert provider.counters["rejected.bad_card"] == 1
    assert provider.records.tasks() == []  # nothing started for it


class BrokenModel:
    """A model whose structured output always fails (the decide node's failure path)."""

    sha256 = ""

    async def structured(self, *args: Any, **kwargs: Any) -> Any:
        raise ModelOutputError("model output is not a valid PriceDecision")


async def test_when_the_model_fails_the_rules_price_the_offer(
    provider: Agent, requester: Agent, token: TokenClient
) -> None:
    real_model = provider.model
    provider.model = BrokenModel()  # type: ignore[assignment]
    try:
        with pytest.raises(TaskFailed):  # the summary itself needs the real model
            await requester.buy("summarize", text=TEXT, budget="0.5")
    finally:
        provider.model = real_model
    task = provider.records.tasks()[0]
    snapshot = await provider.provider_graph.aget_state(provider.runner.config(task.conversation))
    decision = snapshot.values["decision"]
    assert decision["reason"] == "rules (no model answer)" and decision["model_action"] == "none"
    assert snapshot.values["price"] == PRICE  # the list price, within the budget
    assert provider.counters["model_fallbacks"] == 1
