"""`agentmesh defi`: give the agent of a delegation intents, follow and cancel them.

The structured commands (`swap`, `dca`, `limit`, `stop`, `rebalance`) build an intent
exactly as typed; `ask` has the local model read a sentence into one, shows it and asks
before anything is signed. The intent is signed (EIP-712) by the owner's wallet — in its
running wallet agent, started on demand as for `agentmesh task` — and sent to the DeFi
agent over the mesh, which checks it against the wallet's policy before accepting it.
`intents` lists them with their fills, average price and P&L against just holding.
"""

from __future__ import annotations

import secrets
from decimal import Decimal
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from agentmesh.errors import AgentMeshError, AgentMeshValueError

from .context import AppState, JsonOption, console, print_json, run, state
from .delegate import DelegationRecord, find_record, market_of, parse_bps, parse_duration

if TYPE_CHECKING:
    from agentmesh.protocols.defi import AnyIntent
    from agentmesh.wallets.uniswap import UniswapMarket

app = typer.Typer(help="DeFi intents for a delegated wallet's agent.", no_args_is_help=True)

WalletOption = Annotated[
    str | None, typer.Option("--wallet", help="the delegated AgentWallet (if several)")
]
SlippageOption = Annotated[
    str | None, typer.Option(help="worst price vs the TWAP (default: the delegation's)")
]
ExpiresOption = Annotated[str, typer.Option(help="the intent lapses after")]
YesOption = Annotated[bool, typer.Option("--yes", help="send without asking")]


# ---------------------------------------------------------------------- building intents


async def _market(app_state: AppState) -> tuple[UniswapMarket, int, Any]:
    """The exchange (read-only), chain time, and the open chain's exit."""
    import contextlib

    from eth_account import Account

    from agentmesh.wallets.chain import open_chain
    from agentmesh.wallets.wallet import Wallet

    stack = contextlib.AsyncExitStack()
    chain = await stack.enter_async_context(
        open_chain(app_state.home, app_state.config, allow_embedded=False)
    )
    try:
        market = market_of(chain, Wallet(Account.create(), chain.w3))  # reads only
    except AgentMeshError:
        await stack.aclose()
        raise
    now = int((await chain.w3.eth.get_block("latest"))["timestamp"])
    return market, now, stack


def _amount(market: UniswapMarket, text: str, token: str) -> str:
    from agentmesh.wallets.units import parse_amount

    address = market.address(token)
    units = parse_amount(text, market.decimals(address), symbol=token)
    if units == 0:
        raise AgentMeshValueError(f"the amount of {token} must be above zero")
    return str(units)


def _common(record: DelegationRecord, slippage: str | None, expires_at: int) -> dict[str, Any]:
    return {
        "wallet": record.wallet,
        "nonce": secrets.randbits(63),
        "valid_until": expires_at,
        "max_slippage_bps": (
            parse_bps(slippage, "--slippage") if slippage else record.slippage_bps
        ),
        "approval_above": record.approval_above,
    }


def build_intent(
    kind: str, record: DelegationRecord, market: UniswapMarket, now: int, fields: dict[str, Any]
) -> AnyIntent:
    """An intent from the words of a command (or of the model's reading of a sentence):
    token symbols, whole amounts, durations. Raises naming the field that is wrong."""
    from pydantic import ValidationError

    from agentmesh.protocols.defi import (
        DcaIntent,
        RebalanceIntent,
        SwapIntent,
        TriggerIntent,
    )

    expires_at = now + parse_duration(str(fields.get("expires", "1d")), "expiry")
    common = _common(record, fields.get("slippage"), expires_at)
    try:
        if kind == "swap":
            return SwapIntent(
                **common,
                token_in=market.address(fields["sell_token"]),
                token_out=market.address(fields["buy_token"]),
                amount_in=_amount(market, fields["amount"], fields["sell_token"]),
            )
        if kind == "dca":
            every = parse_duration(str(fields["every"]), "period")
            periods = int(fields["periods"])
            start = now + int(fields.get("start_in", 0))
            return DcaIntent(
                **{**common, "valid_until": max(expires_at, start + every * periods)},
                token_in=market.address(fields["sell_token"]),
                token_out=market.address(fields["buy_token"]),
                amount_per_period=_amount(market, fields["amount"], fields["sell_token"]),
                period_s=every,
                periods=periods,
                start_at=start,
            )
        if kind in ("limit", "stop"):
            side = fields["side"]
            sold = fields["base"] if side == "sell" else fields["quote"]
            return TriggerIntent(
                **common,
                kind="limit" if kind == "limit" else "stop",
                side=side,
                base=market.address(fields["base"]),
                quote=market.address(fields["quote"]),
                amount=_amount(market, fields["amount"], sold),
                price=str(Decimal(str(fields["price"]))),
            )
        if kind == "rebalance":
            tokens, weights = [], []
            for item in str(fields["weights"]).split(","):
                symbol, sep, percent = item.partition("=")
                if not sep:
                    raise AgentMeshValueError(
                        f"invalid weight {item!r}: use TOKEN=PERCENT (WETH=60,mUSD=40)"
                    )
                tokens.append(market.address(symbol.strip()))
                weights.append(int(Decimal(percent.strip().removesuffix("%")) * 100))
            return RebalanceIntent(
                **common,
                tokens=tuple(tokens),
                weights_bps=tuple(weights),
                tolerance_bps=parse_bps(str(fields.get("band", "2%")), "band"),
                check_every_s=parse_duration(str(fields.get("every", "1h")), "check interval"),
            )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or kind
        raise AgentMeshValueError(f"invalid {kind} intent: {where}: {first['msg']}") from None
    except (KeyError, ValueError, ArithmeticError) as exc:
        raise AgentMeshValueError(f"invalid {kind} intent: {exc}") from None
    raise AgentMeshValueError(f"unknown intent kind {kind!r}")


def describe(intent: AnyIntent, market: UniswapMarket) -> list[tuple[str, str]]:
    """The intent in words, field by field (what the person confirms)."""
    from agentmesh.protocols.defi import DcaIntent, RebalanceIntent, SwapIntent, TriggerIntent
    from agentmesh.wallets.units import local_time

    def amount(token: str, units: str) -> str:
        return f"{market.whole(token, int(units))} {market.symbol(token)}"

    rows: list[tuple[str, str]] = [("kind", intent.kind), ("wallet", intent.wallet)]
    if isinstance(intent, SwapIntent):
        rows += [
            ("sell", amount(intent.token_in, intent.amount_in)),
            ("buy", market.symbol(intent.token_out)),
        ]
    elif isinstance(intent, DcaIntent):
        rows += [
            ("sell each period", amount(intent.token_in, intent.amount_per_period)),
            ("buy", market.symbol(intent.token_out)),
            ("every", f"{intent.period_s} s, {intent.periods} times"),
            ("first at", local_time(intent.start_at)),
        ]
    elif isinstance(intent, TriggerIntent):
        side = "at or below" if intent.fires_below else "at or above"
        rows += [
            (
                "when",
                f"the TWAP of {market.symbol(intent.base)} is {side} {intent.price} "
                f"{market.symbol(intent.quote)}",
            ),
            ("sell", amount(intent.token_in, intent.amount)),
            ("buy", market.symbol(intent.token_out)),
        ]
    elif isinstance(intent, RebalanceIntent):
        weights = ", ".join(
            f"{market.symbol(t)} {w / 100:g}%"
            for t, w in zip(intent.tokens, intent.weights_bps, strict=True)
        )
        rows += [
            ("target", weights),
            ("band", f"{intent.tolerance_bps / 100:g}%"),
            ("check every", f"{intent.check_every_s} s"),
        ]
    rows += [
        ("max slippage vs TWAP", f"{intent.max_slippage_bps / 100:g}%"),
        ("valid until", local_time(intent.valid_until)),
    ]
    threshold = int(intent.approval_above)
    if threshold:
        rows.append(("approval above", f"{market.whole(market.address('mUSD'), threshold)} mUSD"))
    return rows


def _print_intent(intent: AnyIntent, market: UniswapMarket, title: str) -> None:
    table = Table(title=title, show_header=False)
    for key, value in describe(intent, market):
        table.add_row(key, value)
    console.print(table)


# ---------------------------------------------------------------------- sending


async def _send(app_state: AppState, record: DelegationRecord, request: Any) -> dict[str, Any]:
    """Hand ``request`` to the owner's wallet agent; the agent's answer (IntentState)."""
    from agentmesh.agents.control import exchange

    from .task import _ensure_wallet_agent

    path = await _ensure_wallet_agent(app_state, record.owner)
    async for event in exchange(path, request):
        if event["event"] == "error":
            raise AgentMeshError(event.get("message", "the wallet's agent failed"))
        if event["event"] == "intent":
            return dict(event["state"])
    raise AgentMeshError("the wallet's agent closed without an answer")


def submit_intent(
    ctx: typer.Context,
    kind: str,
    wallet: str | None,
    fields: dict[str, Any],
    json_out: bool,
    *,
    confirm: bool = False,
    extra: dict[str, Any] | None = None,
) -> None:
    """Build, show, (confirm,) sign and send one intent."""
    from agentmesh.agents.control import Defi

    app_state = state(ctx)
    record = find_record(app_state.home, wallet)

    async def build() -> tuple[AnyIntent, UniswapMarket]:
        market, now, stack = await _market(app_state)
        async with stack:
            return build_intent(kind, record, market, now, fields), market

    intent, market = run(build())
    if not json_out:
        _print_intent(intent, market, f"{kind} intent for {record.wallet[:10]}")
    if confirm and not typer.confirm("Sign and send this intent?", default=False, err=True):
        if json_out:
            print_json({"sent": False, "intent": intent.model_dump(mode="json"), **(extra or {})})
        else:
            console.print("not sent: nothing was signed")
        raise typer.Exit(1)
    request = Defi(action="submit", agent=record.agent, intent=intent.model_dump(mode="json"))
    answer = run(_send(app_state, record, request))
    if json_out:
        print_json(
            {
                "sent": True,
                "intent": intent.model_dump(mode="json"),
                "state": answer,
                **(extra or {}),
            }
        )
        return
    console.print(
        f"intent [bold]{answer['intent_id']}[/] accepted by {record.agent}: {answer['phase']}"
    )


@app.command()
def swap(
    ctx: typer.Context,
    amount: Annotated[str, typer.Argument(help="whole units to sell, e.g. 20")],
    sell: Annotated[str, typer.Argument(help="token sold, e.g. mUSD")],
    buy: Annotated[str, typer.Argument(help="token bought, e.g. WETH")],
    wallet: WalletOption = None,
    slippage: SlippageOption = None,
    expires: ExpiresOption = "1h",
    json_out: JsonOption = False,
) -> None:
    """Sell AMOUNT of SELL for BUY, once, at most SLIPPAGE under the TWAP."""
    fields = {"amount": amount, "sell_token": sell, "buy_token": buy}
    submit_intent(
        ctx, "swap", wallet, {**fields, "slippage": slippage, "expires": expires}, json_out
    )


@app.command()
def dca(
    ctx: typer.Context,
    amount: Annotated[str, typer.Argument(help="whole units to sell each period")],
    sell: Annotated[str, typer.Argument(help="token sold, e.g. mUSD")],
    buy: Annotated[str, typer.Argument(help="token bought, e.g. WETH")],
    every: Annotated[str, typer.Option(help="period, e.g. 1h")] = "1h",
    periods: Annotated[int, typer.Option(help="how many periods")] = 5,
    wallet: WalletOption = None,
    slippage: SlippageOption = None,
    json_out: JsonOption = False,
) -> None:
    """Sell AMOUNT of SELL for BUY every period, PERIODS times (the first now)."""
    fields = {
        "amount": amount,
        "sell_token": sell,
        "buy_token": buy,
        "every": every,
        "periods": periods,
        "slippage": slippage,
        "expires": "1m",
    }
    submit_intent(ctx, "dca", wallet, fields, json_out)


def _trigger(kind: str) -> Any:
    def command(
        ctx: typer.Context,
        side: Annotated[str, typer.Argument(help="buy or sell (BASE)")],
        amount: Annotated[
            str, typer.Argument(help="whole units sold (BASE to sell, QUOTE to buy)")
        ],
        base: Annotated[str, typer.Argument(help="the token priced, e.g. WETH")],
        price: Annotated[str, typer.Argument(help="in QUOTE per BASE, e.g. 1800")],
        quote: Annotated[str, typer.Option(help="the token prices are in")] = "mUSD",
        wallet: WalletOption = None,
        slippage: SlippageOption = None,
        expires: ExpiresOption = "7d",
        json_out: JsonOption = False,
    ) -> None:
        if side not in ("buy", "sell"):
            raise AgentMeshValueError(f"invalid side {side!r}: buy or sell")
        fields = {
            "side": side,
            "amount": amount,
            "base": base,
            "quote": quote,
            "price": price,
            "slippage": slippage,
            "expires": expires,
        }
        submit_intent(ctx, kind, wallet, fields, json_out)

    when = (
        "a limit buys at or below PRICE, sells at or above it"
        if kind == "limit"
        else "a stop sells at or below PRICE (stop-loss), buys at or above it"
    )
    command.__doc__ = f"Trade once when the TWAP of BASE crosses PRICE: {when}."
    return command


app.command("limit")(_trigger("limit"))
app.command("stop")(_trigger("stop"))


@app.command()
def rebalance(
    ctx: typer.Context,
    weights: Annotated[str, typer.Argument(help="target weights, e.g. WETH=60,mUSD=40")],
    band: Annotated[str, typer.Option(help="drift tolerated before trading")] = "2%",
    every: Annotated[str, typer.Option(help="how often to check")] = "1h",
    wallet: WalletOption = None,
    slippage: SlippageOption = None,
    expires: ExpiresOption = "7d",
    json_out: JsonOption = False,
) -> None:
    """Keep the wallet at WEIGHTS of its value at TWAP, trading back beyond the band."""
    fields = {
        "weights": weights,
        "band": band,
        "every": every,
        "slippage": slippage,
        "expires": expires,
    }
    submit_intent(ctx, "rebalance", wallet, fields, json_out)


@app.command()
def ask(
    ctx: typer.Context,
    sentence: Annotated[str, typer.Argument(help="what the agent should do, in words")],
    wallet: WalletOption = None,
    yes: YesOption = False,
    json_out: JsonOption = False,
) -> None:
    """Have the local model read SENTENCE into an intent: it is shown, and signed and
    sent only when you say yes (--yes: without asking)."""
    from agentmesh.agents.defi_reading import ground, read_sentence, reading_fields

    app_state = state(ctx)
    record = find_record(app_state.home, wallet)

    async def read() -> tuple[str, dict[str, Any], dict[str, Any]]:
        from agentmesh.llm import LocalModel

        market, _, stack = await _market(app_state)
        async with stack:
            with console.status("reading the sentence with the local model..."):
                model = LocalModel.default()
                try:
                    reading = await read_sentence(model, sentence, list(market.exchange.tokens))
                finally:
                    model.close()
            grounded, notes = ground(reading, sentence, list(market.exchange.tokens))
            sold = market.address(grounded["sell_token"])
            held = market.whole(sold, await market.balance(sold, record.wallet))
            kind, fields = reading_fields(grounded, held, decimals=market.decimals(sold))
            return kind, fields, {"model": reading.model_dump(), "notes": notes}

    kind, fields, reading = run(read())
    if not json_out:
        for note in reading["notes"]:
            console.print(f"[dim]{note}[/]")
    submit_intent(ctx, kind, wallet, fields, json_out, confirm=not yes, extra={"reading": reading})


# ---------------------------------------------------------------------- following


@app.command()
def intents(
    ctx: typer.Context,
    wallet: WalletOption = None,
    json_out: JsonOption = False,
) -> None:
    """Every intent of the delegation's agent: state, fills, average price, P&L."""
    from .defi_report import intents_report, print_intents

    app_state = state(ctx)
    record = find_record(app_state.home, wallet)
    report = run(intents_report(app_state, record))
    if json_out:
        print_json(report)
        return
    print_intents(report)


@app.command()
def cancel(
    ctx: typer.Context,
    intent_id: Annotated[str, typer.Argument(help="the intent's id (0x..., or a prefix)")],
    wallet: WalletOption = None,
    json_out: JsonOption = False,
) -> None:
    """Stop an intent: no further step starts (the owner's key signs the cancellation)."""
    from agentmesh.agents.control import Defi

    from .defi_report import find_intent

    app_state = state(ctx)
    record = find_record(app_state.home, wallet)
    row = find_intent(app_state, record, intent_id)
    request = Defi(action="cancel", agent=record.agent, intent=row["intent"])
    answer = run(_send(app_state, record, request))
    if json_out:
        print_json(answer)
        return
    console.print(f"intent {answer['intent_id']}: {answer['phase']}")
