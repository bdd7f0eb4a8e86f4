"""Validation benchmark (consensus so far): gas of finalizing one epoch.

    .venv/bin/python bench/validation_bench.py [--sizes 3x10 10x50]

For each size VxP on a throw-away anvil: V validators with permits (stakes 10..V*10 mUSD)
commit and reveal random scores (0..10,000) for every one of P ranked providers, and one
`finalize` computes the stake-weighted medians, clipping, incentives and dividends and
pays a funded pool out. Prints the finalize gas, the gas of one commit and of one reveal
of P scores, next to the baseline measured in the same run: the gas of one plain escrow
task (open, accept, submit, release, feedback), which is what a validator's probe of a
provider costs when it buys through the market.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from typing import Any

from eth_account import Account
from rich.console import Console
from rich.table import Table

from agentmesh.chain.devnet import start_anvil
from agentmesh.config import DevnetConfig
from agentmesh.wallets.chain import Chain, _deploy_fresh, connect
from agentmesh.wallets.clients import TokenClient
from agentmesh.wallets.consensus import MAX_SCORE, ConsensusClient, score_sheet
from agentmesh.wallets.deployer import dev_deployer
from agentmesh.wallets.staking import StakingClient
from agentmesh.wallets.wallet import Wallet

console = Console()
MUSD = 10**6
EPOCH, REVEAL = 3600, 600


async def funded(chain: Chain, faucet: Wallet, musd: int) -> Wallet:
    wallet = Wallet(Account.create(), chain.w3)
    await faucet.send({"to": wallet.address, "value": 10**19})
    await TokenClient(faucet, chain.token_address).mint(wallet.address, musd * MUSD)
    return wallet


async def escrow_gas(chain: Chain, faucet: Wallet) -> int:
    """Gas of one plain escrow task between two wallets (the baseline)."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parent))
    from bare_purchase import BarePurchase

    client, provider = await funded(chain, faucet, 100), await funded(chain, faucet, 0)
    bare = BarePurchase(chain, client, provider)
    block = await chain.w3.eth.block_number
    now = int((await chain.w3.eth.get_block("latest"))["timestamp"])
    await bare.run("baseline", amount=10_000, deadline=now + 3600, review_window=60)
    gas = 0
    for number in range(block + 1, await chain.w3.eth.block_number + 1):
        for tx in (await chain.w3.eth.get_block(number, full_transactions=True))["transactions"]:
            receipt = await chain.w3.eth.get_transaction_receipt(tx["hash"])  # type: ignore[index]
            if receipt["from"] in (client.address, provider.address):
                gas += int(receipt["gasUsed"])
    return gas


async def epoch_gas(
    chain: Chain, faucet: Wallet, validators: int, providers: int
) -> dict[str, Any]:
    staking = await StakingClient.deploy(
        faucet,
        chain.token_address,
        unbonding_delay=100,
        min_provider_stake=MUSD,
        permits=validators,
        max_validators=validators,
    )
    consensus = await ConsensusClient.deploy(
        faucet, staking.address, chain.token_address,
        epoch_length=EPOCH, reveal_window=REVEAL, provider_share_bps=6000,
    )  # fmt: skip
    vals = [await funded(chain, faucet, 1000) for _ in range(validators)]
    provs = [await funded(chain, faucet, 10) for _ in range(providers)]
    for n, wallet in enumerate(vals):
        await staking.as_wallet(wallet).stake((n + 1) * 10 * MUSD)
        await staking.as_wallet(wallet).register_validator()
    for wallet in provs:
        await staking.as_wallet(wallet).stake(MUSD)
    await TokenClient(faucet, chain.token_address).mint(faucet.address, 100 * MUSD)
    await consensus.fund(100 * MUSD)
    epoch = await consensus.current_epoch()
    rng = random.Random(validators * 1000 + providers)
    sheets = [
        score_sheet(epoch, {p.address: rng.randint(0, MAX_SCORE) for p in provs}) for _ in vals
    ]
    commits, reveals = [], []
    for wallet, sheet in zip(vals, sheets, strict=True):
        commits.append((await consensus.as_wallet(wallet).commit(sheet))["gasUsed"])
    end = await consensus.epoch_end(epoch)
    now = int((await chain.w3.eth.get_block("latest"))["timestamp"])
    await chain.w3.provider.make_request("evm_increaseTime", [end - now])  # type: ignore[arg-type]
    await chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    for wallet, sheet in zip(vals, sheets, strict=True):
        reveals.append((await consensus.as_wallet(wallet).reveal(sheet))["gasUsed"])
    await chain.w3.provider.make_request("evm_increaseTime", [REVEAL])  # type: ignore[arg-type]
    await chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]
    started = time.perf_counter()
    receipt = await consensus.finalize(epoch)
    seconds = time.perf_counter() - started
    return {
        "finalize": int(receipt["gasUsed"]),
        "commit": int(max(commits)),
        "reveal": int(max(reveals)),
        "finalize_s": round(seconds, 3),
    }


async def run(sizes: list[tuple[int, int]]) -> dict[str, Any]:
    with start_anvil(DevnetConfig()) as anvil:
        w3 = connect(anvil.rpc_url)
        deployment = await _deploy_fresh(w3, anvil.rpc_url, 0)
        chain = Chain(w3, anvil.rpc_url, deployment, "embedded", anvil)
        faucet = dev_deployer(w3)
        figures: dict[str, Any] = {"escrow_task_gas": await escrow_gas(chain, faucet)}
        for v, p in sizes:
            figures[f"{v}x{p}"] = await epoch_gas(chain, faucet, v, p)
        await w3.provider.disconnect()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["3x10", "10x50"])
    args = parser.parse_args()
    sizes = []
    for text in args.sizes:
        v, _, p = text.partition("x")
        if not (v.isdigit() and p.isdigit()) or not (1 <= int(v) <= 32 and 1 <= int(p) <= 64):
            raise SystemExit(f"error: size {text!r}: VxP with 1..32 validators, 1..64 providers")
        sizes.append((int(v), int(p)))
    figures = asyncio.run(run(sizes))
    base = figures["escrow_task_gas"]
    table = Table(title="gas of one epoch's consensus (anvil)")
    for column in ("validators x providers", "finalize", "per score", "commit", "reveal (all P)",
                   "finalize / escrow task"):  # fmt: skip
        table.add_column(column, justify="right")
    for v, p in sizes:
        f = figures[f"{v}x{p}"]
        table.add_row(
            f"{v} x {p}", f"{f['finalize']:,}", f"{f['finalize'] / (v * p):,.0f}",
            f"{f['commit']:,}", f"{f['reveal']:,}", f"{f['finalize'] / base:.1f}x",
        )  # fmt: skip
    console.print(table)
    console.print(f"baseline, same run: one plain escrow task = {base:,} gas")
    console.print(json.dumps(figures))


if __name__ == "__main__":
    main()
