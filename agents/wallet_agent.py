"""The wallet's agent: one running ``Agent`` per wallet that carries the CLI's purchases.

``agentmesh task request`` starts it when it is not running (``agentmesh task agent``,
a detached process logging to ``<home>/logs/cli-<wallet>.log``) and hands it the
purchase over its control socket (see ``agentmesh.agents.control``). It serves any
number of commands at once, resumes unfinished tasks when it starts, and exits once no
task of its is unfinished and nothing has used it for ``wallet_agent_idle_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from agentmesh.agents.agent import Agent
from agentmesh.agents.context import tx_hex
from agentmesh.agents.control import (
    MAX_LINE,
    AnyRequest,
    Buy,
    Defi,
    Refund,
    Resume,
    Status,
    parse_request,
)
from agentmesh.agents.outcome import TaskOutcome
from agentmesh.errors import AgentMeshError, AgentMeshValueError
from agentmesh.protocols.negotiation import Role, TaskStatus, Timeout
from agentmesh.wallets.clients import EscrowJob, JobStatus
from agentmesh.wallets.units import local_time

log = logging.getLogger("agentmesh.wallet_agent")

UNFINISHED = (TaskStatus.ACTIVE, TaskStatus.STALLED)
FOLLOW_POLL_S = 0.05  # how often a follower looks at its task's record
IDLE_POLL_S = 0.5
DISCOVERY_WAIT_S = 15.0  # at most, for discovery to try every address it knows
Send = Callable[[dict[str, Any]], Awaitable[None]]


class WalletAgentServer:
    """Serves the control socket of a started ``agent`` until it has been idle."""

    def __init__(self, agent: Agent, path: Path, idle_s: float) -> None:
        self.agent = agent
        self.path = path
        self.idle_s = idle_s
        self.connections = 0
        self._last_used = time.monotonic()

    # ------------------------------------------------------------------ lifecycle

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Listen until idle (or ``stop``); unfinished tasks keep it running."""
        stop = stop or asyncio.Event()
        # We hold the wallet's lock, so a socket file left here is a dead agent's.
        self.path.unlink(missing_ok=True)
        server = await asyncio.start_unix_server(self._client, path=str(self.path), limit=MAX_LINE)
        os.chmod(self.path, 0o600)
        log.info("wallet agent %s listening on %s", self.agent.name, self.path)
        try:
            while not stop.is_set() and not self._idle():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), IDLE_POLL_S)
        finally:
            server.close()
            self.path.unlink(missing_ok=True)
            await server.wait_closed()
        log.info("wallet agent %s exits: nothing left to do", self.agent.name)

    def unfinished(self) -> list[str]:
        """Conversations of this agent's tasks that are not final (money may be held)."""
        return [
            row.conversation.partition(":")[2]
            for status in UNFINISHED
            for row in self.agent.records.tasks(status)
        ]

    def _idle(self) -> bool:
        if self.connections or self.unfinished():
            self._last_used = time.monotonic()
            return False
        return time.monotonic() - self._last_used >= self.idle_s

    # ------------------------------------------------------------------ requests

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1

        async def send(event: dict[str, Any]) -> None:
            writer.write(json.dumps(event, default=str).encode() + b"\n")
            await writer.drain()

        try:
            try:
                line = await reader.readline()
            except ValueError:  # longer than the stream limit
                raise AgentMeshValueError(
                    f"request longer than {MAX_LINE // 1024} KiB: send a smaller input"
                ) from None
            await self._handle(parse_request(line), send)
        except AgentMeshError as exc:
            with contextlib.suppress(ConnectionError):
                await send({"event": "error", "message": exc.user_message})
        except ConnectionError:
            pass  # the command went away; its task goes on
        except Exception as exc:  # a bug here must not take the agent (and its tasks) down
            log.exception("control request failed")
            with contextlib.suppress(ConnectionError):
                await send({"event": "error", "message": f"internal error: {exc!r}"})
        finally:
            self.connections -= 1
            self._last_used = time.monotonic()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _handle(self, request: AnyRequest, send: Send) -> None:
        agent = self.agent
        if isinstance(request, Defi):
            await send(await self.defi(request))
            return
        if isinstance(request, Status):
            await send(
                {
                    "event": "status",
                    "agent": agent.name,
                    "address": agent.address,
                    "pid": os.getpid(),
                    "unfinished": self.unfinished(),
                }
            )
            return
        if isinstance(request, Buy):
            await self.await_providers(request)
            conversation = await agent.start_buy(
                request.service,
                request.input,
                budget=request.budget,
                providers=request.providers,
                deadline_s=request.deadline_s,
            )
            await send(self._accepted(conversation))
            if request.wait:
                await self.follow(conversation, send)
            return
        if isinstance(request, Refund):
            await send(await self.refund(request.task))
            return
        row = self._purchase(request.task)
        if isinstance(request, Resume):
            if row.status not in UNFINISHED:
                raise AgentMeshValueError(
                    f"task {request.task[:12]} has already ended ({row.state}); nothing to resume"
                )
            if row.status == TaskStatus.STALLED:
                agent.runner.retry_now(row.conversation)
            await send(self._accepted(request.task))
            if not request.wait:
                return
        await self.follow(request.task, send)

    async def defi(self, request: Defi) -> dict[str, Any]:
        """Sign and send an intent (or its cancellation, or a query) to a DeFi agent."""
        from agentmesh.agents.defi_client import DefiClient, sign_cancel, sign_intent
        from agentmesh.protocols.defi import INTENT

        peer = await self.await_peer(request.agent)
        client = DefiClient(self.agent.node)
        if request.action == "query":
            if request.intent_id is None:
                raise AgentMeshValueError("bad request: a query names its intent_id")
            state = await client.query(peer, request.intent_id)
        else:
            if request.intent is None:
                raise AgentMeshValueError(f"bad request: {request.action} needs the intent")
            try:
                intent = INTENT.validate_json(json.dumps(request.intent))
            except ValueError as exc:
                raise AgentMeshValueError(f"bad intent: {exc}") from None
            wallet = self.agent.wallet
            signed = (
                await sign_intent(wallet, intent)
                if request.action == "submit"
                else await sign_cancel(wallet, intent)
            )
            state = await (
                client.submit(peer, signed)  # type: ignore[arg-type]
                if request.action == "submit"
                else client.cancel(peer, signed)  # type: ignore[arg-type]
            )
        return {"event": "intent", "state": state.model_dump(mode="json")}

    async def await_peer(self, address: str) -> Any:
        """The card of the agent at ``address``: known to this node, else joined through
        its registry entry; a clear error when it is not on the mesh."""
        from agentmesh.wallets.clients import checksum

        address = checksum(address)
        record = self.agent.node.peers.get(address)
        if record is not None:
            return record.card
        try:
            entry = await self.agent.registry.get_agent(address)
        except AgentMeshError:
            raise AgentMeshValueError(
                f"agent {address} is not registered on this chain: is it running?"
            ) from None
        card = await self.agent.discovery.join(entry.endpoint, source="registry")
        if card is None or card.address != address:
            raise AgentMeshValueError(f"agent {address} does not answer on the mesh")
        return card

    async def await_providers(self, request: Buy) -> None:
        """Wait until a provider of the service is known, or say plainly why none is:
        nobody offers it (and what is offered instead), or the chosen providers are not
        on the mesh. Waits at most until discovery has tried every known address."""
        agent = self.agent
        wanted = {a.lower() for a in request.providers}
        deadline = time.monotonic() + DISCOVERY_WAIT_S

        def offering() -> list[str]:
            found = [card.address for card in agent.node.find(request.service)]
            return [a for a in found if not wanted or a.lower() in wanted]

        while not offering():
            if agent.discovery.joined.is_set() or time.monotonic() >= deadline:
                raise AgentMeshValueError(self._no_provider(request))
            await asyncio.sleep(FOLLOW_POLL_S)

    def _no_provider(self, request: Buy) -> str:
        offers: dict[str, set[str]] = {}
        for record in self.agent.node.peers.all():
            if record.state != "up" or record.address == self.agent.address:
                continue
            for offer in record.card.services:
                offers.setdefault(offer.name, set()).add(record.address)
        known = ", ".join(
            f"{name} ({len(who)} provider{'s' if len(who) > 1 else ''})"
            for name, who in sorted(offers.items())
        )
        if request.providers and request.service in offers:
            chosen = ", ".join(request.providers)
            return (
                f"none of the chosen providers ({chosen}) offers {request.service!r} on the "
                f"mesh; it is offered by: {', '.join(sorted(offers[request.service]))}"
            )
        return (
            f"no provider on the mesh offers {request.service!r}; offered now: "
            f"{known or 'nothing (no provider is running)'}"
        )

    def _accepted(self, conversation: str) -> dict[str, Any]:
        return {
            "event": "accepted",
            "task": conversation,
            "agent": self.agent.name,
            "pid": os.getpid(),
        }

    def _purchase(self, conversation: str) -> Any:
        row = self.agent.records.task(Role.REQUESTER.task_id(conversation))
        if row is None:
            raise AgentMeshValueError(
                f"no purchase {conversation[:12]} by {self.agent.name} (see `agentmesh task list`)"
            )
        return row

    async def follow(self, conversation: str, send: Send) -> None:
        """Send the task's phases as it moves, then its outcome once it is final."""
        tid = Role.REQUESTER.task_id(conversation)
        last = None
        while True:
            row = self.agent.records.task(tid)
            if row is None:  # started but not recorded yet
                await asyncio.sleep(FOLLOW_POLL_S)
                continue
            if (row.state, row.status) != last:
                last = (row.state, row.status)
                await send(
                    {
                        "event": "phase",
                        "phase": row.state,
                        "status": row.status,
                        "detail": row.detail,
                    }
                )
            if row.status not in UNFINISHED:
                break
            await asyncio.sleep(FOLLOW_POLL_S)
        snapshot = await self.agent.runner.graph(tid).aget_state(self.agent.runner.config(tid))
        outcome = TaskOutcome.from_state(conversation, dict(snapshot.values))
        await send({"event": "outcome", "status": row.status, **dataclasses.asdict(outcome)})

    async def refund(self, conversation: str) -> dict[str, Any]:
        """Refund the job of purchase ``conversation`` if its deadline has passed with
        nothing delivered; a clear refusal otherwise. The task then sees the refund and
        ends ``refunded``."""
        agent = self.agent
        row = self._purchase(conversation)
        if row.job_id is None:
            raise AgentMeshValueError(
                f"task {conversation[:12]} paid nothing into escrow (it is {row.state}): "
                "nothing to refund"
            )
        tid = row.conversation
        lock = await agent.runner.begin(tid)
        try:
            job = await agent.escrow.get_job(row.job_id)
            txs = json.loads(agent.records.task(tid).txs or "{}")  # type: ignore[union-attr]
            done = txs.get("refund") or txs.get("expire_dispute")
            if job.status == JobStatus.REFUNDED and done:
                # This agent's own deadline or dispute watch got there first: the money
                # is back.
                agent.runner.release(tid, lock)
                return self._refunded(conversation, job.job_id, job.amount, done, already=True)
            ends = job.dispute_ends_at()
            if ends is not None:
                tx = await self._expire_dispute(row, job, ends)
                # The task ended with its dispute: nothing to wake.
                agent.runner.release(tid, lock, ended=True)
                return self._refunded(conversation, job.job_id, job.amount, tx, already=False)
            if job.status not in (JobStatus.OPEN, JobStatus.ACCEPTED):
                raise AgentMeshValueError(
                    f"job {job.job_id} of task {conversation[:12]} is "
                    f"{job.status.name.lower()}: nothing to refund"
                )
            now = await agent.clock.now()
            if now <= job.deadline:
                raise AgentMeshValueError(
                    f"job {job.job_id} is within its deadline ({local_time(job.deadline)}, in "
                    f"{job.deadline - now} s): the provider may still deliver. After the "
                    "deadline the wallet's agent refunds it by itself"
                )
            receipt = await agent.escrow.refund(job.job_id)
        except BaseException:
            agent.runner.release(tid, lock)
            raise
        # Wake the task (the lock passes to the run): it finds the job refunded and ends.
        graph = agent.runner.graph(tid)
        snapshot = await graph.aget_state(agent.runner.config(tid))
        if snapshot.interrupts:
            from langgraph.types import Command

            agent.runner.run_locked(tid, lock, graph, Command(resume=Timeout()))
        elif snapshot.next:
            agent.runner.run_locked(tid, lock, graph, None)
        else:
            agent.runner.release(tid, lock, ended=True)
        return self._refunded(conversation, job.job_id, job.amount, tx_hex(receipt), already=False)

    async def _expire_dispute(self, row: Any, job: EscrowJob, ends: int) -> str:
        """The deposit of a disputed job back to the buyer once the arbiter's time is
        over (recorded as the agent's own watch does); a clear refusal before."""
        now = await self.agent.clock.now()
        if now <= ends:
            raise AgentMeshValueError(
                f"job {job.job_id} of task {row.conversation[2:14]} is disputed: its "
                f"arbiter {job.arbiter} may split it until {local_time(ends)} (in "
                f"{ends - now} s); after that `task refund` returns the deposit to the buyer"
            )
        return await self.agent.runner.disputes.expire(row, job)

    @staticmethod
    def _refunded(
        conversation: str, job_id: int, amount: int, tx: str, *, already: bool
    ) -> dict[str, Any]:
        return {
            "event": "refunded",
            "task": conversation,
            "job_id": job_id,
            "amount": amount,
            "tx": tx,
            "already": already,
        }
