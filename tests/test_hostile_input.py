"""Hostile input to a provider agent: refused once, with an error naming the problem, and
nothing left behind (no stalled task, no retry, no lock).

Every frame here is signed by a throw-away key and sent raw over CurveZMQ to a real
``Agent`` on the session anvil, so the whole path is real: envelope checks, the strict
payload decoding of the mesh node, the negotiation handlers, the provider graph with its
SQLite checkpoints and the agent's records. The payloads are written by hand (``1e5``,
``"100000"``, ``true``, 2**64...), which the message types themselves would never encode.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

import pytest
from eth_account import Account
from pydantic import AfterValidator, Field, ValidationError

from agentmesh.agents.agent import Agent
from agentmesh.agents.negotiation_handlers import NOT_EVALUATED
from agentmesh.agents.service import ServiceContext
from agentmesh.canonical import canonical_json, sha256_hex
from agentmesh.envelope import Envelope
from agentmesh.mesh.card import AgentCard
from agentmesh.mesh.routes import ErrorReply
from agentmesh.message import MAX_WIRE_INT, Message
from agentmesh.protocols.negotiation import (
    PROTOCOL,
    VERSION,
    Ack,
    Award,
    CallForProposals,
    CounterOffer,
    Decline,
    Delivery,
    Funded,
    Proposal,
    Redeliver,
    Role,
    Settled,
    TaskStatus,
)
from agentmesh.testing_fakes import fake_card
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import TokenClient
from agentmesh.wallets.wallet import Wallet
from tests.helpers import ask_raw, bind_home, eventually, fund, new_key, raw_json, seal_raw

MAX_TEXT = 20_000
REPLIES: tuple[type[Message], ...] = (ErrorReply, Proposal, Decline, Ack, Delivery)


def explode(text: str) -> str:
    raise RuntimeError("the input validator broke")  # not a validation error: a bug


@pytest.fixture
async def provider(
    home: Path, chain: Chain, deployer: Wallet, token: TokenClient
) -> AsyncIterator[Agent]:
    """A provider selling ``summarize`` (declared input limits) and ``fragile`` (whose
    input check itself fails)."""
    key = new_key()
    await fund(deployer, token, Account.from_key(key).address, musd=0)
    agent = Agent("guarded", wallet=key, home=home, config=bind_home(home, chain))

    @agent.service("summarize", price="0.05 mUSD")
    async def summarize(
        ctx: ServiceContext, text: Annotated[str, Field(min_length=1, max_length=MAX_TEXT)]
    ) -> str:
        return text[:20]

    @agent.service("fragile", price="0.05 mUSD")
    async def fragile(ctx: ServiceContext, text: Annotated[str, AfterValidator(explode)]) -> str:
        return text

    async with agent:
        yield agent


class Hostile:
    """A sender with a throw-away key that writes its frames by hand."""

    def __init__(self, agent: Agent) -> None:
        assert agent.node.card is not None
        self.agent = agent
        self.target: AgentCard = agent.node.card
        self.key = new_key()
        self.card = fake_card("hostile", key=self.key)

    def call(self, service: str = "summarize", text: str = "hello") -> CallForProposals:
        data = canonical_json({"text": text})
        return CallForProposals(
            service=service,
            input=data,
            input_sha256=sha256_hex(data),
            budget=10**6,
            token=self.agent.token_address,
            deadline_s=60,
            card=self.card,
        )

    def seal(self, message: Message, conversation: bytes, **tokens: str) -> Envelope:
        """``message`` with fields replaced by raw JSON ``tokens``, signed."""
        return seal_raw(
            self.target,
            self.key,
            type(message),
            raw_json(message, **tokens),
            protocol=PROTOCOL,
            version=VERSION,
            conversation=conversation,
        )

    async def ask(self, message: Message, conversation: bytes, **tokens: str) -> Message:
        return decode(await ask_raw(self.target, self.seal(message, conversation, **tokens)))


def decode(reply: Envelope) -> Message:
    kind = next(t for t in REPLIES if t.schema_digest() == reply.schema_digest)
    return kind.decode(reply.payload)


async def leaves_nothing(agent: Agent, tid: str) -> None:
    """No record, no checkpoint and no lock for task ``tid``."""
    assert agent.records.task(tid) is None
    snapshot = await agent.runner.graph(tid).aget_state(agent.runner.config(tid))
    assert snapshot.values == {}
    assert tid not in agent.runner.locks


def no_stalled_tasks(agent: Agent) -> None:
    assert agent.records.tasks(TaskStatus.STALLED) == []
    assert agent.counters["graph_errors"] == 0


# ---------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("field", "token", "problem"),
    [
        ("budget", str(2**64), "less than or equal to 9223372036854775807"),
        ("budget", str(2**63), "less than or equal to 9223372036854775807"),
        ("budget", '"100000"', "Input should be a valid integer"),
        ("budget", "1e5", "Input should be a valid integer"),
        ("budget", "100000.0", "Input should be a valid integer"),
        ("budget", "true", "Input should be a valid integer"),
        ("deadline_s", '"60"', "Input should be a valid integer"),
    ],
)
async def test_a_bad_number_in_a_call_is_refused_once_and_leaves_no_task(
    provider: Agent, field: str, token: str, problem: str
) -> None:
    hostile = Hostile(provider)
    conversation = os.urandom(16)
    envelope = hostile.seal(hostile.call(), conversation, **{field: token})
    first = await ask_raw(hostile.target, envelope)
    reply = decode(first)
    assert isinstance(reply, ErrorReply) and reply.code == "invalid_payload", reply
    assert reply.detail.startswith(f"{field}: ") and problem in reply.detail, reply.detail
    tid = Role.PROVIDER.task_id(conversation.hex())
    await leaves_nothing(provider, tid)
    # Refused once: the same frame again gets the stored answer, nothing is re-run.
    again = await ask_raw(hostile.target, envelope)
    assert again.payload == first.payload
    assert provider.counters["rejected.invalid_payload"] == 1
    assert provider.counters["rejected.duplicate"] == 1
    assert provider.records.tasks() == []
    no_stalled_tasks(provider)


async def test_the_largest_allowed_budget_is_answered_and_stored(provider: Agent) -> None:
    hostile = Hostile(provider)
    conversation = os.urandom(16)
    reply = await hostile.ask(hostile.call(), conversation, budget=str(MAX_WIRE_INT))
    assert isinstance(reply, Proposal), reply
    task = provider.records.task(Role.PROVIDER.task_id(conversation.hex()))
    assert task is not None and (task.state, task.status) == ("proposed", TaskStatus.ACTIVE)
    no_stalled_tasks(provider)


async def test_bad_numbers_in_the_steps_of_a_live_task_are_refused_and_change_nothing(
    provider: Agent,
) -> None:
    hostile = Hostile(provider)
    conversation = os.urandom(16)
    tid = Role.PROVIDER.task_id(conversation.hex())
    offer = await hostile.ask(hostile.call(), conversation)
    assert isinstance(offer, Proposal), offer

    async def refused(message: Message, field: str, token: str, problem: str) -> None:
        reply = await hostile.ask(message, conversation, **{field: token})
        assert isinstance(reply, ErrorReply) and reply.code == "invalid_payload", reply
        assert reply.detail.startswith(f"{field}: ") and problem in reply.detail, reply.detail

    too_big = "less than or equal to 9223372036854775807"
    await refused(CounterOffer(price=1), "price", str(2**70), too_big)
    await refused(CounterOffer(price=1), "price", "true", "valid integer")
    await refused(Award(price=offer.price), "price", f'"{offer.price}"', "valid integer")
    task = provider.records.task(tid)
    assert task is not None and (task.state, task.status) == ("proposed", TaskStatus.ACTIVE)
    snapshot = await provider.runner.graph(tid).aget_state(provider.runner.config(tid))
    assert not snapshot.values.get("countered")  # the one counter-offer is still there
    countered = await hostile.ask(CounterOffer(price=offer.price), conversation)
    assert isinstance(countered, Proposal) and countered.price == offer.price, countered

    assert await hostile.ask(Award(price=offer.price), conversation) == Ack(state="awarded")
    funded = Funded(job_id=1, escrow=provider.escrow.address)
    await refused(funded, "job_id", str(2**64), too_big)
    await refused(funded, "job_id", "1.0", "valid integer")
    await refused(funded, "job_id", '"1"', "valid integer")
    task = provider.records.task(tid)
    assert task is not None and (task.state, task.status) == ("awarded", TaskStatus.ACTIVE)

    # The largest id a message may carry is stored and checked on chain like any other:
    # no such job, so the task is refused (ended), never stalled.
    reply = await hostile.ask(
        Funded(job_id=MAX_WIRE_INT, escrow=provider.escrow.address), conversation
    )
    assert isinstance(reply, ErrorReply) and reply.code == "refused", reply
    task = await eventually(lambda: provider.records.task(tid), lambda t: t.status != "active")
    assert task is not None and (task.state, task.status) == ("refused", TaskStatus.FAILED)
    assert task.job_id == MAX_WIRE_INT
    assert await eventually(lambda: tid not in provider.runner.locks)  # ended: lock dropped
    no_stalled_tasks(provider)


def test_card_numbers_are_strict_and_bounded() -> None:
    """The requester's card travels inside a call and is checkpointed with the task."""
    card = fake_card("hostile").model_dump(mode="json")
    for change in (
        {"issued_ms": 2**64},
        {"issued_ms": "5"},
        {"services": [{"name": "x", "price": 2**64}]},
        {"services": [{"name": "x", "price": True}]},
    ):
        with pytest.raises(ValidationError):
            AgentCard.model_validate_json(json.dumps({**card, **change}))


# ---------------------------------------------------------------------- service limits


async def test_a_call_breaking_a_declared_input_limit_is_declined_naming_it(
    provider: Agent,
) -> None:
    hostile = Hostile(provider)
    cases = [
        ("", "text: String should have at least 1 character"),
        ("x" * 30_000, f"text: String should have at most {MAX_TEXT} characters"),
    ]
    for text, problem in cases:
        conversation = os.urandom(16)
        reply = await hostile.ask(hostile.call(text=text), conversation)
        assert reply == Decline(reason=f"invalid input for summarize: {problem}"), reply
        tid = Role.PROVIDER.task_id(conversation.hex())
        task = provider.records.task(tid)
        assert task is not None and (task.state, task.status) == ("declined", "declined")
        assert tid not in provider.runner.locks  # ended: no lock kept
    # Within the limits (at the upper one exactly), the same service proposes.
    offer = await hostile.ask(hostile.call(text="x" * MAX_TEXT), os.urandom(16))
    assert isinstance(offer, Proposal), offer
    no_stalled_tasks(provider)


# ---------------------------------------------------------------------- unknown tasks


async def test_steps_for_unknown_conversations_cost_no_state(provider: Agent) -> None:
    hostile = Hostile(provider)
    steps: list[tuple[Message, Role]] = [
        (Award(price=1), Role.PROVIDER),
        (CounterOffer(price=1), Role.PROVIDER),
        (Funded(job_id=1, escrow=provider.escrow.address), Role.PROVIDER),
        (Settled(tx="0x00"), Role.PROVIDER),
        (Redeliver(), Role.PROVIDER),
        (Delivery(result='"x"', result_sha256=sha256_hex('"x"')), Role.REQUESTER),
    ]
    for message, role in steps:
        conversation = os.urandom(16)
        reply = await hostile.ask(message, conversation)
        assert reply == ErrorReply(code="unknown_task", detail="no such task here"), reply
        await leaves_nothing(provider, role.task_id(conversation.hex()))
    assert provider.counters["rejected.unknown_task"] == len(steps)
    assert provider.runner.locks == {}
    assert provider.records.tasks() == []


# ---------------------------------------------------------------------- errors


async def test_a_call_whose_first_run_fails_is_declined_once_and_never_retried(
    provider: Agent,
) -> None:
    hostile = Hostile(provider)
    conversation = os.urandom(16)
    tid = Role.PROVIDER.task_id(conversation.hex())
    reply = await hostile.ask(hostile.call(service="fragile"), conversation)
    assert reply == Decline(reason=NOT_EVALUATED), reply
    task = provider.records.task(tid)
    assert task is not None and task.status == TaskStatus.FAILED
    assert "RuntimeError" in task.detail
    assert provider.counters["graph_errors"] == 1
    assert provider.records.tasks(TaskStatus.STALLED) == []  # nothing for the retry loop
    assert tid not in provider.runner.locks
    # The same call again is answered from its checkpoint: declined, not run again.
    again: Any = await hostile.ask(hostile.call(service="fragile"), conversation)
    assert again == Decline(reason=NOT_EVALUATED), again
    assert provider.counters["graph_errors"] == 1
    assert tid not in provider.runner.locks
