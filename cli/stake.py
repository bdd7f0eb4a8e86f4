"""`agentmesh stake`: a wallet's stake in the suite's ``Staking`` contract.

Stake is mUSD locked as collateral: a provider with at least the contract's minimum
active stake is ranked, and the registered validators with the most active stake hold
a validator permit. `add` stakes (and with ``--validator`` registers as a validator
candidate); `withdraw AMOUNT` starts unbonding, `withdraw` alone takes back what is
unbonding once its delay is over and no dispute holds it; `show` reads an account's
stake, the contract's terms and the validators, and needs no password. Every sending
command checks what the contract would refuse first, so a bad input sends nothing.
Amounts are mUSD in tables and base units (6 decimals, ints) in ``--json``; times are
chain time.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from agentmesh.errors import (
    AgentMeshError,
    AgentMeshValueError,
    InvalidAddressError,
    WalletNotFoundError,
)

from .channel_rows import DEFAULT_WALLET, musd
from .context import (
    AppState,
    JsonOption,
    console,
    musd_amount,
    print_json,
    run,
    state,
    tx_hash,
)

if TYPE_CHECKING:
    from agentmesh.wallets.chain import Chain
    from agentmesh.wallets.staking import StakeInfo, StakingClient, StakingTerms

app = typer.Typer(
    help="Stake mUSD: rank as a provider, hold a validator permit; unbond, withdraw, show.",
    no_args_is_help=True,
)

WalletOption = Annotated[
    str, typer.Option("--wallet", help=f"keystore wallet (default: {DEFAULT_WALLET})")
]


# ---------------------------------------------------------------------- the chain


@dataclass(slots=True)
class Stakes:
    """An open chain and the suite's Staking contract, read or sent to as one wallet."""

    chain: Chain
    client: StakingClient
    terms: StakingTerms

    async def now(self) -> int:
        """Chain time as the next block will see it (what the contract compares with)."""
        from agentmesh.wallets.chain_clock import ChainClock

        return await ChainClock(self.chain.w3).now()

    async def account(self, address: str) -> dict[str, Any]:
        """One account's stake as the commands report it (base units, chain time)."""
        info, ranked, permit = await asyncio.gather(
            self.client.stake_of(address),
            self.client.is_ranked(address),
            self.client.has_permit(address),
        )
        return _figures(address, info, ranked, permit)

    async def validators(self) -> list[dict[str, Any]]:
        """Every registered validator with its active stake and permit, in rank order
        (most active stake first; ties: the lower address, as the contract ranks)."""
        found = await self.client.validators()
        infos = await asyncio.gather(*(self.client.stake_of(v) for v in found))
        permits = await asyncio.gather(*(self.client.has_permit(v) for v in found))
        rows = [
            {"address": v, "active": info.active, "permit": permit}
            for v, info, permit in zip(found, infos, permits, strict=True)
        ]
        return sorted(rows, key=lambda r: (-r["active"], int(r["address"], 16)))


@contextlib.asynccontextmanager
async def stakes(app_state: AppState, account: Any = None, name: str = "") -> AsyncIterator[Stakes]:
    """The chain and the Staking contract; ``account`` sends (None: a throw-away key
    that only reads)."""
    from eth_account import Account

    from agentmesh.wallets.chain import open_chain
    from agentmesh.wallets.staking import StakingClient
    from agentmesh.wallets.wallet import Wallet

    async with open_chain(app_state.home, app_state.config, allow_embedded=False) as chain:
        wallet = Wallet(account or Account.create(), chain.w3, name=name or None)
        client = StakingClient(wallet, chain.deployment.address("Staking"))
        yield Stakes(chain, client, await client.terms())


def _figures(address: str, info: StakeInfo, ranked: bool, permit: bool) -> dict[str, Any]:
    return {
        "address": address,
        "active": info.active,
        "unbonding": info.unbonding,
        # The contract keeps the last end after a withdrawal: it means nothing then.
        "unbonding_ends": info.unbonding_ends if info.unbonding else None,
        "holds": info.holds,
        "validator": info.validator,
        "ranked": ranked,
        "permit": permit,
    }


def _terms(terms: StakingTerms) -> dict[str, Any]:
    return {
        "token": terms.token,
        "unbonding_delay": terms.unbonding_delay,
        "min_provider_stake": terms.min_provider_stake,
        "permits": terms.permits,
        "max_validators": terms.max_validators,
        "slasher": terms.slasher if int(terms.slasher, 16) else None,
    }


def _span(seconds: int) -> str:
    """A duration for a person: ``86400 s`` -> ``24 h``, ``3725`` -> ``1 h 2 min 5 s``."""
    hours, rest = divmod(max(seconds, 0), 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{n} {unit}" for n, unit in ((hours, "h"), (minutes, "min"), (secs, "s")) if n]
    return " ".join(parts) or "0 s"


def _standing(figures: dict[str, Any], terms: dict[str, Any]) -> str:
    """Whether the account is ranked as a provider and holds a validator permit, in words."""
    minimum = musd(terms["min_provider_stake"])
    ranked = (
        f"ranked as a provider (at least {minimum} active)"
        if figures["ranked"]
        else f"not ranked as a provider (needs {minimum} active)"
    )
    if not figures["validator"]:
        permit = "not a validator candidate"
    elif figures["permit"]:
        permit = "holds a validator permit"
    else:
        permit = (
            f"a validator candidate without a permit (only the top {terms['permits']} "
            "by active stake hold one)"
        )
    return f"{ranked}; {permit}"


def _holds(holds: int) -> str:
    return f"{holds} open dispute{'s' if holds != 1 else ''}"


def _finish(done: dict[str, Any], json_out: bool) -> None:
    """What a sending command did: its JSON, or its message and transaction(s)."""
    if json_out:
        print_json(done)
        return
    txs = [tx for tx in (done.get("tx"), done.get("register_tx")) if tx]
    tail = f" (tx {', '.join(txs)})" if txs else ""
    console.print(f"{done['wallet']} {done['address']}: {done['message']}{tail}")


# ---------------------------------------------------------------------- sending


@app.command()
def add(
    ctx: typer.Context,
    amount: Annotated[str, typer.Argument(help="mUSD to stake: 10 or '10 mUSD'")],
    validator: Annotated[
        bool,
        typer.Option("--validator", help="also register as a validator candidate (once)"),
    ] = False,
    wallet: WalletOption = DEFAULT_WALLET,
    json_out: JsonOption = False,
) -> None:
    """Stake AMOUNT mUSD more (approving the contract as needed); --validator also
    registers the wallet as a validator candidate."""
    from .wallet import _load_wallet

    app_state = state(ctx)
    units = musd_amount(amount, "amount")
    account = _load_wallet(app_state, wallet)

    async def body() -> dict[str, Any]:
        from agentmesh.wallets.clients import TokenClient

        async with stakes(app_state, account, wallet) as s:
            me = s.client.wallet.address
            held = await TokenClient(s.client.wallet, s.terms.token).balance_of(me)
            if held < units:
                raise AgentMeshValueError(
                    f"wallet {wallet} ({me}) holds {musd(held)}: too little to stake {musd(units)}"
                )
            before = await s.client.stake_of(me)
            register = validator and not before.validator
            if register:
                registered = await s.client.validators()
                if len(registered) >= s.terms.max_validators:
                    raise AgentMeshError(
                        f"the validator list is full ({s.terms.max_validators} registered): "
                        f"wallet {wallet} cannot register; stake without --validator"
                    )
            with console.status("staking..."):
                receipt = await s.client.stake(units)
            register_tx = None
            if register:
                with console.status("registering as a validator..."):
                    register_tx = tx_hash(await s.client.register_validator())
            figures = await s.account(me)
            terms = _terms(s.terms)
            joined = (
                "; registered as a validator candidate"
                if register
                else "; already a validator candidate"
                if validator
                else ""
            )
            message = (
                f"staked {musd(units)}: active stake {musd(figures['active'])}{joined}; "
                + _standing(figures, terms)
            )
            return {
                "wallet": wallet,
                **figures,
                "staked": units,
                "registered": register,
                "min_provider_stake": terms["min_provider_stake"],
                "tx": tx_hash(receipt),
                "register_tx": register_tx,
                "message": message,
            }

    _finish(run(body()), json_out)


@app.command()
def withdraw(
    ctx: typer.Context,
    amount: Annotated[
        str | None,
        typer.Argument(help="mUSD of active stake to start unbonding (none: withdraw)"),
    ] = None,
    wallet: WalletOption = DEFAULT_WALLET,
    json_out: JsonOption = False,
) -> None:
    """With AMOUNT: start unbonding it (a new unbond restarts the delay for everything
    unbonding). Without: take back all unbonding stake once its delay is over and no
    dispute holds it."""
    from .wallet import _load_wallet

    app_state = state(ctx)
    units = None if amount is None else musd_amount(amount, "amount")
    account = _load_wallet(app_state, wallet)

    async def body() -> dict[str, Any]:
        async with stakes(app_state, account, wallet) as s:
            me = s.client.wallet.address
            info = await s.client.stake_of(me)
            if units is None:
                return await _withdraw_all(s, wallet, me, info)
            return await _unbond(s, wallet, me, info, units)

    _finish(run(body()), json_out)


async def _unbond(s: Stakes, wallet: str, me: str, info: StakeInfo, units: int) -> dict[str, Any]:
    from agentmesh.wallets.units import local_time

    if units > info.active:
        raise AgentMeshValueError(
            f"cannot unbond {musd(units)}: wallet {wallet} ({me}) has {musd(info.active)} "
            "active stake"
        )
    with console.status("unbonding..."):
        receipt = await s.client.unbond(units)
    figures = await s.account(me)
    ends = figures["unbonding_ends"]
    restarted = (
        f" (the delay restarted for all {musd(figures['unbonding'])} unbonding)"
        if info.unbonding
        else ""
    )
    message = (
        f"unbonding {musd(units)}{restarted}: withdraw it with `agentmesh stake withdraw` "
        f"from {local_time(ends)} (in {_span(ends - await s.now())}); active stake "
        f"{musd(figures['active'])}"
    )
    return {
        "wallet": wallet,
        **figures,
        "action": "unbonding",
        "amount": units,
        "tx": tx_hash(receipt),
        "message": message,
    }


async def _withdraw_all(s: Stakes, wallet: str, me: str, info: StakeInfo) -> dict[str, Any]:
    from agentmesh.wallets.units import local_time

    if info.unbonding == 0:
        active = (
            f"; start unbonding active stake ({musd(info.active)}) with "
            "`agentmesh stake withdraw AMOUNT`"
            if info.active
            else ""
        )
        raise AgentMeshError(f"nothing to withdraw: wallet {wallet} has no stake unbonding{active}")
    refusals = []
    now = await s.now()
    if now < info.unbonding_ends:  # the contract: no withdrawal before unbondingEnds
        refusals.append(
            f"its unbonding delay runs until {local_time(info.unbonding_ends)} "
            f"({_span(info.unbonding_ends - now)} left)"
        )
    if info.holds:
        held = "holds" if info.holds == 1 else "hold"
        refusals.append(f"{_holds(info.holds)} {held} it (no withdrawal until each is resolved)")
    if refusals:
        raise AgentMeshError(
            f"cannot withdraw the {musd(info.unbonding)} unbonding of wallet {wallet} yet: "
            + "; ".join(refusals)
        )
    with console.status("withdrawing..."):
        receipt = await s.client.withdraw()
    figures = await s.account(me)
    message = f"withdrew {musd(info.unbonding)}; active stake {musd(figures['active'])}"
    return {
        "wallet": wallet,
        **figures,
        "action": "withdrawn",
        "amount": info.unbonding,
        "tx": tx_hash(receipt),
        "message": message,
    }


# ---------------------------------------------------------------------- reading


@app.command()
def show(
    ctx: typer.Context,
    address: Annotated[
        str | None,
        typer.Argument(help="whose stake: an address or a wallet name (default: --wallet's)"),
    ] = None,
    wallet: WalletOption = DEFAULT_WALLET,
    json_out: JsonOption = False,
) -> None:
    """An account's stake, the contract's terms and the validators (no password needed)."""
    app_state = state(ctx)
    name, who = _whose(app_state, address, wallet)

    async def body() -> dict[str, Any]:
        async with stakes(app_state) as s:
            figures = await s.account(who)
            return {
                "wallet": name,
                **figures,
                "chain_time": await s.now(),
                "staking": s.client.address,
                "terms": _terms(s.terms),
                "validators": await s.validators(),
            }

    info = run(body())
    if json_out:
        print_json(info)
        return
    _print_show(info)


def _whose(app_state: AppState, address: str | None, wallet: str) -> tuple[str | None, str]:
    """(wallet name or None, address) of the account `show` reads: ADDRESS (an address
    or a wallet name here), else the --wallet's address (from its keystore, unlocked
    by nobody)."""
    from agentmesh.wallets.clients import checksum

    from .wallet import _keystore

    keystore = _keystore(app_state)
    if address is None:
        return wallet, keystore.entry(wallet).address
    text = address.strip()
    if text.lower().startswith("0x"):
        return None, checksum(text)
    try:
        return text, keystore.entry(text).address
    except (WalletNotFoundError, AgentMeshValueError):  # no such wallet, or no such name
        raise InvalidAddressError(
            f"invalid address {address!r}: expected 0x and 40 hex digits (or the name of a "
            f"wallet in {keystore.directory})"
        ) from None


def _print_show(info: dict[str, Any]) -> None:
    from agentmesh.wallets.units import local_time

    terms = info["terms"]
    table = Table(show_header=False, box=None)
    table.add_row(
        "account", info["address"] + (f" (wallet {info['wallet']})" if info["wallet"] else "")
    )
    table.add_row("active", musd(info["active"]))
    if info["unbonding"]:
        ends = info["unbonding_ends"]
        left = ends - info["chain_time"]
        when = f"in {_span(left)}" if left > 0 else "now"
        table.add_row(
            "unbonding", f"{musd(info['unbonding'])}, withdrawable from {local_time(ends)} ({when})"
        )
    else:
        table.add_row("unbonding", "none")
    table.add_row("holds", _holds(info["holds"]) if info["holds"] else "none")
    table.add_row("standing", _standing(info, terms))
    table.add_row("min provider stake", musd(terms["min_provider_stake"]))
    table.add_row(
        "unbonding delay", f"{terms['unbonding_delay']} s ({_span(terms['unbonding_delay'])})"
    )
    table.add_row(
        "permits",
        f"the top {terms['permits']} validators by active stake (at most "
        f"{terms['max_validators']} may register)",
    )
    table.add_row("contract", info["staking"])
    console.print(table)
    validators = info["validators"]
    if not validators:
        console.print(
            "no validators registered yet: `agentmesh stake add AMOUNT --validator` registers one"
        )
        return
    listing = Table(title=f"validators ({len(validators)} of at most {terms['max_validators']})")
    for column in ("validator", "active", "permit"):
        listing.add_column(column, no_wrap=column == "validator")
    for row in validators:
        mark = " (this account)" if row["address"] == info["address"] else ""
        listing.add_row(
            row["address"] + mark, musd(row["active"]), "yes" if row["permit"] else "no"
        )
    console.print(listing)
