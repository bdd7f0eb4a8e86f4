"""Fakes for unit tests of one layer: graph nodes and handlers without anvil, mesh or model.

- ``FakeChatModel``: scripted answers for ``chat``/``stream``/``structured``; records calls.
- ``InMemoryLedger``: one in-memory ``TaskEscrow`` + token balances + reputation, with the
  contract's rules (who may call what, in which status, before or after which time) and
  its custom error names; ``escrow_for(address)`` / ``registry_for(address)`` are the
  clients an agent at ``address`` uses, as ``EscrowClient``/``RegistryClient`` are.
- ``ScriptedMessenger``: the negotiation messenger with a responder function instead of
  a mesh; records what was sent.
- ``FakeClock``: chain time and block number a test moves by hand.

Only real end-to-end tests (real anvil, mesh and model) show the system works; these
make the logic of one layer testable in milliseconds.
"""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from eth_account import Account

from agentmesh.errors import AgentMeshError, ContractRevertError, ModelOutputError
from agentmesh.mesh.card import AgentCard, CurveKeys
from agentmesh.message import Message

MIN_REVIEW_WINDOW = 1
MAX_REVIEW_WINDOW = 30 * 24 * 3600  # TaskEscrow's bounds


# ---------------------------------------------------------------------- model


@dataclass
class FakeChatModel:
    """A ``ChatModel`` with scripted answers.

    ``replies`` are returned by ``chat``/``stream`` in order (the last one repeats);
    ``structured`` returns ``decisions`` in order, each a value (validated into the
    schema when the schema is a pydantic class) or an exception to raise. ``delay_s``
    makes every call slow (to test timeouts).
    """

    replies: list[str] = field(default_factory=lambda: ["ok"])
    decisions: list[Any] = field(default_factory=list)
    delay_s: float = 0.0
    sha256: str = ""
    calls: list[tuple[str, Any]] = field(default_factory=list)

    async def _pause(self) -> None:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)

    def _reply(self) -> str:
        index = min(len([c for c in self.calls if c[0] != "structured"]) - 1, len(self.replies) - 1)
        return self.replies[max(index, 0)]

    async def chat(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.2,
    ) -> str:
        self.calls.append(("chat", list(messages)))
        await self._pause()
        return self._reply()

    async def stream(
        self,
        messages: Sequence[Mapping[str, str]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.2,
    ) -> AsyncIterator[str]:
        self.calls.append(("stream", list(messages)))
        await self._pause()
        for word in self._reply().split(" "):
            yield word + " "

    async def structured(
        self,
        messages: Sequence[Mapping[str, str]],
        schema: Any,
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
    ) -> Any:
        self.calls.append(("structured", list(messages)))
        await self._pause()
        if not self.decisions:
            raise ModelOutputError("the fake model has no scripted decision left")
        answer = self.decisions.pop(0)
        if isinstance(answer, BaseException):
            raise answer
        validate = getattr(schema, "model_validate", None)
        return validate(answer) if validate is not None and isinstance(answer, dict) else answer


# ---------------------------------------------------------------------- chain


@dataclass
class FakeClock:
    """Chain time (seconds) and block number, moved by the test."""

    time: int = 1_700_000_000
    block: int = 1

    async def now(self) -> int:
        return self.time

    async def block_number(self) -> int:
        return self.block

    def advance(self, seconds: int) -> None:
        self.time += seconds
        self.block += 1


@dataclass
class _Job:
    job_id: int
    client: str
    provider: str
    arbiter: str
    token: str
    amount: int
    deadline: int
    review_window: int
    terms_hash: bytes
    accepted_at: int = 0
    submitted_at: int = 0
    status: int = 1  # JobStatus.OPEN
    result_hash: bytes = bytes(32)
    opened_block: int = 0
    disputed_at: int = 0


class InMemoryLedger:
    """Token balances, escrow jobs and reputation in memory, with ``TaskEscrow``'s rules.

    Every state change is a "transaction": it gets a receipt with a fresh hash and is
    listed in ``transactions`` as ``(caller, method, job_id)``.
    """

    escrow_address = "0x" + "e5" * 20
    token_address = "0x" + "70" * 20

    def __init__(self, clock: FakeClock | None = None) -> None:
        self.clock = clock or FakeClock()
        self.balances: dict[str, int] = {}
        self.jobs: dict[int, _Job] = {}
        self.reputation: dict[str, tuple[int, int]] = {}
        self.rated: set[int] = set()
        self.transactions: list[tuple[str, str, int]] = []
        self._hashes = itertools.count(1)
        self._ids = itertools.count(1)
        # Set to make the next transaction of this method fail like a lost receipt
        # (mined, but the caller sees an error).
        self.lose_receipt_of: str | None = None

    # -- money

    def mint(self, address: str, amount: int) -> None:
        self.balances[address.lower()] = self.balance_of(address) + amount

    def balance_of(self, address: str) -> int:
        return self.balances.get(address.lower(), 0)

    def total(self) -> int:
        """Everything held: every balance including the escrow's (conservation checks)."""
        return sum(self.balances.values())

    def _move(self, source: str, target: str, amount: int) -> None:
        if self.balance_of(source) < amount:
            raise AgentMeshError(f"insufficient mUSD: {source} holds {self.balance_of(source)}")
        self.balances[source.lower()] = self.balance_of(source) - amount
        self.balances[target.lower()] = self.balance_of(target) + amount

    def _receipt(self, caller: str, method: str, job_id: int) -> dict[str, Any]:
        self.transactions.append((caller.lower(), method, job_id))
        self.clock.block += 1
        receipt = {"transactionHash": next(self._hashes).to_bytes(32, "big"), "status": 1}
        if self.lose_receipt_of == method:
            self.lose_receipt_of = None
            raise AgentMeshError(f"timed out waiting for the receipt of {method}")
        return receipt

    def job(self, job_id: int) -> _Job:
        if job_id not in self.jobs:
            raise ContractRevertError("UnknownJob", (job_id,), contract="TaskEscrow")
        return self.jobs[job_id]

    def escrow_for(self, address: str) -> InMemoryEscrow:
        return InMemoryEscrow(self, address)

    def registry_for(self, address: str) -> InMemoryRegistry:
        return InMemoryRegistry(self, address)


def _is_zero(address: str) -> bool:
    """An unset address ('' or the zero address), which the contract refuses."""
    return not address.strip() or int(address, 16) == 0


def _revert(name: str, *args: Any) -> ContractRevertError:
    return ContractRevertError(name, args, contract="TaskEscrow")


@dataclass(frozen=True)
class _TokenRef:
    address: str


class InMemoryEscrow:
    """The escrow client of the agent at ``caller`` (the ``Escrow`` protocol)."""

    def __init__(self, ledger: InMemoryLedger, caller: str) -> None:
        self.ledger = ledger
        self.caller = caller
        self.token = _TokenRef(ledger.token_address)

    @property
    def address(self) -> str:
        return self.ledger.escrow_address

    def _own(self, job_id: int, party: str, *statuses: int) -> _Job:
        from agentmesh.wallets.clients import JobStatus

        job = self.ledger.job(job_id)
        if getattr(job, party).lower() != self.caller.lower():
            name = "NotClient" if party == "client" else "NotProvider"
            raise _revert(name, job_id, self.caller)
        if job.status not in statuses:
            raise _revert("WrongStatus", job_id, JobStatus(job.status).name)
        return job

    async def get_job(self, job_id: int) -> Any:
        from agentmesh.wallets.clients import EscrowJob, JobStatus

        job = self.ledger.job(job_id)
        return EscrowJob(
            job_id=job.job_id,
            client=job.client,  # type: ignore[arg-type]
            provider=job.provider,  # type: ignore[arg-type]
            arbiter=job.arbiter,  # type: ignore[arg-type]
            token=job.token,  # type: ignore[arg-type]
            amount=job.amount,
            deadline=job.deadline,
            review_window=job.review_window,
            accepted_at=job.accepted_at,
            submitted_at=job.submitted_at,
            status=JobStatus(job.status),
            terms_hash=job.terms_hash,
            result_hash=job.result_hash,
            disputed_at=job.disputed_at,
        )

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
    ) -> tuple[int, list[Any]]:
        now = self.ledger.clock.time
        if amount == 0:
            raise _revert("ZeroAmount")
        if _is_zero(provider) or provider.lower() == self.caller.lower():
            raise _revert("InvalidParty", provider)
        if _is_zero(arbiter) or arbiter.lower() in (self.caller.lower(), provider.lower()):
            raise _revert("InvalidParty", arbiter)
        if deadline <= now:
            raise _revert("InvalidDeadline", deadline, now)
        if not MIN_REVIEW_WINDOW <= review_window <= MAX_REVIEW_WINDOW:
            raise _revert("InvalidReviewWindow", review_window)
        self.ledger._move(self.caller, self.address, amount)
        job_id = next(self.ledger._ids)
        self.ledger.jobs[job_id] = _Job(
            job_id,
            self.caller,
            provider,
            arbiter,
            token.address,
            amount,
            deadline,
            review_window,
            terms_hash,
            opened_block=self.ledger.clock.block,
        )
        return job_id, [self.ledger._receipt(self.caller, "open", job_id)]

    async def pending_transactions(self) -> int:
        return 0  # the in-memory ledger settles every call at once

    async def find_opened_job(
        self, client: str, provider: str, terms_hash: bytes, from_block: int
    ) -> int | None:
        for job in self.ledger.jobs.values():
            if (
                job.client.lower() == client.lower()
                and job.provider.lower() == provider.lower()
                and job.terms_hash == terms_hash
                and job.opened_block >= from_block
            ):
                return job.job_id
        return None

    async def cancel(self, job_id: int) -> Any:
        job = self._own(job_id, "client", 1)
        job.status = 9  # CANCELLED
        self.ledger._move(self.address, job.client, job.amount)
        return self.ledger._receipt(self.caller, "cancel", job_id)

    async def accept(self, job_id: int) -> Any:
        job = self._own(job_id, "provider", 1)
        if self.ledger.clock.time > job.deadline:
            raise _revert("DeadlinePassed", job_id, job.deadline)
        job.status, job.accepted_at = 2, self.ledger.clock.time
        return self.ledger._receipt(self.caller, "accept", job_id)

    async def submit(self, job_id: int, result_hash: bytes) -> Any:
        job = self._own(job_id, "provider", 2)
        if self.ledger.clock.time > job.deadline:
            raise _revert("DeadlinePassed", job_id, job.deadline)
        if result_hash == bytes(32):
            raise _revert("EmptyResult", job_id)
        job.status, job.submitted_at, job.result_hash = 3, self.ledger.clock.time, result_hash
        return self.ledger._receipt(self.caller, "submit", job_id)

    async def release(self, job_id: int) -> Any:
        job = self._own(job_id, "client", 3)
        job.status = 4
        self.ledger._move(self.address, job.provider, job.amount)
        return self.ledger._receipt(self.caller, "release", job_id)

    async def claim(self, job_id: int) -> Any:
        job = self._own(job_id, "provider", 3)
        ends = job.submitted_at + job.review_window
        if self.ledger.clock.time <= ends:
            raise _revert("ReviewWindowOpen", job_id, ends)
        job.status = 5
        self.ledger._move(self.address, job.provider, job.amount)
        return self.ledger._receipt(self.caller, "claim", job_id)

    async def abandon(self, job_id: int) -> Any:
        job = self._own(job_id, "provider", 2)
        job.status = 6
        self.ledger._move(self.address, job.client, job.amount)
        return self.ledger._receipt(self.caller, "abandon", job_id)

    async def refund(self, job_id: int) -> Any:
        job = self._own(job_id, "client", 1, 2)
        if self.ledger.clock.time <= job.deadline:
            raise _revert("DeadlineNotReached", job_id, job.deadline)
        job.status = 6
        self.ledger._move(self.address, job.client, job.amount)
        return self.ledger._receipt(self.caller, "refund", job_id)

    async def dispute(self, job_id: int, reason_hash: bytes) -> Any:
        job = self._own(job_id, "client", 3)
        ends = job.submitted_at + job.review_window
        if self.ledger.clock.time > ends:
            raise _revert("ReviewWindowClosed", job_id, ends)
        job.status, job.disputed_at = 7, self.ledger.clock.time
        return self.ledger._receipt(self.caller, "dispute", job_id)

    async def expire_dispute(self, job_id: int) -> Any:
        from agentmesh.wallets.clients import DISPUTE_TIMEOUT_S

        job = self.ledger.job(job_id)
        if job.status != 7:
            raise _revert("WrongStatus", job_id, job.status)
        ends = job.disputed_at + DISPUTE_TIMEOUT_S
        if self.ledger.clock.time <= ends:
            raise _revert("DisputePending", job_id, ends)
        job.status = 6
        self.ledger._move(self.address, job.client, job.amount)
        return self.ledger._receipt(self.caller, "expire_dispute", job_id)


class InMemoryRegistry:
    """The reputation side of ``AgentRegistry`` for the agent at ``caller``."""

    def __init__(self, ledger: InMemoryLedger, caller: str) -> None:
        self.ledger = ledger
        self.caller = caller

    async def reputation(self, agent: str) -> tuple[int, int]:
        return self.ledger.reputation.get(agent.lower(), (0, 0))

    async def give_feedback(self, job_id: int, score: int, comment_hash: bytes) -> Any:
        job = self.ledger.job(job_id)
        if job.client.lower() != self.caller.lower():
            raise ContractRevertError("NotJobClient", (job_id,), contract="AgentRegistry")
        if job_id in self.ledger.rated:
            raise ContractRevertError("AlreadyRated", (job_id,), contract="AgentRegistry")
        self.ledger.rated.add(job_id)
        count, total = self.ledger.reputation.get(job.provider.lower(), (0, 0))
        self.ledger.reputation[job.provider.lower()] = (count + 1, total + score)
        return self.ledger._receipt(self.caller, "feedback", job_id)


# ---------------------------------------------------------------------- mesh

Responder = Callable[[AgentCard, Message], Message | BaseException | Awaitable[Message]]


def fake_card(
    name: str = "fake", key: bytes | None = None, services: Sequence[Any] = ()
) -> AgentCard:
    """A real, signed ``AgentCard`` for a throw-away key (no node behind it)."""
    key = key or os.urandom(32)
    account = Account.from_key(key)
    card = AgentCard(
        address=account.address,
        name=name,
        endpoint="tcp://127.0.0.1:1",
        presence_endpoint="tcp://127.0.0.1:2",
        curve_key=CurveKeys.from_wallet_key(key).public.decode(),
        services=tuple(services),
        issued_ms=0,
    )
    return card.signed(key)


class ScriptedMessenger:
    """The ``Messenger`` protocol without a mesh: ``responder(peer, message)`` answers.

    The responder returns the reply, an awaitable of it, or an exception to raise (e.g.
    ``PeerUnreachable``); an ``ErrorReply`` raises ``RemoteError`` and a reply not in a
    given ``expect`` raises ``ProtocolError``, as over the mesh. Every message is
    recorded in ``sent`` as ``(peer address, message)``; ``peers`` are what ``find``
    returns for any service they offer.
    """

    def __init__(
        self,
        card: AgentCard | None = None,
        responder: Responder | None = None,
        peers: Sequence[AgentCard] = (),
    ) -> None:
        self._card = card or fake_card("me")
        self.responder = responder
        self.peers = list(peers)
        self.sent: list[tuple[str, Message]] = []

    @property
    def card(self) -> AgentCard:
        return self._card

    def find(self, service: str) -> list[AgentCard]:
        return [p for p in self.peers if any(s.name == service for s in p.services)]

    async def ask(
        self,
        peer: AgentCard,
        message: Message,
        conversation: str,
        *,
        expect: tuple[type[Message], ...] = (),
        timeout: float | None = None,
        retries: int | None = None,
    ) -> Message:
        self.sent.append((peer.address, message))
        if self.responder is None:
            from agentmesh.errors import PeerUnreachable

            raise PeerUnreachable(f"{peer.address} did not answer (no responder)")
        reply = self.responder(peer, message)
        if isinstance(reply, BaseException):
            raise reply
        if not isinstance(reply, Message):
            reply = await reply
        return self._as_mesh_would(peer, reply, expect)

    @staticmethod
    def _as_mesh_would(
        peer: AgentCard, reply: Message, expect: tuple[type[Message], ...]
    ) -> Message:
        """The reply as ``MeshMessenger.ask`` hands it over: an ``ErrorReply`` raises
        ``RemoteError`` and a type outside a non-empty ``expect`` raises ``ProtocolError``,
        as the mesh node does."""
        from agentmesh.errors import ProtocolError
        from agentmesh.mesh.node import RemoteError
        from agentmesh.mesh.routes import ErrorReply

        if isinstance(reply, ErrorReply):
            raise RemoteError(peer.address, reply.code, reply.detail)
        if expect and not isinstance(reply, expect):
            raise ProtocolError(f"{peer.address} replied with an unexpected message type")
        return reply

    async def tell(
        self, peer: AgentCard, message: Message, conversation: str, *, retries: int | None = None
    ) -> bool:
        try:
            await self.ask(peer, message, conversation, retries=retries)
        except AgentMeshError:
            return False
        return True

    def messages(self, kind: type[Message]) -> list[Message]:
        """Everything sent of type ``kind``, in order."""
        return [m for _, m in self.sent if isinstance(m, kind)]
