"""``agentmesh demo channels``: a thousand paid calls over one payment channel.

Starts a throw-away devnet; creates encrypted wallets for a caller and an embedding
provider (the reference ``agentmesh.agents.embedder``, on the local model, as its own
``agentmesh run`` process); the caller opens one channel on its first call and makes
N paid ``embed`` calls, each a single mesh request carrying the next voucher. The
provider claims on chain each time ``channel_claim_threshold`` is unclaimed; at the end
the caller asks it to close: the provider is paid the rest and the caller refunded in
one transaction. Prints calls/s, paid, claimed, gas per call and the conservation check
(caller + provider + channel contract + reward pool, before = after; the provider gets
what was paid less the 1% protocol fee). Exit 1 if a call was lost or the
check fails.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from pathlib import Path
from typing import Any

from rich.live import Live
from rich.table import Table

from agentmesh.cli.console.homes import demo_folder
from agentmesh.cli.context import console, err_console, print_json
from agentmesh.errors import AgentMeshError

from .demo import AgentProcess, _spawn, _wait_ready

PROVIDER, CALLER = "embedder", "caller"
PRICE = "0.0005"  # mUSD per call
CALLER_MUSD = 5
CONCURRENCY = 16
# Short support tickets: the model's work grows with the tokens (~3 ms a token on one
# core here), and these are what a router of tickets would embed.
TOPICS = (
    "parcel never arrived",
    "charged twice",
    "app crashes on start",
    "change my address",
    "screen is cracked",
    "pay with a gift card",
    "no password reset email",
    "cancel my subscription",
)


def _texts(count: int) -> list[str]:
    """``count`` distinct tickets (each one real work)."""
    return [f"{TOPICS[n % len(TOPICS)]} #{n}" for n in range(count)]


def _musd(units: int) -> str:
    from agentmesh.wallets.units import MUSD_DECIMALS, format_amount

    return format_amount(units, MUSD_DECIMALS)


def _progress(done: int, total: int, paid: int, elapsed: float) -> Table:
    table = Table(title=f"paid calls to {PROVIDER}", show_edge=False)
    for column in ("calls", "calls/s", "paid (mUSD)"):
        table.add_column(column, justify="right")
    rate = done / elapsed if elapsed > 0 else 0.0
    table.add_row(f"{done:,} / {total:,}", f"{rate:,.0f}", _musd(paid))
    return table


async def _demo(app_home: Path, calls: int, timeout: float, json_out: bool) -> dict[str, Any]:
    from web3.types import Wei

    from agentmesh.agents.accounting import channel_gas
    from agentmesh.agents.agent import Agent
    from agentmesh.agents.service import parse_price
    from agentmesh.config import Config, DevnetConfig, WalletConfig, load_config
    from agentmesh.wallets.chain import open_chain
    from agentmesh.wallets.clients import TokenClient
    from agentmesh.wallets.deployer import dev_deployer
    from agentmesh.wallets.keystore import Keystore
    from agentmesh.wallets.units import MUSD_DECIMALS

    out = err_console if json_out else console
    started = time.monotonic()
    scrypt_n = 2**14
    with demo_folder(app_home, "channels") as home:
        config = Config(
            devnet=DevnetConfig(dev_account_musd=0), wallet=WalletConfig(scrypt_n=scrypt_n)
        )
        async with contextlib.AsyncExitStack() as stack:
            with out.status("starting devnet and deploying contracts..."):
                chain = await stack.enter_async_context(open_chain(home, config))
            chain.deployment.save(home / "deployments" / f"{chain.deployment.chain_id}.json")
            (home / "config.toml").write_text(
                f'[chain]\nrpc_url = "{chain.rpc_url}"\n[wallet]\nscrypt_n = {scrypt_n}\n'
                '[agent]\nfaucet = false\nchannel_deposit = "1"\n'
                'channel_claim_threshold = "0.2"\n[mesh]\nheartbeat_s = 0.5\n'
            )
            out.print(f"[green]✓[/] devnet {chain.rpc_url}, contracts deployed")
            password = secrets.token_urlsafe(16)
            keystore = Keystore(home, scrypt_n=scrypt_n)
            faucet = dev_deployer(chain.w3)
            token = TokenClient(faucet, chain.token_address)
            addresses = {
                name: keystore.create(name, password).address for name in (PROVIDER, CALLER)
            }
            for address in addresses.values():
                await faucet.send({"to": address, "value": Wei(10**19)})
            await token.mint(addresses[CALLER], CALLER_MUSD * 10**MUSD_DECIMALS)
            holders = {
                **addresses,
                "PaymentChannel": chain.deployment.address("PaymentChannel"),
                # The protocol fee on each claim goes to the validators' reward pool.
                "reward pool": chain.deployment.address("Consensus"),
            }
            before = {n: await token.balance_of(a) for n, a in holders.items()}
            out.print(
                f"[green]✓[/] wallets for {', '.join(addresses)}; {CALLER_MUSD} mUSD to {CALLER}"
            )

            env = {"AGENTMESH_PASSWORD": password, "AGENTMESH_PRICE": f"{PRICE} mUSD"}
            provider: AgentProcess = _spawn(home, PROVIDER, "agentmesh.agents.embedder", env)
            stack.callback(_stop, provider)
            with out.status("starting the embedding provider (loading the model)..."):
                await _wait_ready(provider)
            out.print(
                f"[green]✓[/] {PROVIDER} {provider.address} sells embeddings at {PRICE} mUSD a call"
            )

            caller = Agent(
                CALLER,
                wallet=keystore.load(CALLER, password),
                home=home,
                config=load_config(home),
            )
            await stack.enter_async_context(caller)
            await caller.wait_for_providers("embed", timeout=60)
            card = caller.node.find("embed")[0]
            texts = _texts(calls)
            results: list[list[float] | None] = [None] * calls
            counter = {"done": 0}

            async def worker(first: int) -> None:
                for n in range(first, calls, CONCURRENCY):
                    results[n] = await caller.call(card, "embed", text=texts[n])
                    counter["done"] += 1

            call_start = time.monotonic()
            work = asyncio.gather(*(worker(w) for w in range(CONCURRENCY)))
            with Live(console=out, refresh_per_second=4) as live:
                while not work.done():
                    if time.monotonic() - started > timeout:
                        work.cancel()
                        raise AgentMeshError(f"the demo did not finish within {timeout:g}s")
                    ch = caller.payer.channel_to(card.address)
                    paid = ch.signed if ch else 0
                    elapsed = time.monotonic() - call_start
                    live.update(_progress(counter["done"], calls, paid, elapsed))
                    await asyncio.wait({work}, timeout=0.25)
                work.result()
                call_s = time.monotonic() - call_start
                ch = caller.payer.channel_to(card.address)
                assert ch is not None
                live.update(_progress(counter["done"], calls, ch.signed, call_s))
            if not out.is_terminal:
                out.line()
            state = await caller.payer.client.channel(ch.id)
            claimed_before_close = state.claimed
            with out.status("closing the channel (the provider is paid the rest)..."):
                closed = await caller.close_channel(card)
            state = await caller.payer.client.channel(ch.id)
            gas, txs = await channel_gas(chain, ch.id, ch.open_tx)
            after = {n: await token.balance_of(a) for n, a in holders.items()}
            paid = ch.signed
            fee = after["reward pool"] - before["reward pool"]
            report: dict[str, Any] = {
                "calls": counter["done"],
                "requested": calls,
                "calls_per_s": round(counter["done"] / call_s, 1),
                "price": parse_price(PRICE),
                "paid": paid,
                "claimed": state.claimed,
                "claimed_before_close": claimed_before_close,
                "refunded": state.deposit - state.claimed,
                "protocol_fee": fee,
                "closed": closed == "closed" and state.closed,
                "channel": "0x" + ch.id.hex(),
                "transactions": txs,
                "gas": gas,
                "gas_per_call": round(gas / max(counter["done"], 1), 1),
                "similar": _nearest(texts, results),
                "balances": {n: {"before": before[n], "after": after[n]} for n in holders},
                "conservation": {
                    "before": sum(before.values()),
                    "after": sum(after.values()),
                    # What the payer signed was paid: to the provider, less the protocol
                    # fee to the reward pool.
                    "ok": sum(before.values()) == sum(after.values())
                    and after[PROVIDER] - before[PROVIDER] + fee == paid == state.claimed,
                },
                "seconds": round(time.monotonic() - started, 1),
            }
        if json_out:
            print_json(report)
        else:
            _print(report)
        _check(report)
    return report


def _nearest(texts: list[str], results: list[list[float] | None]) -> dict[str, Any]:
    """The ticket most similar to the first one, by the embeddings bought (proof that
    the calls paid for real work)."""
    vectors = [v for v in results if v is not None]
    if len(vectors) < 2:
        return {}
    query = vectors[0]
    scores = [sum(a * b for a, b in zip(query, v, strict=True)) for v in vectors[1:]]
    best = max(range(len(scores)), key=scores.__getitem__)
    return {"query": texts[0], "nearest": texts[best + 1], "cosine": round(scores[best], 4)}


def _print(report: dict[str, Any]) -> None:
    table = Table(title=f"{report['calls']:,} paid calls over one channel")
    table.add_column("")
    table.add_column("value", justify="right")
    table.add_row("calls/s (model work included)", f"{report['calls_per_s']:,}")
    table.add_row("price per call", f"{_musd(report['price'])} mUSD")
    table.add_row("paid", f"{_musd(report['paid'])} mUSD")
    table.add_row(
        "claimed by the provider (before the close)",
        f"{_musd(report['claimed_before_close'])} mUSD",
    )
    table.add_row("claimed in all (the close pays the rest)", f"{_musd(report['claimed'])} mUSD")
    table.add_row("refunded to the caller", f"{_musd(report['refunded'])} mUSD")
    table.add_row("transactions (approve, open, claims, close)", str(report["transactions"]))
    table.add_row("gas in all", f"{report['gas']:,}")
    table.add_row("gas per call", f"{report['gas_per_call']:,}")
    console.print(table)
    similar = report["similar"]
    if similar:
        console.print(
            f"nearest ticket to “{similar['query']}”: “{similar['nearest']}” "
            f"(cosine {similar['cosine']})"
        )
    balances = Table(title="mUSD balances")
    for column in ("holder", "before", "after"):
        balances.add_column(column, justify="right")
    for name, row in report["balances"].items():
        balances.add_row(name, _musd(row["before"]), _musd(row["after"]))
    console.print(balances)
    c = report["conservation"]
    mark = "[green]✓[/]" if c["ok"] else "[red]✗[/]"
    console.print(
        f"{mark} conservation: {_musd(c['before'])} mUSD before = {_musd(c['after'])} after "
        "(caller + provider + channel contract + reward pool); the provider got what was "
        f"paid less the protocol fee ({_musd(report['protocol_fee'])} mUSD)"
    )


def _check(report: dict[str, Any]) -> None:
    if report["calls"] != report["requested"]:
        raise AgentMeshError(f"only {report['calls']} of {report['requested']} calls answered")
    if not report["closed"]:
        raise AgentMeshError("the channel did not close")
    if not report["conservation"]["ok"]:
        raise AgentMeshError("conservation check failed: see the balances above")


def _stop(agent: AgentProcess) -> None:
    import subprocess

    if agent.process.poll() is None:
        agent.process.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            agent.process.wait(20)
    if agent.process.poll() is None:
        agent.process.kill()


def run_demo(app_home: Path, calls: int, timeout: float, json_out: bool) -> None:
    from agentmesh.cli.context import run

    run(_demo(app_home, calls, timeout, json_out))
