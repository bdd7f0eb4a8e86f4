"""Make an ``Agent`` a DeFi agent: it takes owner-signed intents over the mesh
(``agentmesh.defi@1``) and carries them out through the owners' ``AgentWallet``\\ s.

``DefiDesk(agent)`` installs the protocol's handlers and a start hook that opens the
intent store (``defi.db``), the graph's checkpoints (``defi_checkpoints.db``) and the
runner. An intent is refused at once, with the reason and before anything is sent on
chain, when:

- it is not signed by the owner of the wallet it names (``not_owner``), or the wallet is
  not operated by this agent (``not_my_wallet``);
- the wallet's policy could never allow it (``impossible``): paused, the delegation
  expired or ending before the intent does, a token off the wallet's list or without a
  pool route within the path bound, one step's amount over the token's cap.

A cancellation must carry the owner's signature over the intent's id; anyone may ask an
intent's state by its id.
"""

from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING

from agentmesh.errors import AgentMeshError, SignatureError
from agentmesh.mesh.routes import ErrorReply, HandlerContext
from agentmesh.protocols.defi import (
    FINAL_PHASES,
    PROTOCOL,
    VERSION,
    AnyIntent,
    CancelIntent,
    IntentQuery,
    IntentState,
    RebalanceIntent,
    SubmitIntent,
    intent_id,
    recover_cancel_signer,
    recover_signer,
    trade_of,
)
from agentmesh.wallets.agent_wallet import AgentWalletClient, CapMode
from agentmesh.wallets.uniswap import UniswapMarket

from .checkpoints import open_checkpoints
from .defi_graph import DefiContext, build_defi_graph
from .defi_runner import DefiRunner
from .defi_store import DefiStore, IntentRow

if TYPE_CHECKING:
    from .agent import Agent

log = logging.getLogger(__name__)


class IntentRefused(AgentMeshError):
    """An intent this agent will not take; ``code`` says which rule."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class DefiDesk:
    """The DeFi side of one agent: intents in, swaps out."""

    def __init__(self, agent: Agent, *, retry_s: int = 60) -> None:
        self.agent = agent
        self.retry_s = retry_s
        self.runner: DefiRunner | None = None
        self.market: UniswapMarket | None = None
        self.store: DefiStore | None = None
        self._wallets: dict[str, AgentWalletClient] = {}
        on = agent.on
        on(SubmitIntent, protocol=PROTOCOL, version=VERSION, replies=(IntentState,))(self.on_submit)
        on(CancelIntent, protocol=PROTOCOL, version=VERSION, replies=(IntentState,))(self.on_cancel)
        on(IntentQuery, protocol=PROTOCOL, version=VERSION, replies=(IntentState,))(self.on_query)
        agent.on_start(self._start)

    # ------------------------------------------------------------------ lifecycle

    async def _start(self, agent: Agent, stack: contextlib.AsyncExitStack) -> None:
        exchange = agent.chain.deployment.exchange
        if exchange is None:
            raise AgentMeshError(
                "no Uniswap V2 on this chain: a DeFi agent needs the devnet's exchange "
                "(run `make setup`, then restart the devnet)"
            )
        self.market = UniswapMarket(agent.wallet, exchange)
        self.store = DefiStore(agent.agent_dir / "defi.db")
        stack.callback(self.store.close)
        saver = await stack.enter_async_context(
            open_checkpoints(agent.agent_dir / "defi_checkpoints.db")
        )
        context = DefiContext(
            wallets=self.wallet,
            market=self.market,
            store=self.store,
            records=agent.records,
            clock=agent.clock,
            value_token=exchange.tokens["mUSD"],
            retry_s=self.retry_s,
        )
        self.runner = DefiRunner(context, build_defi_graph(saver), agent.spawn)
        agent.spawn(self.runner.loop())

    def wallet(self, address: str) -> AgentWalletClient:
        """The AgentWallet at ``address``, sending as this agent."""
        key = address.lower()
        if key not in self._wallets:
            self._wallets[key] = AgentWalletClient(self.agent.wallet, address)
        return self._wallets[key]

    def _ready(self) -> tuple[DefiRunner, DefiStore]:
        if self.runner is None or self.store is None:
            raise IntentRefused("starting", "the agent is still starting")
        return self.runner, self.store

    # ------------------------------------------------------------------ handlers

    async def on_submit(self, ctx: HandlerContext, msg: SubmitIntent) -> IntentState | ErrorReply:
        try:
            return await self.submit(msg)
        except IntentRefused as exc:
            return ErrorReply(code=exc.code, detail=exc.user_message)

    async def submit(self, msg: SubmitIntent) -> IntentState:
        """Check and start an intent (its state if it is known already)."""
        runner, store = self._ready()
        intent = msg.intent
        chain_id = await self.agent.wallet.chain_id()
        iid = intent_id(intent, chain_id)
        known = store.state(iid)
        if known is not None:
            return known
        wallet = self.wallet(intent.wallet)
        try:
            signer = recover_signer(intent, msg.signature, chain_id)
        except SignatureError as exc:
            raise IntentRefused("bad_signature", exc.user_message) from None
        await self._check_delegation(wallet, intent, signer)
        await self._check_possible(wallet, intent)
        row = IntentRow(
            id=iid,
            kind=intent.kind,
            body=intent.model_dump_json(),
            signature=msg.signature,
            owner=signer,
            wallet=wallet.address,
        )
        if store.add_intent(row):
            log.info("intent %s (%s) accepted", iid, intent.kind)
            runner.start(iid)
        state = store.state(iid)
        assert state is not None
        return state

    async def on_cancel(self, ctx: HandlerContext, msg: CancelIntent) -> IntentState | ErrorReply:
        try:
            return await self.cancel(msg)
        except IntentRefused as exc:
            return ErrorReply(code=exc.code, detail=exc.user_message)

    async def cancel(self, msg: CancelIntent) -> IntentState:
        runner, store = self._ready()
        row = store.intent(msg.intent_id)
        if row is None:
            raise IntentRefused("unknown_intent", f"no intent {msg.intent_id} here")
        chain_id = await self.agent.wallet.chain_id()
        try:
            signer = recover_cancel_signer(msg.intent_id, row.wallet, msg.signature, chain_id)
        except SignatureError as exc:
            raise IntentRefused("bad_signature", exc.user_message) from None
        if signer.lower() != row.owner.lower():
            raise IntentRefused(
                "not_owner", f"only the intent's owner {row.owner} may cancel it, not {signer}"
            )
        if row.phase not in FINAL_PHASES:
            await runner.cancel(msg.intent_id)
        state = store.state(msg.intent_id)
        assert state is not None
        return state

    async def on_query(self, ctx: HandlerContext, msg: IntentQuery) -> IntentState | ErrorReply:
        _, store = self._ready()
        state = store.state(msg.intent_id)
        if state is None:
            return ErrorReply(code="unknown_intent", detail=f"no intent {msg.intent_id} here")
        return state

    # ------------------------------------------------------------------ checks

    async def _check_delegation(
        self, wallet: AgentWalletClient, intent: AnyIntent, signer: str
    ) -> None:
        try:
            owner, operator = await wallet.owner(), await wallet.agent()
        except Exception:  # a revert, or no code there at all (web3 cannot decode it)
            raise IntentRefused(
                "not_my_wallet", f"{intent.wallet} is not an AgentWallet on this chain"
            ) from None
        if operator.lower() != self.agent.address.lower():
            raise IntentRefused(
                "not_my_wallet",
                f"wallet {wallet.address} is operated by {operator}, not by this agent",
            )
        if signer.lower() != owner.lower():
            raise IntentRefused(
                "not_owner",
                f"the intent is signed by {signer}, not by the wallet's owner {owner}",
            )

    async def _check_possible(self, wallet: AgentWalletClient, intent: AnyIntent) -> None:
        """Refuse what the wallet's policy could never allow (before any transaction)."""
        assert self.market is not None
        if await wallet.paused():
            raise IntentRefused("impossible", "the wallet is paused by its owner")
        now = await self.agent.clock.now()
        valid_until = await wallet.valid_until()
        if intent.valid_until <= now:
            raise IntentRefused("impossible", "the intent's valid_until has passed")
        if valid_until < intent.valid_until:
            raise IntentRefused(
                "impossible",
                f"the delegation ends at {valid_until}, before the intent ({intent.valid_until})",
            )
        policy = await wallet.swap_policy()
        if int(policy.oracle, 16) == 0:
            raise IntentRefused("impossible", "the wallet has no swap policy")
        for token_in, token_out, amount in self._trades(intent):
            try:
                path = self.market.route(token_in, token_out)
            except AgentMeshError as exc:
                raise IntentRefused("impossible", exc.user_message) from None
            if len(path) > policy.max_path_length:
                raise IntentRefused(
                    "impossible",
                    f"the route {' -> '.join(map(self.market.symbol, path))} is longer than "
                    f"the wallet's limit of {policy.max_path_length} tokens",
                )
            for token in path:
                if not await wallet.is_swap_token(token):
                    raise IntentRefused(
                        "impossible",
                        f"{self.market.symbol(token)} is not on the wallet's token list",
                    )
            limit, mode = await wallet.cap_of(token_in)
            if amount and mode != CapMode.NONE and amount > limit:
                raise IntentRefused(
                    "impossible",
                    f"one step sells {self.market.whole(token_in, amount)} "
                    f"{self.market.symbol(token_in)}, over the wallet's cap of "
                    f"{self.market.whole(token_in, limit)} per window",
                )

    @staticmethod
    def _trades(intent: AnyIntent) -> list[tuple[str, str, int]]:
        """(token in, token out, amount per step; 0: decided later) of each trade."""
        trade = trade_of(intent)
        if trade is not None:
            return [trade]
        assert isinstance(intent, RebalanceIntent)
        return [(a, b, 0) for a in intent.tokens for b in intent.tokens if a != b]
