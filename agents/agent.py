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
import dataclasses
import logging
import os
import re
import signal
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from eth_account import Account
from eth_account.signers.local import LocalAccount
from pydantic import BaseModel

from agentmesh.agents.channels import (
    buy_by_call,
    channel_offer,
    close_channel,
    open_desks,
    paid_call,
)
from agentmesh.agents.checkpoints import open_checkpoints
from agentmesh.agents.context import TaskContext
from agentmesh.agents.control import parse_budget
from agentmesh.agents.dispute_watch import DISPUTE_CHECK_S
from agentmesh.agents.jury_duty import JuryDuty, arbiter_address
from agentmesh.agents.messenger import MeshMessenger
from agentmesh.agents.negotiation_handlers import NegotiationHandlers
from agentmesh.agents.outcome import TaskFailed, TaskOutcome
from agentmesh.agents.pricing import PricingPacer, warm_up_pricing
from agentmesh.agents.provider_graph import build_provider_graph
from agentmesh.agents.records import AgentRecords
from agentmesh.agents.reputation import CachedReputation, ChainConsensusScores
from agentmesh.agents.requester_graph import build_requester_graph
from agentmesh.agents.service import CheckFn, Service, ServiceFn, parse_price
from agentmesh.agents.task_runner import TaskRunner
from agentmesh.canonical import canonical_json, sha256_hex
from agentmesh.chat_model import ChatModel
from agentmesh.config import Config, MeshConfig, load_config, resolve_home
from agentmesh.errors import AgentMeshError, AgentMeshValueError
from agentmesh.mesh.card import ServicePrice
from agentmesh.message import Message
from agentmesh.protocols.negotiation import Phase, Role

__all__ = ["Agent", "TaskFailed", "TaskOutcome"]

if TYPE_CHECKING:
    from agentmesh.agents.channel_payee import PayeeDesk
    from agentmesh.agents.channel_payer import PayerDesk
    from agentmesh.mesh.card import AgentCard
    from agentmesh.mesh.node import MeshNode

log = logging.getLogger("agentmesh.agent")

AGENT_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
PASSWORD_ENV = "AGENTMESH_PASSWORD"
STOP_TIMEOUT_S = 10.0  # what stop() waits for background tasks to end once cancelled
RUNNING_FILE = "agent.pid"  # in the agent's folder while it runs: its process id
M = TypeVar("M", bound=Message)
StartHook = Callable[["Agent", contextlib.AsyncExitStack], Awaitable[None]]


class Agent:
    """An autonomous agent: wallet, mesh node, local model and task graphs."""

    # What start() connects and builds (valid while the agent runs).
    context: TaskContext
    runner: TaskRunner
    handlers: NegotiationHandlers
    node: MeshNode
    messenger: MeshMessenger
    payee: PayeeDesk  # payment channels paying this agent
    payer: PayerDesk  # payment channels this agent pays from (``call``)

    def __init__(
        self,
        name: str,
        *,
        wallet: str | bytes | LocalAccount | None = None,
        model: ChatModel | None = None,
        home: Path | str | None = None,
        config: Config | None = None,
        mesh: MeshConfig | None = None,
        approval_threshold: str | int | None = None,
        rpc_url: str | None = None,
        throwaway_devnet: bool = True,
    ) -> None:
        """``throwaway_devnet=False``: with no chain configured or running, fail to start
        (``DevnetError``) instead of starting a private anvil that dies with the agent
        (for agents whose payments must outlast them)."""
        if not re.match(AGENT_NAME, name):
            raise AgentMeshValueError(
                f"invalid agent name {name!r}: letters, digits, '_', '.', '-' (at most 64, "
                "starting with a letter or digit)"
            )
        self.name = name
        self._model = model
        self._wallet_spec = wallet
        self._home_option = home
        self._config_option = config
        self._mesh_option = mesh
        self._threshold_option = approval_threshold
        self._rpc_url_option = rpc_url
        self._throwaway_devnet = throwaway_devnet
        self.services: dict[str, Service] = {}
        self._raw_handlers: list[
            tuple[type[Message], str, str, tuple[type[Message], ...], Any]
        ] = []
        self._start_hooks: list[StartHook] = []
        self.counters: Counter[str] = Counter()
        self._checks: dict[str, tuple[CheckFn | None, Any]] = {}  # task -> (check, type)
        self._tasks: set[asyncio.Task[Any]] = set()
        self._stack: contextlib.AsyncExitStack | None = None
        self._main: Callable[[Agent], Awaitable[Any]] | None = None
        self.started = False
        self.jury_duty: JuryDuty | None = None

    def __repr__(self) -> str:
        return f"Agent({self.name!r})"

    @property
    def model(self) -> ChatModel | None:
        """The chat model the agent prices with and its services use."""
        return self._model

    @model.setter
    def model(self, model: ChatModel | None) -> None:
        # A running agent's tasks see the new model from their next step on.
        self._model = model
        if self.started:
            self.context = dataclasses.replace(self.context, model=model)
            self.runner.ctx = self.handlers.ctx = self.context

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

    def on_start(self, fn: StartHook) -> StartHook:
        """Run ``fn(agent, stack)`` at the end of ``start`` (chain joined, node up, tasks
        resumed): where a capability opens what it needs, pushing its cleanup on
        ``stack``, and spawns its loops. A hook that raises fails the start."""
        self._start_hooks.append(fn)
        return fn

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
        if isinstance(spec, bytes) or (
            isinstance(spec, str) and re.fullmatch(r"(0x)?[0-9a-fA-F]{64}", spec)
        ):
            account: LocalAccount = Account.from_key(spec)
            return account
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

    def _resolve_settings(self) -> None:
        """Home, config and approval threshold from the options and ``config.toml``."""
        self.home = resolve_home(self._home_option)
        self.config = self._config_option or load_config(self.home)
        if self._rpc_url_option:
            chain = self.config.chain.model_copy(update={"rpc_url": self._rpc_url_option})
            self.config = self.config.model_copy(update={"chain": chain})
        self.settings = self.config.agent
        threshold = self._threshold_option
        if threshold is None and self.settings.approval_threshold is not None:
            threshold = self.settings.approval_threshold
        self.approval_threshold = None if threshold is None else parse_price(threshold)

    async def _connect_chain(self, stack: contextlib.AsyncExitStack, account: LocalAccount) -> None:
        """The chain, this agent's wallet and its contract clients (and faucet, on anvil)."""
        from agentmesh.wallets.chain import open_chain
        from agentmesh.wallets.chain_clock import ChainClock
        from agentmesh.wallets.clients import EscrowClient, RegistryClient, TokenClient
        from agentmesh.wallets.faucet import top_up
        from agentmesh.wallets.wallet import Wallet

        self.chain = await stack.enter_async_context(
            open_chain(self.home, self.config, allow_embedded=self._throwaway_devnet)
        )
        self.wallet = Wallet(account, self.chain.w3, name=self.name)
        self.address = self.wallet.address
        self.token = TokenClient(self.wallet, self.chain.token_address)
        self.token_address = self.token.address
        self.escrow = EscrowClient(
            self.wallet,
            self.chain.deployment.address("TaskEscrow"),
            standing_allowance=parse_price(self.settings.escrow_allowance),
        )
        self.registry = RegistryClient(self.wallet, self.chain.deployment.address("AgentRegistry"))
        self.clock = ChainClock(self.chain.w3)
        self.arbiter = arbiter_address(self.settings.arbiter, self.chain.deployment)
        if self.settings.faucet:
            await top_up(self.chain, self.wallet)

    def _make_node(self, stack: contextlib.AsyncExitStack, account: LocalAccount) -> None:
        """This agent's mesh node (not started yet) and the messenger over it."""
        from agentmesh.mesh.node import MeshNode
        from agentmesh.store import Store

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
        # One set of counters: the node saves them, so `agentmesh mesh stats` shows the
        # agent's (forged steps, timeouts, model fallbacks) beside the mesh's.
        self.node.counters.update(self.counters)
        self.counters = self.node.counters
        self.messenger = MeshMessenger(self.node)

    async def _join_mesh(self, stack: contextlib.AsyncExitStack) -> None:
        """Start the node (handlers installed), register on chain, discover peers."""
        from agentmesh.mesh.discovery import Discovery
        from agentmesh.wallets.registry_sync import register_card, registry_source

        self.handlers.install(self.node)
        self.payee.install(self.node)
        for message_type, protocol, version, replies, fn in self._raw_handlers:
            self.node.on(message_type, protocol=protocol, version=version, replies=replies)(fn)
        await self.node.start()
        stack.push_async_callback(self.node.stop)
        if self.services or self._raw_handlers:
            # Agents that answer others (services, own protocols) are listed in the
            # registry to be found; a pure buyer needs no entry (its card travels with
            # its call for proposals), so a CLI purchase spends no transaction on it
            # and leaves no entry behind.
            try:
                await register_card(self.chain, self.wallet, self.messenger.card)
                stack.push_async_callback(self._deregister)
            except AgentMeshError as exc:
                log.warning("not registered on chain: %s", exc.user_message)
        self.discovery = Discovery(
            self.node, sources=[registry_source(self.chain, self.wallet, [self.address])]
        )
        await self.discovery.start()
        stack.push_async_callback(self.discovery.stop)

    async def _deregister(self) -> None:
        """Leave the registry on a clean stop, so new agents do not try to join through
        a dead endpoint (an agent killed outright stays listed; joining through its
        entry then costs one timeout, tried in parallel with the live ones)."""
        try:
            await self.registry.deregister()
        except AgentMeshError as exc:
            log.info("not deregistered: %s", exc.user_message)

    def _task_context(self) -> TaskContext:
        return TaskContext(
            address=self.address,
            name=self.name,
            token=self.token,
            escrow=self.escrow,
            registry=CachedReputation(self.registry),
            messenger=self.messenger,
            clock=self.clock,
            settings=self.settings,
            records=self.records,
            services=self.services,
            model=self.model,
            counters=self.counters,
            arbiter=self.arbiter,
            approval_threshold=self.approval_threshold,
            buyer_checks=self._checks,
            spawn=self.spawn,
            pricing=PricingPacer(self.settings.decision_timeout_s),
            consensus=self._consensus_scores(),
        )

    def _consensus_scores(self) -> ChainConsensusScores | None:
        """The validators' scores for ranking, on a chain with a Consensus contract."""
        from agentmesh.wallets.consensus import ConsensusClient

        deployment = self.chain.deployment
        if "Consensus" not in deployment.contracts:
            return None
        client = ConsensusClient(self.wallet, deployment.address("Consensus"))
        return ChainConsensusScores(client, deployment.block_number)

    async def start(self) -> None:
        """Connect to the chain, join the mesh, resume unfinished tasks."""
        self._resolve_settings()
        account = self._load_account()
        self._stack = stack = contextlib.AsyncExitStack()
        try:
            await self._connect_chain(stack, account)
            self.agent_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.records = AgentRecords(self.agent_dir / "agent.db")
            stack.callback(self.records.close)
            saver = await stack.enter_async_context(
                open_checkpoints(self.agent_dir / "checkpoints.db")
            )
            self.provider_graph = build_provider_graph(saver)
            self.requester_graph = build_requester_graph(saver)
            self._make_node(stack, account)
            self.context = self._task_context()
            self.runner = TaskRunner(
                self.context,
                {Role.PROVIDER: self.provider_graph, Role.REQUESTER: self.requester_graph},
            )
            self.handlers = NegotiationHandlers(self.context, self.runner)
            self.payee, self.payer = await open_desks(self, stack, account)
            await self._join_mesh(stack)
            # Who else may look (`agentmesh ui`) sees that this agent runs, and where.
            running = self.agent_dir / RUNNING_FILE
            running.write_text(f"{os.getpid()}\n")
            stack.callback(running.unlink, missing_ok=True)
            self.started = True
            if self.model is not None:  # warm up while the mesh settles
                self.spawn(warm_up_pricing(self.model, self.services, self.context.pricing))
            await self.runner.resume_unfinished()
            self.spawn(self.runner.approval_loop())
            self.spawn(self.runner.timer_loop())
            await self.payee.start()
            if "Jury" in self.chain.deployment.contracts:
                self.jury_duty = JuryDuty(self)
                self.spawn(self._jury_loop(self.jury_duty))
            for hook in self._start_hooks:
                await hook(self, stack)
        except BaseException:
            await stack.aclose()
            raise

    async def _jury_loop(self, duty: JuryDuty) -> None:
        """This agent's cases before the jury: its disputed purchases, cases against it
        (and, as a validator's juror, its votes), every ``DISPUTE_CHECK_S``."""
        while True:
            await duty.tick()
            await asyncio.sleep(DISPUTE_CHECK_S)

    async def stop(self) -> None:
        """Stop background work and leave the mesh; unfinished tasks resume next start."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            # Bounded: a task whose library swallowed the cancellation must not keep
            # the agent from stopping (it is named, and dropped with the loop).
            _, stuck = await asyncio.wait(tasks, timeout=STOP_TIMEOUT_S)
            for task in stuck:
                log.warning("background task did not stop within %ss: %r", STOP_TIMEOUT_S, task)
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
        is released; the outcome's ``result`` is then of ``result_type`` when one is
        given (a pydantic model or dataclass is built from the delivered JSON).

        With a payment channel open to a provider of ``service`` whose price per call is
        at most ``channel_max_price`` (and the budget), the purchase is one paid call on
        that channel instead (see ``call``): no escrow, no transaction.
        """
        if self.started:
            offer = channel_offer(self, service, parse_budget(budget), providers)
            if offer is not None:
                return await buy_by_call(
                    self, *offer, service, _input_text(input, fields), check, result_type
                )
        tid, future = await self._start_buy(
            service, input, budget, providers, deadline_s, check, result_type, fields
        )
        conversation = tid.partition(":")[2]
        try:
            values = await asyncio.wait_for(asyncio.shield(future), timeout)
        except TimeoutError:
            row = self.records.task(tid)
            state = row.state if row is not None else Phase.UNKNOWN
            raise AgentMeshError(
                f"task {conversation[:12]} still in phase {state} after {timeout:g}s; this "
                "agent carries it on while it runs (unfinished tasks resume when it starts)"
            ) from None
        finally:
            self._checks.pop(tid, None)
        outcome = TaskOutcome.from_state(conversation, values, result_type)
        if not outcome.settled:
            raise TaskFailed(outcome)
        return outcome

    async def start_buy(
        self,
        service: str,
        input: dict[str, Any] | BaseModel | None = None,
        *,
        budget: str | int,
        providers: tuple[str, ...] | list[str] = (),
        deadline_s: int | None = None,
    ) -> str:
        """Start buying ``service`` and return the task's conversation id at once; the
        purchase goes on in this agent (see ``agentmesh task show``)."""
        tid, _ = await self._start_buy(
            service, input, budget, providers, deadline_s, None, None, {}
        )
        return tid.partition(":")[2]

    async def _start_buy(
        self,
        service: str,
        input: dict[str, Any] | BaseModel | None,
        budget: str | int,
        providers: tuple[str, ...] | list[str],
        deadline_s: int | None,
        check: CheckFn | None,
        result_type: Any,
        fields: dict[str, Any],
    ) -> tuple[str, asyncio.Future[dict[str, Any]]]:
        if not self.started:
            raise AgentMeshError("start the agent first (async with agent: ...)")
        text = _input_text(input, fields)
        conversation = uuid.uuid4().hex
        tid = Role.REQUESTER.task_id(conversation)
        initial = {
            "conversation": conversation,
            "service": service,
            "input": text,
            "input_sha256": sha256_hex(text),
            "budget": parse_budget(budget),
            "token": self.token_address,
            "deadline_s": deadline_s or self.settings.deadline_s,
            "providers": list(providers),
            "phase": Phase.STARTED,
            "txs": {},
        }
        if check is not None or result_type is not None:
            self._checks[tid] = (check, result_type)
        future = self.runner.outcomes[tid] = asyncio.get_running_loop().create_future()
        self.records.start_task(tid, Role.REQUESTER, service)
        lock = await self.runner.begin(tid)
        self.runner.run_locked(tid, lock, self.requester_graph, initial)
        return tid, future

    # ------------------------------------------------------------------ paid calls

    async def call(
        self,
        provider: str | AgentCard,
        service: str,
        input: dict[str, Any] | BaseModel | None = None,
        *,
        max_price: str | int | None = None,
        result_type: Any = None,
        find_timeout: float = 10.0,
        **fields: Any,
    ) -> Any:
        """One paid call of ``service`` on ``provider`` (an address, a name or a card):
        a single mesh request carrying the next voucher of the payment channel to it.

        The first call opens the channel (``channel_deposit``) and fixes the price per
        call (the provider's list price, or ``max_price`` if lower and the provider
        takes it); later calls reuse both. Returns the result (parsed JSON, or
        ``result_type`` built from it); ``PaidCallRefused`` names the rule a refused
        call broke (nothing was paid for it unless its code is ``service_failed``).
        """
        if not self.started:
            raise AgentMeshError("start the agent first (async with agent: ...)")
        text = _input_text(input, fields)
        return await paid_call(self, provider, service, text, max_price, result_type, find_timeout)

    async def close_channel(self, provider: str | AgentCard) -> str:
        """Close this agent's open channel to ``provider``: with its cooperation at once,
        else by a close request (the rest comes back after the challenge delay)."""
        return await close_channel(self, provider)

    async def wait_for_providers(self, service: str, count: int = 1, timeout: float = 30.0) -> int:
        """Wait until ``count`` live peers offer ``service``; ``PeerUnreachable`` if not."""
        return await self.discovery.wait_for(
            lambda: found if (found := len(self.node.find(service))) >= count else None,
            timeout,
            lambda: (
                f"found {len(self.node.find(service))} of {count} providers of "
                f"{service!r} within {timeout:g}s"
            ),
        )


def _input_text(input: dict[str, Any] | BaseModel | None, fields: dict[str, Any]) -> str:
    """A call's input as canonical JSON: a dict, a pydantic model or keyword fields."""
    if isinstance(input, BaseModel):
        return canonical_json(input.model_dump(mode="json"))
    return canonical_json({**(input or {}), **fields})
