"""Payment channels when an agent process dies: the money ends where the work was done.

Real devnet, agents run as ``agentmesh run`` processes (tests/agents/channel_*.py)
and killed with SIGKILL mid-stream. The provider appends each call it works on to a
file and the requester each answer it got, so a test compares what is claimed on
chain with the work really done and the answers really seen. Every test checks that
the mUSD of payer, payee and the PaymentChannel contract is conserved.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from agentmesh.agents.agent import Agent
from agentmesh.config import Config
from agentmesh.errors import ContractRevertError, PeerUnreachable
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.channel import PaymentChannelClient
from agentmesh.wallets.clients import TokenClient
from agentmesh.wallets.keystore import Keystore
from agentmesh.wallets.wallet import Wallet
from tests.helpers import (
    PASSWORD,
    TEST_AGENTS,
    TEST_SCRYPT_N,
    Ledger,
    advance_time,
    bind_home,
    chain_now,
    eventually,
    fee_of,
    free_port,
    fund,
    net,
    new_key,
    wait_gone,
    with_agent_settings,
)

PROVIDER = TEST_AGENTS / "channel_provider.py"
REQUESTER = TEST_AGENTS / "channel_requester.py"
PRICE = 1_000  # the provider's 0.001 mUSD a call
START_S = 90  # an agent process's start on a loaded machine


def channel_home(home: Path, chain: Chain, **agent: object) -> Config:
    """``bind_home`` plus channel settings, in ``config.toml`` (for the processes) and
    in the returned config (for an agent in this process): 1 mUSD deposits, event
    polls every 0.1 s, no claim on a threshold unless ``agent`` sets one."""
    settings: dict[str, object] = {
        "channel_deposit": "1",
        "channel_claim_threshold": "1000",
        "channel_poll_s": 0.1,
        **agent,
    }
    config = bind_home(home, chain)
    path = home / "config.toml"
    extra = "".join(f"{key} = {json.dumps(value)}\n" for key, value in settings.items())
    path.write_text(path.read_text().replace("[agent]\n", "[agent]\n" + extra, 1))
    return with_agent_settings(config, **settings)


@dataclass
class Processes:
    """The agent processes a test started; any still running is killed after it."""

    home: Path
    running: list[subprocess.Popen[bytes]]

    async def start(
        self, agent_file: Path, wallet: str, env: dict[str, str], port: int = 0
    ) -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
        """``agentmesh run agent_file --wallet wallet`` with ``env``; the process and
        its ready file, once written (waited for without blocking the event loop)."""
        ready = self.home / f"{agent_file.stem}.ready"
        log = self.home / f"{agent_file.stem}.log"
        ready.unlink(missing_ok=True)
        command = [
            *(sys.executable, "-m", "agentmesh.cli.app", "--home", str(self.home), "run"),
            *(str(agent_file), "--wallet", wallet, "--ready-file", str(ready)),
            *(("--port", str(port)) if port else ()),
        ]
        with log.open("ab") as out:
            process = subprocess.Popen(
                command,
                env={**os.environ, "AGENTMESH_PASSWORD": PASSWORD, **env},
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.running.append(process)
        await eventually(
            lambda: ready.exists() or process.poll() is not None, timeout=START_S, interval=0.1
        )
        if not ready.exists():
            raise AssertionError(f"{agent_file.name} did not start: {log.read_text()}")
        info: dict[str, Any] = json.loads(ready.read_text())
        return process, info

    def log(self, agent_file: Path) -> str:
        return (self.home / f"{agent_file.stem}.log").read_text()


@pytest.fixture
def processes(home: Path) -> Iterator[Processes]:
    started = Processes(home, [])
    yield started
    for process in started.running:
        if process.poll() is None:
            process.kill()
        process.wait()


def kill_9(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    assert wait_gone(process.pid)
    process.wait()


async def keystore_wallet(
    home: Path, name: str, deployer: Wallet, token: TokenClient, musd: int
) -> str:
    entry = Keystore(home, scrypt_n=TEST_SCRYPT_N).create(name, PASSWORD)
    await fund(deployer, token, entry.address, musd=musd)
    return entry.address


def keystore_client(home: Path, name: str, chain: Chain) -> PaymentChannelClient:
    """The channel contract, sending as the keystore wallet ``name`` (a process's)."""
    account = Keystore(home, scrypt_n=TEST_SCRYPT_N).load(name, PASSWORD)
    return PaymentChannelClient(
        Wallet(account, chain.w3), chain.deployment.address("PaymentChannel")
    )


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def worked(path: Path) -> list[int]:
    """The inputs of the calls the provider worked on (its work file)."""
    return [int(line) for line in lines(path)]


def answered(path: Path) -> list[dict[str, Any]]:
    """What the requester process noted: answered calls, then its close request."""
    return [json.loads(line) for line in lines(path)]


@dataclass(frozen=True)
class Held:
    """The provider's row in its channels.db: what it stored durably."""

    channel: bytes
    latest: int
    calls: int
    claimed: int
    phase: str


def held(home: Path) -> Held | None:
    path = home / "agents" / "channel-provider" / "channels.db"
    if not path.exists():
        return None
    db = sqlite3.connect(path, timeout=10)
    try:
        rows = db.execute("SELECT id, latest, calls, claimed, phase FROM payee_channels").fetchall()
    except sqlite3.OperationalError:  # the agent has not created its tables yet
        return None
    finally:
        db.close()
    if not rows:
        return None
    ((channel, latest, calls, claimed, phase),) = rows
    return Held(bytes.fromhex(channel[2:]), int(latest), int(calls), int(claimed), phase)


async def test_provider_killed_mid_stream_claims_what_it_stored_on_restart(
    home: Path, chain: Chain, deployer: Wallet, token: TokenClient, processes: Processes
) -> None:
    config = channel_home(home, chain)
    # The requester here runs in this process (to see each call end) and gives up on a
    # silent peer after 2 tries of 2 s.
    config = config.model_copy(
        update={
            "mesh": config.mesh.model_copy(update={"request_timeout_s": 2.0, "request_retries": 1})
        }
    )
    seller = await keystore_wallet(home, "chprov", deployer, token, musd=0)
    key = new_key()
    await fund(deployer, token, Account.from_key(key).address, musd=10)
    work, hold, port = home / "work", home / "hold", free_port()
    env = {"AGENTMESH_TEST_WORK": str(work), "AGENTMESH_TEST_HOLD": str(hold)}
    provider, _ = await processes.start(PROVIDER, "chprov", env, port)
    contract = chain.deployment.address("PaymentChannel")
    async with Agent("requester", wallet=key, home=home, config=config) as requester:
        ledger = await Ledger(token, contract, seller, requester.address).open()
        await requester.wait_for_providers("double", timeout=30)
        seen: list[int] = []  # answered calls, as the requester saw them
        lost: list[tuple[int, BaseException]] = []  # calls with no answer
        stop = asyncio.Event()
        numbers = itertools.count()

        async def stream() -> None:
            for n in numbers:
                if stop.is_set():
                    return
                try:
                    result = await requester.call(seller, "double", n=n, find_timeout=30)
                except Exception as exc:  # noqa: BLE001 - checked below: only timeouts
                    lost.append((n, exc))
                    return
                assert result == 2 * n
                seen.append(n)

        workers = [asyncio.create_task(stream()) for _ in range(4)]
        try:
            await eventually(lambda: len(seen) >= 20, timeout=60)
            # Mid-stream, each of the four workers' next call gets its voucher stored and
            # its work started, then waits in the service: then it is killed.
            hold.touch()
            held_calls = await eventually(
                lambda: lines(Path(f"{hold}.held")), lambda h: len(h) == 4, timeout=30
            )
            assert len(held_calls) == 4, held_calls
            stop.set()
            kill_9(provider)
            await asyncio.wait_for(asyncio.gather(*workers), 60)
        finally:
            for task in workers:
                task.cancel()
        hold.unlink()
        assert all(isinstance(exc, PeerUnreachable) for _, exc in lost), lost
        assert sorted(n for n, _ in lost) == sorted(map(int, held_calls))
        stored = held(home)
        assert stored is not None and stored.claimed == 0 and stored.phase == "open"
        # Vouchers are taken in order, one price apart, and stored before the work: the
        # calls answered and the four in flight.
        done = worked(work)
        assert stored.latest == stored.calls * PRICE
        assert sorted(done) == sorted(seen + [n for n, _ in lost])
        assert stored.calls == len(done) == len(seen) + len(lost)

        # Back with the same home and wallet: on start it claims the voucher it stored.
        provider, info = await processes.start(PROVIDER, "chprov", env, port)
        client = requester.payer.client
        state = await eventually(lambda: client.channel(stored.channel), lambda s: s.claimed > 0)
        assert state.claimed == stored.calls * PRICE
        assert await token.balance_of(seller) == net(stored.calls * PRICE)
        restarted = held(home)
        assert restarted is not None and restarted.claimed == stored.calls * PRICE

        # The requester goes on calling through the same channel (it finds the restarted
        # provider again in the registry), then closes with it.
        for n in range(1000, 1005):
            assert await requester.call(seller, "double", n=n, find_timeout=30) == 2 * n
        channel = requester.payer.channel_to(seller)
        assert channel is not None and channel.id == stored.channel
        assert await requester.close_channel(seller) == "closed"
        state = await client.channel(stored.channel)
        # Paid for every call whose voucher it stored and the five after: the requester
        # went on from its own count, which the provider's voucher matched.
        assert state.closed and state.claimed == channel.signed == (stored.calls + 5) * PRICE
        assert worked(work)[len(done) :] == list(range(1000, 1005))
        assert await ledger.conserved() == [
            net(state.claimed),
            -state.claimed,
            0,
            fee_of(state.claimed),  # exact: every claim is a multiple of 100 base units
        ]
    assert provider.poll() is None, processes.log(PROVIDER)


async def test_requester_killed_mid_stream_provider_is_paid_for_every_call_it_answered(
    home: Path, chain: Chain, deployer: Wallet, token: TokenClient, processes: Processes
) -> None:
    # The provider claims every 5 calls while the stream runs, and the rest once the
    # payer's wallet asks the contract to close.
    channel_home(home, chain, channel_claim_threshold="0.005")
    seller = await keystore_wallet(home, "chprov", deployer, token, musd=0)
    buyer = await keystore_wallet(home, "chreq", deployer, token, musd=10)
    contract = chain.deployment.address("PaymentChannel")
    ledger = await Ledger(token, contract, seller, buyer).open()
    work, notes = home / "work", home / "answered"
    provider, _ = await processes.start(
        PROVIDER,
        "chprov",
        {"AGENTMESH_TEST_WORK": str(work), "AGENTMESH_TEST_WORK_S": "0.02"},
    )
    requester, _ = await processes.start(
        REQUESTER,
        "chreq",
        {
            "AGENTMESH_TEST_PROVIDER": seller,
            "AGENTMESH_TEST_ANSWERED": str(notes),
            "AGENTMESH_TEST_WORKERS": "4",
        },
    )
    as_payer = keystore_client(home, "chreq", chain)

    async def claimed_so_far() -> int:
        stored = held(home)
        return (await as_payer.channel(stored.channel)).claimed if stored else 0

    # Mid-stream: answers coming, and the provider already claimed on its threshold.
    await eventually(
        lambda: len(lines(notes)), lambda n: n >= 30 or requester.poll() is not None, timeout=60
    )
    assert requester.poll() is None, processes.log(REQUESTER)
    assert await eventually(claimed_so_far, timeout=30) > 0
    kill_9(requester)
    seen = [line["n"] for line in answered(notes)]

    # The provider finishes the calls it took (answering no one) ...
    stored = await eventually(
        lambda: held(home), lambda h: h is not None and h.calls == len(worked(work)), timeout=30
    )
    assert stored is not None and stored.calls == len(worked(work))
    assert stored.latest == stored.calls * PRICE
    # ... and claims them all once the payer asks the contract to close.
    await as_payer.request_close(stored.channel)
    state = await eventually(
        lambda: as_payer.channel(stored.channel),
        lambda s: s.claimed == stored.calls * PRICE,
        timeout=30,
    )
    done = worked(work)
    assert state.claimed == len(done) * PRICE == stored.calls * PRICE
    assert set(seen) <= set(done) and len(done) == len(set(done))
    assert len(seen) <= len(done) <= len(seen) + 4
    assert await token.balance_of(seller) == net(state.claimed)
    assert await chain_now(chain) < state.close_requested_at + await as_payer.challenge_delay()
    # The payer has the rest back after the challenge delay; nothing more was worked.
    await advance_time(chain, await as_payer.challenge_delay() + 1)
    await as_payer.withdraw(stored.channel)
    state = await as_payer.channel(stored.channel)
    assert state.closed and state.claimed == len(done) * PRICE
    assert worked(work) == done
    assert await ledger.conserved() == [
        net(state.claimed),
        -state.claimed,
        0,
        fee_of(state.claimed),  # exact: every claim is a multiple of 100 base units
    ]
    assert provider.poll() is None, processes.log(PROVIDER)


async def test_payer_asks_to_close_right_after_its_last_answer_and_the_payee_claims_in_time(
    home: Path, chain: Chain, deployer: Wallet, token: TokenClient, processes: Processes
) -> None:
    channel_home(home, chain)
    seller = await keystore_wallet(home, "chprov", deployer, token, musd=0)
    buyer = await keystore_wallet(home, "chreq", deployer, token, musd=10)
    contract = chain.deployment.address("PaymentChannel")
    ledger = await Ledger(token, contract, seller, buyer).open()
    work, notes = home / "work", home / "answered"
    provider, _ = await processes.start(PROVIDER, "chprov", {"AGENTMESH_TEST_WORK": str(work)})
    requester, _ = await processes.start(
        REQUESTER,
        "chreq",
        {
            "AGENTMESH_TEST_PROVIDER": seller,
            "AGENTMESH_TEST_ANSWERED": str(notes),
            "AGENTMESH_TEST_CALLS": "10",
            "AGENTMESH_TEST_WORKERS": "2",
            "AGENTMESH_TEST_THEN": "request-close",
        },
    )
    await eventually(lambda: requester.poll() is not None, timeout=60, interval=0.1)
    assert requester.poll() == 0, processes.log(REQUESTER)
    *calls, close = answered(notes)
    assert sorted(c["n"] for c in calls) == list(range(10))
    assert all(c["result"] == 2 * c["n"] for c in calls)
    assert close["close"] == "close requested"
    channel = bytes.fromhex(close["channel"][2:])
    as_payer = keystore_client(home, "chreq", chain)
    # The payee sees the request and claims everything it was paid, within the delay.
    state = await eventually(
        lambda: as_payer.channel(channel), lambda s: s.claimed == 10 * PRICE, timeout=30
    )
    assert state.claimed == 10 * PRICE and state.close_requested_at and not state.closed
    delay = await as_payer.challenge_delay()
    assert await chain_now(chain) < state.close_requested_at + delay
    assert sorted(worked(work)) == list(range(10))
    assert await token.balance_of(seller) == net(10 * PRICE)
    # The payer's rest waits for the delay; then it withdraws it.
    with pytest.raises(ContractRevertError):
        await as_payer.withdraw(channel)
    await advance_time(chain, delay + 1)
    await as_payer.withdraw(channel)
    state = await as_payer.channel(channel)
    assert state.closed and state.claimed == 10 * PRICE
    assert await ledger.conserved() == [net(10 * PRICE), -10 * PRICE, 0, fee_of(10 * PRICE)]
    # The payee follows the chain: the channel it holds is closed.
    stored = await eventually(lambda: held(home), lambda h: h is not None and h.phase == "closed")
    assert stored is not None and stored.phase == "closed" and stored.claimed == 10 * PRICE
    assert provider.poll() is None, processes.log(PROVIDER)


async def test_a_running_requester_finds_a_restarted_provider_again(
    home: Path, chain: Chain, deployer: Wallet, token: TokenClient, processes: Processes
) -> None:
    config = channel_home(home, chain)
    await keystore_wallet(home, "chprov", deployer, token, musd=0)
    key = new_key()
    await fund(deployer, token, Account.from_key(key).address, musd=0)
    port = free_port()
    provider, _ = await processes.start(PROVIDER, "chprov", {}, port)
    async with Agent("requester", wallet=key, home=home, config=config) as requester:
        await requester.wait_for_providers("double", timeout=30)
        kill_9(provider)
        await processes.start(PROVIDER, "chprov", {}, port)
        await requester.wait_for_providers("double", timeout=10)
