"""Payment-channel benchmark: paid calls vs unpaid mesh calls vs the escrow path.

    .venv/bin/python bench/channel_bench.py [--calls 10000] [--sequential 2000]

Two agent processes on a throw-away anvil: the provider runs as ``agentmesh run`` and
sells a trivial service (``double``) both as a paid call and as a plain, unpaid mesh
request/response (a raw handler doing the same work); the requester is this process.
Prints, all measured in the same run:

- paid calls/s at concurrency 1 and 32 (each call a signed envelope carrying the next
  voucher, checked and committed by the provider before the work) against unpaid mesh
  calls/s at the same concurrency (the baseline), and the ratio;
- gas per paid call over every paid call, counting every transaction of the channel's
  life (approve, open, the provider's claim, the cooperative close);
- the escrow path (``Agent.buy`` of the same service: six transactions a task) in
  tasks/s and gas per task, and the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

from eth_account import Account
from rich.console import Console
from rich.table import Table

from agentmesh import Agent, Message
from agentmesh.agents.accounting import channel_gas, task_gas
from agentmesh.chain.devnet import start_anvil
from agentmesh.config import AgentConfig, ChainConfig, Config, DevnetConfig, WalletConfig
from agentmesh.mesh.card import AgentCard
from agentmesh.wallets.chain import Chain, _deploy_fresh, connect
from agentmesh.wallets.clients import TokenClient
from agentmesh.wallets.deployer import dev_deployer
from agentmesh.wallets.keystore import Keystore

console = Console()
PASSWORD = "channel bench"
PRICE = "0.0001"  # mUSD a call
PRICE_UNITS = 100
BENCH = "bench.double"


class Double(Message):
    n: int


class Doubled(Message):
    n: int


PROVIDER_FILE = f"""
from agentmesh import Agent, Message, ServiceContext

agent = Agent("bench-provider")


class Double(Message):
    n: int


class Doubled(Message):
    n: int


@agent.service("double", price="{PRICE}")
async def double(ctx: ServiceContext, n: int) -> int:
    return 2 * n


@agent.on(Double, protocol="{BENCH}", version="1", replies=(Doubled,))
async def unpaid(ctx, message: Double) -> Doubled:
    return Doubled(n=2 * message.n)
"""


def start_provider(home: Path, key: bytes, rpc_url: str) -> subprocess.Popen[bytes]:
    Keystore(home, scrypt_n=2**14).import_key("bench-provider", key, PASSWORD)
    (home / "provider.py").write_text(PROVIDER_FILE)
    ready = home / "provider.ready"
    command = [sys.executable, "-m", "agentmesh.cli.app", "--home", str(home), "run"]
    command += [str(home / "provider.py"), "--wallet", "bench-provider", "--ready-file", str(ready)]
    log = (home / "provider.log").open("ab")
    env = {**os.environ, "AGENTMESH_PASSWORD": PASSWORD}
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"provider did not start: {(home / 'provider.log').read_text()}")
        time.sleep(0.1)
    return process


async def rate(calls: int, concurrency: int, one: Callable[[int], Awaitable[Any]]) -> float:
    """Calls/s of ``calls`` runs of ``one`` with ``concurrency`` in flight (each worker
    runs its share one after another, as a client with that many connections would)."""

    async def worker(first: int) -> None:
        for n in range(first, calls, concurrency):
            await one(n)

    start = time.perf_counter()
    await asyncio.gather(*(worker(w) for w in range(concurrency)))
    return calls / (time.perf_counter() - start)


async def run(calls: int, sequential: int, escrow_tasks: int) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, start_anvil(DevnetConfig()) as anvil:
        w3 = connect(anvil.rpc_url)
        deployment = await _deploy_fresh(w3, anvil.rpc_url, 10_000)
        chain = Chain(w3, anvil.rpc_url, deployment, "embedded", anvil)
        home = Path(tmp)
        deployment.save(home / "deployments" / f"{deployment.chain_id}.json")
        agent_settings = {
            "faucet": False,
            "channel_deposit": "5",  # 50,000 calls
            # One claim, when every timed paid call is unclaimed.
            "channel_claim_threshold": str(Decimal(calls * PRICE_UNITS) / 10**6),
            "channel_max_price": "0",  # `buy` goes through the escrow, for the comparison
        }
        (home / "config.toml").write_text(
            f'[wallet]\nscrypt_n = {2**14}\n[chain]\nrpc_url = "{anvil.rpc_url}"\n[agent]\n'
            + "".join(
                f"{k} = {json.dumps(v) if isinstance(v, str) else str(v).lower()}\n"
                for k, v in agent_settings.items()
            )
        )
        config = Config(
            chain=ChainConfig(rpc_url=anvil.rpc_url),
            wallet=WalletConfig(scrypt_n=2**14),
            agent=AgentConfig(**agent_settings),  # type: ignore[arg-type]
        )
        faucet = dev_deployer(w3)
        keys = {name: os.urandom(32) for name in ("provider", "requester")}
        for key in keys.values():
            await faucet.send({"to": Account.from_key(key).address, "value": 10**20})
        requester_address = Account.from_key(keys["requester"]).address
        await TokenClient(faucet, chain.token_address).mint(requester_address, 10_000 * 10**6)
        process = start_provider(home, keys["provider"], anvil.rpc_url)
        try:
            requester = Agent("bench-requester", wallet=keys["requester"], home=home, config=config)
            async with requester:
                await requester.wait_for_providers("double", timeout=30)
                card: AgentCard = requester.node.find("double")[0]

                async def unpaid(n: int) -> None:
                    reply = await requester.node.request(
                        card, Double(n=n), protocol=BENCH, version="1", expect=(Doubled,)
                    )
                    assert reply.n == 2 * n

                async def paid(n: int) -> None:
                    assert await requester.call(card, "double", n=n) == 2 * n

                # Warm up: connections, the channel's open and join (counted in gas).
                await unpaid(0)
                await paid(0)
                paid_calls = 1
                for level, count in ((1, sequential), (32, calls - sequential)):
                    figures[f"unpaid_{level}"] = await rate(count, level, unpaid)
                    figures[f"paid_{level}"] = await rate(count, level, paid)
                    paid_calls += count
                ch = requester.payer.channel_to(card.address)
                assert ch is not None and ch.signed == paid_calls * PRICE_UNITS
                figures["paid_calls"] = paid_calls
                # Escrow path, same run, same service.
                durations, outcomes = [], []
                start = time.perf_counter()
                for n in range(escrow_tasks):
                    began = time.perf_counter()
                    outcomes.append(await requester.buy("double", n=n, budget="1"))
                    durations.append(time.perf_counter() - began)
                figures["escrow_tps"] = escrow_tasks / (time.perf_counter() - start)
                gases = [(await task_gas(chain, o.job_id, o.txs))[0] for o in outcomes]
                figures["escrow_gas"] = int(statistics.median(gases))
                # The channel's life on chain: approve + open (the first call), the
                # provider's claim, and the cooperative close that pays out the rest (the
                # warm-up call) and refunds the payer.
                await claimed_tx(chain, ch.id)
                assert await requester.close_channel(card) == "closed"
                figures["channel_gas"], figures["channel_txs"] = await channel_gas(
                    chain, ch.id, ch.open_tx
                )
        finally:
            process.terminate()
            process.wait(30)
        await w3.provider.disconnect()
    return figures


async def claimed_tx(chain: Chain, channel_id: bytes, timeout: float = 60.0) -> str:
    """The provider's claim (it claims once its threshold, every paid call, is unclaimed)."""
    contract = chain.contract("PaymentChannel")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = await contract.events.Claimed().get_logs(
            argument_filters={"id": channel_id}, from_block=0
        )
        if logs:
            return "0x" + bytes(logs[0]["transactionHash"]).hex()
        await asyncio.sleep(0.2)
    raise RuntimeError("the provider did not claim")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000, help="paid calls in all")
    parser.add_argument("--sequential", type=int, default=2_000, help="of which one at a time")
    parser.add_argument("--escrow-tasks", type=int, default=20)
    args = parser.parse_args()
    if not 1 <= args.sequential < args.calls or args.escrow_tasks < 1:
        raise SystemExit("error: need 1 <= --sequential < --calls and --escrow-tasks >= 1")
    f = asyncio.run(run(args.calls, args.sequential, args.escrow_tasks))
    table = Table(title="paid calls vs unpaid mesh calls, 2 agent processes, trivial service")
    for column in ("concurrency", "paid calls/s", "unpaid calls/s (baseline)", "ratio"):
        table.add_column(column, justify="right")
    for level in (1, 32):
        paid, unpaid = f[f"paid_{level}"], f[f"unpaid_{level}"]
        table.add_row(str(level), f"{paid:,.0f}", f"{unpaid:,.0f}", f"{paid / unpaid:.2f}")
    console.print(table)
    per_call = f["channel_gas"] / f["paid_calls"]
    gas = Table(title="settlement cost, same run")
    for column in ("path", "gas", "per", "throughput"):
        gas.add_column(column, justify="right")
    gas.add_row(
        "channel",
        f"{per_call:,.1f}",
        f"paid call ({f['paid_calls']:,} calls)",
        f"{f['paid_32']:,.0f} calls/s (32 in flight)",
    )
    gas.add_row("escrow", f"{f['escrow_gas']:,}", "task", f"{f['escrow_tps']:.2f} tasks/s")
    gas.add_row(
        "ratio escrow / channel",
        f"{f['escrow_gas'] / per_call:,.0f}x",
        "",
        f"{f['paid_32'] / f['escrow_tps']:,.0f}x",
    )
    console.print(gas)
    console.print(
        f"channel gas counts every transaction of its life: approve + open + claim + close = "
        f"{f['channel_gas']:,} gas over {f['paid_calls']:,} paid calls"
    )
    console.print(json.dumps(f))


if __name__ == "__main__":
    main()
