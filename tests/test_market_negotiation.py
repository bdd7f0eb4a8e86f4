"""Negotiation beyond the happy path: counter-offers, re-award, weighted ranking."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from agentmesh.agents.agent import Agent
from agentmesh.agents.requester_graph import Weights, rank
from agentmesh.agents.service import ServiceContext
from agentmesh.canonical import canonical_json, sha256_hex
from agentmesh.config import Config
from agentmesh.mesh.node import MeshNode, RemoteError
from agentmesh.message import Message
from agentmesh.protocols.negotiation import (
    PROTOCOL,
    VERSION,
    Ack,
    Award,
    CallForProposals,
    CounterOffer,
    Decline,
    Proposal,
)
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import JobStatus, TokenClient
from agentmesh.wallets.wallet import Wallet
from tests.helpers import (
    advance_time,
    bind_home,
    chain_now,
    escrow_for,
    eventually,
    fund,
    net,
    new_key,
    with_agent_settings,
)


async def seller(
    home: Path,
    config: Config,
    deployer: Wallet,
    token: TokenClient,
    name: str,
    price: str,
    floor: str | None = None,
) -> Agent:
    key = new_key()
    await fund(deployer, token, Account.from_key(key).address, musd=0)
    agent = Agent(name, wallet=key, home=home, config=config)

    @agent.service("echo", price=price, floor=floor)
    async def echo(ctx: ServiceContext, text: str) -> str:
        return text

    return agent


@pytest.fixture
async def buyer_key(deployer: Wallet, token: TokenClient) -> AsyncIterator[bytes]:
    key = new_key()
    await fund(deployer, token, Account.from_key(key).address, musd=10)
    yield key


async def test_one_counter_offer_each_way(
    home: Path, chain: Chain, deployer: Wallet, token: TokenClient, buyer_key: bytes
) -> None:
    config = bind_home(home, chain)
    provider = await seller(
        home, config, deployer, token, "haggler", "0.10 mUSD", floor="0.06 mUSD"
    )
    buyer_config = with_agent_settings(config, counter_ratio=0.5)
    async with provider, Agent("buyer", wallet=buyer_key, home=home, config=buyer_config) as buyer:
        await buyer.wait_for_providers("echo", timeout=20)
        outcome = await buyer.buy("echo", text="hi", budget="1")
        # Asked 0.05, below the floor: the provider's one counter is its floor.
        assert outcome.settled and outcome.price == 60_000
        assert await token.balance_of(provider.address) == net(60_000)  # less the protocol fee
        # A second counter in the same conversation is refused.
        with pytest.raises(RemoteError) as again:
            assert provider.node.card is not None
            await buyer.node.request(
                provider.node.card,
                CounterOffer(price=1),
                protocol=PROTOCOL,
                version=VERSION,
                expect=(Proposal,),
                conversation=bytes.fromhex(outcome.conversation),
            )
        assert again.value.code in ("counter_used", "out_of_order")


async def test_refused_award_is_cancelled_and_goes_to_the_next_proposal(
    home: Path, chain: Chain, deployer: Wallet, token: TokenClient, buyer_key: bytes
) -> None:
    config = bind_home(home, chain)
    # The cheaper provider refuses every funded job (it wants more time than offered).
    picky = await seller(
        home, with_agent_settings(config, min_work_s=10**6), deployer, token, "picky", "0.02 mUSD"
    )
    steady = await seller(home, config, deployer, token, "steady", "0.04 mUSD")
    async with picky, steady, Agent("buyer", wallet=buyer_key, home=home, config=config) as buyer:
        await buyer.wait_for_providers("echo", count=2, timeout=20)
        before = await token.balance_of(buyer.address)
        outcome = await buyer.buy("echo", text="hi", budget="1")
        assert outcome.settled and outcome.provider == steady.address and outcome.price == 40_000
        assert outcome.txs.get("cancel", "").startswith("0x")  # the refused job's refund
        escrow = escrow_for(chain, buyer.wallet)
        cancelled = await escrow.get_job((outcome.job_id or 0) - 1)
        assert cancelled.provider == picky.address and cancelled.status == JobStatus.CANCELLED
        assert await token.balance_of(buyer.address) == before - 40_000
        assert await token.balance_of(picky.address) == 0
        tasks = await eventually(picky.records.tasks, lambda t: bool(t) and t[0].status == "failed")
        assert tasks[0].state == "refused"


def test_weighted_ranking_trades_price_for_reputation() -> None:
    cheap_unknown = {"provider": "0xA", "price": 50, "latency_ms": 10, "reputation": None}
    dearer_trusted = {"provider": "0xB", "price": 55, "latency_ms": 10, "reputation": 100}
    budget = 100
    assert rank([cheap_unknown, dearer_trusted], budget)[0] is cheap_unknown  # price only
    weighted = rank([cheap_unknown, dearer_trusted], budget, Weights(1.0, 0.2, 0.05))
    assert weighted[0] is dearer_trusted  # 0.55 + 0 < 0.50 + 0.1
    heavy_price = rank([cheap_unknown, dearer_trusted], budget, Weights(1.0, 0.05, 0.0))
    assert heavy_price[0] is cheap_unknown  # 0.50 + 0.025 < 0.55


def test_weighted_ranking_prefers_what_the_validators_scored_well() -> None:
    cheap_failing = {"provider": "0xA", "price": 50, "latency_ms": 10, "consensus": 0}
    dearer_validated = {"provider": "0xB", "price": 70, "latency_ms": 10, "consensus": 10_000}
    unscored = {"provider": "0xC", "price": 60, "latency_ms": 10}
    offers = [cheap_failing, dearer_validated, unscored]
    # 0.70 + 0 < 0.60 + 0.25 (unscored: half a perfect score) < 0.50 + 0.5
    assert rank(offers, 100, Weights()) == [dearer_validated, unscored, cheap_failing]
    no_weight = Weights(consensus=0.0)  # a requester that ignores the validators
    assert rank(offers, 100, no_weight)[0] is cheap_failing


def test_weighted_ranking_ties_are_deterministic() -> None:
    a = {"provider": "0xBB", "price": 50, "latency_ms": 10, "reputation": 80}
    b = {"provider": "0xaa", "price": 50, "latency_ms": 10, "reputation": 80}
    weights = Weights()
    assert rank([a, b], 100, weights) == rank([b, a], 100, weights) == [b, a]


async def test_a_live_offer_takes_one_counter_an_exact_award_and_expires_unawarded(
    home: Path, chain: Chain, deployer: Wallet, token: TokenClient
) -> None:
    """A requester speaking the protocol by hand, step by step, before any money moves."""
    config = bind_home(home, chain)
    provider = await seller(
        home,
        with_agent_settings(config, offer_ttl_s=30, funding_ttl_s=30),
        deployer,
        token,
        "haggler",
        "0.10 mUSD",
        floor="0.06 mUSD",
    )
    async with provider, MeshNode(new_key(), name="by-hand", config=config.mesh) as buyer:
        assert provider.node.card is not None and buyer.card is not None
        card = provider.node.card

        async def ask(
            message: Message, conversation: bytes, expect: tuple[type[Message], ...]
        ) -> Any:
            return await buyer.request(
                card,
                message,
                protocol=PROTOCOL,
                version=VERSION,
                expect=expect,
                conversation=conversation,
            )

        def call() -> CallForProposals:
            text = canonical_json({"text": "hi"})
            return CallForProposals(
                service="echo",
                input=text,
                input_sha256=sha256_hex(text),
                budget=10**6,
                token=provider.token_address,
                deadline_s=60,
                card=buyer.card,
            )

        first = os.urandom(16)
        offer = await ask(call(), first, (Proposal, Decline))
        assert isinstance(offer, Proposal) and offer.price == 100_000
        assert offer.valid_until >= await chain_now(chain) + 29  # the offer's own timer
        countered = await ask(CounterOffer(price=10_000), first, (Proposal,))
        assert countered.price == 60_000  # below the floor: its one counter is the floor
        with pytest.raises(RemoteError) as twice:
            await ask(CounterOffer(price=50_000), first, (Proposal,))
        assert twice.value.code == "counter_used"
        with pytest.raises(RemoteError) as wrong:
            await ask(Award(price=50_000), first, (Ack,))
        assert wrong.value.code == "bad_award"
        # Nobody awards it: the offer lapses on the provider's timer.
        await advance_time(chain, 31)
        task = await eventually(
            lambda: provider.records.task("p:" + first.hex()), lambda t: t.status == "expired"
        )
        assert task is not None and (task.state, task.status) == ("expired", "expired")
        with pytest.raises(RemoteError) as late:
            await ask(Award(price=60_000), first, (Ack,))
        assert late.value.code == "out_of_order"

        # Awarded but never funded: the award lapses too.
        second = os.urandom(16)
        offer = await ask(call(), second, (Proposal, Decline))
        assert isinstance(offer, Proposal)
        assert isinstance(await ask(Award(price=offer.price), second, (Ack,)), Ack)
        await advance_time(chain, 31)
        task = await eventually(
            lambda: provider.records.task("p:" + second.hex()), lambda t: t.status == "expired"
        )
        assert task is not None and "not funded" in task.detail
        assert await token.balance_of(provider.address) == 0
