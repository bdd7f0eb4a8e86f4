"""What the money pages show, as plain data: payment channels, delegated wallets with
their DeFi intents, and validator epochs. Each reads the agents' stores and the chain
through the same readers as the CLI commands (`channel list`, `delegate show`,
`defi intents`, `epoch show`)."""

from __future__ import annotations

import asyncio
from decimal import Decimal
from typing import Any

from agentmesh.cli.channel_rows import musd
from agentmesh.cli.console.chain_view import ChainUnavailable, ChainView
from agentmesh.cli.console.homes import Home
from agentmesh.errors import AgentMeshError

EPOCHS_SHOWN = 12  # the validators page charts this many finalized epochs at most
COMPOSITE_TIMEOUT_S = 15.0  # a page part made of many chain reads (a delegation, an epoch)


async def channels(home: Home, chain: ChainView) -> dict[str, Any]:
    """Every payment channel in the agents' stores: deposit, paid, claimed, state."""
    from agentmesh.cli.channel_rows import Owner, describe, session_on, side_of_row, stored_rows

    def read_stores() -> list[tuple[str, bytes, Any]]:
        stored: list[tuple[str, bytes, Any]] = []
        for path in sorted((home.path / "agents").glob("*/channels.db")):
            owner = Owner(path.parent.name, path.parent.name, path)
            rows_here = stored_rows(owner, readonly=True)
            stored.extend((owner.agent, cid, row) for cid, row in rows_here.items())
        return stored

    stored = await asyncio.to_thread(read_stores)
    rows: list[dict[str, Any]] = []
    problem = ""
    found: dict[bytes, Any] = {}
    delay = 0
    if stored:
        try:
            c = await chain.get()
            s = await chain.call(session_on(c))
            delay = s.delay
            for _, cid, _ in stored:
                found[cid] = await chain.call(s.state(cid))
        except ChainUnavailable as exc:
            problem = exc.user_message
    for agent, cid, row in stored:
        info = describe(cid, side_of_row(row), row, found.get(cid), delay)
        info["agent"] = agent
        for key in ("deposit", "paid", "claimed", "unclaimed"):
            info[f"{key}_text"] = musd(info[key])
        info["used"] = info["paid"] / info["deposit"] if info["deposit"] else 0.0
        rows.append(info)
    return {"channels": rows, "chain_problem": problem}


async def delegations(home: Home, chain: ChainView) -> dict[str, Any]:
    """Each delegated wallet of the home: its policy and caps (spent against each cap)
    and its intents with their fills, average price and P&L against holding."""
    from agentmesh.cli.defi_report import local_intents, summarize
    from agentmesh.cli.delegate import load_records

    try:
        records = await asyncio.to_thread(load_records, home.path)
    except AgentMeshError as exc:
        return {"delegations": [], "chain_problem": exc.user_message}
    shown = []
    problem = ""
    for record in records:
        entry: dict[str, Any] = {
            "wallet": record.wallet,
            "agent": record.agent,
            "owner": record.owner,
            "approval_above_text": musd(int(record.approval_above)),
            "info": None,
            "intents": [],
        }
        intents = await asyncio.to_thread(local_intents, home.path, record.wallet, readonly=True)
        try:
            entry["info"], entry["intents"] = await chain.call(
                _delegation(chain, record, intents, summarize), timeout=COMPOSITE_TIMEOUT_S
            )
        except ChainUnavailable as exc:
            problem = exc.user_message
            entry["intents"] = [_offline(i) for i in intents]
        shown.append(entry)
    return {"delegations": shown, "chain_problem": problem}


async def _delegation(
    chain: ChainView, record: Any, intents: list[dict[str, Any]], summarize: Any
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    from eth_account import Account

    from agentmesh.cli.delegate import _describe, market_of
    from agentmesh.wallets.agent_wallet import AgentWalletClient
    from agentmesh.wallets.wallet import Wallet

    c = await chain.get()
    reader = Wallet(Account.create(), c.w3)
    market = market_of(c, reader)
    wallet = AgentWalletClient(reader, record.wallet)
    info = await _describe(c, wallet, market, record)
    for token in info["tokens"]:
        token["balance_text"] = f"{market.whole(token['address'], int(token['balance']))}"
        if token["cap"]:
            cap, spent = int(token["cap"]), int(token["spent"] or 0)
            token["cap_used"] = min(spent / cap, 1.0) if cap else 0.0
            token["cap_text"] = f"{market.whole(token['address'], cap)} {token['token']}"
            token["spent_text"] = f"{market.whole(token['address'], spent)} {token['token']}"
    window = info["policy"]["twap_window_s"]
    rows = []
    for intent in intents:
        summary = await summarize(intent, market, window)
        points = summary["points"] = _price_points(intent["fills"], market)
        summary["series"] = {
            "price paid": [(p["at"], p["price"]) for p in points],
            "pool TWAP": [(p["at"], p["twap"]) for p in points],
        }
        if summary["pnl_vs_holding_musd"] is not None:
            summary["pnl_text"] = musd(int(summary["pnl_vs_holding_musd"]))
        rows.append(summary)
    return info, rows


def _offline(intent: dict[str, Any]) -> dict[str, Any]:
    """An intent as its agent's store holds it, when the chain (prices, token decimals
    of the pools) cannot be read: its fills counted, no P&L."""
    filled = [f for f in intent["fills"] if f["status"] == "filled"]
    return {
        **{k: intent[k] for k in ("id", "kind", "phase", "reason", "next_due", "fills")},
        "filled": len(filled),
        "sold": None,
        "bought": None,
        "average_price": None,
        "pnl_vs_holding_musd": None,
        "gas": sum(int(f["gas"]) for f in filled),
        "points": [],
        "series": {},
    }


def _price_points(fills: list[dict[str, Any]], market: Any) -> list[dict[str, Any]]:
    """Per filled step: chain time, the price paid and the pool's TWAP price then (both
    in whole token_in per whole token_out)."""
    points = []
    for fill in fills:
        if fill["status"] != "filled" or not int(fill["amount_out"]):
            continue
        paid_in = market.whole(fill["token_in"], int(fill["amount_in"]))
        got = market.whole(fill["token_out"], int(fill["amount_out"]))
        twap_got = market.whole(fill["token_out"], int(fill["twap_out"] or 0))
        points.append(
            {
                "at": fill["at"],
                "price": float(paid_in / got),
                "twap": float(paid_in / twap_got) if twap_got > Decimal(0) else None,
                "unit": f"{market.symbol(fill['token_in'])}/{market.symbol(fill['token_out'])}",
            }
        )
    return points


async def validators(home: Home, chain: ChainView) -> dict[str, Any]:
    """The last finalized epochs: per provider, consensus score and incentive; per
    validator, stake and reward."""
    from agentmesh.cli.validation import epoch_report, readers_on

    try:
        c = await chain.get()
        if "Consensus" not in c.deployment.contracts:
            return {"epochs": [], "providers": [], "score_series": {}, "chain_problem": ""}
        r = readers_on(c)
        current = await chain.call(r.consensus.current_epoch())
        events = await chain.call(
            r.consensus.contract.events.Finalized().get_logs(from_block=c.deployment.block_number),
            timeout=COMPOSITE_TIMEOUT_S,
        )
        finalized = sorted({int(e["args"]["epoch"]) for e in events})[-EPOCHS_SHOWN:]
        epochs = [
            await chain.call(epoch_report(r, n, current), timeout=COMPOSITE_TIMEOUT_S)
            for n in finalized
        ]
    except (ChainUnavailable, AgentMeshError) as exc:
        return {
            "epochs": [],
            "providers": [],
            "score_series": {},
            "chain_problem": exc.user_message,
        }
    providers = sorted({p["address"] for e in epochs for p in e["providers"]})
    for epoch in epochs:
        epoch["pool_text"] = musd(epoch["pool"])
        for p in epoch["providers"]:
            p["reward_text"] = musd(p["reward"])
        for v in epoch["validators"]:
            v["stake_text"] = musd(v["stake"])
            v["reward_text"] = musd(v["reward"])
    series = {
        f"{p[:8]}…": [
            (e["epoch"], next((q["score"] for q in e["providers"] if q["address"] == p), None))
            for e in epochs
        ]
        for p in providers
    }
    return {
        "epochs": epochs,
        "providers": providers,
        "score_series": series,
        "current_epoch": current,
        "chain_problem": "",
    }
