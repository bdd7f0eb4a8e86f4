"""The DeFi agent's graph: one LangGraph thread per intent, checkpointed like the market's.

::

    observe --due--> plan --ready--> simulate --ok--> approve --yes--> execute --> advance
       |              |                 |                |                 |          |
       +--wait--> wait <--defer---------+----------------+--(refusal)-----+          |
       |           |                                                                 |
       +--end--> END        observe <------------------------------------------------+

- **observe**: where the intent stands at chain time: ended (done, expired, cancelled),
  waiting (the next DCA period, a trigger not crossed, a portfolio within its band), or
  due. A DCA period missed entirely (the agent was down past it) is recorded as skipped
  with that reason, never silently.
- **plan**: the amounts. Hard rules bound everything: the step's amount is the intent's
  (a rebalance computes it from the TWAP values), never more than the wallet holds or
  the cap has left, and the minimum out is the TWAP value less the tighter of the
  intent's and the wallet's slippage.
- **simulate**: the swap through the wallet as an ``eth_call``; a revert is decoded to
  the rule it broke and nothing is sent. A price worse than the TWAP, a TWAP not yet
  available, a spent cap or a pause defer the step (retried, with the reason recorded,
  until the step's time runs out); any other rule refuses it.
- **approve**: a trade worth more than the intent's ``approval_above`` waits for the
  owner (``interrupt``; ``agentmesh approve|reject`` resumes it).
- **execute**: the step's row is written before the transaction is sent; a restarted
  agent finds it and looks for the swap on chain before sending anything.
- **advance**: the step's outcome is recorded and the next one scheduled.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Annotated, Any, TypedDict

from langgraph.graph import END, START, StateGraph
from langgraph.runtime import Runtime
from langgraph.types import interrupt

from agentmesh.errors import AgentMeshError, ContractRevertError, PolicyViolation
from agentmesh.protocols.defi import (
    FINAL_PHASES,
    INTENT,
    AnyIntent,
    DcaIntent,
    IntentPhase,
    RebalanceIntent,
    TriggerIntent,
    trade_of,
)
from agentmesh.protocols.negotiation import ApprovalDecision
from agentmesh.wallets.agent_wallet import AgentWalletClient, CapMode, SwapCall, SwapPolicy
from agentmesh.wallets.uniswap import UniswapMarket

from .context import Clock
from .defi_store import DefiStore
from .provider_graph import phase_text
from .records import AgentRecords

log = logging.getLogger(__name__)

BPS = 10_000
# Rules of the wallet whose refusal may pass with time (the price settles, the TWAP
# fills its window, the cap's window moves on, the owner unpauses): the step waits.
TRANSIENT_RULES = frozenset({"PriceBelowTwap", "TwapUnavailable", "CapExceeded", "EnforcedPause"})
SWAP_DEADLINE_S = 120  # a swap's own deadline, bounded by the wallet's maximum delay


@dataclass(frozen=True, slots=True)
class DefiContext:
    """What the DeFi graph's nodes work with (LangGraph's run context)."""

    wallets: Callable[[str], AgentWalletClient]  # an AgentWallet, sending as the agent
    market: UniswapMarket
    store: DefiStore
    records: AgentRecords
    clock: Clock
    value_token: str  # what trades are valued in (mUSD): approvals, P&L
    retry_s: int  # how long a deferred step waits before it is tried again


class DefiState(TypedDict, total=False):
    intent_id: str
    phase: Annotated[str, phase_text]
    step: int
    outcome: str  # the last node's verdict, for the edges
    until: int  # chain time a wait ends
    plan: dict[str, Any]  # path, amount_in, min_out, twap_out, value, deadline
    reason: str


def _intent(ctx: DefiContext, intent_id: str) -> tuple[AnyIntent, str, int]:
    row = ctx.store.intent(intent_id)
    if row is None:
        raise AgentMeshError(f"intent {intent_id} is not in this agent's store")
    return INTENT.validate_json(row.body), row.phase, row.step


def _step_ends(intent: AnyIntent, step: int) -> int:
    """Chain time by which step ``step`` must have happened."""
    if isinstance(intent, DcaIntent):
        return min(intent.due_at(step + 1), intent.valid_until)
    return intent.valid_until


# ---------------------------------------------------------------------- nodes


async def observe(state: DefiState, runtime: Runtime[DefiContext]) -> dict[str, Any]:
    ctx = runtime.context
    intent_id = state["intent_id"]
    intent, phase, step = _intent(ctx, intent_id)
    reconciled = await reconcile_step(ctx, ctx.wallets(intent.wallet), intent_id, step)
    if reconciled == "filled":
        # Its swap went through before a crash: the step is done, go on to the next.
        ctx.store.update_intent(intent_id, step=step + 1)
        return {"outcome": "skip", "phase": IntentPhase.ACTIVE, "step": step + 1}
    now = await ctx.clock.now()
    if reconciled == "in_flight":
        return _wait(ctx, intent_id, now + ctx.retry_s, "a swap sent is not mined yet")
    verdict = _ended(ctx, intent_id, intent, phase, step, now)
    if verdict is None:
        verdict = await _not_due(ctx, intent_id, intent, step, now)
    return verdict or {"outcome": "due", "phase": IntentPhase.EXECUTING, "step": step}


def _ended(
    ctx: DefiContext, intent_id: str, intent: AnyIntent, phase: str, step: int, now: int
) -> dict[str, Any] | None:
    """The verdict when the intent is over (or its current step is), else None."""
    if phase in FINAL_PHASES:  # cancelled (or ended by another node) meanwhile
        return {"outcome": "end", "phase": phase}
    if isinstance(intent, DcaIntent):
        return _dca_ended(ctx, intent_id, intent, step, now)
    if step >= 1 and not isinstance(intent, RebalanceIntent):
        # A one-shot intent ends with its one step: filled, or why not.
        first = ctx.store.fill(intent_id, 0)
        if first is not None and first.status == "filled":
            return _finish(ctx, intent_id, IntentPhase.DONE, "filled")
        why = first.reason if first is not None else "no step was recorded"
        return _finish(ctx, intent_id, IntentPhase.FAILED, why)
    if now > intent.valid_until:
        rebalance = isinstance(intent, RebalanceIntent)
        phase_, why = (
            (IntentPhase.DONE, "ran until valid_until")
            if rebalance
            else (IntentPhase.EXPIRED, "valid_until passed")
        )
        return _finish(ctx, intent_id, phase_, why)
    return None


def _dca_ended(
    ctx: DefiContext, intent_id: str, intent: DcaIntent, step: int, now: int
) -> dict[str, Any] | None:
    if step >= intent.periods:
        return _finish(ctx, intent_id, IntentPhase.DONE, "every period ran")
    if now >= _step_ends(intent, step):
        # The whole period passed without the agent (it was down): say so.
        ctx.store.finish_step(
            intent_id, step, "skipped", at=now, reason="missed: the agent was not running"
        )
        ctx.store.update_intent(intent_id, step=step + 1)
        return {"outcome": "skip", "phase": IntentPhase.ACTIVE, "step": step + 1}
    return None


async def _not_due(
    ctx: DefiContext, intent_id: str, intent: AnyIntent, step: int, now: int
) -> dict[str, Any] | None:
    """The wait when the intent's next step is not due yet, else None."""
    if isinstance(intent, DcaIntent):
        due = intent.due_at(step)
        if now < due:
            return _wait(ctx, intent_id, due, f"period {step + 1} of {intent.periods}")
        return None
    policy = await ctx.wallets(intent.wallet).swap_policy()
    if isinstance(intent, TriggerIntent):
        path = ctx.market.route(intent.token_in, intent.token_out)
        if not await ctx.market.twap_ready(path, policy.twap_window, now):
            return _wait(ctx, intent_id, now + ctx.retry_s, "waiting for the pool's TWAP")
        price = await ctx.market.twap_price(intent.base, intent.quote, policy.twap_window)
        if not intent.triggered(price):
            side = "at or below" if intent.fires_below else "at or above"
            return _wait(
                ctx, intent_id, now + ctx.retry_s, f"TWAP {price:.6g}, fires {side} {intent.price}"
            )
    if isinstance(intent, RebalanceIntent) and await _rebalance_trade(ctx, intent, policy) is None:
        return _wait(ctx, intent_id, now + intent.check_every_s, "within the band")
    return None


async def plan(state: DefiState, runtime: Runtime[DefiContext]) -> dict[str, Any]:
    ctx = runtime.context
    intent_id, step = state["intent_id"], state["step"]
    intent, _, _ = _intent(ctx, intent_id)
    wallet = ctx.wallets(intent.wallet)
    row = ctx.store.intent(intent_id)
    owner = await wallet.owner()
    if row is not None and owner.lower() != row.owner.lower():
        # The person who signed no longer owns the wallet: their orders end here.
        return _finish(ctx, intent_id, IntentPhase.FAILED, f"the wallet's owner is now {owner}")
    policy = await wallet.swap_policy()
    if isinstance(intent, RebalanceIntent):
        trade = await _rebalance_trade(ctx, intent, policy)
        if trade is None:
            return _wait(ctx, intent_id, await ctx.clock.now() + ctx.retry_s, "within the band")
        token_in, token_out, amount = trade
        # A rebalance sizes its own trade: never past what the cap has left today.
        _, mode = await wallet.cap_of(token_in)
        if mode != CapMode.NONE:
            amount = min(amount, (await wallet.spendable(token_in))[1])
        if amount == 0:
            return await _defer_or_skip(ctx, intent, intent_id, step, "the cap is spent")
    else:
        token_in, token_out, amount = _trade_of(intent)
    path = ctx.market.route(token_in, token_out)
    held = await ctx.market.balance(path[0], wallet.address)
    if held < amount:
        return await _defer_or_skip(
            ctx,
            intent,
            intent_id,
            step,
            f"the wallet holds {ctx.market.whole(path[0], held)} {ctx.market.symbol(path[0])}, "
            f"the step sells {ctx.market.whole(path[0], amount)}",
        )
    now = await ctx.clock.now()
    twap_out, terms = await _swap_terms(ctx, policy, intent, path, amount, now)
    # What the trade is worth in the valuation token, at TWAP (for the approval rule).
    if path[0].lower() == ctx.value_token.lower():
        value = amount
    elif path[-1].lower() == ctx.value_token.lower():
        value = twap_out
    else:
        to_value = ctx.market.route(path[0], ctx.value_token)
        value = await ctx.market.twap_out(to_value, amount, policy.twap_window)
    return {
        "outcome": "ready",
        "plan": {
            "wallet": wallet.address,
            "router": ctx.market.router,
            "path": list(path),
            "amount_in": str(amount),
            "twap_out": str(twap_out),
            "value": value,
            **terms,
        },
    }


async def simulate(state: DefiState, runtime: Runtime[DefiContext]) -> dict[str, Any]:
    ctx = runtime.context
    try:
        await ctx.wallets(state["plan"]["wallet"]).simulate_swap(_call(state["plan"]))
    except ContractRevertError as exc:
        return await _refused(ctx, state, exc)
    return {"outcome": "ok"}


async def approve(state: DefiState, runtime: Runtime[DefiContext]) -> dict[str, Any]:
    ctx = runtime.context
    intent, _, _ = _intent(ctx, state["intent_id"])
    plan_ = state["plan"]
    if int(plan_["value"]) <= int(intent.approval_above) or int(intent.approval_above) == 0:
        return {"outcome": "approved"}
    market = ctx.market
    path = plan_["path"]
    description = (
        f"swap {market.whole(path[0], int(plan_['amount_in']))} {market.symbol(path[0])} "
        f"for at least {market.whole(path[-1], int(plan_['min_out']))} "
        f"{market.symbol(path[-1])} (intent {state['intent_id'][:10]}, step {state['step'] + 1})"
    )
    decision = interrupt(
        {
            "kind": "approval",
            "amount": int(plan_["value"]),
            "description": description,
            "until": _step_ends(intent, state["step"]),
        }
    )
    if isinstance(decision, ApprovalDecision) and decision.approved:
        return {"outcome": "approved", "phase": IntentPhase.EXECUTING}
    reason = "the owner rejected it" if isinstance(decision, ApprovalDecision) else "no decision"
    ctx.store.finish_step(
        state["intent_id"], state["step"], "refused", at=await ctx.clock.now(), reason=reason
    )
    return {"outcome": "rejected", "phase": IntentPhase.ACTIVE, "reason": reason}


async def execute(state: DefiState, runtime: Runtime[DefiContext]) -> dict[str, Any]:
    ctx = runtime.context
    intent_id, step, plan_ = state["intent_id"], state["step"], state["plan"]
    path, amount = plan_["path"], int(plan_["amount_in"])
    wallet = ctx.wallets(plan_["wallet"])
    row = ctx.store.fill(intent_id, step)
    if row is not None and row.status == "filled":
        return {"outcome": "filled"}
    reconciled = await reconcile_step(ctx, wallet, intent_id, step)
    if reconciled == "filled":
        return {"outcome": "filled", "phase": IntentPhase.ACTIVE}
    now = await ctx.clock.now()
    if reconciled == "in_flight":
        return _wait(ctx, intent_id, now + ctx.retry_s, "a swap sent is not mined yet")
    _, phase, _ = _intent(ctx, intent_id)
    if phase in FINAL_PHASES:  # cancelled while the step was being planned or approved
        return {"outcome": "end", "phase": phase}
    # The plan may be old (an approval can take hours): a fresh deadline, and the
    # minimum out from the TWAP of now.
    intent, _, _ = _intent(ctx, intent_id)
    _, terms = await _swap_terms(ctx, await wallet.swap_policy(), intent, path, amount, now)
    plan_ = {**plan_, **terms}
    ctx.store.begin_step(
        intent_id,
        step,
        # The swap lands in a later block: a swap of an earlier step is never taken for it.
        from_block=await ctx.clock.block_number() + 1,
        token_in=path[0],
        token_out=path[-1],
        amount_in=amount,
    )
    try:
        receipt = await wallet.swap(
            _call(plan_),
            sent=lambda tx_hash: ctx.store.note_sent(intent_id, step, "0x" + tx_hash.hex()),
        )
    except ContractRevertError as exc:
        return await _refused(ctx, state, exc)
    fill = wallet.swapped(receipt)
    tx = "0x" + bytes(receipt["transactionHash"]).hex()
    _record_fill(ctx, intent_id, step, tx, fill, int(receipt["gasUsed"]), await ctx.clock.now())
    return {"outcome": "filled", "phase": IntentPhase.ACTIVE}


async def reconcile_step(
    ctx: DefiContext, wallet: AgentWalletClient, intent_id: str, step: int
) -> str:
    """A step left pending (the agent died, or lost the receipt, after sending): the
    chain decides, never a second send. Returns "filled" (recorded from the chain),
    "in_flight" (its transaction is not mined yet: wait for it), or "none" (nothing of
    it on chain: the step may be sent)."""
    row = ctx.store.fill(intent_id, step)
    if row is None or row.status != "pending" or not row.token_in:
        return "none"
    if row.tx:
        outcome, fill, gas = await wallet.swap_outcome(row.tx)
        if outcome == "pending":
            return "in_flight"
        if outcome == "reverted" or fill is None:
            return "none"
        _record_fill(ctx, intent_id, step, row.tx, fill, gas, await ctx.clock.now())
        log.info("intent %s step %s: swap %s mined (reconciled)", intent_id, step, row.tx)
        return "filled"
    # Killed between writing the row and the node taking the transaction: search.
    # A swap another step was recorded with is never taken for this one.
    taken = ctx.store.recorded_txs()
    found = await wallet.find_swap(row.from_block, row.token_in, int(row.amount_in), taken)
    if found is None or found[1].token_out.lower() != row.token_out.lower():
        return "none"
    tx, fill, gas = found
    _record_fill(ctx, intent_id, step, tx, fill, gas, await ctx.clock.now())
    log.info("intent %s step %s: swap %s found on chain (reconciled)", intent_id, step, tx)
    return "filled"


async def advance(state: DefiState, runtime: Runtime[DefiContext]) -> dict[str, Any]:
    ctx = runtime.context
    intent_id, step = state["intent_id"], state["step"]
    ctx.store.update_intent(intent_id, step=step + 1, reason="")
    return {"phase": IntentPhase.ACTIVE, "step": step + 1, "plan": {}}


async def wait(state: DefiState, runtime: Runtime[DefiContext]) -> dict[str, Any]:
    """Pause until ``until`` (chain time); the runner resumes the thread then, or at
    once for a cancellation."""
    interrupt({"kind": "wait", "until": state["until"]})
    return {"phase": IntentPhase.ACTIVE}


# ---------------------------------------------------------------------- helpers


def _wait(ctx: DefiContext, intent_id: str, until: int, reason: str) -> dict[str, Any]:
    ctx.store.update_intent(intent_id, next_due=until, reason=reason, phase=IntentPhase.ACTIVE)
    return {"outcome": "wait", "until": until, "phase": IntentPhase.ACTIVE, "reason": reason}


def _finish(ctx: DefiContext, intent_id: str, phase: IntentPhase, reason: str) -> dict[str, Any]:
    ctx.store.update_intent(intent_id, phase=phase, reason=reason, next_due=0)
    return {"outcome": "end", "phase": phase, "reason": reason}


def _trade_of(intent: AnyIntent) -> tuple[str, str, int]:
    trade = trade_of(intent)
    if trade is None:
        raise AgentMeshError("a rebalance's trade comes from the portfolio")
    return trade


async def _swap_terms(
    ctx: DefiContext,
    policy: SwapPolicy,
    intent: AnyIntent,
    path: Sequence[str],
    amount: int,
    now: int,
) -> tuple[int, dict[str, Any]]:
    """(TWAP value of ``amount`` along ``path``, the swap's minimum out and deadline):
    the TWAP less the tighter of the intent's and the wallet's slippage, and a deadline
    within the wallet's maximum delay."""
    twap_out = await ctx.market.twap_out(path, amount, policy.twap_window)
    slippage = min(intent.max_slippage_bps, policy.max_slippage_bps)
    return twap_out, {
        "min_out": str(twap_out * (BPS - slippage) // BPS),
        "deadline": now + min(SWAP_DEADLINE_S, policy.max_deadline_delay),
    }


def _call(plan_: dict[str, Any]) -> SwapCall:
    return SwapCall(
        router=plan_["router"],
        path=tuple(plan_["path"]),
        amount_in=int(plan_["amount_in"]),
        min_out=int(plan_["min_out"]),
        recipient=plan_["wallet"],
        deadline=int(plan_["deadline"]),
    )


def _record_fill(
    ctx: DefiContext, intent_id: str, step: int, tx: str, fill: Any, gas: int, at: int
) -> None:
    ctx.store.finish_step(
        intent_id,
        step,
        "filled",
        tx=tx,
        amount_in=str(fill.amount_in),
        amount_out=str(fill.amount_out),
        twap_out=str(fill.twap_out),
        gas=gas,
        at=at,
        reason="",
    )


async def _refused(ctx: DefiContext, state: DefiState, exc: ContractRevertError) -> dict[str, Any]:
    """A refusal by the wallet (or a revert of the router): defer it when time may cure
    it, record it otherwise."""
    intent, _, _ = _intent(ctx, state["intent_id"])
    if isinstance(exc, PolicyViolation):
        reason = f"{exc.error_name}: {exc.rule}"
        transient = exc.error_name in TRANSIENT_RULES
    elif "INSUFFICIENT_OUTPUT_AMOUNT" in exc.user_message:
        # The router's own check of the minimum out this agent set from the TWAP.
        reason = (
            "the pool's price is worse than its TWAP by more than the slippage "
            "(the swap's minimum out, set from the TWAP, was not met)"
        )
        transient = True
    else:  # some other revert of the target: try again later, say what it was
        reason = f"the swap reverted: {exc.user_message}"
        transient = True
    if transient:
        return await _defer_or_skip(ctx, intent, state["intent_id"], state["step"], reason)
    ctx.store.finish_step(
        state["intent_id"], state["step"], "refused", at=await ctx.clock.now(), reason=reason
    )
    log.info("intent %s step %s refused: %s", state["intent_id"], state["step"], reason)
    return {"outcome": "refused", "phase": IntentPhase.ACTIVE, "reason": reason}


async def _defer_or_skip(
    ctx: DefiContext, intent: AnyIntent, intent_id: str, step: int, reason: str
) -> dict[str, Any]:
    """Try the step again after ``retry_s`` while its time lasts; then record it."""
    now = await ctx.clock.now()
    if now + ctx.retry_s < _step_ends(intent, step):
        return _wait(ctx, intent_id, now + ctx.retry_s, f"deferred: {reason}")
    ctx.store.finish_step(intent_id, step, "skipped", at=now, reason=reason)
    return {"outcome": "skip", "phase": IntentPhase.ACTIVE, "reason": reason}


async def _rebalance_trade(
    ctx: DefiContext, intent: RebalanceIntent, policy: SwapPolicy
) -> tuple[str, str, int] | None:
    """The trade that brings the most overweight token back toward its weight (sold
    for the most underweight one), or None when every token is within the band."""
    market = ctx.market
    values: list[int] = []
    owner = ctx.wallets(intent.wallet).address
    for token in intent.tokens:
        held = await market.balance(token, owner)
        if token.lower() == ctx.value_token.lower() or held == 0:
            values.append(held)
        else:
            route = market.route(token, ctx.value_token)
            values.append(await market.twap_out(route, held, policy.twap_window))
    total = sum(values)
    if total == 0:
        return None
    drift = [v * BPS // total - w for v, w in zip(values, intent.weights_bps, strict=True)]
    over = max(range(len(drift)), key=lambda i: drift[i])
    under = min(range(len(drift)), key=lambda i: drift[i])
    if drift[over] <= intent.tolerance_bps and -drift[under] <= intent.tolerance_bps:
        return None
    excess_value = min(drift[over], -drift[under]) * total // BPS
    held = await market.balance(intent.tokens[over], owner)
    amount = held * excess_value // values[over] if values[over] else 0
    if amount == 0:
        return None
    return intent.tokens[over], intent.tokens[under], amount


# ---------------------------------------------------------------------- graph


def build_defi_graph(checkpointer: Any) -> Any:
    """The compiled per-intent graph (thread id: ``d:<intent id>``)."""
    graph: StateGraph[DefiState, DefiContext, DefiState, DefiState] = StateGraph(
        DefiState, context_schema=DefiContext
    )
    for node in (observe, plan, simulate, approve, execute, advance, wait):
        graph.add_node(node.__name__, node)
    graph.add_edge(START, "observe")

    def on(table: dict[str, str], otherwise: str) -> Any:
        return lambda state: table.get(state.get("outcome", ""), otherwise)

    graph.add_conditional_edges(
        "observe", on({"due": "plan", "wait": "wait", "skip": "observe"}, END)
    )
    graph.add_conditional_edges(
        "plan", on({"ready": "simulate", "wait": "wait", "end": END}, "advance")
    )
    graph.add_conditional_edges("simulate", on({"ok": "approve", "wait": "wait"}, "advance"))
    graph.add_conditional_edges("approve", on({"approved": "execute"}, "advance"))
    graph.add_conditional_edges("execute", on({"wait": "wait", "end": END}, "advance"))
    graph.add_edge("advance", "observe")
    graph.add_edge("wait", "observe")
    return graph.compile(checkpointer=checkpointer)
