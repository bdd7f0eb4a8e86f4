"""Validation benchmark: gas of finalizing one epoch, gas of one jury dispute, and a
validator's time per provider per epoch.

    .venv/bin/python bench/validation_bench.py [--sizes 3x10 10x50] [--no-agents]

- **Epoch.** For each size VxP on a throw-away anvil: V validators with permits (stakes
  10..V*10 mUSD) commit and reveal random scores (0..10,000) for every one of P ranked
  providers, and one `finalize` computes the stake-weighted medians, clipping,
  incentives and dividends and pays a funded pool out. Prints the finalize gas, the gas
  of one commit and of one reveal of P scores.
- **Jury.** One disputed job of the suite's escrow decided by the suite's jury of three:
  open (fee), draw, both parties' evidence, three commits, three reveals, settle (with
  the slash): the gas of each step and in all.
- **Validator time.** Three providers of ``embed`` on the real model (honest, garbage,
  impostor) and one validator: the wall time of one epoch's probing and commit (fresh
  buyer identity funded and emptied, canaries, re-executions on its own model) per
  provider, next to an ordinary buyer's time for the same number of paid calls to the
  same providers.

The gas baseline, measured in the same run: one plain escrow task (open, accept, submit,
release, feedback).
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


async def jury_gas(chain: Chain, faucet: Wallet) -> dict[str, int]:
    """Gas of each step of one dispute decided by the suite's jury of three."""
    import hashlib

    from agentmesh.canonical import canonical_bytes
    from agentmesh.wallets.clients import EscrowClient
    from agentmesh.wallets.jury import JuryClient, Vote, ballot

    staking = StakingClient(faucet, chain.deployment.address("Staking"))
    provider, client = await funded(chain, faucet, 100), await funded(chain, faucet, 100)
    await staking.as_wallet(provider).stake(20 * MUSD)
    jurors = [await funded(chain, faucet, 100) for _ in range(3)]
    for wallet in jurors:
        await staking.as_wallet(wallet).stake(30 * MUSD)
        await staking.as_wallet(wallet).register_validator()
    task_input = canonical_bytes({"text": "a ticket"})
    terms = canonical_bytes({"input_sha256": hashlib.sha256(task_input).hexdigest()})
    escrow = EscrowClient(client, chain.deployment.address("TaskEscrow"))
    now = int((await chain.w3.eth.get_block("latest"))["timestamp"])
    job_id, _ = await escrow.open(
        provider=provider.address, token=TokenClient(client, chain.token_address),
        amount=MUSD, deadline=now + 3600, review_window=600,
        arbiter=chain.deployment.address("Jury"), terms_hash=hashlib.sha256(terms).digest(),
    )  # fmt: skip
    await EscrowClient(provider, escrow.address).accept(job_id)
    await EscrowClient(provider, escrow.address).submit(job_id, hashlib.sha256(b"[0]").digest())
    await escrow.dispute(job_id, bytes(32))
    jury = JuryClient(client, chain.deployment.address("Jury"))
    gas: dict[str, int] = {}
    gas["open"] = int((await jury.open(job_id))["gasUsed"])  # after its fee's approve
    gas["draw"] = int((await jury.draw(job_id))["gasUsed"])
    gas["show_input"] = int((await jury.show_input(job_id, terms, task_input))["gasUsed"])
    shown = await jury.as_wallet(provider).show_result(job_id, b"[0]")
    gas["show_result"] = int(shown["gasUsed"])
    votes = [ballot(job_id, Vote.REFUND) for _ in jurors]
    gas["commits"] = sum(
        [
            int((await jury.as_wallet(w).commit_vote(b))["gasUsed"])
            for w, b in zip(jurors, votes, strict=True)
        ]
    )
    gas["reveals"] = sum(
        [
            int((await jury.as_wallet(w).reveal_vote(b))["gasUsed"])
            for w, b in zip(jurors, votes, strict=True)
        ]
    )
    gas["settle"] = int((await jury.settle(job_id))["gasUsed"])
    gas["total"] = sum(gas.values())
    return gas


async def validator_time(chain: Chain, faucet: Wallet) -> dict[str, float]:
    """Seconds one validator spends on an epoch per provider, and an ordinary buyer's
    seconds for the same calls."""
    import tempfile
    from pathlib import Path

    from agentmesh.agents.agent import Agent
    from agentmesh.agents.validation_cast import (
        garbage_embedder,
        honest_embedder,
        impostor_embedder,
    )
    from agentmesh.agents.validator import Validator, ValidatorSettings
    from agentmesh.config import AgentConfig, ChainConfig, Config, MeshConfig
    from agentmesh.llm import LocalModel

    settings = ValidatorSettings(canaries=2, reexec=2)
    calls = settings.canaries * 4 + settings.reexec
    staking = StakingClient(faucet, chain.deployment.address("Staking"))
    model = LocalModel.default()
    with tempfile.TemporaryDirectory(prefix="agentmesh-bench-") as tmp:
        home = Path(tmp)
        (home / "deployments").mkdir()
        chain.deployment.save(home / "deployments" / f"{chain.deployment.chain_id}.json")
        config = Config(
            chain=ChainConfig(rpc_url=chain.rpc_url),
            agent=AgentConfig(faucet=False),
            mesh=MeshConfig(heartbeat_s=0.5),
        )
        cast = [
            honest_embedder("honest", model=model),
            garbage_embedder("garbage"),
            impostor_embedder("impostor", model=model),
        ]
        validator, buyer = Agent("validator", model=model), Agent("buyer")
        for agent in (*cast, validator, buyer):
            wallet = await funded(chain, faucet, 100)
            await staking.as_wallet(wallet).stake(20 * MUSD)
            if agent is validator:
                await staking.as_wallet(wallet).register_validator()
            agent.bind(home=home, config=config, wallet=wallet.account)
        try:
            for agent in (*cast, validator, buyer):
                await agent.start()
            await buyer.wait_for_providers("embed", count=3, timeout=60)
            role = Validator(validator, settings)
            consensus = ConsensusClient(faucet, chain.deployment.address("Consensus"))
            record = await role.score_and_commit(await consensus.current_epoch())
            role.close()
            started = time.perf_counter()
            for card in buyer.node.find("embed"):
                for n in range(calls):
                    await buyer.call(card, "embed", text=f"an ordinary request #{n}")
            ordinary = time.perf_counter() - started
        finally:
            for agent in (buyer, validator, *cast):
                if agent.started:
                    await agent.stop()
            model.close()
    return {
        "validator_s_per_provider": round(record.seconds / len(cast), 3),
        "ordinary_buyer_s_per_provider": round(ordinary / len(cast), 3),
        "calls_per_provider": calls,
    }


async def run(sizes: list[tuple[int, int]], agents: bool) -> dict[str, Any]:
    with start_anvil(DevnetConfig()) as anvil:
        w3 = connect(anvil.rpc_url)
        deployment = await _deploy_fresh(w3, anvil.rpc_url, 0)
        chain = Chain(w3, anvil.rpc_url, deployment, "embedded", anvil)
        faucet = dev_deployer(w3)
        figures: dict[str, Any] = {"escrow_task_gas": await escrow_gas(chain, faucet)}
        figures["jury"] = await jury_gas(chain, faucet)
        for v, p in sizes:
            figures[f"{v}x{p}"] = await epoch_gas(chain, faucet, v, p)
        if agents:
            figures["validator"] = await validator_time(chain, faucet)
        await w3.provider.disconnect()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["3x10", "10x50"])
    parser.add_argument("--no-agents", action="store_true", help="skip the validator timing")
    args = parser.parse_args()
    sizes = []
    for text in args.sizes:
        v, _, p = text.partition("x")
        if not (v.isdigit() and p.isdigit()) or not (1 <= int(v) <= 32 and 1 <= int(p) <= 64):
            raise SystemExit(f"error: size {text!r}: VxP with 1..32 validators, 1..64 providers")
        sizes.append((int(v), int(p)))
    figures = asyncio.run(run(sizes, not args.no_agents))
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
    jury = figures["jury"]
    steps = Table(title="gas of one dispute decided by a jury of three (anvil)")
    steps.add_column("step")
    steps.add_column("gas", justify="right")
    names = {"open": "open (the client; pays the fee)", "draw": "draw 3 jurors",
             "show_input": "show terms and input", "show_result": "show result",
             "commits": "3 vote commits", "reveals": "3 vote reveals",
             "settle": "settle (escrow refund, slash, pay jurors)"}  # fmt: skip
    for key, name in names.items():
        steps.add_row(name, f"{jury[key]:,}")
    steps.add_row("total", f"{jury['total']:,}")
    steps.add_row("total / plain escrow task", f"{jury['total'] / base:.1f}x")
    console.print(steps)
    console.print(f"baseline, same run: one plain escrow task = {base:,} gas")
    if "validator" in figures:
        t = figures["validator"]
        console.print(
            f"validator time per provider per epoch (probes, {t['calls_per_provider']} paid "
            f"calls, re-execution, fresh identity): {t['validator_s_per_provider']} s; "
            f"an ordinary buyer's same calls: {t['ordinary_buyer_s_per_provider']} s "
            f"({t['validator_s_per_provider'] / t['ordinary_buyer_s_per_provider']:.1f}x)"
        )
    console.print(json.dumps(figures))


if __name__ == "__main__":
    main()
