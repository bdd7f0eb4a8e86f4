"""`agentmesh validators`, `epoch show` and `dispute show` against a real anvil: an
epoch two validators scored and finalized, and a jury case, read back as JSON and as
tables; bad arguments refused."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

from typer.testing import CliRunner, Result

from agentmesh.canonical import canonical_bytes
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import EscrowClient, TokenClient
from agentmesh.wallets.consensus import ConsensusClient, score_sheet
from agentmesh.wallets.jury import JuryClient, Vote, ballot
from agentmesh.wallets.staking import StakingClient
from agentmesh.wallets.wallet import Wallet
from tests.helpers import ONE_MUSD, WalletFactory, advance_time, bind_home, chain_now, h32


async def cli(home: Path, *args: str) -> Result:
    from agentmesh.cli.app import app

    return await asyncio.to_thread(CliRunner().invoke, app, ["--home", str(home), *args])


async def as_json(home: Path, *args: str) -> Any:
    import json

    done = await cli(home, *args, "--json")
    assert done.exit_code == 0, f"{done.output} {done.exception!r}"
    return json.loads(done.stdout)


async def test_validators_epochs_and_disputes_read_back(
    chain: Chain, home: Path, deployer: Wallet, make_wallet: WalletFactory
) -> None:
    bind_home(home, chain)
    staking = StakingClient(deployer, chain.deployment.address("Staking"))
    consensus = ConsensusClient(deployer, chain.deployment.address("Consensus"))
    provider = await make_wallet(eth=5, musd=100, name="provider")
    await staking.as_wallet(provider).stake(20 * ONE_MUSD)
    validators = []
    for whole in (30, 10):
        v = await make_wallet(eth=5, musd=100)
        await staking.as_wallet(v).stake(whole * ONE_MUSD)
        await staking.as_wallet(v).register_validator()
        validators.append(v)

    shown = await as_json(home, "validators")
    assert shown["last_finalized"] is None
    assert [(v["address"], v["permit"], v["agreement"]) for v in shown["validators"]] == [
        (validators[0].address, True, None),
        (validators[1].address, True, None),
    ]

    # One epoch: both score the provider, reveal, finalize (with a pool to pay out).
    epoch = await consensus.current_epoch()
    await advance_time(chain, await consensus.epoch_end(epoch) - await chain_now(chain) + 1)
    epoch += 1
    await consensus.fund(4 * ONE_MUSD)
    sheets = [score_sheet(epoch, {provider.address: s}) for s in (9_000, 7_000)]
    for v, sheet in zip(validators, sheets, strict=True):
        await consensus.as_wallet(v).commit(sheet)
    running = await as_json(home, "epoch", "show", str(epoch))
    assert running["phase"] == "running" and not running["finalized"]
    assert [v["committed"] and not v["revealed"] for v in running["validators"]] == [True, True]
    await advance_time(chain, await consensus.epoch_end(epoch) - await chain_now(chain) + 1)
    for v, sheet in zip(validators, sheets, strict=True):
        await consensus.as_wallet(v).reveal(sheet)
    assert (await as_json(home, "epoch", "show", str(epoch)))["phase"] == "revealing"
    await advance_time(chain, await consensus.reveal_window())
    assert (await as_json(home, "epoch", "show", str(epoch)))["phase"] == "finalizable"
    await consensus.finalize(epoch)

    final = await as_json(home, "epoch", "show")  # the last finalized by default
    assert final["epoch"] == epoch and final["phase"] == "finalized"
    (scored,) = final["providers"]
    assert (scored["address"], scored["score"], scored["incentive"]) == (
        provider.address,
        9_000,  # the stake-weighted median: the 30 mUSD validator's score
        1.0,
    )
    assert scored["reward"] == 2 * ONE_MUSD  # half the pool
    rewards = {v["address"]: v["reward"] for v in final["validators"]}
    assert rewards[validators[0].address] > rewards[validators[1].address] > 0
    table = await cli(home, "epoch", "show", str(epoch))
    assert table.exit_code == 0 and "finalized" in table.stdout and "9,000" in table.stdout
    agreement = await as_json(home, "validators")
    assert agreement["last_finalized"] == epoch
    assert all(v["agreement"] > 0 for v in agreement["validators"])

    future = await cli(home, "epoch", "show", str(epoch + 5))
    assert future.exit_code == 1 and "has not started" in str(future.exception)

    # A jury case, decided.
    client = await make_wallet(eth=5, musd=100, name="client")
    escrow = EscrowClient(client, chain.deployment.address("TaskEscrow"))
    task_input = canonical_bytes({"text": "hi"})
    terms = canonical_bytes({"input_sha256": hashlib.sha256(task_input).hexdigest()})
    job_id, _ = await escrow.open(
        provider=provider.address,
        token=TokenClient(client, chain.token_address),
        amount=ONE_MUSD,
        deadline=await chain_now(chain) + 3600,
        review_window=600,
        arbiter=chain.deployment.address("Jury"),
        terms_hash=hashlib.sha256(terms).digest(),
    )
    as_provider = EscrowClient(provider, escrow.address)
    await as_provider.accept(job_id)
    await as_provider.submit(job_id, hashlib.sha256(b"[1]").digest())
    await escrow.dispute(job_id, h32("bad"))
    missing = await cli(home, "dispute", "show", str(job_id))
    assert missing.exit_code == 1 and "never brought before the jury" in str(missing.exception)
    jury = JuryClient(client, chain.deployment.address("Jury"))
    await jury.open(job_id)
    await jury.draw(job_id)
    await jury.show_input(job_id, terms, task_input)
    await jury.as_wallet(provider).show_result(job_id, b"[1]")
    ballots = [ballot(job_id, Vote.REFUND) for _ in validators]
    for v, b in zip(validators, ballots, strict=True):
        await jury.as_wallet(v).commit_vote(b)
    for v, b in zip(validators, ballots, strict=True):
        await jury.as_wallet(v).reveal_vote(b)
    await jury.settle(job_id)
    case = await as_json(home, "dispute", "show", str(job_id))
    assert (case["verdict"], case["input_shown"], case["result_shown"]) == ("refund", True, True)
    assert {v["juror"]: v["vote"] for v in case["jurors"]} == {
        v.address: "refund" for v in validators
    }
    assert case["slashed"] > 0 and case["compensation"] == case["slashed"] - ONE_MUSD
    text = await cli(home, "dispute", "show", str(job_id))
    assert text.exit_code == 0 and "refund" in text.stdout and "slashed" in text.stdout
