"""A requester that funds the wrong job gets a refusal, never a provider's work, and its
deposit comes back whole.

Real devnet, a real provider agent (a trivial deterministic service, no model) and a
requester speaking the negotiation protocol by hand over a raw ``MeshNode``: it agrees a
price, then opens an escrow job that does not match the deal (too little, too much, or
under the terms of another conversation) and says ``Funded``. The provider must refuse
(``ErrorReply`` code ``refused`` naming what is wrong), leave the job OPEN on chain, and
the requester cancels it and has every token back (conservation check over requester,
provider and escrow contract).
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from agentmesh.agents.agent import Agent
from agentmesh.agents.service import ServiceContext
from agentmesh.canonical import canonical_json, sha256_hex
from agentmesh.config import Config
from agentmesh.mesh.card import AgentCard
from agentmesh.mesh.node import MeshNode, RemoteError
from agentmesh.message import Message
from agentmesh.protocols.negotiation import (
    PROTOCOL,
    VERSION,
    Ack,
    Award,
    CallForProposals,
    Decline,
    Funded,
    Proposal,
    terms_hash,
)
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import EscrowClient, JobStatus, TokenClient
from agentmesh.wallets.wallet import Wallet
from tests.helpers import (
    Ledger,
    bind_home,
    chain_now,
    escrow_for,
    eventually,
    fund,
    new_key,
    token_for,
)

PRICE = 50_000  # 0.05 mUSD, the provider's list price
SERVICE = "echo"
TEXT = canonical_json({"text": "hi"})
DEADLINE_S = 300
REVIEW_S = 120


@dataclass
class Buyer:
    """A requester by hand: a mesh node and an escrow client on the same key."""

    node: MeshNode
    wallet: Wallet
    escrow: EscrowClient
    seller: AgentCard

    async def ask(
        self, message: Message, conversation: bytes, expect: tuple[type[Message], ...]
    ) -> Any:
        return await self.node.request(
            self.seller,
            message,
            protocol=PROTOCOL,
            version=VERSION,
            expect=expect,
            conversation=conversation,
        )

    async def awarded(self, token: str) -> tuple[bytes, int]:
        """A new conversation negotiated up to an acknowledged award: (its id, the price)."""
        conversation = os.urandom(16)
        assert self.node.card is not None
        call = CallForProposals(
            service=SERVICE,
            input=TEXT,
            input_sha256=sha256_hex(TEXT),
            budget=10**6,
            token=token,
            deadline_s=DEADLINE_S,
            card=self.node.card,
        )
        offer = await self.ask(call, conversation, (Proposal, Decline))
        assert isinstance(offer, Proposal), offer
        ack = await self.ask(Award(price=offer.price), conversation, (Ack,))
        assert isinstance(ack, Ack) and ack.state == "awarded"
        return conversation, offer.price

    async def fund(self, chain: Chain, amount: int, terms: bytes) -> int:
        """Open (approve + deposit) an escrow job to the seller; its id."""
        job_id, _ = await self.escrow.open(
            provider=self.seller.address,
            token=token_for(chain, self.wallet),
            amount=amount,
            deadline=await chain_now(chain) + DEADLINE_S,
            review_window=REVIEW_S,
            arbiter=chain.deployment.deployer,
            terms_hash=terms,
        )
        return job_id


@pytest.fixture
def config(home: Path, chain: Chain) -> Config:
    return bind_home(home, chain, review_window_s=REVIEW_S)


@pytest.fixture
async def seller(
    home: Path, config: Config, deployer: Wallet, token: TokenClient
) -> AsyncIterator[Agent]:
    key = new_key()
    await fund(deployer, token, Account.from_key(key).address, musd=0)
    agent = Agent("seller", wallet=key, home=home, config=config)

    @agent.service(SERVICE, price="0.05 mUSD")
    async def echo(ctx: ServiceContext, text: str) -> str:
        return text

    async with agent:
        yield agent


@pytest.fixture
async def buyer(
    chain: Chain, config: Config, deployer: Wallet, token: TokenClient, seller: Agent
) -> AsyncIterator[Buyer]:
    key = new_key()
    wallet = Wallet(Account.from_key(key), chain.w3, name="by-hand")
    await fund(deployer, token, wallet.address, musd=10)
    assert seller.node.card is not None
    async with MeshNode(key, name="by-hand", config=config.mesh) as node:
        yield Buyer(node, wallet, escrow_for(chain, wallet), seller.node.card)


def _amount_below(conversation: bytes, other: bytes, price: int) -> tuple[int, bytes, str]:
    terms = terms_hash(conversation, SERVICE, sha256_hex(TEXT), price)
    return price - 1, terms, f"amount {price - 1} != agreed price {price}"


def _amount_above(conversation: bytes, other: bytes, price: int) -> tuple[int, bytes, str]:
    terms = terms_hash(conversation, SERVICE, sha256_hex(TEXT), price)
    return price * 2, terms, f"amount {price * 2} != agreed price {price}"


def _terms_of_another_conversation(
    conversation: bytes, other: bytes, price: int
) -> tuple[int, bytes, str]:
    terms = terms_hash(other, SERVICE, sha256_hex(TEXT), price)
    return price, terms, "the terms hash does not match this conversation"


Spoil = Callable[[bytes, bytes, int], tuple[int, bytes, str]]


@pytest.mark.parametrize(
    "spoil",
    [_amount_below, _amount_above, _terms_of_another_conversation],
    ids=["amount-below-price", "amount-above-price", "terms-of-another-conversation"],
)
async def test_a_job_not_matching_the_deal_is_refused_and_the_deposit_comes_back(
    chain: Chain, token: TokenClient, seller: Agent, buyer: Buyer, spoil: Spoil
) -> None:
    ledger = await Ledger(token, buyer.escrow.address, buyer.wallet.address, seller.address).open()
    # Two deals at the same price with the same seller: the job for the first is
    # spoiled (for the third case, it carries the terms of the second).
    conversation, price = await buyer.awarded(seller.token_address)
    other, other_price = await buyer.awarded(seller.token_address)
    assert price == other_price == PRICE
    amount, terms, reason = spoil(conversation, other, price)
    job_id = await buyer.fund(chain, amount, terms)
    assert await ledger.conserved() == [-amount, 0, amount, 0]  # deposited

    with pytest.raises(RemoteError) as refused:
        await buyer.ask(Funded(job_id=job_id, escrow=buyer.escrow.address), conversation, (Ack,))
    assert refused.value.code == "refused"
    assert refused.value.detail == reason

    # The provider gave up on this task for good and never took the job.
    task = await eventually(
        lambda: seller.records.task("p:" + conversation.hex()),
        lambda t: t is not None and t.status == "failed",
    )
    assert task is not None and (task.state, task.status) == ("refused", "failed")
    assert reason in task.detail
    job = await buyer.escrow.get_job(job_id)
    assert job.status == JobStatus.OPEN and job.accepted_at == 0
    assert seller.counters["service_errors"] == 0
    assert await token.balance_of(seller.address) == 0

    # The requester takes its deposit back: nothing lost, nothing created.
    await buyer.escrow.cancel(job_id)
    assert (await buyer.escrow.get_job(job_id)).status == JobStatus.CANCELLED
    assert await ledger.conserved() == [0, 0, 0, 0]
