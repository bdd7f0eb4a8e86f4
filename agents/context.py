"""What a task's graph nodes work with: ``TaskContext``, a frozen bundle of collaborators.

Graph nodes are module-level functions ``node(state, runtime: Runtime[TaskContext])``;
they see the escrow and registry clients, the messenger, the settings, the records, the
model and the chain clock through this context, never the ``Agent``. Each collaborator
is a ``typing.Protocol``, so a unit test hands the nodes the fakes in
``agentmesh.testing`` (an in-memory escrow and registry, a scripted messenger, a fake
chat model) and runs them in milliseconds without anvil, mesh or model.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable, Coroutine, Mapping, MutableMapping
from dataclasses import dataclass
from typing import Any, Protocol

from agentmesh.agents.pricing import PricingPacer
from agentmesh.agents.records import AgentRecords
from agentmesh.agents.service import CheckFn, Service
from agentmesh.chat_model import ChatModel
from agentmesh.config import AgentConfig
from agentmesh.mesh.card import AgentCard
from agentmesh.message import Message
from agentmesh.wallets.clients import EscrowJob

Receipt = Mapping[str, Any]  # a transaction receipt; nodes read its "transactionHash"


class Messenger(Protocol):
    """Negotiation messages to and from peers (the agent's mesh node, or a fake)."""

    @property
    def card(self) -> AgentCard:
        """This agent's signed card (sent with a call for proposals)."""
        ...

    def find(self, service: str) -> list[AgentCard]:
        """Live peers offering ``service``."""
        ...

    async def ask(
        self,
        peer: AgentCard,
        message: Message,
        conversation: str,
        *,
        expect: tuple[type[Message], ...] = ...,
        timeout: float | None = None,
        retries: int | None = None,
    ) -> Message:
        """Send ``message`` in ``conversation`` (hex) and return the reply; raises
        ``AgentMeshError`` when there is none or it is an error reply."""
        ...

    async def tell(
        self, peer: AgentCard, message: Message, conversation: str, *, retries: int | None = None
    ) -> bool:
        """A notice whose loss changes nothing on chain: False (logged) if undelivered."""
        ...


class Clock(Protocol):
    """Chain time (what on-chain deadlines are compared with) and the chain head."""

    async def now(self) -> int: ...

    async def block_number(self) -> int: ...


class TokenRef(Protocol):
    """The payment token, as the escrow's ``open`` needs it."""

    @property
    def address(self) -> str: ...


class Escrow(Protocol):
    """The ``TaskEscrow`` operations a trade uses (``EscrowClient``, or in memory)."""

    @property
    def address(self) -> str: ...

    async def get_job(self, job_id: int) -> EscrowJob: ...

    async def open(
        self,
        *,
        provider: str,
        token: Any,
        amount: int,
        deadline: int,
        review_window: int,
        arbiter: str,
        terms_hash: bytes,
    ) -> tuple[int, list[Any]]: ...

    async def find_opened_job(
        self, client: str, provider: str, terms_hash: bytes, from_block: int
    ) -> int | None: ...

    async def pending_transactions(self) -> int:
        """How many transactions of this client's wallet the node holds unmined."""
        ...

    async def accept(self, job_id: int) -> Any: ...

    async def submit(self, job_id: int, result_hash: bytes) -> Any: ...

    async def release(self, job_id: int) -> Any: ...

    async def claim(self, job_id: int) -> Any: ...

    async def abandon(self, job_id: int) -> Any: ...

    async def refund(self, job_id: int) -> Any: ...

    async def cancel(self, job_id: int) -> Any: ...

    async def dispute(self, job_id: int, reason_hash: bytes) -> Any: ...

    async def expire_dispute(self, job_id: int) -> Any: ...


class ConsensusScores(Protocol):
    """The validators' consensus score of a provider (``Consensus``, last finalized
    epoch): 0..10,000, or None when it was not scored."""

    async def score(self, provider: str) -> int | None: ...


class Registry(Protocol):
    """The ``AgentRegistry`` reputation a trade reads and writes."""

    async def reputation(self, agent: str) -> tuple[int, int]: ...

    async def give_feedback(self, job_id: int, score: int, comment_hash: bytes) -> Any: ...


@dataclass(frozen=True, slots=True)
class TaskContext:
    """The collaborators every task of one agent shares (LangGraph's ``context``)."""

    address: str  # this agent's wallet address
    name: str  # this agent's name (logs, service contexts)
    token: TokenRef  # the payment token
    escrow: Escrow
    registry: Registry
    messenger: Messenger
    clock: Clock
    settings: AgentConfig
    records: AgentRecords
    services: Mapping[str, Service]
    model: ChatModel | None
    counters: Counter[str]
    arbiter: str  # the escrow arbiter this agent names and trusts
    approval_threshold: int | None  # spends above it wait for a person (None: never)
    # The check= and result_type of each purchase in progress (kept in memory only).
    buyer_checks: MutableMapping[str, tuple[CheckFn | None, Any]]
    # Runs a coroutine in the background (cancelled when the agent stops).
    spawn: Callable[[Coroutine[Any, Any, Any]], asyncio.Task[Any]]
    # The measured cost of a pricing call: how long a decision may wait for the model.
    pricing: PricingPacer
    # The validators' scores of providers, for ranking proposals (None: no Consensus).
    consensus: ConsensusScores | None = None

    @property
    def model_sha256(self) -> str:
        return self.model.sha256 if self.model is not None else ""


def tx_hex(receipt: Any) -> str:
    """The ``0x`` hash of a transaction receipt."""
    return "0x" + bytes(receipt["transactionHash"]).hex()
