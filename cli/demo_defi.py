"""`agentmesh demo defi`: a person delegates a bounded wallet and an agent trades for
them on real Uniswap V2, on a throw-away devnet whose clock the demo moves.

1. A devnet with Uniswap V2 and its TWAP oracle; the pools trade for a while (the
   oracle's window fills).
2. Alice delegates 100 mUSD (daily cap 100 mUSD, tokens mUSD and WETH, 1% under the
   10-minute TWAP at worst) to a DeFi agent process: `agentmesh delegate create`.
3. She asks in words (`agentmesh defi ask`, the local model, then the rules): a DCA
   ("buy 20 mUSD of WETH every hour for 3 hours") and, holding WETH, a stop ("sell half
   my WETH if it falls below 1,950").
4. A scripted trader dumps WETH; the chain's clock moves five minutes at a time. The
   agent fills the DCA periods and, once the TWAP has crossed, the stop.
5. Attempts outside the policy are refused by the wallet contract, each with its rule.
6. Fills, the policy's spend, gas, and a conservation check per token across Alice, the
   wallet, the agent, the trader and the pools (before = after).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.table import Table

from agentmesh.cli.console.homes import demo_home
from agentmesh.errors import AgentMeshError, PolicyViolation

from .context import console, err_console, print_json
from .demo import AgentProcess, _spawn, _wait_ready

PERSON, AGENT = "alice", "defi-bot"
DCA_SENTENCE = "buy 20 mUSD of WETH every hour for 3 hours"
STOP_SENTENCE = "sell half my WETH if it falls below 1,950"
STEP_S = 300  # the clock moves one oracle period at a time
MAX_STEPS = 48  # four hours of chain time at most
TRADER_DUMP_WETH = 6


def _cli(home: Path, env: dict[str, str], *args: str) -> dict[str, Any]:
    """Run an `agentmesh` command as the person would; its --json answer."""
    done = subprocess.run(
        [sys.executable, "-m", "agentmesh.cli.app", "--home", str(home), *args, "--json"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise AgentMeshError(
            f"`agentmesh {' '.join(args)}` failed: {done.stderr.strip()[-400:] or done.stdout}"
        )
    return dict(json.loads(done.stdout))


@dataclass
class Stage:
    """A throw-away devnet with Uniswap V2, a person's delegation to a running DeFi agent
    process, and a trader; what the demo and ``bench/defi_bench.py`` play on."""

    home: Path
    env: dict[str, str]  # the keystores' password, for `agentmesh` commands
    chain: Any
    market: Any  # UniswapMarket, reading as the faucet
    keystore: Any
    password: str
    person: str
    agent_address: str
    trader: Any  # Wallet
    oracle: Any  # TwapOracleClient, sending as the trader
    wallet: str  # the AgentWallet
    agent_process: AgentProcess
    holders: dict[str, str]

    @property
    def store_path(self) -> Path:
        return self.home / "agents" / AGENT / "defi.db"

    async def tick(self, seconds: int) -> int:
        """The clock moves; the trader (any keeper) records this period; chain time."""
        provider: Any = self.chain.w3.provider
        await provider.make_request("evm_increaseTime", [seconds])
        await provider.make_request("evm_mine", [])
        now = int((await self.chain.w3.eth.get_block("latest"))["timestamp"])
        await self.oracle.update_pools(self.market.exchange)
        return now


@contextlib.asynccontextmanager
async def stage(
    out: Any, *, fund: int = 100, cap: int = 100, folder: Path | None = None
) -> AsyncIterator[Stage]:
    """Set the stage (see ``Stage``); the devnet, the agent and the owner's wallet agent
    stop on exit."""
    from eth_account import Account
    from web3.types import Wei

    from agentmesh.agents.control import stop_wallet_agents
    from agentmesh.config import Config, DevnetConfig, WalletConfig
    from agentmesh.wallets.chain import open_chain
    from agentmesh.wallets.clients import TokenClient, checksum
    from agentmesh.wallets.deployer import dev_deployer
    from agentmesh.wallets.keystore import Keystore
    from agentmesh.wallets.oracle import TwapOracleClient
    from agentmesh.wallets.uniswap import UniswapMarket
    from agentmesh.wallets.wallet import Wallet

    scrypt_n = 2**14
    # A throw-away folder, or the demo's own (kept for `agentmesh ui`).
    kept = contextlib.nullcontext(folder) if folder is not None else None
    with kept or tempfile.TemporaryDirectory(prefix="agentmesh-defi-") as where:
        home = Path(where)
        config = Config(
            devnet=DevnetConfig(dev_account_musd=0), wallet=WalletConfig(scrypt_n=scrypt_n)
        )
        async with contextlib.AsyncExitStack() as stack:
            with out.status("starting a devnet with Uniswap V2..."):
                chain = await stack.enter_async_context(open_chain(home, config))
            exchange = chain.deployment.exchange
            if exchange is None or exchange.oracle is None:
                raise AgentMeshError(
                    "no Uniswap V2 on the devnet: run `make setup` (it installs the pinned "
                    "@uniswap packages), then try again"
                )
            chain.deployment.save(home / "deployments" / f"{chain.deployment.chain_id}.json")
            (home / "config.toml").write_text(
                f'[chain]\nrpc_url = "{chain.rpc_url}"\n[wallet]\nscrypt_n = {scrypt_n}\n'
                "[agent]\nfaucet = false\n[mesh]\nheartbeat_s = 0.5\n"
            )
            faucet = dev_deployer(chain.w3)
            market = UniswapMarket(faucet, exchange)
            password = secrets.token_urlsafe(16)
            keystore = Keystore(home, scrypt_n=scrypt_n)
            person = keystore.create(PERSON, password).address
            agent_address = keystore.create(AGENT, password).address
            trader = Wallet(Account.create(), chain.w3, name="trader")
            for address in (person, agent_address):
                await faucet.send({"to": address, "value": Wei(10**19)})
            await faucet.send({"to": trader.address, "value": Wei(50 * 10**18)})
            musd = market.address("mUSD")
            await TokenClient(faucet, musd).mint(person, fund * 10**6)
            await TokenClient(faucet, musd).mint(trader.address, 10_000 * 10**6)
            weth = chain.w3.eth.contract(address=checksum(market.address("WETH")), abi=_weth_abi())
            await trader.transact(weth.functions.deposit(), value=20 * 10**18)
            env = {"AGENTMESH_PASSWORD": password}
            created = await asyncio.to_thread(
                _cli, home, env, "delegate", "create", "--owner", PERSON, "--agent",
                agent_address, "--fund", str(fund), "--cap", f"mUSD={cap}", "--cap", "WETH=1",
                "--tokens", "mUSD,WETH", "--window", "10m",
            )  # fmt: skip
            holders = {
                PERSON: person,
                AGENT: agent_address,
                "trader": trader.address,
                "AgentWallet": created["wallet"],
                **{f"pool {n}": a for n, a in exchange.pairs.items()},
            }
            agent_process = _spawn(home, AGENT, "agentmesh.agents.defi_agent", env)
            the_stage = Stage(
                home=home,
                env=env,
                chain=chain,
                market=market,
                keystore=keystore,
                password=password,
                person=person,
                agent_address=agent_address,
                trader=trader,
                oracle=TwapOracleClient(trader, exchange.oracle),
                wallet=created["wallet"],
                agent_process=agent_process,
                holders=holders,
            )

            def stop_all() -> None:
                stop_wallet_agents(home)
                _stop(the_stage.agent_process)  # the one running now (a test may restart it)

            stack.callback(stop_all)
            with out.status("the pools trade for a while (the TWAP window fills)..."):
                for _ in range(3):
                    await the_stage.tick(STEP_S)
            with out.status("starting the DeFi agent..."):
                await _wait_ready(agent_process)
            yield the_stage


async def _demo(app_home: Path, timeout: float, json_out: bool) -> dict[str, Any]:
    out = err_console if json_out else console
    started = time.monotonic()
    async with stage(out, folder=demo_home(app_home, "defi")) as st:
        out.print(f"[green]✓[/] devnet {st.chain.rpc_url}: Uniswap V2, WETH at 2,000 mUSD")
        out.print(
            f"[green]✓[/] {PERSON} delegated 100 mUSD to {AGENT} through AgentWallet "
            f"{st.wallet} (cap 100 mUSD a day, mUSD and WETH only, 1% under the TWAP)"
        )
        before = await _holdings(st.market, st.holders)
        dca_id = await _ask(st, out, DCA_SENTENCE)
        await _until(lambda: _filled(st.store_path, dca_id) >= 1, 60, st.agent_process)
        stop_id = await _ask(st, out, STOP_SENTENCE)
        refused = await _outside_policy(st)
        for attempt in refused:
            out.print(
                f"[green]✓[/] refused by the contract: {attempt['attempt']}: "
                f"{attempt['error']} ({attempt['rule']})"
            )
        await _dump(st, TRADER_DUMP_WETH)
        out.print(
            f"[yellow]![/] the trader sells {TRADER_DUMP_WETH} WETH: spot "
            f"{await _spot(st.market)} mUSD"
        )
        with out.status("the market moves, five minutes at a time...") as status:
            for step in range(MAX_STEPS):
                if time.monotonic() - started > timeout:
                    raise AgentMeshError(f"the demo did not finish within {timeout:g}s")
                now = await st.tick(STEP_S)
                await _until(lambda n=now: _settled(st.store_path, n), 30, st.agent_process)
                status.update(
                    f"chain time +{(step + 1) * STEP_S // 60} min: "
                    f"DCA {_filled(st.store_path, dca_id)}/3 filled, stop "
                    f"{'filled' if _filled(st.store_path, stop_id) else 'waiting'}"
                )
                if _done(st.store_path, (dca_id, stop_id)):
                    break
        report = await _report(st, before, refused, (dca_id, stop_id))
    report["seconds"] = round(time.monotonic() - started, 1)
    return report


async def _ask(st: Stage, out: Any, sentence: str) -> str:
    """The person asks in words (`agentmesh defi ask --yes`); the intent's id."""
    with out.status(f'{PERSON} asks: "{sentence}" (local model)...'):
        answer = await asyncio.to_thread(_cli, st.home, st.env, "defi", "ask", sentence, "--yes")
    out.print(f'[green]✓[/] "{sentence}" -> {_said(answer["intent"], st.market)}')
    return str(answer["state"]["intent_id"])


def _weth_abi() -> list[dict[str, Any]]:
    from agentmesh.wallets.exchange import npm_artifact

    return npm_artifact("WETH9").abi


def _stop(process: AgentProcess) -> None:
    if process.process.poll() is None:
        process.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.process.wait(20)
        if process.process.poll() is None:
            process.process.kill()


def _said(intent: dict[str, Any], market: Any) -> str:
    """An intent in a few words (what was signed)."""
    kind = intent["kind"]
    if kind == "dca":
        amount = market.whole(intent["token_in"], int(intent["amount_per_period"]))
        return (
            f"DCA: {amount} {market.symbol(intent['token_in'])} into "
            f"{market.symbol(intent['token_out'])} every {intent['period_s'] // 60} min, "
            f"{intent['periods']} times"
        )
    if kind in ("stop", "limit"):
        sold = intent["base"] if intent["side"] == "sell" else intent["quote"]
        return (
            f"{kind}: {intent['side']} {market.whole(sold, int(intent['amount']))} "
            f"{market.symbol(sold)} when the TWAP of {market.symbol(intent['base'])} crosses "
            f"{intent['price']} {market.symbol(intent['quote'])}"
        )
    return str(kind)


def _store_rows(path: Path) -> tuple[list[Any], dict[str, list[Any]]]:
    from agentmesh.agents.defi_store import DefiStore

    if not path.exists():
        return [], {}
    store = DefiStore(path)
    try:
        intents = store.intents()
        return intents, {row.id: store.fills(row.id) for row in intents}
    finally:
        store.close()


def _filled(path: Path, intent_id: str) -> int:
    _, fills = _store_rows(path)
    return sum(1 for f in fills.get(intent_id, []) if f.status == "filled")


def _settled(path: Path, now: int) -> bool:
    """Every live intent has caught up with chain time ``now`` (waits for a later time,
    an approval, or has ended)."""
    from agentmesh.protocols.defi import FINAL_PHASES, IntentPhase

    intents, _ = _store_rows(path)
    return all(
        row.phase in FINAL_PHASES
        or row.phase == IntentPhase.AWAITING_APPROVAL
        or (row.phase == IntentPhase.ACTIVE and row.next_due > now)
        for row in intents
    )


def _done(path: Path, ids: tuple[str, ...]) -> bool:
    from agentmesh.protocols.defi import FINAL_PHASES

    intents, _ = _store_rows(path)
    phases = {row.id: row.phase for row in intents}
    return all(phases.get(i) in FINAL_PHASES for i in ids)


async def _until(done: Any, timeout: float, agent: AgentProcess) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        if agent.process.poll() is not None:
            raise AgentMeshError(f"the DeFi agent exited: {agent.log.read_text()[-400:]}")
        if time.monotonic() > deadline:
            return  # the report says what did not happen
        await asyncio.sleep(0.2)


async def _dump(st: Stage, whole_weth: int) -> None:
    """The trader sells ``whole_weth`` WETH straight into the pool."""
    from agentmesh.wallets.clients import TokenClient

    chain, trader, market = st.chain, st.trader, st.market
    weth, musd = market.address("WETH"), market.address("mUSD")
    amount = whole_weth * 10**18
    await TokenClient(trader, weth).approve(market.router, amount)
    router = chain.w3.eth.contract(address=market.router, abi=_router_abi())
    deadline = int((await chain.w3.eth.get_block("latest"))["timestamp"]) + 600
    await trader.transact(
        router.functions.swapExactTokensForTokens(amount, 0, [weth, musd], trader.address, deadline)
    )


def _router_abi() -> list[dict[str, Any]]:
    from agentmesh.wallets.exchange import npm_artifact

    return npm_artifact("UniswapV2Router02").abi


async def _spot(market: Any) -> str:
    from agentmesh.wallets.exchange import pool_prices

    prices = await pool_prices(market.wallet.w3, market.exchange)
    return f"{float(str(prices['WETH/mUSD']['price'])):,.0f}"


async def _outside_policy(st: Stage) -> list[dict[str, str]]:
    """What the wallet contract refuses even from the agent's own key (sent as calls:
    a refused transaction would revert the same way, and nothing may move)."""
    from eth_account import Account

    from agentmesh.wallets.agent_wallet import AgentWalletClient, SwapCall
    from agentmesh.wallets.wallet import Wallet

    chain, market, wallet = st.chain, st.market, st.wallet
    key = st.keystore.load(AGENT, st.password)
    as_agent = AgentWalletClient(Wallet(key, chain.w3, name=AGENT), wallet)
    musd, weth = market.address("mUSD"), market.address("WETH")
    gold = market.address("MGLD")
    now = int((await chain.w3.eth.get_block("latest"))["timestamp"])
    thief = Account.create().address
    attempts = {
        "swap the wallet's mUSD to another address": SwapCall(
            market.router, (musd, weth), 10 * 10**6, 0, thief, now + 60
        ),
        "buy MGLD (not on the owner's token list)": SwapCall(
            market.router, (musd, weth, gold), 10 * 10**6, 0, wallet, now + 60
        ),
        "a deadline a day away": SwapCall(
            market.router, (musd, weth), 10 * 10**6, 0, wallet, now + 86_400
        ),
    }
    refused: list[dict[str, str]] = []
    for attempt, call in attempts.items():
        try:
            await as_agent.simulate_swap(call)
        except PolicyViolation as exc:
            refused.append({"attempt": attempt, "error": str(exc.error_name), "rule": exc.rule})
    return refused


async def _holdings(market: Any, holders: dict[str, str]) -> dict[str, dict[str, int]]:
    """Base units of every exchange token per holder."""
    return {
        symbol: {name: await market.balance(address, who) for name, who in holders.items()}
        for symbol, address in market.exchange.tokens.items()
    }


async def _report(
    st: Stage,
    before: dict[str, dict[str, int]],
    refused: list[dict[str, str]],
    ids: tuple[str, str],
) -> dict[str, Any]:
    from agentmesh.protocols.defi import INTENT, trade_of
    from agentmesh.wallets.agent_wallet import AgentWalletClient

    market, store_path, wallet, holders = st.market, st.store_path, st.wallet, st.holders
    intents, fills_by_intent = _store_rows(store_path)
    kinds = {row.id: row.kind for row in intents}
    fills = []
    for intent_id, rows in fills_by_intent.items():
        intent = INTENT.validate_json(next(r.body for r in intents if r.id == intent_id))
        trade = trade_of(intent)
        assert trade is not None  # the demo gives a DCA and a stop
        for fill in rows:
            # A step sent records its tokens; one never sent is the intent's trade.
            token_in, token_out = fill.token_in or trade[0], fill.token_out or trade[1]
            amount_in, amount_out = int(fill.amount_in), int(fill.amount_out)
            weth_side = token_out if market.symbol(token_out) == "WETH" else token_in
            musd_amount = amount_in if weth_side == token_out else amount_out
            weth_amount = amount_out if weth_side == token_out else amount_in
            twap_weth = int(fill.twap_out) if weth_side == token_out else amount_in
            twap_musd = amount_in if weth_side == token_out else int(fill.twap_out)
            fills.append(
                {
                    "intent": intent_id,
                    "kind": kinds[intent_id],
                    "step": fill.step,
                    "status": fill.status,
                    "reason": fill.reason,
                    "sold": f"{market.whole(token_in, amount_in)} {market.symbol(token_in)}",
                    "bought": f"{market.whole(token_out, amount_out)} {market.symbol(token_out)}",
                    "price": _price(musd_amount, weth_amount),
                    "twap_price": _price(twap_musd, twap_weth),
                    "gas": fill.gas,
                    "tx": fill.tx,
                }
            )
    after = await _holdings(market, holders)
    conservation = {
        symbol: {"before": sum(before[symbol].values()), "after": sum(after[symbol].values())}
        for symbol in before
    }
    reader = AgentWalletClient(market.wallet, wallet)
    spent, remaining = await reader.spendable(market.address("mUSD"))
    dca_id, stop_id = ids
    filled = {i: sum(1 for f in fills if f["intent"] == i and f["status"] == "filled") for i in ids}
    return {
        "wallet": wallet,
        "fills": fills,
        "refused": refused,
        "policy": {
            "token": "mUSD",
            "cap": str(100 * 10**6),
            "spent": str(spent),
            "remaining": str(remaining),
        },  # fmt: skip
        "gas": sum(f["gas"] for f in fills),
        "expected": {"dca_fills": 3, "stop_fills": 1},
        "filled": {"dca": filled[dca_id], "stop": filled[stop_id]},
        "balances": {"before": before, "after": after},
        "conservation": {
            "tokens": conservation,
            "ok": all(v["before"] == v["after"] for v in conservation.values()),
        },
    }


def _price(musd_units: int, weth_units: int) -> str:
    if not weth_units:
        return "-"
    return f"{musd_units / 10**6 / (weth_units / 10**18):,.2f}"


def _print(report: dict[str, Any]) -> None:
    from agentmesh.wallets.units import MUSD_DECIMALS, format_amount

    table = Table(title="fills (price in mUSD per WETH)")
    for column in ("intent", "step", "status", "sold", "bought", "price", "TWAP", "gas", "tx"):
        table.add_column(column)
    for fill in report["fills"]:
        table.add_row(
            fill["kind"],
            str(fill["step"] + 1),
            fill["status"] if not fill["reason"] else f"{fill['status']}: {fill['reason'][:40]}",
            fill["sold"],
            fill["bought"],
            fill["price"],
            fill["twap_price"],
            f"{fill['gas']:,}",
            fill["tx"][:12],
        )
    console.print(table)
    refused = Table(title="refused by the AgentWallet contract")
    for column in ("attempt", "error", "rule"):
        refused.add_column(column)
    for row in report["refused"]:
        refused.add_row(row["attempt"], row["error"], row["rule"])
    console.print(refused)
    policy = report["policy"]
    console.print(
        f"policy: {format_amount(int(policy['spent']), MUSD_DECIMALS, 'mUSD')} spent of the "
        f"{format_amount(int(policy['cap']), MUSD_DECIMALS, 'mUSD')} daily cap, "
        f"{format_amount(int(policy['remaining']), MUSD_DECIMALS, 'mUSD')} left; "
        f"gas for the fills {report['gas']:,}"
    )
    check = Table(title="conservation per token (person, wallet, agent, trader, pools)")
    for column in ("token", "before", "after", "ok"):
        check.add_column(column)
    for symbol, sums in report["conservation"]["tokens"].items():
        ok = sums["before"] == sums["after"]
        check.add_row(
            symbol, str(sums["before"]), str(sums["after"]), "[green]✓[/]" if ok else "[red]✗[/]"
        )
    console.print(check)


def _check(report: dict[str, Any]) -> None:
    problems = []
    if report["filled"]["dca"] != report["expected"]["dca_fills"]:
        problems.append(f"{report['filled']['dca']} of 3 DCA periods filled")
    if report["filled"]["stop"] != report["expected"]["stop_fills"]:
        problems.append("the stop did not fill")
    if not report["refused"]:
        problems.append("no attempt outside the policy was refused")
    if not report["conservation"]["ok"]:
        problems.append("the conservation check failed")
    if problems:
        raise AgentMeshError("the DeFi demo failed: " + "; ".join(problems))


def run_demo(app_home: Path, timeout: float, json_out: bool) -> None:
    """Run the DeFi demo; prints the report (or its JSON) and raises if it failed."""
    from .context import run

    report = run(_demo(app_home, timeout, json_out))
    if json_out:
        print_json(report)
    else:
        _print(report)
    _check(report)
    (err_console if json_out else console).print(
        f"[green]✓[/] DeFi demo finished in {report['seconds']}s"
    )
