"""Chain benchmark: MeshUSD transfer throughput and gas per TaskEscrow path.

    .venv/bin/python bench/chain_bench.py [--count 200]

Against a throw-away anvil (automine), all in one run:
- transfers/s from ONE wallet sent concurrently through the nonce manager, next to the
  same count sent one at a time through the same Wallet (the baseline), and next to a
  floor of raw web3 (pre-built, pre-signed transactions, manual nonces);
- gas used by each escrow path, as a table.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from eth_account import Account
from rich.console import Console
from rich.table import Table

from agentmesh import Config
from agentmesh.wallets.chain import Chain, open_chain
from agentmesh.wallets.clients import EscrowClient, TokenClient
from agentmesh.wallets.deployer import dev_deployer
from agentmesh.wallets.wallet import Wallet

console = Console()
ONE = 10**6


async def new_wallet(chain: Chain, faucet: Wallet, musd: int = 0) -> Wallet:
    """A fresh wallet with 100 ETH for gas and ``musd`` minted to it."""
    wallet = Wallet(Account.create(), chain.w3)
    await faucet.send({"to": wallet.address, "value": 10**20})
    if musd:
        await TokenClient(faucet, chain.token_address).mint(wallet.address, musd * ONE)
    return wallet


async def _sequential(token: TokenClient, to: str, count: int) -> float:
    start = time.perf_counter()
    for _ in range(count):
        await token.transfer(to, 1)
    return time.perf_counter() - start


async def _concurrent(token: TokenClient, to: str, count: int) -> float:
    start = time.perf_counter()
    await asyncio.gather(*(token.transfer(to, 1) for _ in range(count)))
    return time.perf_counter() - start


async def _raw_web3(chain: Chain, sender: Wallet, to: str, count: int) -> float:
    """Floor: transactions built and signed up front, sent back to back, then receipts."""
    w3 = chain.w3
    contract = chain.contract("MeshUSD")
    data = contract.functions.transfer(to, 1)._encode_transaction_data()
    nonce = await w3.eth.get_transaction_count(sender.address, "pending")
    price = await w3.eth.gas_price
    chain_id = await w3.eth.chain_id
    signed = [
        sender.account.sign_transaction(
            {
                "to": chain.token_address,
                "data": data,
                "value": 0,
                "gas": 80_000,
                "maxFeePerGas": price * 2,
                "maxPriorityFeePerGas": min(price, 10**9),
                "nonce": nonce + i,
                "chainId": chain_id,
            }
        ).raw_transaction
        for i in range(count)
    ]
    start = time.perf_counter()
    hashes = [await w3.eth.send_raw_transaction(raw) for raw in signed]
    for tx_hash in hashes:
        await w3.eth.wait_for_transaction_receipt(tx_hash, poll_latency=0.02)
    return time.perf_counter() - start


async def _throughput(chain: Chain, faucet: Wallet, count: int) -> None:
    sender = await new_wallet(chain, faucet, 10 * count)
    receiver = Account.create().address
    token = TokenClient(sender, chain.token_address)
    # Warm up connections and caches so the first measurement is not penalised.
    await token.transfer(receiver, 1)
    seq = await _sequential(token, receiver, count)
    con = await _concurrent(token, receiver, count)
    raw = await _raw_web3(chain, sender, receiver, count)
    expected = 1 + 3 * count
    assert await token.balance_of(receiver) == expected, "transfers lost"

    table = Table(title=f"MeshUSD transfers from one wallet, n={count}, anvil automine")
    for column in ("mode", "seconds", "tx/s", "vs sequential"):
        table.add_column(column, justify="right" if column != "mode" else "left")
    for label, seconds in (
        ("Wallet, one at a time (baseline)", seq),
        ("Wallet, concurrent (nonce manager)", con),
        ("raw web3, pre-signed (floor)", raw),
    ):
        table.add_row(label, f"{seconds:.2f}", f"{count / seconds:,.0f}", f"{seq / seconds:.2f}x")
    console.print(table)
    console.print(
        f"concurrent / sequential = {seq / con:.2f}x; "
        f"concurrent Wallet reaches {raw / con:.2f} of the raw floor"
    )


async def _gas(receipts: list[Any]) -> int:
    return sum(int(r["gasUsed"]) for r in receipts)


async def _escrow_gas(chain: Chain, faucet: Wallet) -> None:
    client = await new_wallet(chain, faucet, 1_000)
    provider = await new_wallet(chain, faucet, 0)
    arbiter = await new_wallet(chain, faucet, 0)
    address = chain.deployment.address("TaskEscrow")
    as_client = EscrowClient(client, address)
    as_provider = EscrowClient(provider, address)
    as_arbiter = EscrowClient(arbiter, address)
    token = TokenClient(client, chain.token_address)
    terms = hashlib.sha256(b"terms").digest()
    result = hashlib.sha256(b"result").digest()

    async def now() -> int:
        return int((await chain.w3.eth.get_block("latest"))["timestamp"])

    async def open_job() -> tuple[int, int, int]:
        job_id, receipts = await as_client.open(
            provider=provider.address,
            token=token,
            amount=10 * ONE,
            deadline=await now() + 600,
            review_window=60,
            arbiter=arbiter.address,
            terms_hash=terms,
        )
        approve = int(receipts[0]["gasUsed"]) if len(receipts) == 2 else 0
        return job_id, approve, int(receipts[-1]["gasUsed"])

    async def warp(seconds: int) -> None:
        await chain.w3.provider.make_request("evm_increaseTime", [seconds])  # type: ignore[arg-type]
        await chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]

    rows: list[tuple[str, int]] = []
    job, approve, opened = await open_job()
    rows += [("approve (ERC-20, first job)", approve), ("open + deposit", opened)]
    rows.append(("accept", int((await as_provider.accept(job))["gasUsed"])))
    rows.append(("submit result hash", int((await as_provider.submit(job, result))["gasUsed"])))
    rows.append(("release", int((await as_client.release(job))["gasUsed"])))

    job, _, _ = await open_job()
    await as_provider.accept(job)
    await as_provider.submit(job, result)
    await warp(61)
    rows.append(("claim (after review window)", int((await as_provider.claim(job))["gasUsed"])))

    job, _, _ = await open_job()
    await as_provider.accept(job)
    await warp(601)
    rows.append(("refund (after deadline)", int((await as_client.refund(job))["gasUsed"])))

    job, _, _ = await open_job()
    rows.append(("cancel (before accept)", int((await as_client.cancel(job))["gasUsed"])))

    job, _, _ = await open_job()
    await as_provider.accept(job)
    await as_provider.submit(job, result)
    rows.append(("dispute", int((await as_client.dispute(job, terms))["gasUsed"])))
    rows.append(("resolve (split)", int((await as_arbiter.resolve(job, 4 * ONE))["gasUsed"])))

    table = Table(title="TaskEscrow gas by step")
    table.add_column("step")
    table.add_column("gas used", justify="right")
    for label, gas in rows:
        table.add_row(label, f"{gas:,}")
    console.print(table)
    by_step = dict(rows)
    happy = by_step["open + deposit"] + by_step["accept"] + by_step["submit result hash"]
    table = Table(title="gas per settled job (excluding the one-off approve)")
    table.add_column("path")
    table.add_column("gas", justify="right")
    table.add_row("open, accept, submit, release", f"{happy + by_step['release']:,}")
    claimed = happy + by_step["claim (after review window)"]
    refunded = by_step["open + deposit"] + by_step["accept"] + by_step["refund (after deadline)"]
    table.add_row("open, accept, submit, claim", f"{claimed:,}")
    table.add_row("open, accept, refund", f"{refunded:,}")
    console.print(table)


async def main(count: int) -> None:
    with tempfile.TemporaryDirectory() as home:
        async with open_chain(Path(home), Config()) as chain:
            faucet = dev_deployer(chain.w3)
            await _throughput(chain, faucet, count)
            await _escrow_gas(chain, faucet)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=200, help="transfers per mode")
    args = parser.parse_args()
    if args.count < 1:
        sys.exit("error: --count must be at least 1")
    asyncio.run(main(args.count))
