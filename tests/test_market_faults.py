"""Every way a trade can go wrong ends with the money where it belongs.

Real devnet, agents as `agentmesh run` processes (plus one in-process agent per test
to observe from), timers driven by moving the chain clock. Each test ends with the
conservation check and no job left open past its deadline plus review window.
"""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
from pathlib import Path

import pytest
import zmq
import zmq.asyncio
from eth_account import Account
from typer.testing import CliRunner

from agentmesh.agents.agent import Agent, TaskFailed
from agentmesh.agents.records import AgentRecords
from agentmesh.agents.service import ServiceContext
from agentmesh.cli.app import app
from agentmesh.envelope import Envelope
from agentmesh.mesh.card import AgentCard
from agentmesh.mesh.node import MeshNode, RemoteError
from agentmesh.protocols.negotiation import PROTOCOL, VERSION, Ack, Award, Funded
from agentmesh.store import Store
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import EscrowClient, JobStatus, TokenClient
from agentmesh.wallets.keystore import Keystore
from agentmesh.wallets.wallet import Wallet
from tests.helpers import (
    PASSWORD,
    TEST_SCRYPT_N,
    TEXT,
    Ledger,
    advance_time,
    assert_settled_for_good,
    bind_home,
    escrow_for,
    eventually,
    fee_of,
    free_port,
    fund,
    funded_key,
    net,
    new_key,
    raw_dealer,
    start_provider,
    stop_agent,
    wait_for_status,
    wait_gone,
)

AGENTS = Path(__file__).parent / "agents"
REVIEW_S = 30
DEADLINE_S = 30
PRICE = 50_000


def kill(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    assert wait_gone(process.pid)
    process.wait()


async def provider_wallet(home: Path, name: str, deployer: Wallet, token: TokenClient) -> str:
    entry = Keystore(home, scrypt_n=TEST_SCRYPT_N).create(name, PASSWORD)
    await fund(deployer, token, entry.address, musd=0)
    return entry.address


async def buyer_key(deployer: Wallet, token: TokenClient) -> bytes:
    return await funded_key(deployer, token, musd=10)


async def test_provider_killed_after_funded_never_back_requester_reclaims(
    home: Path, chain: Chain, deployer: Wallet, token: TokenClient
) -> None:
    config = bind_home(home, chain, review_window_s=REVIEW_S)
    seller = await provider_wallet(home, "slow", deployer, token)
    key = await buyer_key(deployer, token)
    process, _ = start_provider(home, free_port(), home / "never", home / "slow.log")
    try:
        async with Agent("buyer", wallet=key, home=home, config=config) as requester:
            ledger = await Ledger(token, requester.escrow.address, seller, requester.address).open()
            await requester.wait_for_providers("summarize", timeout=30)
            buying = asyncio.create_task(
                requester.buy("summarize", text=TEXT, budget="0.5", deadline_s=DEADLINE_S)
            )
            job_id = await wait_for_status(
                chain, requester.wallet, JobStatus.ACCEPTED, watching=buying
            )
            kill(process)  # mid-work, and it never comes back
            # Let time pass on purpose: the requester must keep waiting, not give up early.
            await asyncio.sleep(1)
            assert not buying.done()  # waiting for a delivery that will not come
            await advance_time(chain, DEADLINE_S + 1)
            with pytest.raises(TaskFailed, match="nothing delivered") as failed:
                await asyncio.wait_for(buying, 30)
            assert failed.value.outcome.phase == "refunded"
            assert failed.value.outcome.txs.get("refund", "").startswith("0x")
            assert await ledger.conserved() == [0, 0, 0, 0]  # the deposit came back whole
            await assert_settled_for_good(chain, job_id)
            assert requester.counters["timeouts"] == 1
    finally:
        stop_agent(process)


async def test_requester_killed_after_delivery_provider_claims_after_review(
    home: Path, chain: Chain, deployer: Wallet, token: TokenClient
) -> None:
    config = bind_home(home, chain, review_window_s=REVIEW_S)
    buyer = await provider_wallet(home, "stall", deployer, token)
    await token.mint(buyer, 10 * 10**6)
    key = new_key()
    await fund(deployer, token, Account.from_key(key).address, musd=0)
    seller = Agent("seller", wallet=key, home=home, config=config)

    @seller.service("summarize", price="0.05 mUSD")
    async def summarize(ctx: ServiceContext, text: str) -> str:
        return text[:40]

    async with seller:
        ledger = await Ledger(token, seller.escrow.address, seller.address, buyer).open()
        checking = home / "checking"  # the stalling buyer touches it when its check starts
        process, _ = start_provider(
            home,
            free_port(),
            checking,
            home / "stall.log",
            AGENTS / "stalling_requester.py",
            "stall",
        )
        try:
            job_id = await wait_for_status(chain, seller.wallet, JobStatus.SUBMITTED)
            # Delivered and acknowledged: the buyer is checking.
            await eventually(lambda: seller.records.tasks()[0], lambda t: t.state == "delivered")
            assert await eventually(checking.exists, timeout=30), "the buyer never ran its check"
            kill(process)  # frozen in its check: it never releases
            job = await escrow_for(chain, seller.wallet).get_job(job_id)
            assert job.status == JobStatus.SUBMITTED
            await advance_time(chain, REVIEW_S + 1)
            task = await eventually(lambda: seller.records.tasks()[0], lambda t: t.status == "done")
            assert task.state == "claimed" and task.status == "done"
            assert await ledger.conserved() == [net(PRICE), -PRICE, 0, fee_of(PRICE)]
            await assert_settled_for_good(chain, job_id)
        finally:
            stop_agent(process)


async def test_garbage_delivery_is_disputed_and_frozen_until_the_arbiter(
    home: Path, chain: Chain, deployer: Wallet, token: TokenClient
) -> None:
    config = bind_home(home, chain, review_window_s=REVIEW_S, arbiter="deployer")
    seller = await provider_wallet(home, "garbage", deployer, token)
    key = await buyer_key(deployer, token)
    log = home / "garbage.log"
    process, _ = start_provider(
        home, free_port(), home / "unused", log, AGENTS / "garbage_provider.py", "garbage"
    )
    try:
        async with Agent("buyer", wallet=key, home=home, config=config) as requester:
            escrow = requester.escrow.address
            ledger = await Ledger(token, escrow, seller, requester.address).open()
            await requester.wait_for_providers("summarize", timeout=30)
            with pytest.raises(TaskFailed, match="blank") as failed:
                await requester.buy("summarize", text=TEXT, budget="0.5")
            outcome = failed.value.outcome
            assert outcome.phase == "disputed" and outcome.job_id is not None
            assert await ledger.conserved() == [0, -PRICE, PRICE, 0]  # frozen in escrow
            # The review window passes: the provider may not claim a disputed job.
            await advance_time(chain, REVIEW_S + 1)
            records = AgentRecords(home / "agents" / "garbage-summarizer" / "agent.db")
            try:
                task = await eventually(
                    lambda: records.tasks()[0], lambda t: t.status == "disputed"
                )
                assert task.state == "disputed"
            finally:
                records.close()
            job = await requester.escrow.get_job(outcome.job_id)
            assert job.status == JobStatus.DISPUTED
            assert await ledger.conserved() == [0, -PRICE, PRICE, 0]
            # The arbiter decides: most back to the buyer, a little to the provider.
            arbiter = EscrowClient(deployer, escrow)
            await arbiter.resolve(outcome.job_id, PRICE // 5)
            assert await ledger.conserved() == [
                net(PRICE // 5),
                -(PRICE // 5),
                0,
                fee_of(PRICE // 5),
            ]
            await assert_settled_for_good(chain, outcome.job_id)
    finally:
        stop_agent(process)


async def _replay(frame: bytes, card: AgentCard) -> None:
    """Send a captured frame to ``card``'s ROUTER as an unknown third party would."""
    context = zmq.asyncio.Context()
    sock = raw_dealer(context, card.endpoint, card.curve_key.encode())
    try:
        await sock.send_multipart([frame])
        await asyncio.wait_for(sock.recv_multipart(), 5)  # the stored reply, re-sent
    finally:
        sock.close(0)
        context.term()


async def test_forged_award_and_replayed_funded_are_ignored_and_counted(
    home: Path, chain: Chain, deployer: Wallet, token: TokenClient
) -> None:
    config = bind_home(home, chain, review_window_s=REVIEW_S)
    seller = await provider_wallet(home, "slow", deployer, token)
    key = await buyer_key(deployer, token)
    gate = home / "gate"  # the provider holds the work until the gate opens
    process, info = start_provider(home, free_port(), gate, home / "slow.log")
    try:
        async with Agent("buyer", wallet=key, home=home, config=config) as requester:
            ledger = await Ledger(token, requester.escrow.address, seller, requester.address).open()
            await requester.wait_for_providers("summarize", timeout=30)
            buying = asyncio.create_task(requester.buy("summarize", text=TEXT, budget="0.5"))
            job_id = await wait_for_status(
                chain, requester.wallet, JobStatus.ACCEPTED, watching=buying
            )
            (task,) = requester.records.tasks()
            conversation = bytes.fromhex(task.conversation[2:])
            card = requester.node.peers.get(seller)
            assert card is not None
            # Mid-trade, a third agent forges the requester's step.
            async with MeshNode(new_key(), name="mallory", config=config.mesh) as mallory:
                with pytest.raises(RemoteError) as forged:
                    await mallory.request(
                        card.card,
                        Award(price=PRICE),
                        protocol=PROTOCOL,
                        version=VERSION,
                        expect=(Ack,),
                        conversation=conversation,
                    )
                assert forged.value.code == "not_party"

            # ... and replays the requester's signed Funded, captured off the wire.
            def sent_funded() -> list[bytes]:
                store = Store(home / "mesh" / f"{requester.address}.db")
                try:
                    with store.engine.connect() as db:
                        frames = [
                            row.frame
                            for row in db.exec_driver_sql(
                                "SELECT frame FROM messages"
                                " WHERE direction = 'out' AND conversation = ?",
                                (conversation,),
                            )
                        ]
                finally:
                    store.close()
                digest = Funded.schema_digest()
                return [f for f in frames if Envelope.from_frame(f).schema_digest == digest]

            # The requester's sent log is flushed in the background (every 50 ms).
            funded = await eventually(sent_funded)
            assert len(funded) == 1
            await _replay(funded[0], card.card)

            def provider_counters() -> dict[str, int]:
                stats = CliRunner().invoke(app, ["--home", str(home), "mesh", "stats", "--json"])
                assert stats.exit_code == 0, stats.output
                counters: dict[str, int] = json.loads(stats.output).get(info["address"], {})
                return counters

            # The provider saves its counters in the background (every second).
            counters = await eventually(
                provider_counters,
                lambda c: c.get("rejected.not_party") == 1 and c.get("rejected.duplicate", 0) >= 1,
                interval=0.2,
            )
            assert counters["rejected.not_party"] == 1
            assert counters["rejected.duplicate"] >= 1
            # Neither moved the trade: it goes on and settles as agreed.
            assert (await requester.escrow.get_job(job_id)).status == JobStatus.ACCEPTED
            gate.touch()
            outcome = await asyncio.wait_for(buying, 120)
            assert outcome.settled and outcome.job_id == job_id
            job = await requester.escrow.get_job(outcome.job_id or 0)
            assert job.status == JobStatus.RELEASED
            assert await ledger.conserved() == [net(PRICE), -PRICE, 0, fee_of(PRICE)]
            await assert_settled_for_good(chain, outcome.job_id or 0)
    finally:
        stop_agent(process)
