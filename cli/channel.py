"""`agentmesh channel`: an agent's payment channels, from the command line.

The channels live in the agent's store, ``<home>/agents/<agent>/channels.db`` (the one
``Agent`` reads when it starts): `open` records the channel it opens there, so an agent
started afterwards with that home and name pays its ``Agent.call`` to that payee through
it (fixing prices on its first call); `claim` and a payee's `close` send the latest
voucher that store holds. `list` and `show` read the store and the chain and write
nothing; the other commands change the chain, then the row. Amounts are mUSD in tables
and base units (6 decimals, ints) in ``--json``; times are chain time.

Which side a wallet is on is the chain's word, not the store's: a command refuses a
channel whose payer and payee are both someone else.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from agentmesh.errors import AgentMeshError, AgentMeshValueError

from .channel_rows import (
    DEFAULT_WALLET,
    Owner,
    Session,
    describe,
    hex_id,
    musd,
    open_store,
    owner_of,
    parse_channel_id,
    session,
    side_of,
    side_of_row,
    state_words,
    stored_rows,
    update_row,
)
from .context import JsonOption, console, musd_amount, print_json, run, state, tx_hash

if TYPE_CHECKING:
    from agentmesh.protocols.payment import ChannelPhase
    from agentmesh.wallets.channel import ChannelState

    from .channel_rows import Row

app = typer.Typer(
    help="Payment channels: open, top up, list, show, claim, close.", no_args_is_help=True
)

WalletOption = Annotated[
    str | None,
    typer.Option(
        "--wallet", help=f"keystore wallet (default: the --agent's name, else {DEFAULT_WALLET})"
    ),
]
AgentOption = Annotated[
    str | None,
    typer.Option(
        "--agent", help="whose channels: <home>/agents/AGENT (default: the wallet's name)"
    ),
]
ChannelArg = Annotated[
    str, typer.Argument(help="channel id: 0x and 64 hex digits (or the 8+ that `list` shows)")
]

SHORT = 10  # "0x" and 8 hex digits: what a table shows, and a prefix the commands take


# ---------------------------------------------------------------------- reading


@app.command("list")
def list_(
    ctx: typer.Context,
    wallet: WalletOption = None,
    agent: AgentOption = None,
    json_out: JsonOption = False,
) -> None:
    """Every channel in the agent's store, both sides, with the chain's figures."""
    app_state = state(ctx)
    owner = owner_of(app_state, wallet, agent)
    rows = stored_rows(owner)

    async def body() -> list[dict[str, Any]]:
        async with session(app_state) as s:
            return [
                describe(cid, side_of_row(row), row, await s.state(cid), s.delay)
                for cid, row in rows.items()
            ]

    listed = run(body()) if rows else []
    if json_out:
        print_json(listed)
        return
    if not listed:
        console.print(
            f"no channels in agent {owner.agent}'s store: open one with "
            "`agentmesh channel open PAYEE --deposit AMOUNT`"
        )
        return
    table = Table(title=f"channels of agent {owner.agent} (times are local)")
    for column in ("channel", "side", "peer", "deposit", "paid", "claimed", "unclaimed", "state"):
        table.add_column(column, no_wrap=column in ("channel", "peer"))
    for info in listed:
        table.add_row(
            info["channel"][:SHORT],
            info["side"],
            info["peer"] or "-",
            *(musd(info[k]) for k in ("deposit", "paid", "claimed", "unclaimed")),
            state_words(info),
        )
    console.print(table)


@app.command()
def show(
    ctx: typer.Context,
    channel: ChannelArg,
    wallet: WalletOption = None,
    agent: AgentOption = None,
    json_out: JsonOption = False,
) -> None:
    """One channel: figures, prices per service, calls, token, open tx, challenge delay."""
    app_state = state(ctx)
    owner = owner_of(app_state, wallet, agent)
    rows = stored_rows(owner)
    channel_id = parse_channel_id(channel, rows, owner)
    row = rows.get(channel_id)

    async def body() -> dict[str, Any]:
        async with session(app_state) as s:
            if row is not None:
                found, side = await s.state(channel_id), side_of_row(row)
            else:  # not in the store: the chain says which side the wallet is
                from .wallet import _keystore

                found = await s.require(channel_id, owner, stored=False)
                address = _keystore(app_state).entry(owner.wallet).address
                side = side_of(found, address, owner, channel_id)
            requested = found.close_requested_at if found is not None else 0
            return {
                **describe(channel_id, side, row, found, s.delay),
                "agent": owner.agent,
                "in_store": row is not None,
                "prices": dict(row.prices) if row is not None else {},
                "calls": row.calls if row is not None else 0,
                "challenge_delay": s.delay,
                "close_requested_at": requested or None,
                "chain_time": await s.now(),
                "open_tx": getattr(row, "open_tx", "") or await _open_tx(s, channel_id),
            }

    info = run(body())
    if json_out:
        print_json(info)
        return
    _print_show(info)


async def _open_tx(s: Session, channel_id: bytes) -> str | None:
    """The transaction that opened the channel, from the contract's ``Opened`` event (a
    payee's store does not hold it)."""
    logs = await s.client.contract.events.Opened().get_logs(
        argument_filters={"id": channel_id}, from_block=s.chain.deployment.block_number
    )
    return next(("0x" + bytes(e["transactionHash"]).hex() for e in logs), None)


def _print_show(info: dict[str, Any]) -> None:
    from agentmesh.wallets.units import local_time

    table = Table(show_header=False, box=None)
    table.add_row("channel", info["channel"])
    table.add_row("agent", f"{info['agent']} ({info['side']})")
    for key in ("payer", "payee", "token"):
        table.add_row(key, info[key] or "-")
    for key in ("deposit", "paid", "claimed", "unclaimed"):
        table.add_row(key, musd(info[key]))
    table.add_row("state", state_words(info))
    table.add_row("challenge delay", f"{info['challenge_delay']} s")
    if info["claim_until"] is not None:
        left = info["claim_until"] - info["chain_time"]
        table.add_row(
            "close requested",
            f"{local_time(info['close_requested_at'])}; the delay ends "
            f"{local_time(info['claim_until'])}" + (f" (in {left} s)" if left > 0 else " (over)"),
        )
    prices = ", ".join(f"{k} {musd(v)}" for k, v in sorted(info["prices"].items()))
    table.add_row("prices", prices or "none fixed yet")
    table.add_row("calls", str(info["calls"]))
    table.add_row("open tx", info["open_tx"] or "-")
    if not info["in_store"]:
        table.add_row("store", "[yellow]not in this agent's store[/] (read from the chain)")
    console.print(table)


# ---------------------------------------------------------------------- acting


@dataclass(slots=True)
class Acting:
    """A sending command's channel: the chain's state, the store's row, the side."""

    s: Session
    owner: Owner
    channel_id: bytes
    row: Row | None
    found: ChannelState
    side: str

    @property
    def hex(self) -> str:
        return hex_id(self.channel_id)

    def require_side(self, side: str, refusal: str) -> None:
        if self.side != side:
            raise AgentMeshValueError(
                f"wallet {self.owner.wallet} is the {self.side} of channel {self.hex}: {refusal}"
            )

    def update(self, **changes: Any) -> None:
        update_row(self.owner, self.channel_id, self.side, **changes)

    def result(self, message: str, receipt: Any = None, **figures: Any) -> dict[str, Any]:
        """What a sending command reports: the channel, figures, the tx, in words."""
        tx = None if receipt is None else tx_hash(receipt)
        return {"channel": self.hex, **figures, "tx": tx, "message": message}


@contextlib.asynccontextmanager
async def acting(
    ctx: typer.Context, channel: str, wallet: str | None, agent: str | None
) -> AsyncIterator[Acting]:
    """Check the channel id, unlock the wallet, find the channel and the wallet's side."""
    from .wallet import _load_wallet

    app_state = state(ctx)
    owner = owner_of(app_state, wallet, agent)
    rows = stored_rows(owner)
    channel_id = parse_channel_id(channel, rows, owner)
    account = _load_wallet(app_state, owner.wallet)
    async with session(app_state, account, owner.wallet) as s:
        row = rows.get(channel_id)
        found = await s.require(channel_id, owner, stored=row is not None)
        side = side_of(found, s.wallet.address, owner, channel_id)
        yield Acting(s, owner, channel_id, row, found, side)


def _finish(done: dict[str, Any], json_out: bool) -> None:
    """What a sending command did: its JSON, or its message and transaction."""
    if json_out:
        print_json(done)
        return
    tail = f" (tx {done['tx']})" if done.get("tx") else ""
    console.print(f"{done['channel']}: {done['message']}{tail}")


def _phase(name: str) -> ChannelPhase:
    from agentmesh.protocols.payment import ChannelPhase

    return ChannelPhase(name)


@app.command("open")
def open_(
    ctx: typer.Context,
    payee: Annotated[str, typer.Argument(help="the payee's address (or a wallet name here)")],
    deposit: Annotated[str, typer.Option(help="mUSD to lock in the channel: 5 or '5 mUSD'")],
    wallet: WalletOption = None,
    agent: AgentOption = None,
    json_out: JsonOption = False,
) -> None:
    """Open a channel in mUSD to PAYEE; the agent (once started) pays its calls through it."""
    from .wallet import _load_wallet, _resolve_address

    app_state = state(ctx)
    owner = owner_of(app_state, wallet, agent)
    units = musd_amount(deposit, "--deposit")
    payee_address = _resolve_address(app_state, payee)
    if int(payee_address, 16) == 0:
        raise AgentMeshValueError("invalid payee: the zero address")
    account = _load_wallet(app_state, owner.wallet)
    if payee_address.lower() == account.address.lower():
        raise AgentMeshValueError(f"wallet {owner.wallet} cannot open a channel to itself")

    async def body() -> dict[str, Any]:
        from agentmesh.agents.channel_store import PayerChannel

        async with session(app_state, account, owner.wallet) as s:
            token = s.chain.token_address
            with console.status("opening the channel..."):
                channel_id, receipt = await s.client.open(payee_address, token, units)
            row = PayerChannel(channel_id, payee_address, token, units, open_tx=tx_hash(receipt))
            with open_store(owner, create=True) as store:
                assert store is not None
                store.save_payer(row)
            return {
                "channel": hex_id(channel_id),
                "payer": s.wallet.address,
                "payee": payee_address,
                "token": token,
                "deposit": units,
                "tx": row.open_tx,
                "agent": owner.agent,
                "store": str(owner.store),
                "message": (
                    f"opened to {payee_address} with {musd(units)}; agent {owner.agent} pays "
                    "its calls to that payee through it once (re)started, fixing prices on "
                    "its first call"
                ),
            }

    _finish(run(body()), json_out)


@app.command()
def topup(
    ctx: typer.Context,
    channel: ChannelArg,
    amount: Annotated[str, typer.Argument(help="mUSD to add: 5 or '5 mUSD'")],
    wallet: WalletOption = None,
    agent: AgentOption = None,
    json_out: JsonOption = False,
) -> None:
    """Payer: add mUSD to a channel (not once a close was requested)."""
    units = musd_amount(amount, "amount")

    async def body() -> dict[str, Any]:
        async with acting(ctx, channel, wallet, agent) as a:
            a.require_side("payer", "only its payer tops it up")
            if a.found.closed or a.found.close_requested_at:
                what = "closed" if a.found.closed else "closing (its payer asked to close)"
                raise AgentMeshValueError(f"channel {a.hex} is {what}: it takes no top-up")
            with console.status("topping up..."):
                receipt = await a.s.client.top_up(a.channel_id, units)
            deposit = (await a.s.client.channel(a.channel_id)).deposit
            a.update(deposit=deposit)
            message = f"topped up by {musd(units)}: deposit {musd(deposit)}"
            return a.result(message, receipt, added=units, deposit=deposit)

    _finish(run(body()), json_out)


async def _claims_open(a: Acting) -> None:
    """A payee's claim or close after the challenge delay reverts: say so first."""
    from agentmesh.wallets.units import local_time

    until = a.found.close_requested_at + a.s.delay
    if a.found.close_requested_at and await a.s.now() > until:
        raise AgentMeshError(
            f"too late: the challenge delay of channel {a.hex} ended at {local_time(until)}; "
            "its payer may withdraw the rest"
        )


def _voucher(a: Acting) -> tuple[int, bytes]:
    """The latest voucher in the payee's store, checked: (cumulative, signature); (what
    was claimed, no signature) when it holds nothing newer."""
    from agentmesh.agents.channel_store import PayeeChannel
    from agentmesh.wallets.channel import VoucherDomain

    row = a.row
    if not isinstance(row, PayeeChannel) or row.latest <= a.found.claimed:
        return a.found.claimed, b""
    domain = VoucherDomain.of(a.s.client.address, a.s.chain.deployment.chain_id)
    signer: str
    try:
        signer = domain.signer(a.channel_id, row.latest, row.signature)
    except AgentMeshError as exc:
        signer = f"nobody ({exc.user_message})"
    if signer.lower() != a.found.payer.lower():
        raise AgentMeshError(
            f"the voucher for {musd(row.latest)} that agent {a.owner.agent} holds on channel "
            f"{a.hex} is signed by {signer}, not by its payer {a.found.payer}"
        )
    return row.latest, row.signature


@app.command()
def claim(
    ctx: typer.Context,
    channel: ChannelArg,
    wallet: WalletOption = None,
    agent: AgentOption = None,
    json_out: JsonOption = False,
) -> None:
    """Payee: collect on chain what the latest voucher in the agent's store adds."""

    async def body() -> dict[str, Any]:
        async with acting(ctx, channel, wallet, agent) as a:
            a.require_side("payee", "only its payee claims (the payer uses `channel close`)")
            before = a.found.claimed
            if a.found.closed:
                return a.result("nothing to claim: the channel is closed", claimed=0)
            cumulative, signature = _voucher(a)
            if cumulative <= before:
                held = f"agent {a.owner.agent} holds no voucher above the {musd(before)} claimed"
                return a.result(f"nothing to claim: {held}", claimed=0, cumulative=before)
            await _claims_open(a)
            with console.status("claiming..."):
                receipt = await a.s.client.claim(a.channel_id, cumulative, signature)
            a.update(claimed=cumulative, deposit=a.found.deposit)
            paid = cumulative - before
            return a.result(f"claimed {musd(paid)}", receipt, claimed=paid, cumulative=cumulative)

    _finish(run(body()), json_out)


@app.command()
def close(
    ctx: typer.Context,
    channel: ChannelArg,
    wallet: WalletOption = None,
    agent: AgentOption = None,
    json_out: JsonOption = False,
) -> None:
    """Payer: ask to close, then (run again after the challenge delay) withdraw the rest.
    Payee: close at once with the latest voucher held (paid out, the rest refunded)."""

    async def body() -> dict[str, Any]:
        async with acting(ctx, channel, wallet, agent) as a:
            if a.found.closed:
                a.update(phase=_phase("closed"), claimed=a.found.claimed)
                return a.result("already closed", action="none")
            return await (_payee_close(a) if a.side == "payee" else _payer_close(a))

    _finish(run(body()), json_out)


async def _payee_close(a: Acting) -> dict[str, Any]:
    await _claims_open(a)
    cumulative, signature = _voucher(a)
    with console.status("closing..."):
        receipt = await a.s.client.close(a.channel_id, cumulative, signature)
    paid, refunded = cumulative - a.found.claimed, a.found.deposit - cumulative
    a.update(claimed=cumulative, deposit=a.found.deposit, phase=_phase("closed"))
    message = f"closed: {musd(paid)} more paid to you, {musd(refunded)} back to the payer"
    return a.result(message, receipt, action="closed", paid=paid, refunded=refunded)


async def _payer_close(a: Acting) -> dict[str, Any]:
    from agentmesh.wallets.units import local_time

    if not a.found.close_requested_at:
        with console.status("requesting the close..."):
            receipt = await a.s.client.request_close(a.channel_id)
        block = await a.s.chain.w3.eth.get_block(receipt["blockNumber"])
        until = int(block["timestamp"]) + a.s.delay  # the CloseRequested event's claimUntil
        a.update(phase=_phase("closing"))
        message = (
            f"close requested: the payee may claim until {local_time(until)} (the "
            f"{a.s.delay} s challenge delay); after that, run `agentmesh channel close "
            f"{a.hex}` again to withdraw the rest"
        )
        return a.result(message, receipt, action="close_requested", claim_until=until)
    until = a.found.close_requested_at + a.s.delay
    now = await a.s.now()
    if now <= until:  # withdraw needs a block after `until`
        raise AgentMeshError(
            f"channel {a.hex} is in its challenge delay until {local_time(until)} "
            f"({until - now + 1} s left): the payee may still claim; run `agentmesh channel "
            "close` again after that to withdraw the rest"
        )
    rest = a.found.deposit - a.found.claimed
    with console.status("withdrawing..."):
        receipt = await a.s.client.withdraw(a.channel_id)
    a.update(claimed=a.found.claimed, phase=_phase("closed"))
    message = f"closed: withdrew {musd(rest)} (the payee was paid {musd(a.found.claimed)})"
    return a.result(message, receipt, action="withdrawn", refunded=rest)
