"""`agentmesh delegate`: a person hands an agent a bounded AgentWallet.

`create` deploys an AgentWallet owned by the person's wallet and operated by the agent's
key, sets every rule (caps, token list, router, slippage against the TWAP, TWAP window,
deadline bound, expiry), funds it, and records it in ``<home>/delegations/``; `show`
reads it all back from the chain; `pause`, `resume`, `revoke` and `withdraw` are the
owner's levers.
"""

from __future__ import annotations

import re
import time
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from pydantic import BaseModel, ConfigDict
from rich.table import Table

from agentmesh.errors import AgentMeshValueError

from .context import AppState, JsonOption, console, print_json, run, state

if TYPE_CHECKING:
    from agentmesh.wallets.agent_wallet import AgentWalletClient
    from agentmesh.wallets.chain import Chain
    from agentmesh.wallets.uniswap import UniswapMarket

app = typer.Typer(help="Delegate a bounded on-chain wallet to a DeFi agent.", no_args_is_help=True)

_DURATION = re.compile(r"^(\d+)\s*(s|m|h|d)$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_duration(text: str, what: str) -> int:
    """``30m``, ``1h``, ``7d`` -> seconds; a clear error otherwise."""
    match = _DURATION.match(text.strip())
    if match is None:
        raise AgentMeshValueError(f"invalid {what} {text!r}: use a number and s, m, h or d (1h)")
    return int(match.group(1)) * _UNITS[match.group(2)]


def parse_bps(text: str, what: str) -> int:
    """``1%`` or ``0.5%`` -> basis points."""
    try:
        value = Decimal(text.strip().removesuffix("%"))
    except ArithmeticError:
        raise AgentMeshValueError(f"invalid {what} {text!r}: use a percentage such as 1%") from None
    bps = value * 100
    if not value.is_finite() or bps != int(bps) or not 1 <= bps <= 5000:
        raise AgentMeshValueError(f"invalid {what} {text!r}: from 0.01% to 50%, in 0.01% steps")
    return int(bps)


class DelegationRecord(BaseModel):
    """What this home remembers of a delegation (the chain holds the rules)."""

    model_config = ConfigDict(extra="forbid")

    wallet: str
    owner: str  # the owner's wallet name in this home
    owner_address: str
    agent: str
    chain_id: int
    created: int
    slippage_bps: int  # the default for this delegation's intents
    approval_above: str  # mUSD base units; "0": no approval needed


def records_dir(home: Path) -> Path:
    return home / "delegations"


def save_record(home: Path, record: DelegationRecord) -> Path:
    folder = records_dir(home)
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    path = folder / f"{record.wallet}.json"
    path.write_text(record.model_dump_json(indent=1) + "\n")
    return path


def load_records(home: Path) -> list[DelegationRecord]:
    folder = records_dir(home)
    if not folder.is_dir():
        return []
    records = []
    for path in sorted(folder.glob("*.json")):
        try:
            records.append(DelegationRecord.model_validate_json(path.read_text()))
        except ValueError as exc:
            raise AgentMeshValueError(f"delegation record {path} is unreadable: {exc}") from None
    return records


def find_record(home: Path, wallet: str | None) -> DelegationRecord:
    """The delegation named by ``wallet`` (an address, or a unique prefix), or the only
    one in this home."""
    records = load_records(home)
    if wallet is None:
        if len(records) == 1:
            return records[0]
        if not records:
            raise AgentMeshValueError("no delegation in this home: run `agentmesh delegate create`")
        raise AgentMeshValueError(
            f"{len(records)} delegations in this home: name one with --wallet "
            f"({', '.join(r.wallet for r in records)})"
        )
    matches = [r for r in records if r.wallet.lower().startswith(wallet.lower())]
    if len(matches) != 1:
        raise AgentMeshValueError(f"no single delegation matches {wallet!r} in this home")
    return matches[0]


async def require_wallet(chain: Chain, record: DelegationRecord) -> None:
    """A clear error when the recorded AgentWallet is not on this chain (a reset devnet)."""
    from web3 import AsyncWeb3

    code = await chain.w3.eth.get_code(AsyncWeb3.to_checksum_address(record.wallet))
    if len(code) == 0:
        raise AgentMeshValueError(
            f"no AgentWallet at {record.wallet} on this chain (was the devnet reset?): "
            "run `agentmesh delegate create` again"
        )


def market_of(chain: Chain, reader: Any) -> UniswapMarket:
    from agentmesh.wallets.uniswap import UniswapMarket

    exchange = chain.deployment.exchange
    if exchange is None:
        raise AgentMeshValueError(
            "this chain has no Uniswap V2: run `make setup`, then `agentmesh devnet up`"
        )
    return UniswapMarket(reader, exchange)


def _cap_options(caps: list[str], market: UniswapMarket) -> dict[str, int]:
    parsed: dict[str, int] = {}
    for item in caps:
        symbol, sep, amount = item.partition("=")
        if not sep:
            raise AgentMeshValueError(f"invalid --cap {item!r}: use TOKEN=AMOUNT (mUSD=100)")
        from agentmesh.wallets.units import parse_amount

        token = market.address(symbol)
        parsed[token] = parse_amount(amount, market.decimals(token), symbol=symbol)
        if parsed[token] >= 2**128:
            raise AgentMeshValueError(f"invalid --cap {item!r}: too large")
    return parsed


@app.command()
def create(
    ctx: typer.Context,
    owner: Annotated[str, typer.Option(help="the person's wallet (a name in this home)")],
    agent: Annotated[str, typer.Option(help="the agent's address (or wallet name)")],
    fund: Annotated[str, typer.Option(help="mUSD to put in the wallet")] = "0",
    cap: Annotated[
        list[str] | None,
        typer.Option(help="daily cap TOKEN=AMOUNT, one per listed token (mUSD=100 WETH=0.05)"),
    ] = None,
    tokens: Annotated[str, typer.Option(help="tokens a swap may touch")] = "mUSD,WETH",
    slippage: Annotated[str, typer.Option(help="worst price vs the TWAP")] = "1%",
    window: Annotated[str, typer.Option(help="TWAP window")] = "30m",
    max_delay: Annotated[str, typer.Option(help="furthest swap deadline")] = "10m",
    expires: Annotated[str, typer.Option(help="the delegation ends after")] = "30d",
    approve_above: Annotated[
        str, typer.Option(help="trades worth more (mUSD) wait for `agentmesh approve`; 0: none")
    ] = "0",
    json_out: JsonOption = False,
) -> None:
    """Deploy an AgentWallet for AGENT under your rules, and fund it."""
    from agentmesh.wallets.agent_wallet import CapMode, SwapPolicy
    from agentmesh.wallets.clients import TokenClient
    from agentmesh.wallets.delegation import Cap, DelegationTerms, create_delegation
    from agentmesh.wallets.units import MUSD_DECIMALS, parse_amount

    from .wallet import _load_wallet, _resolve_address

    app_state = state(ctx)
    slippage_bps = parse_bps(slippage, "--slippage")
    window_s = parse_duration(window, "--window")
    delay_s = parse_duration(max_delay, "--max-delay")
    expires_s = parse_duration(expires, "--expires")
    for value, what in ((window_s, "--window"), (delay_s, "--max-delay")):
        if value >= 2**32:
            raise AgentMeshValueError(f"invalid {what}: at most {2**32 - 1} seconds")
    if expires_s > 100 * 365 * 86400:
        raise AgentMeshValueError("invalid --expires: at most 100 years")
    fund_units = parse_amount(fund, MUSD_DECIMALS, symbol="mUSD")
    threshold = parse_amount(approve_above, MUSD_DECIMALS, symbol="mUSD")
    agent_address = _resolve_address(app_state, agent)
    account = _load_wallet(app_state, owner)

    async def body() -> dict[str, Any]:
        from agentmesh.wallets.chain import open_chain
        from agentmesh.wallets.wallet import Wallet

        async with open_chain(app_state.home, app_state.config, allow_embedded=False) as chain:
            person = Wallet(account, chain.w3, name=owner)
            market = market_of(chain, person)
            exchange = chain.deployment.exchange
            assert exchange is not None and exchange.oracle is not None
            allowed = tuple(market.address(t.strip()) for t in tokens.split(",") if t.strip())
            caps = _cap_options(cap or ["mUSD=100", "WETH=0.05"], market)
            uncapped = [market.symbol(t) for t in allowed if t not in caps]
            if uncapped:
                # An uncapped token could be traded away all day, a slippage at a time.
                raise AgentMeshValueError(
                    f"every token the agent may trade needs a daily cap: add --cap "
                    f"{uncapped[0]}=AMOUNT"
                )
            if (
                fund_units
                and await TokenClient(person, chain.token_address).balance_of(person.address)
                < fund_units
            ):
                raise AgentMeshValueError(f"{owner} holds less than {fund} mUSD to fund it")
            low, high = await market.oracle.window_range()
            if not low <= window_s <= high:
                raise AgentMeshValueError(
                    f"invalid --window {window}: the oracle averages over {low // 60} to "
                    f"{high // 60} minutes"
                )
            now = int((await chain.w3.eth.get_block("latest"))["timestamp"])
            terms = DelegationTerms(
                agent=agent_address,
                router=exchange.router,
                tokens=allowed,
                caps={t: Cap(limit, CapMode.DAILY) for t, limit in caps.items()},
                policy=SwapPolicy(
                    oracle=exchange.oracle,
                    twap_window=window_s,
                    max_deadline_delay=delay_s,
                    max_slippage_bps=slippage_bps,
                    max_path_length=3,
                ),
                valid_until=now + expires_s,
            )
            with console.status("deploying the wallet and setting its rules..."):
                wallet = await create_delegation(person, terms)
                if fund_units:
                    await TokenClient(person, chain.token_address).transfer(
                        wallet.address, fund_units
                    )
            record = DelegationRecord(
                wallet=wallet.address,
                owner=owner,
                owner_address=person.address,
                agent=agent_address,
                chain_id=chain.deployment.chain_id,
                created=int(time.time()),
                slippage_bps=slippage_bps,
                approval_above=str(threshold),
            )
            save_record(app_state.home, record)
            return await _describe(chain, wallet, market, record)

    info = run(body())
    if json_out:
        print_json(info)
        return
    console.print(f"delegated wallet [bold]{info['wallet']}[/] to agent {info['agent']}")
    _show(info)


async def _describe(
    chain: Chain, wallet: AgentWalletClient, market: UniswapMarket, record: DelegationRecord
) -> dict[str, Any]:
    """Everything `delegate show` prints, read from the chain."""
    policy = await wallet.swap_policy()
    tokens: list[dict[str, Any]] = []
    total = 0
    musd = market.address("mUSD")
    for symbol, address in market.exchange.tokens.items():
        held = await market.balance(address, wallet.address)
        limit, mode = await wallet.cap_of(address)
        spent, remaining = await wallet.spendable(address)
        value = held
        if held and address.lower() != musd.lower():
            try:
                value = await market.twap_out(market.route(address, musd), held, policy.twap_window)
            except Exception:  # noqa: BLE001 - no TWAP yet: value unknown, said as such
                value = -1
        if value > 0:
            total += value
        tokens.append(
            {
                "token": symbol,
                "address": address,
                "decimals": market.decimals(address),
                "allowed": await wallet.is_swap_token(address),
                "balance": str(held),
                "value_musd": str(value) if value >= 0 else None,
                "cap": str(limit) if mode != 0 else None,
                "spent": str(spent) if mode != 0 else None,
                "remaining": str(remaining) if mode != 0 else None,
            }
        )
    return {
        "wallet": wallet.address,
        "owner": record.owner,
        "owner_address": record.owner_address,
        "agent": await wallet.agent(),
        "paused": await wallet.paused(),
        "valid_until": await wallet.valid_until(),
        "policy": {
            "oracle": policy.oracle,
            "twap_window_s": policy.twap_window,
            "max_deadline_delay_s": policy.max_deadline_delay,
            "max_slippage_bps": policy.max_slippage_bps,
            "max_path_length": policy.max_path_length,
            "router": market.router,
            "router_registered": await wallet.is_router(market.router),
        },
        "approval_above": record.approval_above,
        "tokens": tokens,
        "value_musd": str(total),
    }


def _show(info: dict[str, Any]) -> None:
    from agentmesh.wallets.units import MUSD_DECIMALS, format_amount, local_time

    policy = info["policy"]
    table = Table(show_header=False, box=None)
    table.add_row("wallet", info["wallet"])
    table.add_row("owner", f"{info['owner']} {info['owner_address']}")
    agent = info["agent"]
    revoked = int(agent, 16) == 0
    table.add_row("agent", "[red]revoked[/]" if revoked else agent)
    table.add_row("paused", "[yellow]yes[/]" if info["paused"] else "no")
    table.add_row("valid until", local_time(info["valid_until"]))
    table.add_row(
        "swaps",
        f"router {policy['router']}, at most {policy['max_slippage_bps'] / 100:g}% under the "
        f"{policy['twap_window_s'] // 60}-minute TWAP, deadline within "
        f"{policy['max_deadline_delay_s']} s, paths of at most {policy['max_path_length']} tokens",
    )
    threshold = int(info["approval_above"])
    table.add_row(
        "approval",
        f"trades over {format_amount(threshold, MUSD_DECIMALS, 'mUSD')}" if threshold else "none",
    )
    table.add_row("value at TWAP", format_amount(int(info["value_musd"]), MUSD_DECIMALS, "mUSD"))
    console.print(table)
    tokens = Table(title="tokens")
    for column in ("token", "on the list", "balance", "cap (day)", "spent", "remaining"):
        tokens.add_column(column)
    for row in info["tokens"]:
        tokens.add_row(
            row["token"],
            "yes" if row["allowed"] else "no",
            *(
                "-" if row[key] is None else format_amount(int(row[key]), row["decimals"])
                for key in ("balance", "cap", "spent", "remaining")
            ),
        )
    console.print(tokens)


@app.command()
def show(
    ctx: typer.Context,
    wallet: Annotated[
        str | None, typer.Argument(help="the AgentWallet (address or prefix)")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Policy, spent and remaining in the window, balances and value at TWAP."""
    app_state = state(ctx)
    record = find_record(app_state.home, wallet)

    async def body() -> dict[str, Any]:
        from eth_account import Account

        from agentmesh.wallets.agent_wallet import AgentWalletClient
        from agentmesh.wallets.chain import open_chain
        from agentmesh.wallets.wallet import Wallet

        async with open_chain(app_state.home, app_state.config, allow_embedded=False) as chain:
            await require_wallet(chain, record)
            reader = Wallet(Account.create(), chain.w3)  # reads only: no key is unlocked
            client = AgentWalletClient(reader, record.wallet)
            return await _describe(chain, client, market_of(chain, reader), record)

    info = run(body())
    if json_out:
        print_json(info)
        return
    _show(info)


def _owner_call(ctx: typer.Context, wallet: str | None, action: str) -> dict[str, Any]:
    """Run one of the owner's levers with the owner's key; returns what happened."""
    app_state: AppState = state(ctx)
    record = find_record(app_state.home, wallet)
    from .wallet import _load_wallet

    account = _load_wallet(app_state, record.owner)

    async def body() -> dict[str, Any]:
        from agentmesh.wallets.agent_wallet import AgentWalletClient
        from agentmesh.wallets.chain import open_chain
        from agentmesh.wallets.wallet import Wallet

        async with open_chain(app_state.home, app_state.config, allow_embedded=False) as chain:
            client = AgentWalletClient(Wallet(account, chain.w3, name=record.owner), record.wallet)
            receipt = await getattr(client, action)()
            return {
                "wallet": record.wallet,
                "action": action,
                "tx": "0x" + bytes(receipt["transactionHash"]).hex(),
            }

    return run(body())


def _lever(action: str, words: str) -> Any:
    def command(
        ctx: typer.Context,
        wallet: Annotated[str | None, typer.Argument(help="the AgentWallet")] = None,
        json_out: JsonOption = False,
    ) -> None:
        done = _owner_call(ctx, wallet, action)
        if json_out:
            print_json(done)
            return
        console.print(f"{words} {done['wallet']} (tx {done['tx']})")

    command.__doc__ = f"{words.capitalize()} the wallet (the owner's key signs)."
    return command


app.command("pause")(_lever("pause", "paused"))
app.command("resume")(_lever("unpause", "resumed"))
app.command("revoke")(_lever("revoke_agent", "revoked the agent of"))


@app.command()
def withdraw(
    ctx: typer.Context,
    wallet: Annotated[str | None, typer.Argument(help="the AgentWallet")] = None,
    token: Annotated[str, typer.Option(help="token symbol")] = "mUSD",
    amount: Annotated[str, typer.Option(help="whole units, or 'all'")] = "all",
    json_out: JsonOption = False,
) -> None:
    """Take funds out of the wallet to the owner (unconstrained by the agent's rules)."""
    app_state = state(ctx)
    record = find_record(app_state.home, wallet)
    from .wallet import _load_wallet

    account = _load_wallet(app_state, record.owner)

    async def body() -> dict[str, Any]:
        from agentmesh.wallets.agent_wallet import AgentWalletClient
        from agentmesh.wallets.chain import open_chain
        from agentmesh.wallets.units import parse_amount
        from agentmesh.wallets.wallet import Wallet

        async with open_chain(app_state.home, app_state.config, allow_embedded=False) as chain:
            person = Wallet(account, chain.w3, name=record.owner)
            market = market_of(chain, person)
            address = market.address(token)
            held = await market.balance(address, record.wallet)
            units = (
                held
                if amount == "all"
                else parse_amount(amount, market.decimals(address), symbol=token)
            )
            if units > held:
                raise AgentMeshValueError(
                    f"the wallet holds {market.whole(address, held)} {token}, not {amount}"
                )
            client = AgentWalletClient(person, record.wallet)
            receipt = await client.withdraw(address, person.address, units)
            return {
                "wallet": record.wallet,
                "token": token,
                "amount": str(units),
                "to": person.address,
                "tx": "0x" + bytes(receipt["transactionHash"]).hex(),
            }

    done = run(body())
    if json_out:
        print_json(done)
        return
    console.print(f"withdrew {done['amount']} base units of {token} to {done['to']}")
