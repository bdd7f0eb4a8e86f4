"""The negotiation protocol (``agentmesh.negotiation@1``): buy one task from one agent.

Every message travels in a signed envelope whose conversation id names the task::

    requester                         provider
    CallForProposals  ------------->  (evaluate, decide)
                      <-------------  Proposal | Decline
    CounterOffer      ------------->  (once)
                      <-------------  Proposal (countered price, or its last word)
    Award | Reject    ------------->
                      <-------------  Ack
    Funded (job id)   ------------->  (check the job on chain, accept it)
                      <-------------  Ack
                      <-------------  Delivery (result, its hash; hash also on chain)
                                      | Failure (job abandoned: deposit back at once)
    Ack               ------------->
    Redeliver         ------------->  (a requester that missed the Delivery, e.g. while
                      <-------------  Delivery   it was down, asks for it again)
    Settled (tx)      ------------->  (release seen on chain)
      | Dispute       ------------->  (funds frozen for the arbiter)
                      <-------------  Ack

Every waiting state has a timer with a defined outcome: an offer nobody awards expires;
an award never funded expires; a funded job never delivered is refunded to the
requester after its deadline; a delivery never settled is claimed by the provider after
the review window; a failed award goes to the next-best proposal.

Each side keeps a per-conversation state; a message that its current state does not
expect is answered with an ``ErrorReply`` (code ``out_of_order``) naming the states in
which that message would be accepted. Amounts are token base units.

Every integer field is strict and bounded (``UInt``/``Amount``: at most
``MAX_WIRE_INT`` = 2**63 - 1, what the task checkpoints and records can store): a payload
with a larger number, or a number written as a string, a float or a boolean, is refused
with an ``invalid_payload`` error reply before any task is touched.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from pydantic import Field, StrictInt

from agentmesh.canonical import canonical_json
from agentmesh.mesh.card import AgentCard
from agentmesh.message import Amount, Message, UInt

PROTOCOL = "agentmesh.negotiation"
VERSION = "1"
MAX_INPUT_CHARS = 64_000
MAX_RESULT_CHARS = 64_000
ADDRESS = r"^0x[0-9a-fA-F]{40}$"
HEX32 = r"^[0-9a-f]{64}$"


class CallForProposals(Message):
    """A request for a price: what to do, on what input, for at most what budget."""

    service: str = Field(min_length=1, max_length=64)
    input: str = Field(max_length=MAX_INPUT_CHARS)  # JSON object text
    input_sha256: str = Field(pattern=HEX32)
    budget: Amount
    token: str = Field(pattern=ADDRESS)
    deadline_s: StrictInt = Field(ge=10, le=7 * 24 * 3600)  # time allowed for the work
    card: AgentCard  # the requester's signed card: how to reach it with the result


class Proposal(Message):
    """The provider's offer."""

    price: Amount
    eta_s: UInt
    model_sha256: str = Field(default="", max_length=64)
    reason: str = Field(default="", max_length=64)
    # The provider's AgentRegistry reputation when it answered (the requester ranks by
    # what the chain says, this is for display and logs).
    reputation_count: UInt = 0
    reputation_total: UInt = 0
    # Chain time after which the offer is no longer awarded (0: not said). A requester
    # waiting for a person's approval gives up on the offer then.
    valid_until: UInt = 0


class Decline(Message):
    reason: str = Field(max_length=200)


class CounterOffer(Message):
    """A counter-offer: the requester asks for ``price`` (once per conversation); the
    provider answers with a ``Proposal`` — the countered price if it can, else its own
    last word (its one counter)."""

    price: Amount


class Award(Message):
    """The requester takes the proposal at ``price``; ``Funded`` follows."""

    price: Amount


class Reject(Message):
    reason: str = Field(max_length=200)


class Funded(Message):
    """The escrow job that holds the payment; the provider checks it on chain."""

    job_id: UInt
    escrow: str = Field(pattern=ADDRESS)


class Delivery(Message):
    """The result (JSON text) and its sha256, which is also submitted on chain."""

    result: str = Field(max_length=MAX_RESULT_CHARS)
    result_sha256: str = Field(pattern=HEX32)


class Redeliver(Message):
    """The requester asks again for a ``Delivery`` it missed; the provider answers with
    it once the result hash is on chain (its work is done and committed)."""


class Failure(Message):
    """The provider cannot deliver; it abandoned the escrow job (the deposit is back)."""

    reason: str = Field(max_length=200)
    tx: str = Field(default="", max_length=80)


class Settled(Message):
    """The requester released the payment in ``tx``."""

    tx: str = Field(max_length=80)


class Dispute(Message):
    """The requester disputed the job on chain (``reason_sha256`` is what it recorded)."""

    reason: str = Field(max_length=200)
    tx: str = Field(default="", max_length=80)


class Ack(Message):
    """Receipt of a step; ``state`` is the sender's state when it took the step (for
    ``Funded``: ``accepted``, the job is accepted on chain)."""

    state: str = Field(max_length=32)
    detail: str = Field(default="", max_length=200)


class Timeout(Message):
    """Local only, never sent: what an agent's timer resumes a waiting task with when
    the chain time in its interrupt has passed."""


class ApprovalDecision(Message):
    """Local only, never sent: a person's decision on a spend waiting for approval."""

    approved: bool


ALL_MESSAGES: tuple[type[Message], ...] = (
    CallForProposals,
    Proposal,
    Decline,
    CounterOffer,
    Award,
    Reject,
    Funded,
    Delivery,
    Redeliver,
    Failure,
    Settled,
    Dispute,
    Ack,
)


def terms_text(conversation: bytes, service: str, input_sha256: str, price: int) -> str:
    """The agreed terms as canonical JSON: what the escrow job's terms hash is the
    sha256 of, and what a client shows a jury (which finds ``input_sha256`` in it)."""
    return canonical_json(
        {
            "conversation": conversation.hex(),
            "service": service,
            "input_sha256": input_sha256,
            "price": price,
        }
    )


def terms_hash(conversation: bytes, service: str, input_sha256: str, price: int) -> bytes:
    """What the escrow job commits to: this conversation, service, input and price."""
    body = terms_text(conversation, service, input_sha256, price)
    return hashlib.sha256(body.encode()).digest()


# ---------------------------------------------------------------------- phases


class Role(StrEnum):
    """The side of a trade a task is on; a task id is ``<prefix>:<conversation hex>``."""

    PROVIDER = "provider"
    REQUESTER = "requester"

    @property
    def prefix(self) -> str:
        return "p:" if self is Role.PROVIDER else "r:"

    def task_id(self, conversation: str) -> str:
        return self.prefix + conversation

    @staticmethod
    def of(task_id: str) -> Role:
        return Role.PROVIDER if task_id.startswith("p:") else Role.REQUESTER


class Phase(StrEnum):
    """Where a task stands. The only place a phase is spelled."""

    STARTED = "started"
    # provider
    EVALUATED = "evaluated"
    DECLINED = "declined"
    PROPOSED = "proposed"
    REFUSED = "refused"
    ACCEPTED = "accepted"
    EXECUTED = "executed"
    FAILING = "failing"  # the service failed; the job is being abandoned
    ABANDONED = "abandoned"
    SUBMITTED = "submitted"
    CLAIMED = "claimed"
    LOST = "lost"
    # requester
    NO_PROVIDERS = "no_providers"
    SOLICITED = "solicited"
    NO_PROPOSAL = "no_proposal"
    CHOSEN = "chosen"
    AWAITING_APPROVAL = "awaiting_approval"
    APPROVED = "approved"
    REAWARD = "reaward"  # the chosen provider fell through: the next-best gets it
    NOTIFIED = "notified"  # funded and told: waiting for the delivery
    CHECKED = "checked"
    REJECTING = "rejecting"  # the delivery failed the check: dispute it
    REFUNDED = "refunded"
    FAILED = "failed"
    # both sides
    AWARDED = "awarded"
    FUNDED = "funded"
    DELIVERED = "delivered"
    SETTLED = "settled"
    DISPUTED = "disputed"
    EXPIRED = "expired"
    REJECTED = "rejected"
    # the runner's word for a task an error stopped (retried), and for no state at all
    STALLED = "stalled"
    UNKNOWN = "unknown"


class TaskStatus(StrEnum):
    """A task's status in the agent's records (what ``agentmesh task list`` filters on)."""

    ACTIVE = "active"
    STALLED = "stalled"  # stopped by an error; retried with back-off
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DECLINED = "declined"
    REFUNDED = "refunded"
    EXPIRED = "expired"
    DISPUTED = "disputed"


def as_phase(value: str) -> Phase | None:
    """``value`` as a ``Phase`` (None if it names none)."""
    try:
        return Phase(value)
    except ValueError:
        return None


@dataclass(frozen=True)
class NegotiationProtocol:
    """``agentmesh.negotiation@1`` as one object: its messages, which message each
    waiting phase of each role accepts, how a final phase counts, and which replies wait
    for the graph. Handlers, graphs, records and the CLI read it; nothing else spells a
    phase."""

    name: str
    version: str
    messages: tuple[type[Message], ...]
    accepts: Mapping[Role, Mapping[Phase, tuple[type[Message], ...]]]
    final_status: Mapping[Phase, TaskStatus]
    # Phases in which a provider's result is committed on chain: ``Redeliver`` is
    # answered.
    redeliverable: frozenset[Phase]
    # Phases in which a provider still stands by its offer (a repeated call is answered
    # with the same proposal).
    offering: frozenset[Phase]
    # Steps whose reply waits for the graph to reach one of these phases.
    answered_at: Mapping[type[Message], frozenset[Phase]]

    def accepted(self, role: Role, phase: str) -> tuple[type[Message], ...]:
        """The messages a task of ``role`` waiting in ``phase`` accepts."""
        known = as_phase(phase)
        return () if known is None else self.accepts[role].get(known, ())

    def phases_accepting(self, message_type: type[Message]) -> list[Phase]:
        """Every waiting phase (either role) in which ``message_type`` is accepted."""
        return sorted(
            {
                phase
                for table in self.accepts.values()
                for phase, kinds in table.items()
                if message_type in kinds
            }
        )

    def status_when_final(self, phase: str) -> TaskStatus:
        """The records' status of a task that ended in ``phase``."""
        known = as_phase(phase)
        if known is None:
            return TaskStatus.FAILED
        return self.final_status.get(known, TaskStatus.FAILED)


NEGOTIATION = NegotiationProtocol(
    name=PROTOCOL,
    version=VERSION,
    messages=ALL_MESSAGES,
    accepts={
        Role.PROVIDER: {
            Phase.PROPOSED: (Award, Reject, CounterOffer),
            Phase.AWARDED: (Funded,),
            Phase.DELIVERED: (Settled, Dispute),
        },
        Role.REQUESTER: {Phase.NOTIFIED: (Delivery, Failure)},
    },
    final_status={
        Phase.SETTLED: TaskStatus.DONE,
        Phase.CLAIMED: TaskStatus.DONE,
        Phase.REFUNDED: TaskStatus.REFUNDED,
        Phase.EXPIRED: TaskStatus.EXPIRED,
        Phase.DISPUTED: TaskStatus.DISPUTED,
        Phase.DECLINED: TaskStatus.DECLINED,
        Phase.REJECTED: TaskStatus.CANCELLED,
    },
    redeliverable=frozenset(
        {Phase.SUBMITTED, Phase.DELIVERED, Phase.SETTLED, Phase.CLAIMED, Phase.DISPUTED}
    ),
    offering=frozenset({Phase.PROPOSED, Phase.AWARDED, Phase.FUNDED, Phase.ACCEPTED}),
    answered_at={
        # The Ack means "awarded": the Funded that follows must find the task waiting.
        Award: frozenset({Phase.AWARDED, Phase.EXPIRED, Phase.REJECTED}),
        Funded: frozenset({Phase.ACCEPTED, Phase.REFUSED, Phase.EXPIRED}),
        CounterOffer: frozenset({Phase.PROPOSED, Phase.EXPIRED}),
    },
)
