"""Chain profile benchmark: the market on chains with block times, against automine.

    .venv/bin/python bench/chain_profile_bench.py [--purchases 3] [--calls 200]

For each block time (0 = anvil mines every transaction at once, the devnet; then 1 s
and 2 s of interval mining, as a shared chain behaves), a fresh anvil gets the suite
from a funded wallet the way ``agentmesh chain deploy`` does it, and two in-process
agents trade a trivial deterministic service (no model: the chain is what is measured):

- purchase latency on the escrow path (``agent.buy``, warm: discovery done);
- paid calls per second on the channel path (``agent.call`` through one open channel;
  the channel's open is timed apart);
- gas and fees (gas used x effective gas price) paid per purchase, both sides summed.

The floor of a purchase, printed next to it in the same run: its transactions that
wait for each other (open, accept, submit, release, feedback), each waiting for
``confirmations`` blocks of ``block time`` (the first block comes after half a block on
average). The ratio column compares each chain with automine, measured in this run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from eth_account import Account
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentmesh import Agent, ServiceContext  # noqa: E402
from agentmesh.chain.devnet import start_anvil  # noqa: E402
from agentmesh.chain.rpc import rpc_call  # noqa: E402
from agentmesh.config import AgentConfig, ChainConfig, Config, DevnetConfig, MeshConfig  # noqa: E402
from agentmesh.protocols.negotiation import Role  # noqa: E402
from agentmesh.wallets.chain import connect, is_anvil, tx_policy_for  # noqa: E402
from agentmesh.wallets.chain_deploy import deploy_to_chain  # noqa: E402
from agentmesh.wallets.clients import TokenClient  # noqa: E402
from agentmesh.wallets.sending import set_tx_policy  # noqa: E402
from agentmesh.wallets.wallet import Wallet  # noqa: E402

console = Console(width=170)  # the whole table, also in a pipe
SEQUENTIAL_TXS = 5  # open, accept, submit, release, feedback: each waits for the one before
PRICE = "0.001 mUSD"


def fund_from_outside(url: str, address: str, eth: int) -> None:
    (sender, *_) = rpc_call(url, "eth_accounts")
    tx = rpc_call(
        url, "eth_sendTransaction", [{"from": sender, "to": address, "value": hex(eth * 10**18)}]
    )
    while not rpc_call(url, "eth_getTransactionReceipt", [tx]):
        time.sleep(0.05)


async def fees_of(w3: Any, hashes: list[str]) -> tuple[int, int]:
    gas = fee = 0
    for tx in hashes:
        receipt = await w3.eth.get_transaction_receipt(tx)
        gas += int(receipt["gasUsed"])
        fee += int(receipt["gasUsed"]) * int(receipt["effectiveGasPrice"])
    return gas, fee


async def settled_sale(seller: Agent, conversation: str) -> Any:
    tid = Role.PROVIDER.task_id(conversation)
    for _ in range(600):
        row = seller.records.task(tid)
        if row is not None and row.status == "done":
            return row
        await asyncio.sleep(0.05)
    raise RuntimeError(f"the provider never recorded {tid} done")


async def profile(block_time: float, purchases: int, calls: int, root: Path) -> dict[str, Any]:
    with start_anvil(DevnetConfig(block_time=block_time)) as anvil:
        url = anvil.rpc_url
        ops_account = Account.create()
        fund_from_outside(url, ops_account.address, 1_000)
        w3 = connect(url)
        home = root / f"home-{block_time:g}"
        home.mkdir()
        config = Config(
            chain=ChainConfig(rpc_url=url),
            agent=AgentConfig(faucet=False, channel_deposit="1", channel_max_price="0"),
            mesh=MeshConfig(heartbeat_s=0.5),
        )
        try:
            policy = await tx_policy_for(w3, config, anvil=await is_anvil(w3, url), rpc_url=url)
            set_tx_policy(w3, policy)
            ops = Wallet(ops_account, w3, name="ops")
            deployment = await deploy_to_chain(ops, url)
            deployment.save(home / "deployments" / f"{deployment.chain_id}.json")
            token = TokenClient(ops, deployment.address("MeshUSD"))
            keys = [os.urandom(32), os.urandom(32)]
            for key in keys:
                await ops.send({"to": Account.from_key(key).address, "value": 10**19})
                await token.mint(Account.from_key(key).address, 100 * 10**6)
            seller = Agent("seller", wallet=keys[0], home=home, config=config)

            @seller.service("echo", price=PRICE)
            async def echo(ctx: ServiceContext, text: str) -> str:
                return text.upper()

            async with seller, Agent("buyer", wallet=keys[1], home=home, config=config) as buyer:
                await buyer.wait_for_providers("echo", timeout=60)
                latencies, gas, fees = [], [], []
                for n in range(purchases):
                    started = time.perf_counter()
                    outcome = await buyer.buy("echo", text=f"bench {n}", budget="0.01")
                    latencies.append(time.perf_counter() - started)
                    # The provider records its side (accept, submit) once Settled arrives.
                    sale = await settled_sale(seller, outcome.conversation)
                    hashes = [*outcome.txs.values(), *json.loads(sale.txs).values()]
                    g, f = await fees_of(w3, hashes)
                    gas.append(g)
                    fees.append(f)
                opened = time.perf_counter()
                await buyer.call("seller", "echo", text="open")
                open_s = time.perf_counter() - opened
                started = time.perf_counter()
                for n in range(calls):
                    await buyer.call("seller", "echo", text=f"call {n}")
                calls_per_s = calls / (time.perf_counter() - started)
        finally:
            await w3.provider.disconnect()
        return {
            "block_time": block_time,
            "confirmations": policy.confirmations,
            "purchase_s": statistics.median(latencies),
            "floor_s": SEQUENTIAL_TXS * (policy.confirmations - 0.5) * block_time,
            "gas": statistics.median(gas),
            "fee_gwei": statistics.median(fees) / 10**9,
            "channel_open_s": open_s,
            "calls_per_s": calls_per_s,
        }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--purchases", type=int, default=3)
    parser.add_argument("--calls", type=int, default=200)
    parser.add_argument("--block-times", default="0,1,2")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="chain-profile-") as tmp:
        for block_time in (float(b) for b in args.block_times.split(",")):
            with console.status(f"block time {block_time:g} s..."):
                rows.append(await profile(block_time, args.purchases, args.calls, Path(tmp)))
    base = rows[0]
    table = Table(title="the market on chains with block times (median per purchase)")
    for column in (
        "block time",
        "confirmations",
        "purchase",
        "floor",
        "vs automine",
        "gas / purchase",
        "fees / purchase",
        "channel open",
        "paid calls/s",
        "vs automine",
    ):
        table.add_column(column, justify="right")
    for row in rows:
        table.add_row(
            "automine" if row["block_time"] == 0 else f"{row['block_time']:g} s",
            str(row["confirmations"]),
            f"{row['purchase_s']:.2f} s",
            f"{row['floor_s']:.2f} s",
            f"{row['purchase_s'] / base['purchase_s']:.1f}x",
            f"{row['gas']:,}",
            f"{row['fee_gwei']:,.0f} gwei",
            f"{row['channel_open_s']:.2f} s",
            f"{row['calls_per_s']:.0f}",
            f"{row['calls_per_s'] / base['calls_per_s']:.2f}x",
        )
    console.print(table)
    console.print(
        f"floor: {SEQUENTIAL_TXS} sequential transactions x (confirmations - 1/2) x block "
        "time (the first block comes after half a block on average); automine's is 0"
    )


if __name__ == "__main__":
    asyncio.run(main())
