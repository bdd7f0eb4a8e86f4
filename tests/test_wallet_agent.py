"""CLI purchases through the wallet's agent: many buyers of one wallet, nothing left
waiting, `task resume` / `task refund`, and what the commands say.

Real devnet, real CLI processes (each `agentmesh task request` is its own process),
the wallet's agent as a real background process; providers in-process where the test
is about the buyer, as `agentmesh run` processes where one is killed.
"""

from __future__ import annotations

import asyncio
import json
import signal
from pathlib import Path

import pytest
from eth_account import Account

from agentmesh.agents.agent import Agent
from agentmesh.agents.control import running_pid, stop_wallet_agents
from agentmesh.agents.outcome import TaskFailed
from agentmesh.agents.records import AgentRecords
from agentmesh.agents.service import ServiceContext
from agentmesh.chain.devnet import DEV_DEPLOYER_KEY
from agentmesh.config import Config
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import JobStatus, TokenClient
from agentmesh.wallets.keystore import Keystore
from agentmesh.wallets.wallet import Wallet
from tests.helpers import (
    PASSWORD,
    TEST_SCRYPT_N,
    TEXT,
    Ledger,
    advance_time,
    bind_home,
    chain_now,
    cli_process_async,
    escrow_for,
    eventually,
    fee_of,
    free_port,
    fund,
    net,
    new_key,
    start_provider,
    stop_agent,
    wait_gone,
)

PRICE = 30_000  # 0.03 mUSD
BUYER = "cli-requester"


async def make_buyer(home: Path, deployer: Wallet, token: TokenClient, musd: int = 5) -> str:
    buyer = Keystore(home, scrypt_n=TEST_SCRYPT_N).create("requester", PASSWORD)
    await fund(deployer, token, buyer.address, musd=musd)
    return buyer.address


async def make_seller(home: Path, config: Config, deployer: Wallet, token: TokenClient) -> Agent:
    key = new_key()
    await fund(deployer, token, Account.from_key(key).address, musd=0)
    seller = Agent("seller", wallet=key, home=home, config=config)

    @seller.service("shout", price="0.03 mUSD")
    async def shout(ctx: ServiceContext, text: str) -> str:
        return text.upper()

    return seller


def buyer_task(home: Path, task: str) -> tuple[str, str, int | None]:
    """(state, status, job id) of purchase ``task`` in the wallet agent's records."""
    records = AgentRecords(home / "agents" / BUYER / "agent.db")
    try:
        row = records.task("r:" + task)
        assert row is not None, f"no purchase {task}"
        return row.state, row.status, row.job_id
    finally:
        records.close()


async def request(home: Path, *args: str) -> dict[str, object]:
    done = await cli_process_async(
        home, "task", "request", "shout", "--budget", "0.1", "--json", *args
    )
    assert done.returncode == 0, done.stdout + done.stderr
    parsed: dict[str, object] = json.loads(done.stdout)
    return parsed


async def test_eight_parallel_cli_purchases_from_one_wallet_all_settle(
    home: Path, chain: Chain, deployer: Wallet, token: TokenClient
) -> None:
    config = bind_home(home, chain)
    buyer = await make_buyer(home, deployer, token)
    seller = await make_seller(home, config, deployer, token)
    escrow = escrow_for(chain, deployer).address
    async with seller:
        ledger = await Ledger(token, escrow, buyer, seller.address).open()
        outcomes = await asyncio.gather(*(request(home, "--text", f"n{i}") for i in range(8)))
        assert sorted(str(o["result"]) for o in outcomes) == [f"N{i}" for i in range(8)]
        assert all(o["phase"] == "settled" and o["price"] == PRICE for o in outcomes)
        assert len({o["job_id"] for o in outcomes}) == 8  # eight jobs, one nonce sequence
        assert len({o["task"] for o in outcomes}) == 8  # each its own task
        assert await ledger.conserved() == [-8 * PRICE, 8 * net(PRICE), 0, 8 * fee_of(PRICE)]

        # A settled purchase has nothing to refund or resume.
        task = str(outcomes[0]["task"])
        refused = await cli_process_async(home, "task", "refund", task[:10])
        assert refused.returncode == 1
        assert f"job {outcomes[0]['job_id']} of task {task[:12]} is released: nothing to " in (
            refused.stderr
        )
        again = await cli_process_async(home, "task", "resume", task[:10])
        assert again.returncode == 1
        assert "has already ended (settled); nothing to resume" in again.stderr


async def test_no_wait_hands_over_and_the_wallet_agent_finishes_then_exits(
    home: Path, chain: Chain, deployer: Wallet, token: TokenClient
) -> None:
    config = bind_home(home, chain, wallet_agent_idle_s=1)
    await make_buyer(home, deployer, token)
    seller = await make_seller(home, config, deployer, token)
    async with seller:
        handed = await request(home, "--text", "later", "--no-wait")
        task = str(handed["task"])
        assert handed["agent"] == BUYER
        pid = int(str(handed["pid"]))
        assert running_pid(home, BUYER) == pid
        # Nobody waits: the wallet's agent settles it, then leaves when idle.
        state = await eventually(lambda: buyer_task(home, task), lambda t: t[1] == "done")
        assert state[:2] == ("settled", "done")
        assert wait_gone(pid)
        assert running_pid(home, BUYER) is None
        assert await token.balance_of(seller.address) == net(PRICE)


async def test_provider_killed_after_funding_buyer_refunded_at_deadline_nobody_acting(
    home: Path, chain: Chain, deployer: Wallet, token: TokenClient
) -> None:
    bind_home(home, chain)
    buyer = await make_buyer(home, deployer, token)
    entry = Keystore(home, scrypt_n=TEST_SCRYPT_N).create("slow", PASSWORD)
    await fund(deployer, token, entry.address, musd=0)
    escrow = escrow_for(chain, deployer)
    ledger = await Ledger(token, escrow.address, buyer, entry.address).open()
    gate, log, port = home / "gate", home / "provider.log", free_port()
    process, _ = start_provider(home, port, gate, log)  # its service waits for the gate
    try:
        handed = await cli_process_async(
            home,
            "task",
            "request",
            "summarize",
            "--text",
            TEXT,
            "--budget",
            "0.5",
            "--deadline",
            "30",
            "--no-wait",
            "--json",
        )
        assert handed.returncode == 0, handed.stdout + handed.stderr
        task = json.loads(handed.stdout)["task"]
        state = await eventually(lambda: buyer_task(home, task), lambda t: t[0] == "notified")
        job_id = state[2]
        assert job_id is not None
        job = await escrow.get_job(job_id)
        await eventually(lambda: escrow.get_job(job_id), lambda j: j.status == JobStatus.ACCEPTED)

        # Before the deadline the deposit is not the buyer's to take back.
        early = await cli_process_async(home, "task", "refund", task)
        assert early.returncode == 1
        assert f"job {job_id} is within its deadline" in early.stderr
        assert "the provider may still deliver" in early.stderr
        listing = await cli_process_async(home, "task", "list", "--json")
        held = {
            row["task"]: row["locked"]
            for row in json.loads(listing.stdout)
            if row["agent"] == BUYER  # the provider's side of it is in this home too
        }
        assert held[task] == {
            "amount": job.amount,
            "until": job.deadline,
            "release": "paid on delivery and release, or back to the buyer after the deadline",
        }

        process.send_signal(signal.SIGKILL)  # the provider dies mid-work
        assert wait_gone(process.pid)
        process.wait()
        await advance_time(chain, 31)
        # No command, no person: the wallet's agent refunds at the deadline.
        state = await eventually(
            lambda: buyer_task(home, task), lambda t: t[1] == "refunded", timeout=60
        )
        assert state[:2] == ("refunded", "refunded")
        assert (await escrow.get_job(job_id)).status == JobStatus.REFUNDED
        assert await ledger.conserved() == [0, 0, 0, 0]  # every token back where it was

        late = await cli_process_async(home, "task", "refund", task)
        assert late.returncode == 0, late.stderr
        assert f"job {job_id} was refunded already" in late.stdout

        # The provider comes back after the deadline: it abandons, never works.
        gate.touch()
        log.write_text("")
        process, _ = start_provider(home, port, gate, log)
        provider_records = AgentRecords(home / "agents" / "slow-summarizer" / "agent.db")
        try:
            row = await eventually(
                lambda: provider_records.task("p:" + task),
                lambda r: r is not None and r.status != "active",
                timeout=60,
            )
            assert row is not None and row.state == "abandoned"
            assert "deadline passed" in row.detail
            assert "submit" not in json.loads(row.txs)
        finally:
            provider_records.close()
        text = log.read_text()
        assert "DeadlinePassed" not in text and "Traceback" not in text
        assert await ledger.conserved() == [0, 0, 0, 0]
    finally:
        stop_agent(process)


async def test_resume_brings_back_a_stopped_wallet_agent_that_finishes_the_task(
    home: Path, chain: Chain, deployer: Wallet, token: TokenClient
) -> None:
    bind_home(home, chain)
    buyer = await make_buyer(home, deployer, token)
    entry = Keystore(home, scrypt_n=TEST_SCRYPT_N).create("slow", PASSWORD)
    await fund(deployer, token, entry.address, musd=0)
    escrow = escrow_for(chain, deployer)
    ledger = await Ledger(token, escrow.address, buyer, entry.address).open()
    gate, log, port = home / "gate", home / "provider.log", free_port()
    process, _ = start_provider(home, port, gate, log)
    try:
        handed = await cli_process_async(
            home, "task", "request", "summarize", "--text", TEXT,
            "--budget", "0.5", "--deadline", "30", "--no-wait", "--json",
        )  # fmt: skip
        assert handed.returncode == 0, handed.stdout + handed.stderr
        task = json.loads(handed.stdout)["task"]
        await eventually(lambda: buyer_task(home, task), lambda t: t[0] == "notified")
        stop_agent(process)
        assert stop_wallet_agents(home)  # the person's machine went down, say
        await advance_time(chain, 31)

        resumed = await cli_process_async(home, "task", "resume", task[:8])
        assert resumed.returncode == 1  # it ended, but not settled
        assert f"task {task[:12]} ended refunded: nothing delivered before the deadline" in (
            resumed.stderr
        )
        assert buyer_task(home, task)[:2] == ("refunded", "refunded")
        assert await ledger.conserved() == [0, 0, 0, 0]
    finally:
        stop_agent(process)


async def test_what_the_commands_say(
    home: Path, chain: Chain, deployer: Wallet, token: TokenClient
) -> None:
    config = bind_home(home, chain)
    await make_buyer(home, deployer, token)
    seller = await make_seller(home, config, deployer, token)
    async with seller:
        cases = [
            (("shout", "--provider", "0xdeadbeef"), "--provider '0xdeadbeef' is not an address"),
            (("shout", "--budget", "0"), "invalid budget '0': must be above 0 mUSD"),
            (
                ("shuot",),
                "no provider on the mesh offers 'shuot'; offered now: shout (1 provider)",
            ),
            (
                ("shout", "--provider", "0x" + "12" * 20),
                f"none of the chosen providers (0x{'12' * 20}) offers 'shout'",
            ),
        ]
        for args, message in cases:
            budget = () if "--budget" in args else ("--budget", "0.1")
            done = await cli_process_async(home, "task", "request", *args, "--text", "x", *budget)
            assert done.returncode == 1, done.stdout
            assert message in done.stderr, done.stderr
        unknown = await cli_process_async(home, "task", "refund", "abcdef12")
        assert "no purchase 'abcdef12' in this home" in unknown.stderr
        sold = await request(home, "--text", "hi")
        # A sale is not the seller's to refund from the CLI.
        mine = await cli_process_async(
            home, "task", "show", str(sold["task"])[:10], "--agent", "seller"
        )
        assert "0.03 mUSD" in mine.stdout and "trace" in mine.stdout
    stop_wallet_agents(home)
    (home / "config.toml").write_text(f"[wallet]\nscrypt_n = {TEST_SCRYPT_N}\n")
    nochain = await cli_process_async(
        home, "task", "request", "shout", "--text", "x", "--budget", "0.1"
    )
    assert nochain.returncode == 1
    assert "no chain to buy on: start one with `agentmesh devnet up`" in nochain.stderr


async def test_a_dispute_is_split_by_its_arbiter_or_returns_to_the_buyer_after_its_timeout(
    home: Path,
    chain: Chain,
    deployer: Wallet,
    token: TokenClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config = bind_home(home, chain, arbiter="deployer")  # a key decides, not the jury
    buyer = await make_buyer(home, deployer, token)
    keystore = Keystore(home, scrypt_n=TEST_SCRYPT_N)
    keystore.import_key("arbiter", DEV_DEPLOYER_KEY, PASSWORD)  # the devnet's arbiter
    keystore.create("someone", PASSWORD)
    seller = await make_seller(home, config, deployer, token)
    escrow = escrow_for(chain, deployer)
    monkeypatch.setenv("AGENTMESH_PASSWORD", PASSWORD)
    # The wallet's own agent buys twice and refuses both results: two disputed jobs.
    async with seller, Agent(BUYER, wallet="requester", home=home, config=config) as agent:
        ledger = await Ledger(token, escrow.address, buyer, seller.address).open()
        disputed = []
        for n in range(3):
            with pytest.raises(TaskFailed, match="result failed the buyer's check") as failed:
                await agent.buy("shout", text=f"d{n}", budget="0.1", check=lambda _: False)
            disputed.append(failed.value.outcome)
    assert [o.phase for o in disputed] == ["disputed"] * 3
    split, lapsed, unattended = disputed
    assert None not in (split.job_id, lapsed.job_id, unattended.job_id)
    assert lapsed.job_id is not None and unattended.job_id is not None
    job = await escrow.get_job(lapsed.job_id)
    ends = job.dispute_ends_at()
    assert ends is not None

    # Before the timeout the buyer cannot take it back: the arbiter decides.
    early = await cli_process_async(home, "task", "refund", lapsed.conversation[:10])
    assert early.returncode == 1
    assert f"job {lapsed.job_id} of task {lapsed.conversation[:12]} is disputed: its arbiter" in (
        early.stderr
    )
    listing = await cli_process_async(home, "task", "list", "--json")
    locked = {r["task"]: r["locked"] for r in json.loads(listing.stdout) if r["agent"] == BUYER}
    assert locked[lapsed.conversation]["until"] == ends
    assert "split by the arbiter" in locked[lapsed.conversation]["release"]

    # Only the arbiter resolves; it splits the first deposit.
    resolve = ("task", "resolve", str(split.job_id), "--to-provider", "0.01", "--json")
    wrong = await cli_process_async(home, *resolve, "--wallet", "someone")
    assert wrong.returncode == 1
    assert f"is not the arbiter of job {split.job_id} (its arbiter is {job.arbiter})" in (
        wrong.stderr
    )
    too_much = await cli_process_async(home, *resolve[:4], "0.5", "--wallet", "arbiter")
    assert too_much.returncode == 1
    assert "--to-provider 0.5 mUSD is more than the deposit" in too_much.stderr
    done = await cli_process_async(home, *resolve, "--wallet", "arbiter")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["provider_amount"] == 10_000
    assert json.loads(done.stdout)["client_amount"] == PRICE - 10_000
    again = await cli_process_async(home, *resolve, "--wallet", "arbiter")
    assert f"job {split.job_id} is resolved, not disputed: nothing to resolve" in again.stderr

    # Nobody resolves the other two: after the timeout they are the buyer's again. (The
    # wallet's agent, up since the first refund, would take them back by itself at its
    # next look: stopped here, so the arbiter's late attempt is what is tested first.)
    stop_wallet_agents(home)
    await advance_time(chain, ends - await chain_now(chain) + 1)
    late = await cli_process_async(
        home, "task", "resolve", str(lapsed.job_id), "--to-provider", "0", "--wallet", "arbiter"
    )
    assert late.returncode == 1
    assert f"the dispute of job {lapsed.job_id} timed out at" in late.stderr
    back = await cli_process_async(home, "task", "refund", lapsed.conversation[:10], "--json")
    assert back.returncode == 0, back.stderr
    assert json.loads(back.stdout)["job_id"] == lapsed.job_id
    assert (await escrow.get_job(lapsed.job_id)).status == JobStatus.REFUNDED
    # The third nobody asks for: the wallet's agent (running since that command) sees
    # its arbiter's time is over and takes the deposit back by itself.
    unattended_job = await eventually(
        lambda: escrow.get_job(unattended.job_id),
        lambda j: j.status == JobStatus.REFUNDED,
        timeout=30,
    )
    assert unattended_job.status == JobStatus.REFUNDED
    records = await eventually(
        lambda: buyer_task(home, unattended.conversation), lambda t: t[1] == "refunded"
    )
    assert records[:2] == ("refunded", "refunded")
    assert (
        await eventually(lambda: buyer_task(home, split.conversation), lambda t: t[1] == "done")
    )[:2] == ("disputed", "done")  # resolved by its arbiter
    # Conserved: the buyer paid 0.01 of three deposits, the seller got it.
    assert await ledger.conserved() == [-10_000, net(10_000), 0, fee_of(10_000)]
