"""``Agent``: the public API developers build on.

    agent = Agent("summarizer", model=LocalModel.default())

    @agent.service("summarize", price="0.05 mUSD")
    async def summarize(ctx, text: str) -> str:
        return await ctx.model.chat([{"role": "user", "content": text}])

    agent.run()   # or `agentmesh run path/to/agent.py`

An agent is a wallet identity, a mesh node, two LangGraph graphs (one per side of a
trade, checkpointed in SQLite per conversation) and its records. Each incoming call for
proposals runs the provider graph; ``await agent.buy(...)`` runs the requester graph.
A mesh message resumes the graph paused for it; one arriving in the wrong state gets an
``out_of_order`` error reply naming the states that accept it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import re
import signal
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from eth_account import Account
from eth_account.signers.local import LocalAccount
from pydantic import BaseModel

from agentmesh.agents.provider_graph import (
    PROVIDER_ACCEPTS,
    REDELIVERABLE,
    build_provider_graph,
)
from agentmesh.agents.records import AgentRecords
from agentmesh.agents.requester_graph import REQUESTER_ACCEPTS, build_requester_graph
from agentmesh.agents.service import CheckFn, Service, ServiceFn, check_result, parse_price
from agentmesh.config import Config, MeshConfig, load_config, resolve_home
from agentmesh.errors import (
    AgentMeshError,
    AgentMeshValueError,
    SignatureError,
    TransactionError,
)
from agentmesh.llm import LocalModel
from agentmesh.mesh.card import AgentCard, ServicePrice
from agentmesh.mesh.routes import ErrorReply, HandlerContext
from agentmesh.message import Message
from agentmesh.protocols.negotiation import (
    PROTOCOL,
    VERSION,
    Ack,
    Award,
    CallForProposals,
    CounterOffer,
    Decline,
    Delivery,
    Dispute,
    Failure,
    Funded,
    Proposal,
    Redeliver,
    Reject,
    Settled,
    canonical_json,
    sha256_hex,
)

log = logging.getLogger("agentmesh.agent")

AGENT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
PASSWORD_ENV = "AGENTMESH_PASSWORD"
M = TypeVar("M", bound=Message)

# Where each graph ends, by final phase.
# Steps whose reply waits for the graph to reach one of these phases.
STEP_ANSWERED_AT: dict[str, set[str]] = {
    # The Ack means "awarded": the Funded that follows must find the task waiting for it.
    "Award": {"awarded", "expired", "rejected"},
    "Funded": {"accepted", "refused", "expired"},
    "CounterOffer": {"proposed", "expired"},
}
# Init code that returns block.timestamp: TIMESTAMP PUSH1 0 MSTORE PUSH1 32 PUSH1 0 RETURN
TIMESTAMP_PROBE = "0x4260005260206000f3"
STALLED_RETRY_S = 5.0  # first retry of a task stopped by an error; doubles each time
STALLED_RETRY_MAX_S = 300.0  # ... up to this: never given up while money may be held

FINAL_STATUS = {
    "settled": "done",
    "claimed": "done",
    "refunded": "refunded",
    "expired": "expired",
    "disputed": "disputed",
    "declined": "declined",
    "rejected": "cancelled",
    "cancelled": "cancelled",
}


class TaskFailed(AgentMeshError):
    """A purchase ended without a settled result; ``outcome`` says how far it got."""

    def __init__(self, outcome: TaskOutcome) -> None:
        super().__init__(f"task {outcome.conversation[:12]} ended {outcome.phase}: {outcome.error}")
        self.outcome = outcome


@dataclass(frozen=True)
class TaskOutcome:
    """Where a purchase ended."""

    conversation: str
    phase: str
    service: str
    provider: str = ""
    price: int = 0
    job_id: int | None = None
    result: Any = None
    error: str = ""
    txs: dict[str, str] = field(default_factory=dict)

    @property
    def settled(self) -> bool:
        return self.phase == "settled"

    @classmethod
    def from_state(cls, conversation: str, values: dict[str, Any]) -> TaskOutcome:
        import json

        result = values.get("result")
        with contextlib.suppress(TypeError, ValueError):
            result = json.loads(result) if isinstance(result, str) else result
        return cls(
            conversation=conversation,
            phase=values.get("phase", "unknown"),
            service=values.get("service", ""),
            provider=values.get("winner", ""),
            price=values.get("price", 0),
            job_id=values.get("job_id"),
            result=result,
            error=values.get("error", ""),
            txs=dict(values.get("txs") or {}),
        )


class Agent:
    """An autonomous agent: wallet, mesh node, local model and task graphs."""

    def __init__(
        self,
        name: str,
        *,
        wallet: str | bytes | LocalAccount | None = None,
        model: LocalModel | None = None,
        home: Path | str | None = None,
        config: Config | None = None,
        mesh: MeshConfig | None = None,
        approval_threshold: str | int | None = None,
        rpc_url: str | None = None,
    ) -> None:
        if not re.match(AGENT_NAME, name):
            raise AgentMeshValueError(
                f"invalid agent name {name!r}: letters, digits, '_', '.', '-' (at most 64, "
                "starting with a letter or digit)"
            )
        self.name = name
        self.model = model
        self._wallet_spec = wallet
        self._home_option = home
        self._config_option = config
        self._mesh_option = mesh
        self._threshold_option = approval_threshold
        self._rpc_url_option = rpc_url
        self.services: dict[str, Service] = {}
        self._raw_handlers: list[
            tuple[type[Message], str, str, tuple[type[Message], ...], Any]
        ] = []
        self.counters: Counter[str] = Counter()
        self._locks: dict[str, asyncio.Lock] = {}
        self._outcomes: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._checks: dict[str, tuple[CheckFn | None, Any]] = {}  # task -> (check, type)
        self._phase_waiters: dict[str, list[tuple[Callable[[str], bool], asyncio.Future[Any]]]] = {}
        self._timers: dict[str, int] = {}  # task -> chain time its waiting node times out
        self._stalled_retries: Counter[str] = Counter()
        self._stalled_next: dict[str, float] = {}  # task -> loop time of its next retry
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stack: contextlib.AsyncExitStack | None = None
        self._main: Callable[[Agent], Awaitable[Any]] | None = None
        self.started = False

    def __repr__(self) -> str:
        return f"Agent({self.name!r})"

    # ------------------------------------------------------------------ declaring

    def service(
        self,
        name: str,
        *,
        price: str | int,
        floor: str | int | None = None,
        check: CheckFn | None = None,
        description: str = "",
    ) -> Callable[[ServiceFn], ServiceFn]:
        """Sell ``name`` at ``price`` (e.g. ``"0.05 mUSD"``); never below ``floor``."""

        def register(fn: ServiceFn) -> ServiceFn:
            if name in self.services:
                raise AgentMeshValueError(f"service {name!r} is already declared")
            self.services[name] = Service.from_function(
                name, fn, price=price, floor=floor, check=check, description=description
            )
            return fn

        return register

    def on(
        self,
        message_type: type[M],
        *,
        protocol: str = "app",
        version: str = "1",
        replies: tuple[type[Message], ...] = (),
    ) -> Callable[[Any], Any]:
        """A raw protocol handler ``(ctx, message) -> reply | None`` on the agent's node."""

        def register(fn: Any) -> Any:
            self._raw_handlers.append((message_type, protocol, version, replies, fn))
            if self.started:
                self.node.on(message_type, protocol=protocol, version=version, replies=replies)(fn)
            return fn

        return register

    def main(self, fn: Callable[[Agent], Awaitable[Any]]) -> Callable[[Agent], Awaitable[Any]]:
        """Run ``fn(agent)`` once the agent is up; when it returns, the agent stops.

        For agents with a job to do (a requester buying something) rather than
        services to sell forever.
        """
        self._main = fn
        return fn

    def bind(
        self,
        *,
        home: Path | str | None = None,
        config: Config | None = None,
        wallet: str | bytes | LocalAccount | None = None,
        mesh: MeshConfig | None = None,
    ) -> Agent:
        """Set where the agent runs before it starts (tests, `agentmesh run` options)."""
        if self.started:
            raise AgentMeshError(f"agent {self.name} is running: bind it before start")
        if home is not None:
            self._home_option = home
        if config is not None:
            self._config_option = config
        if wallet is not None:
            self._wallet_spec = wallet
        if mesh is not None:
            self._mesh_option = mesh
        return self

    # ------------------------------------------------------------------ lifecycle

    @property
    def agent_dir(self) -> Path:
        return self.home / "agents" / self.name

    def _load_account(self) -> LocalAccount:
        spec = self._wallet_spec
        if isinstance(spec, LocalAccount):
            return spec
        if isinstance(spec, bytes):
            return Account.from_key(spec)
        if isinstance(spec, str) and re.fullmatch(r"(0x)?[0-9a-fA-F]{64}", spec):
            return Account.from_key(spec)
        from agentmesh.wallets.keystore import Keystore

        wallet_name = spec or self.name
        keystore = Keystore(self.home, scrypt_n=self.config.wallet.scrypt_n)
        keystore.entry(wallet_name)  # a clear error naming `agentmesh wallet new`
        secret = os.environ.get(PASSWORD_ENV)
        if not secret:
            raise AgentMeshValueError(
                f"set {PASSWORD_ENV} to unlock wallet {wallet_name!r} for agent {self.name}"
            )
        return keystore.load(wallet_name, secret)

    async def start(self) -> None:
        """Connect to the chain, join the mesh, resume unfinished tasks."""
        from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

        from agentmesh.mesh.discovery import Discovery
        from agentmesh.mesh.node import MeshNode
        from agentmesh.store import Store
        from agentmesh.wallets.chain import open_chain
        from agentmesh.wallets.clients import EscrowClient, RegistryClient, TokenClient
        from agentmesh.wallets.registry_sync import register_card, registry_source
        from agentmesh.wallets.wallet import Wallet

        self.home = resolve_home(self._home_option)
        self.config = self._config_option or load_config(self.home)
        if self._rpc_url_option:
            chain = self.config.chain.model_copy(update={"rpc_url": self._rpc_url_option})
            self.config = self.config.model_copy(update={"chain": chain})
        settings = self.config.agent
        self.settings = settings
        threshold = self._threshold_option
        if threshold is None and settings.approval_threshold is not None:
            threshold = settings.approval_threshold
        self.approval_threshold = None if threshold is None else parse_price(threshold)
        account = self._load_account()
        self._stack = stack = contextlib.AsyncExitStack()
        try:
            self.chain = await stack.enter_async_context(open_chain(self.home, self.config))
            self.wallet = Wallet(account, self.chain.w3, name=self.name)
            self.address = self.wallet.address
            self.token = TokenClient(self.wallet, self.chain.token_address)
            self.token_address = self.token.address
            self.escrow = EscrowClient(self.wallet, self.chain.deployment.address("TaskEscrow"))
            self.registry = RegistryClient(
                self.wallet, self.chain.deployment.address("AgentRegistry")
            )
            self.arbiter = self.chain.deployment.deployer
            if settings.faucet:
                await self._top_up()
            self.agent_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.records = AgentRecords(self.agent_dir / "agent.db")
            stack.callback(self.records.close)
            saver = await stack.enter_async_context(
                AsyncSqliteSaver.from_conn_string(str(self.agent_dir / "checkpoints.db"))
            )
            self.provider_graph = build_provider_graph(self, saver)
            self.requester_graph = build_requester_graph(self, saver)
            store = Store(self.home / "mesh" / f"{self.address}.db")
            stack.callback(store.close)
            self.node = MeshNode(
                bytes(account.key),
                name=self.name,
                config=self._mesh_option or self.config.mesh,
                store=store,
                services=[ServicePrice(name=s.name, price=s.price) for s in self.services.values()],
                model_sha256=self.model.sha256 if self.model is not None else "",
            )
            # One set of counters: the node saves them, so `agentmesh mesh stats` shows
            # the agent's (forged steps, timeouts, model fallbacks) beside the mesh's.
            self.node.counters.update(self.counters)
            self.counters = self.node.counters
            self._install_handlers()
            await self.node.start()
            stack.push_async_callback(self.node.stop)
            assert self.node.card is not None
            try:
                await register_card(self.chain, self.wallet, self.node.card)
            except AgentMeshError as exc:
                log.warning("not registered on chain: %s", exc.user_message)
            self.discovery = Discovery(
                self.node, sources=[registry_source(self.chain, self.wallet, [self.address])]
            )
            await self.discovery.start()
            stack.push_async_callback(self.discovery.stop)
            self.started = True
            if self.model is not None:
                self.spawn(self.model.load())  # warm up while the mesh settles
            await self._resume_unfinished()
            self.spawn(self._approval_loop())
            self.spawn(self._timer_loop())
        except BaseException:
            await stack.aclose()
            raise

    async def stop(self) -> None:
        """Stop background work and leave the mesh; unfinished tasks resume next start."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self.started = False
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None

    async def __aenter__(self) -> Agent:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def serve(
        self, stop: asyncio.Event | None = None, ready: Callable[[Agent], None] | None = None
    ) -> None:
        """Start, run until ``stop`` is set (or SIGTERM/SIGINT), then stop."""
        stop = stop or asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
        await self.start()
        try:
            if ready is not None:
                ready(self)
            if self._main is None:
                await stop.wait()
                return
            job = asyncio.ensure_future(self._main(self))
            waiter = asyncio.ensure_future(stop.wait())
            await asyncio.wait({job, waiter}, return_when=asyncio.FIRST_COMPLETED)
            waiter.cancel()
            if not job.done():
                job.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                job.result()  # re-raise the job's own error
        finally:
            await self.stop()

    def run(self) -> None:
        """Serve until interrupted (blocking)."""
        asyncio.run(self.serve())

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run ``coro`` in the background; cancelled on stop, failures logged."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)

        def done(t: asyncio.Task[Any]) -> None:
            self._tasks.discard(t)
            if not t.cancelled() and t.exception() is not None:
                log.error("agent background task failed", exc_info=t.exception())

        task.add_done_callback(done)
        return task

    # ------------------------------------------------------------------ chain helpers

    async def block_number(self) -> int:
        return int(await self.chain.w3.eth.block_number)

    async def chain_time(self) -> int:
        """Now, as the next block will see it (``block.timestamp`` of a pending call).

        The latest block's time is not enough: anvil mines only on demand, so it lags
        while nothing happens; and the wall clock is not the chain's (a devnet's clock
        can be moved). Falls back to the latest block where pending calls fail.
        """
        try:
            raw = await self.chain.w3.eth.call({"data": TIMESTAMP_PROBE}, "pending")
            return int.from_bytes(raw, "big")
        except Exception:  # noqa: BLE001 - nodes refuse pending calls in various ways
            block = await self.chain.w3.eth.get_block("latest")
            return int(block["timestamp"])

    async def find_opened_job(self, provider: str, terms: bytes, from_block: int) -> int | None:
        """The job this agent opened for ``provider`` with ``terms`` (after a crash)."""
        logs = await self.escrow.contract.events.JobOpened().get_logs(
            argument_filters={"client": self.address, "provider": provider},
            from_block=from_block,
        )
        for entry in logs:
            if bytes(entry["args"]["termsHash"]) == terms:
                return int(entry["args"]["jobId"])
        return None

    async def _top_up(self) -> None:
        """On an anvil devnet, give an empty agent wallet gas and mUSD from the dev funds."""
        from agentmesh.wallets.clients import TokenClient
        from agentmesh.wallets.deployer import dev_deployer

        client = str(await self.chain.w3.client_version).lower()
        if "anvil" not in client:
            return
        faucet = dev_deployer(self.chain.w3)
        # Agents starting together each send from the dev account with their own nonce
        # count; a collision is rejected by the node, and a retry reads the nonce anew.
        for attempt in range(5):
            try:
                if await self.wallet.eth_balance() < 10**18:
                    await faucet.send({"to": self.address, "value": 10 * 10**18})
                if await self.token.balance_of(self.address) < 100 * 10**6:
                    await TokenClient(faucet, self.token_address).mint(self.address, 1_000 * 10**6)
                return
            except TransactionError:
                if attempt == 4:
                    raise
                await asyncio.sleep(0.1 + random.random() * 0.3)

    # ------------------------------------------------------------------ buying

    async def buy(
        self,
        service: str,
        input: dict[str, Any] | BaseModel | None = None,
        *,
        budget: str | int,
        providers: tuple[str, ...] | list[str] = (),
        deadline_s: int | None = None,
        check: CheckFn | None = None,
        result_type: Any = None,
        timeout: float | None = 300.0,
        **fields: Any,
    ) -> TaskOutcome:
        """Buy one run of ``service`` for at most ``budget``; raises ``TaskFailed``.

        The input is a dict, a pydantic model or keyword fields. Before paying, the
        parsed result must be non-empty, of ``result_type`` if given (e.g. ``str``), and
        pass ``check``; a failing result is disputed instead. Both live in memory: after
        a restart of this agent only the default check applies. Returns when the payment
        is released.
        """
        if not self.started:
            raise AgentMeshError("start the agent first (async with agent: ...)")
        if isinstance(input, BaseModel):
            payload = input.model_dump(mode="json")
        else:
            payload = {**(input or {}), **fields}
        text = canonical_json(payload)
        tid = "r:" + uuid.uuid4().hex
        initial = {
            "conversation": tid[2:],
            "service": service,
            "input": text,
            "input_sha256": sha256_hex(text),
            "budget": parse_price(budget),
            "token": self.token_address,
            "deadline_s": deadline_s or self.settings.deadline_s,
            "providers": list(providers),
            "phase": "started",
            "txs": {},
        }
        if check is not None or result_type is not None:
            self._checks[tid] = (check, result_type)
        future = self._outcomes[tid] = asyncio.get_running_loop().create_future()
        self.records.start_task(tid, "requester", service)
        lock = await self._begin(tid)
        self._run_locked(tid, lock, self.requester_graph, initial)
        try:
            values = await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            phase = (self.records.task(tid) or None, "")[0]
            state = phase.state if phase is not None else "unknown"
            raise AgentMeshError(
                f"task {tid[2:14]} still in phase {state} after {timeout:g}s; it goes on "
                "in the background"
            ) from None
        finally:
            self._checks.pop(tid, None)
        outcome = TaskOutcome.from_state(tid[2:], values)
        if not outcome.settled:
            raise TaskFailed(outcome)
        return outcome

    async def wait_for_providers(self, service: str, count: int = 1, timeout: float = 30.0) -> int:
        """Wait until ``count`` live peers offer ``service``; ``PeerUnreachable`` if not."""
        from agentmesh.errors import PeerUnreachable

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (found := len(self.node.find(service))) < count:
            if loop.time() >= deadline:
                raise PeerUnreachable(
                    f"found {found} of {count} providers of {service!r} within {timeout:g}s"
                )
            await asyncio.sleep(0.1)
        return found

    async def ask(
        self,
        peer: AgentCard,
        message: Message,
        conversation: str,
        *,
        expect: tuple[type[Message], ...] = (Ack,),
        timeout: float | None = None,
        retries: int | None = None,
    ) -> Any:
        """One negotiation request to ``peer`` in ``conversation`` (hex); the reply."""
        return await self.node.request(
            peer,
            message,
            protocol=PROTOCOL,
            version=VERSION,
            expect=expect,
            timeout=timeout,
            retries=retries,
            conversation=bytes.fromhex(conversation),
        )

    async def tell(
        self, peer: AgentCard, message: Message, conversation: str, *, retries: int | None = None
    ) -> bool:
        """A notice whose loss changes nothing on chain: a failure is logged, not raised."""
        try:
            await self.ask(peer, message, conversation, retries=retries)
        except AgentMeshError as exc:
            log.info("%s to %s not delivered: %s", type(message).__name__, peer.address, exc)
            return False
        return True

    def check_result(self, service: str, text: str, tid: str = "") -> tuple[bool, str]:
        """The requester's acceptance check of a delivered result."""
        import json

        try:
            value = json.loads(text)
        except ValueError:
            return False, "result is not JSON"
        check, result_type = self._checks.get(tid, (None, None))
        return check_result(value, check, result_type)

    # ------------------------------------------------------------------ graph driving

    def _config(self, tid: str) -> dict[str, Any]:
        return {"configurable": {"thread_id": tid}}

    def _graph(self, tid: str) -> Any:
        return self.provider_graph if tid.startswith("p:") else self.requester_graph

    async def _begin(self, tid: str) -> asyncio.Lock:
        lock = self._locks.setdefault(tid, asyncio.Lock())
        await lock.acquire()
        return lock

    def _run_locked(
        self, tid: str, lock: asyncio.Lock, graph: Any, graph_input: Any
    ) -> asyncio.Task[Any]:
        """Run ``graph`` in the background; the caller's held ``lock`` passes to the run."""

        async def body() -> None:
            try:
                await self._advance(tid, graph, graph_input)
            finally:
                lock.release()

        return self.spawn(body())

    def _phase_changed(self, tid: str, update: dict[str, Any]) -> None:
        """Wake handlers waiting for this task to reach a phase (with the node's update)."""
        waiters = self._phase_waiters.get(tid, [])
        for predicate, future in list(waiters):
            if predicate(update["phase"]) and not future.done():
                future.set_result(update)
                waiters.remove((predicate, future))

    async def _advance(self, tid: str, graph: Any, graph_input: Any) -> dict[str, Any]:
        """Run until the graph pauses or ends; record where it stands."""
        config = self._config(tid)
        error = ""
        try:
            async for chunk in graph.astream(graph_input, config, stream_mode="updates"):
                for update in chunk.values():
                    if isinstance(update, dict) and "phase" in update:
                        extra = {"detail": update["error"]} if update.get("error") else {}
                        self.records.update_task(tid, state=update["phase"], **extra)
                        self._phase_changed(tid, update)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the task stays resumable from its last checkpoint
            self.counters["graph_errors"] += 1
            error = f"{type(exc).__name__}: {getattr(exc, 'user_message', exc)}"
            log.exception("task %s stopped", tid)
        snapshot = await graph.aget_state(config)
        values = dict(snapshot.values)
        self._record(tid, snapshot, error)
        if not snapshot.next or error:
            future = self._outcomes.pop(tid, None)
            if future is not None and not future.done():
                if error:
                    values = {**values, "phase": "stalled", "error": error}
                future.set_result(values)
        return values

    def _record(self, tid: str, snapshot: Any, error: str) -> None:
        """Write where the task stands; open an approval if the graph waits for one."""
        values = snapshot.values
        phase = values.get("phase", "unknown")
        changes: dict[str, Any] = {
            "state": phase,
            "peer": values.get("winner") or values.get("requester") or "",
            "price": values.get("price", 0),
            "job_id": values.get("job_id"),
            "detail": error or values.get("error", ""),
            "txs": canonical_json(values.get("txs") or {}),
        }
        if error:
            changes["status"] = "stalled"
        elif not snapshot.next:
            changes["status"] = FINAL_STATUS.get(phase, "failed")
        else:
            self._watch(tid, snapshot)
            for pending in snapshot.interrupts:
                if isinstance(pending.value, dict) and pending.value.get("kind") == "approval":
                    row = self.records.request_approval(
                        tid, pending.value["amount"], pending.value["description"]
                    )
                    changes["state"] = "awaiting_approval"
                    log.warning("approval %s needed: %s", row.id, row.description)
        if error or not snapshot.next:
            self._timers.pop(tid, None)
        self.records.update_task(tid, **changes)
        final = {**values, "phase": changes["state"]}
        self._phase_changed(tid, final)
        for _, future in self._phase_waiters.pop(tid, []):
            if not future.done():
                future.set_result(final)

    def _watch(self, tid: str, snapshot: Any) -> None:
        """Arm (or clear) the timer of a task waiting in an ``interrupt``."""
        untils = [
            int(i.value["until"])
            for i in snapshot.interrupts
            if isinstance(i.value, dict) and i.value.get("until")
        ]
        if untils:
            self._timers[tid] = min(untils)
        else:
            self._timers.pop(tid, None)

    async def _timer_loop(self) -> None:
        """Fire due timers (resume with ``Timeout``); retry tasks stalled by an error."""
        from langgraph.types import Command

        while True:
            await asyncio.sleep(0.5)
            try:
                if self._timers:
                    now = await self.chain_time()
                    for tid in [t for t, until in self._timers.items() if until <= now]:
                        if self._busy(tid):
                            # Running: it re-arms its timer when it pauses. Waiting for
                            # it here would hold up every other task's timer.
                            continue
                        lock = await self._begin(tid)
                        graph = self._graph(tid)
                        snapshot = await graph.aget_state(self._config(tid))
                        due = [
                            i
                            for i in snapshot.interrupts
                            if isinstance(i.value, dict) and 0 < i.value.get("until", 0) <= now
                        ]
                        if not due:
                            self._watch(tid, snapshot)
                            lock.release()
                            continue
                        self._timers.pop(tid, None)
                        self.counters["timeouts"] += 1
                        log.info("task %s timed out in %s", tid, snapshot.values.get("phase"))
                        self._run_locked(tid, lock, graph, Command(resume={"type": "Timeout"}))
                await self._retry_stalled()
            except Exception:
                log.exception("timer loop error (continuing)")

    def _busy(self, tid: str) -> bool:
        return tid in self._locks and self._locks[tid].locked()

    async def _retry_stalled(self) -> None:
        """Run again tasks an error stopped, backing off (5 s, 10 s, ... 5 min)."""
        now = asyncio.get_running_loop().time()
        for row in self.records.tasks("stalled"):
            tid = row.conversation
            if self._busy(tid):
                continue
            due = self._stalled_next.setdefault(tid, now + STALLED_RETRY_S)
            if now < due:
                continue
            self._stalled_retries[tid] += 1
            delay = STALLED_RETRY_S * 2 ** min(self._stalled_retries[tid], 10)
            self._stalled_next[tid] = now + min(STALLED_RETRY_MAX_S, delay)
            lock = await self._begin(tid)
            self.records.update_task(tid, status="active")
            self._run_locked(tid, lock, self._graph(tid), None)

    async def _resume_unfinished(self) -> None:
        """Continue tasks a previous run left between two pauses (killed mid-step)."""
        for row in self.records.tasks():
            if row.status not in ("active", "stalled"):
                continue
            tid = row.conversation
            graph = self._graph(tid)
            snapshot = await graph.aget_state(self._config(tid))
            if snapshot.interrupts:
                self._watch(tid, snapshot)  # its timers run again from now
            elif snapshot.next:
                self.counters["resumed"] += 1
                log.info("resuming task %s from %s", tid, snapshot.values.get("phase"))
                self.records.update_task(tid, status="active")
                lock = await self._begin(tid)
                self._run_locked(tid, lock, graph, None)

    async def _approval_loop(self) -> None:
        from langgraph.types import Command

        while True:
            try:
                for row in self.records.decided_unapplied():
                    tid = row.conversation
                    lock = await self._begin(tid)
                    graph = self._graph(tid)
                    snapshot = await graph.aget_state(self._config(tid))
                    waiting = any(
                        isinstance(i.value, dict) and i.value.get("kind") == "approval"
                        for i in snapshot.interrupts
                    )
                    self.records.mark_applied(row.id)
                    if not waiting:
                        lock.release()
                        continue
                    self.records.update_task(tid, status="active")
                    decision = {"approved": row.status == "approved"}
                    self._run_locked(tid, lock, graph, Command(resume=decision))
            except Exception:
                log.exception("approval loop error (continuing)")
            await asyncio.sleep(0.25)

    # ------------------------------------------------------------------ mesh handlers

    def _install_handlers(self) -> None:
        node = self.node
        node.on(CallForProposals, protocol=PROTOCOL, version=VERSION, replies=(Proposal, Decline))(
            self._on_call
        )
        for message_type in (CounterOffer, Award, Reject, Funded, Settled, Dispute):
            node.on(message_type, protocol=PROTOCOL, version=VERSION, replies=(Ack,))(
                self._on_provider_step
            )
        for message_type in (Delivery, Failure):
            node.on(message_type, protocol=PROTOCOL, version=VERSION, replies=(Ack,))(
                self._on_requester_step
            )
        node.on(Redeliver, protocol=PROTOCOL, version=VERSION, replies=(Delivery,))(
            self._on_redeliver
        )
        for message_type, protocol, version, replies, fn in self._raw_handlers:
            node.on(message_type, protocol=protocol, version=version, replies=replies)(fn)

    async def _on_call(self, ctx: HandlerContext, call: CallForProposals) -> Message:
        if call.service not in self.services:
            return Decline(reason=f"no service {call.service!r} here")
        try:
            if call.card.verify().lower() != ctx.sender.lower():
                raise SignatureError("card is not the sender's")
        except SignatureError as exc:
            self.counters["rejected.bad_card"] += 1
            return ErrorReply(code="bad_card", detail=exc.user_message)
        tid = "p:" + ctx.conversation.hex()
        lock = await self._begin(tid)
        try:
            snapshot = await self.provider_graph.aget_state(self._config(tid))
            if snapshot.values:
                values = snapshot.values
                same = (
                    values.get("input_sha256") == call.input_sha256
                    and values.get("requester", "").lower() == ctx.sender.lower()
                )
                if not same:
                    return self._out_of_order("CallForProposals", values.get("phase", "?"))
            else:
                self.records.start_task(tid, "provider", call.service, ctx.sender)
                values = await self._advance(
                    tid,
                    self.provider_graph,
                    {
                        "conversation": ctx.conversation.hex(),
                        "requester": ctx.sender,
                        "requester_card": call.card.model_dump(),
                        "service": call.service,
                        "input": call.input,
                        "input_sha256": call.input_sha256,
                        "budget": call.budget,
                        "token": call.token,
                        "deadline_s": call.deadline_s,
                        "phase": "started",
                        "txs": {},
                    },
                )
        finally:
            lock.release()
        decision = values.get("decision") or {}
        if values.get("phase") in ("proposed", "awarded", "funded", "accepted"):
            try:
                count, total = await self.registry.reputation(self.address)
            except AgentMeshError:
                count = total = 0  # the snapshot is informative; the chain is the truth
            return Proposal(
                price=values["price"],
                eta_s=self.settings.min_work_s,
                model_sha256=self.model.sha256 if self.model is not None else "",
                reason=str(decision.get("reason", ""))[:64],
                reputation_count=count,
                reputation_total=total,
                valid_until=values.get("offer_until", 0),
            )
        return Decline(reason=str(decision.get("reason", "declined"))[:200])

    async def _on_redeliver(self, ctx: HandlerContext, message: Redeliver) -> Message:
        """Send a delivery again, to the requester only and once it is on chain.

        Read from the checkpoint without the task's lock: the result is immutable once
        submitted, and a requester asking must not wait behind a settlement.
        """
        tid = "p:" + ctx.conversation.hex()
        values = (await self.provider_graph.aget_state(self._config(tid))).values
        if not values:
            self.counters["rejected.unknown_task"] += 1
            return ErrorReply(code="unknown_task", detail="no such task here")
        if str(values.get("requester", "")).lower() != ctx.sender.lower():
            self.counters["rejected.not_party"] += 1
            return ErrorReply(code="not_party", detail=f"{ctx.sender} is not in this task")
        phase = values.get("phase", "?")
        if phase not in REDELIVERABLE or not values.get("result_sha256"):
            self.counters["rejected.out_of_order"] += 1
            return ErrorReply(
                code="out_of_order",
                detail=f"Redeliver is accepted in state {', '.join(REDELIVERABLE)}; "
                f"this task is in {phase}",
            )
        return Delivery(result=values["result"], result_sha256=values["result_sha256"])

    def _out_of_order(self, name: str, phase: str) -> ErrorReply:
        self.counters["rejected.out_of_order"] += 1
        table = {**PROVIDER_ACCEPTS, **REQUESTER_ACCEPTS}
        states = sorted(s for s, names in table.items() if name in names) or ["(a new task)"]
        return ErrorReply(
            code="out_of_order",
            detail=f"{name} is accepted in state {', '.join(states)}; this task is in {phase}",
        )

    async def _on_provider_step(self, ctx: HandlerContext, message: Message) -> Message:
        return await self._step(ctx, "p:", "requester", message)

    async def _on_requester_step(self, ctx: HandlerContext, message: Message) -> Message:
        return await self._step(ctx, "r:", "winner", message)

    def _answer(self, name: str, update: dict[str, Any]) -> Message:
        """The reply to a step that waited for the graph (see ``STEP_ANSWERED_AT``)."""
        phase = update.get("phase", "")
        if name == "CounterOffer" and phase == "proposed":
            return Proposal(
                price=int(update["price"]),
                eta_s=self.settings.min_work_s,
                model_sha256=self.model.sha256 if self.model is not None else "",
                reason="countered",
                valid_until=update.get("offer_until", 0),
            )
        if (name, phase) in (("Funded", "accepted"), ("Award", "awarded")):
            return Ack(state=phase)
        detail = str(update.get("error") or phase)[:200]
        return ErrorReply(code="refused", detail=detail)

    def _refusal(
        self, snapshot: Any, party: str, sender: str, message: Message
    ) -> ErrorReply | None:
        """Why ``message`` from ``sender`` may not resume this task now (None: it may)."""
        values = snapshot.values
        name = type(message).__name__
        if not values:
            self.counters["rejected.unknown_task"] += 1
            return ErrorReply(code="unknown_task", detail="no such task here")
        if party.lower() != sender.lower():
            self.counters["rejected.not_party"] += 1
            return ErrorReply(code="not_party", detail=f"{sender} is not in this task")
        waiting = [i.value for i in snapshot.interrupts if isinstance(i.value, dict)]
        accepted = waiting[0].get("await", ()) if waiting else ()
        if name not in accepted:
            return self._out_of_order(name, values.get("phase", "?"))
        if isinstance(message, CounterOffer) and values.get("countered"):
            self.counters["rejected.counter_used"] += 1
            return ErrorReply(code="counter_used", detail="one counter-offer per conversation")
        if isinstance(message, Award) and message.price != values.get("price"):
            return ErrorReply(
                code="bad_award",
                detail=f"award price {message.price} is not the proposed {values.get('price')}",
            )
        return None

    async def _step(
        self, ctx: HandlerContext, prefix: str, party: str, message: Message
    ) -> Message:
        """Resume the graph paused for ``message``; reject it if not a party or not now."""
        from langgraph.types import Command

        tid = prefix + ctx.conversation.hex()
        graph = self._graph(tid)
        name = type(message).__name__
        # Refuse what the latest checkpoint already rules out without queueing for the
        # task's lock: two agents whose graphs each wait on the other's reply must not
        # deadlock until a timeout.
        lock = self._locks.setdefault(tid, asyncio.Lock())
        if not lock.locked():  # mid-run the checkpoint is about to change: wait instead
            early = await graph.aget_state(self._config(tid))
            party_address = str(early.values.get(party, ""))
            refusal = self._refusal(early, party_address, ctx.sender, message)
            if refusal is not None:
                return refusal
        try:
            await asyncio.wait_for(lock.acquire(), self.settings.reply_timeout_s / 3)
        except TimeoutError:
            return ErrorReply(code="busy", detail="the task is busy; retry shortly")
        handed_over = False
        try:
            snapshot = await graph.aget_state(self._config(tid))
            values = snapshot.values
            refusal = self._refusal(snapshot, str(values.get(party, "")), ctx.sender, message)
            if refusal is not None:
                return refusal
            resume = Command(resume={"type": name, **message.model_dump()})
            awaited = STEP_ANSWERED_AT.get(name)
            if awaited is None:  # acknowledged now; the graph goes on in the background
                self._run_locked(tid, lock, graph, resume)
                handed_over = True
                return Ack(state=values.get("phase", ""))
            # Answered once the graph has acted on it (the job checked and accepted on
            # chain, or the counter-offer priced).
            future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
            self._phase_waiters.setdefault(tid, []).append((lambda p: p in awaited, future))
            self._run_locked(tid, lock, graph, resume)
            handed_over = True
            update = await asyncio.wait_for(future, self.settings.reply_timeout_s)
            return self._answer(name, update)
        finally:
            if not handed_over:
                lock.release()
