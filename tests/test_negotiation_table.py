"""The negotiation protocol as one object (``NEGOTIATION``): its tables, lookups, the
waiting phases the graphs interrupt in, and the checkpoint serializer of its messages.

Pure, in memory: no chain, mesh or model.
"""

from __future__ import annotations

import inspect
import logging
import re
from typing import Any

import pytest
from langgraph.checkpoint.serde import jsonplus
from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer

from agentmesh.agents import provider_graph, requester_graph
from agentmesh.agents.checkpoints import checkpoint_serde
from agentmesh.message import Message
from agentmesh.protocols.negotiation import (
    ALL_MESSAGES,
    NEGOTIATION,
    Ack,
    ApprovalDecision,
    Award,
    CallForProposals,
    CounterOffer,
    Decline,
    Delivery,
    Dispute,
    Failure,
    Funded,
    Phase,
    Proposal,
    Redeliver,
    Reject,
    Role,
    Settled,
    TaskStatus,
    Timeout,
)
from agentmesh.testing_fakes import fake_card

CONVERSATION = "c0" * 16
HASH = "ab" * 32
ADDRESS = "0x" + "12" * 20

# The one waiting phase (per role) each step is accepted in.
WAITING = {
    (Role.PROVIDER, Phase.PROPOSED): (Award, Reject, CounterOffer),
    (Role.PROVIDER, Phase.AWARDED): (Funded,),
    (Role.PROVIDER, Phase.DELIVERED): (Settled, Dispute),
    (Role.REQUESTER, Phase.NOTIFIED): (Delivery, Failure),
}

FINAL = {
    Phase.SETTLED: TaskStatus.DONE,
    Phase.CLAIMED: TaskStatus.DONE,
    Phase.REFUNDED: TaskStatus.REFUNDED,
    Phase.EXPIRED: TaskStatus.EXPIRED,
    Phase.DISPUTED: TaskStatus.DISPUTED,
    Phase.DECLINED: TaskStatus.DECLINED,
    Phase.REJECTED: TaskStatus.CANCELLED,
}


# ---------------------------------------------------------------------- the tables


def test_every_phase_in_the_tables_is_a_phase() -> None:
    for role, table in NEGOTIATION.accepts.items():
        assert isinstance(role, Role)
        for phase, kinds in table.items():
            assert isinstance(phase, Phase), (role, phase)
            assert kinds, f"{role}/{phase} accepts nothing"
            assert all(kind in NEGOTIATION.messages for kind in kinds), (role, phase)
    for phase, status in NEGOTIATION.final_status.items():
        assert isinstance(phase, Phase)
        assert isinstance(status, TaskStatus)
    for phase in NEGOTIATION.redeliverable | NEGOTIATION.offering:
        assert isinstance(phase, Phase), phase
    for message_type, phases in NEGOTIATION.answered_at.items():
        assert message_type in NEGOTIATION.messages
        assert phases
        assert all(isinstance(phase, Phase) for phase in phases), message_type


def test_the_tables_hold_exactly_the_protocol() -> None:
    accepts = {
        (role, phase): kinds
        for role, table in NEGOTIATION.accepts.items()
        for phase, kinds in table.items()
    }
    assert accepts == WAITING
    assert dict(NEGOTIATION.final_status) == FINAL
    assert NEGOTIATION.redeliverable == {
        Phase.SUBMITTED,
        Phase.DELIVERED,
        Phase.SETTLED,
        Phase.CLAIMED,
        Phase.DISPUTED,
    }
    assert NEGOTIATION.offering == {Phase.PROPOSED, Phase.AWARDED, Phase.FUNDED, Phase.ACCEPTED}
    assert NEGOTIATION.name == "agentmesh.negotiation"
    assert NEGOTIATION.version == "1"
    assert NEGOTIATION.messages == ALL_MESSAGES


def test_local_messages_are_never_sent() -> None:
    assert Timeout not in NEGOTIATION.messages
    assert ApprovalDecision not in NEGOTIATION.messages
    assert len(set(NEGOTIATION.messages)) == len(NEGOTIATION.messages) == 13


def test_no_message_is_accepted_by_both_roles() -> None:
    provider = {k for kinds in NEGOTIATION.accepts[Role.PROVIDER].values() for k in kinds}
    requester = {k for kinds in NEGOTIATION.accepts[Role.REQUESTER].values() for k in kinds}
    assert provider.isdisjoint(requester), provider & requester
    expected: dict[Role, set[type[Message]]] = {
        Role.PROVIDER: {Award, Reject, CounterOffer, Funded, Settled, Dispute},
        Role.REQUESTER: {Delivery, Failure},
    }
    assert (provider, requester) == (expected[Role.PROVIDER], expected[Role.REQUESTER])


def test_answered_steps_are_provider_steps_answered_in_their_outcomes() -> None:
    provider = NEGOTIATION.accepts[Role.PROVIDER]
    for message_type, phases in NEGOTIATION.answered_at.items():
        (waiting,) = NEGOTIATION.phases_accepting(message_type)
        assert waiting in provider, message_type
        # A step that is not answered at once is answered when its waiting ends, one way
        # or another: a timeout (expired) ends every waiting phase.
        assert Phase.EXPIRED in phases, message_type
    assert NEGOTIATION.answered_at[Award] == {Phase.AWARDED, Phase.EXPIRED, Phase.REJECTED}
    assert NEGOTIATION.answered_at[Funded] == {Phase.ACCEPTED, Phase.REFUSED, Phase.EXPIRED}
    assert NEGOTIATION.answered_at[CounterOffer] == {Phase.PROPOSED, Phase.EXPIRED}


# ---------------------------------------------------------------------- lookups


@pytest.mark.parametrize(("role", "phase"), list(WAITING), ids=str)
def test_accepted_in_each_waiting_phase(role: Role, phase: Phase) -> None:
    assert NEGOTIATION.accepted(role, phase) == WAITING[role, phase]
    assert NEGOTIATION.accepted(role, str(phase)) == WAITING[role, phase]  # plain text too
    other = Role.REQUESTER if role is Role.PROVIDER else Role.PROVIDER
    assert NEGOTIATION.accepted(other, phase) == ()


@pytest.mark.parametrize("phase", ["", "?", "bogus", "PROPOSED", "settled", "started", "stalled"])
@pytest.mark.parametrize("role", list(Role))
def test_accepted_in_unknown_or_non_waiting_phases_is_nothing(role: Role, phase: str) -> None:
    assert NEGOTIATION.accepted(role, phase) == ()


@pytest.mark.parametrize(
    ("message_type", "phases"),
    [
        (Award, [Phase.PROPOSED]),
        (Reject, [Phase.PROPOSED]),
        (CounterOffer, [Phase.PROPOSED]),
        (Funded, [Phase.AWARDED]),
        (Settled, [Phase.DELIVERED]),
        (Dispute, [Phase.DELIVERED]),
        (Delivery, [Phase.NOTIFIED]),
        (Failure, [Phase.NOTIFIED]),
        (CallForProposals, []),
        (Redeliver, []),
        (Proposal, []),
        (Decline, []),
        (Ack, []),
        (Timeout, []),
        (ApprovalDecision, []),
    ],
    ids=lambda v: getattr(v, "__name__", str(v)),
)
def test_phases_accepting(message_type: type[Message], phases: list[Phase]) -> None:
    found = NEGOTIATION.phases_accepting(message_type)
    assert isinstance(found, list)
    assert found == phases


@pytest.mark.parametrize(("phase", "status"), list(FINAL.items()), ids=str)
def test_status_when_final(phase: Phase, status: TaskStatus) -> None:
    assert NEGOTIATION.status_when_final(phase) is status
    assert NEGOTIATION.status_when_final(str(phase)) is status


@pytest.mark.parametrize(
    "phase",
    [Phase.FAILED, Phase.REFUSED, Phase.ABANDONED, Phase.LOST, Phase.NO_PROPOSAL, "bogus", ""],
)
def test_status_when_final_of_a_non_final_or_unknown_phase_is_failed(phase: str) -> None:
    assert NEGOTIATION.status_when_final(phase) is TaskStatus.FAILED


# ---------------------------------------------------------------------- roles


@pytest.mark.parametrize(("role", "prefix"), [(Role.PROVIDER, "p:"), (Role.REQUESTER, "r:")])
def test_role_task_ids(role: Role, prefix: str) -> None:
    tid = role.task_id(CONVERSATION)
    assert tid == prefix + CONVERSATION
    assert role.prefix == prefix
    assert Role.of(tid) is role


def test_role_values_are_the_records_spelling() -> None:
    assert [str(r) for r in Role] == ["provider", "requester"]
    assert Role("provider") is Role.PROVIDER


# ---------------------------------------------------------------------- the graphs


def waiting_phases(module: Any) -> set[Phase]:
    """The phases a graph module's nodes interrupt in, by ``waiting(Phase.X, ...)``."""
    names = re.findall(r"waiting\(Phase\.([A-Z_]+)", inspect.getsource(module))
    assert names, f"{module.__name__} waits nowhere?"
    return {Phase[name] for name in names}


@pytest.mark.parametrize(
    ("role", "module"),
    [(Role.PROVIDER, provider_graph), (Role.REQUESTER, requester_graph)],
    ids=["provider", "requester"],
)
def test_graphs_wait_exactly_in_the_phases_of_the_accept_table(role: Role, module: Any) -> None:
    assert waiting_phases(module) == set(NEGOTIATION.accepts[role])


def test_the_graphs_wait_where_the_table_says() -> None:
    assert waiting_phases(provider_graph) == {Phase.PROPOSED, Phase.AWARDED, Phase.DELIVERED}
    assert waiting_phases(requester_graph) == {Phase.NOTIFIED}


# ---------------------------------------------------------------------- checkpoints


def sample_messages() -> list[Message]:
    """One instance of every negotiation message, and of both local resume messages."""
    card = fake_card("requester")
    samples: list[Message] = [
        CallForProposals(
            service="summarize",
            input='{"text":"hi"}',
            input_sha256=HASH,
            budget=2_000,
            token=ADDRESS,
            deadline_s=300,
            card=card,
        ),
        Proposal(
            price=1_000,
            eta_s=10,
            model_sha256="m" * 64,
            reason="rules",
            reputation_count=2,
            reputation_total=150,
            valid_until=1_700_000_120,
        ),
        Decline(reason="busy"),
        CounterOffer(price=800),
        Award(price=800),
        Reject(reason="another proposal was chosen"),
        Funded(job_id=7, escrow=ADDRESS),
        Delivery(result='"HI"', result_sha256=HASH),
        Redeliver(),
        Failure(reason="RuntimeError: boom", tx="0x" + "01" * 32),
        Settled(tx="0x" + "02" * 32),
        Dispute(reason="bad result", tx="0x" + "03" * 32),
        Ack(state="awarded", detail="ok"),
        Timeout(),
        ApprovalDecision(approved=True),
        ApprovalDecision(approved=False),
    ]
    covered = {type(m) for m in samples}
    assert covered == {*NEGOTIATION.messages, Timeout, ApprovalDecision}
    return samples


@pytest.fixture
def fresh_serde_warnings(monkeypatch: pytest.MonkeyPatch) -> None:
    """LangGraph warns once per process and type: forget what was warned before."""
    for name in (
        "_warned_unregistered_types",
        "_warned_blocked_types",
        "_warned_unreconstructable_types",
    ):
        monkeypatch.setattr(jsonplus, name, set())


def serde_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name.startswith("langgraph") and r.levelno >= logging.WARNING
    ]


@pytest.mark.usefixtures("fresh_serde_warnings")
@pytest.mark.parametrize("message", sample_messages(), ids=lambda m: type(m).__name__)
def test_checkpoint_serde_round_trips_every_message(
    message: Message, caplog: pytest.LogCaptureFixture
) -> None:
    serde = checkpoint_serde()
    caplog.set_level(logging.DEBUG, logger="langgraph")
    for value in (message, {"resume": message, "phase": Phase.AWARDED}):
        back = serde.loads_typed(serde.dumps_typed(value))
        assert back == value
    back = serde.loads_typed(serde.dumps_typed(message))
    assert type(back) is type(message)
    assert serde_warnings(caplog) == []


@pytest.mark.usefixtures("fresh_serde_warnings")
def test_checkpoint_serde_round_trips_phases(caplog: pytest.LogCaptureFixture) -> None:
    serde = checkpoint_serde()
    caplog.set_level(logging.DEBUG, logger="langgraph")
    for phase in Phase:
        back = serde.loads_typed(serde.dumps_typed(phase))
        assert back is phase
    assert serde_warnings(caplog) == []


@pytest.mark.usefixtures("fresh_serde_warnings")
def test_a_type_left_out_of_the_allow_list_is_noticed(caplog: pytest.LogCaptureFixture) -> None:
    """The control of the two tests above: the checks they make do catch a type the
    serializer is not told about (it comes back as a dict, with a warning)."""
    caplog.set_level(logging.DEBUG, logger="langgraph")
    kinds: list[type[Message]] = [*NEGOTIATION.messages, Timeout]
    allowed = [(t.__module__, t.__name__) for t in kinds]
    partial = JsonPlusSerializer(allowed_msgpack_modules=allowed)
    decision = ApprovalDecision(approved=True)
    back = partial.loads_typed(checkpoint_serde().dumps_typed(decision))
    assert back != decision
    assert back == {"approved": True}
    (warning,) = serde_warnings(caplog)
    assert "ApprovalDecision" in warning
