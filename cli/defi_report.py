"""What `agentmesh defi intents` reads and prints: the intents a DeFi agent of this home
holds for one delegated wallet (its ``defi.db``), with their fills, the average price
paid, and the P&L against just holding what was sold (both valued at the pools' TWAP
now, in mUSD)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.table import Table

from agentmesh.errors import AgentMeshValueError

from .context import AppState, console
from .delegate import DelegationRecord, market_of, require_wallet

if TYPE_CHECKING:
    from agentmesh.wallets.uniswap import UniswapMarket


def _stores(home: Path) -> list[Path]:
    return sorted((home / "agents").glob("*/defi.db"))


def local_intents(home: Path, wallet: str, *, readonly: bool = False) -> list[dict[str, Any]]:
    """Every intent for ``wallet`` in the DeFi agents' stores of this home, with fills."""
    from agentmesh.agents.defi_store import DefiStore

    found: list[dict[str, Any]] = []
    for path in _stores(home):
        store = DefiStore(path, readonly=readonly)
        try:
            for row in store.intents():
                if row.wallet.lower() != wallet.lower():
                    continue
                found.append(
                    {
                        "id": row.id,
                        "kind": row.kind,
                        "phase": row.phase,
                        "reason": row.reason,
                        "next_due": row.next_due,
                        "intent": json.loads(row.body),
                        "fills": [f.model_dump() for f in store.fills(row.id)],
                    }
                )
        finally:
            store.close()
    return found


def find_intent(app_state: AppState, record: DelegationRecord, prefix: str) -> dict[str, Any]:
    matches = [
        i
        for i in local_intents(app_state.home, record.wallet)
        if i["id"].startswith(prefix.lower())
    ]
    if len(matches) != 1:
        raise AgentMeshValueError(
            f"no single intent of wallet {record.wallet[:10]} matches {prefix!r} in this home"
        )
    return matches[0]


async def _value(market: UniswapMarket, token: str, amount: int, window: int) -> int | None:
    """``amount`` of ``token`` in mUSD base units at the TWAP (None: no TWAP now)."""
    musd = market.address("mUSD")
    if amount == 0 or token.lower() == musd.lower():
        return amount
    try:
        return await market.twap_out(market.route(token, musd), amount, window)
    except Exception:  # noqa: BLE001 - a pool without a TWAP yet: the P&L is unknown
        return None


async def summarize(intent: dict[str, Any], market: UniswapMarket, window: int) -> dict[str, Any]:
    """Fills, average price and P&L of one intent."""
    filled = [f for f in intent["fills"] if f["status"] == "filled"]
    per_pair: dict[tuple[str, str], list[int]] = {}
    for fill in filled:
        # Each step records what it sold and bought (a rebalance's vary step by step).
        sums = per_pair.setdefault((fill["token_in"], fill["token_out"]), [0, 0])
        sums[0] += int(fill["amount_in"])
        sums[1] += int(fill["amount_out"])
    average = pnl = None
    sold = bought = None
    if len(per_pair) == 1:
        ((token_in, token_out), (total_in, total_out)) = next(iter(per_pair.items()))
        if total_out:
            average = market.whole(token_in, total_in) / market.whole(token_out, total_out)
        held, now = (
            await _value(market, token_in, total_in, window),
            await _value(market, token_out, total_out, window),
        )
        if held is not None and now is not None:
            pnl = now - held
        sold = f"{market.whole(token_in, total_in)} {market.symbol(token_in)}"
        bought = f"{market.whole(token_out, total_out)} {market.symbol(token_out)}"
        average_text = (
            f"{average:.6g} {market.symbol(token_in)}/{market.symbol(token_out)}"
            if average is not None
            else None
        )
    else:
        average_text = None
    return {
        **{k: intent[k] for k in ("id", "kind", "phase", "reason", "next_due")},
        "fills": intent["fills"],
        "filled": len(filled),
        "sold": sold,
        "bought": bought,
        "average_price": average_text,
        "pnl_vs_holding_musd": str(pnl) if pnl is not None else None,
        "gas": sum(int(f["gas"]) for f in filled),
    }


async def intents_report(app_state: AppState, record: DelegationRecord) -> dict[str, Any]:
    from eth_account import Account

    from agentmesh.wallets.agent_wallet import AgentWalletClient
    from agentmesh.wallets.chain import open_chain
    from agentmesh.wallets.wallet import Wallet

    found = local_intents(app_state.home, record.wallet)
    async with open_chain(app_state.home, app_state.config, allow_embedded=False) as chain:
        await require_wallet(chain, record)
        reader = Wallet(Account.create(), chain.w3)
        market = market_of(chain, reader)
        window = (await AgentWalletClient(reader, record.wallet).swap_policy()).twap_window
        rows = [await summarize(i, market, window) for i in found]
    return {"wallet": record.wallet, "agent": record.agent, "intents": rows}


def print_intents(report: dict[str, Any]) -> None:
    from agentmesh.wallets.units import MUSD_DECIMALS, format_amount

    if not report["intents"]:
        console.print(
            f"no intents for {report['wallet']} in this home yet: give one with "
            "`agentmesh defi swap|dca|limit|stop|rebalance` or `agentmesh defi ask`"
        )
        return
    table = Table(title=f"intents of {report['wallet']}")
    for column in ("id", "kind", "state", "fills", "sold", "bought", "avg price", "P&L", "note"):
        table.add_column(column)
    for row in report["intents"]:
        pnl = row["pnl_vs_holding_musd"]
        pnl_text = "-"
        if pnl is not None:
            value = int(pnl)
            sign = "+" if value >= 0 else "-"
            pnl_text = f"{sign}{format_amount(abs(value), MUSD_DECIMALS, 'mUSD')}"
        refused = [f for f in row["fills"] if f["status"] in ("refused", "skipped")]
        table.add_row(
            row["id"][:10],
            row["kind"],
            row["phase"],
            f"{row['filled']}" + (f" (+{len(refused)} not)" if refused else ""),
            row["sold"] or "-",
            row["bought"] or "-",
            row["average_price"] or "-",
            pnl_text,
            row["reason"][:60],
        )
    console.print(table)
