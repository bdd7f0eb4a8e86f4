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
from pathlib import Path
from typing import Any, TypeVar

from eth_account import Account
from eth_account.signers.local import LocalAccount
from pydantic import BaseModel

from agentmesh.agents.negotiation_handlers import NegotiationHandlers
from agentmesh.agents.outcome import TaskFailed, TaskOutcome
from agentmesh.agents.provider_graph import build_provider_graph
from agentmesh.agents.records import AgentRecords
from agentmesh.agents.requester_graph import build_requester_graph
from agentmesh.agents.service import CheckFn, Service, ServiceFn, check_result, parse_price
from agentmesh.agents.task_runner import TaskRunner
from agentmesh.config import Config, MeshConfig, load_config, resolve_home
from agentmesh.errors import AgentMeshError, AgentMeshValueError, TransactionError
from agentmesh.llm import LocalModel
from agentmesh.mesh.card import AgentCard, ServicePrice
from agentmesh.message import Message
from agentmesh.protocols.negotiation import PROTOCOL, VERSION, Ack, canonical_json, sha256_hex

__all__ = ["Agent", "TaskFailed", "TaskOutcome"]

log = logging.getLogger("agentmesh.agent")

AGENT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
PASSWORD_ENV = "AGENTMESH_PASSWORD"
M = TypeVar("M", bound=Message)

# Init code that returns block.timestamp: TIMESTAMP PUSH1 0 MSTORE PUSH1 32 PUSH1 0 RETURN
TIMESTAMP_PROBE = "0x4260005260206000f3"


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
        self._checks: dict[str, tuple[CheckFn | None, Any]] = {}  # task -> (check, type)
        self.runner = TaskRunner(self)
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
            NegotiationHandlers(self, self.runner).install()
            for message_type, protocol, version, replies, fn in self._raw_handlers:
                self.node.on(message_type, protocol=protocol, version=version, replies=replies)(fn)
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
            await self.runner.resume_unfinished()
            self.spawn(self.runner.approval_loop())
            self.spawn(self.runner.timer_loop())
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
        future = self.runner.outcomes[tid] = asyncio.get_running_loop().create_future()
        self.records.start_task(tid, "requester", service)
        lock = await self.runner.begin(tid)
        self.runner.run_locked(tid, lock, self.requester_graph, initial)
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
