"""Every helper the tests share, in one place (fixtures and hooks live in conftest.py).

Test modules import helpers from here only, never from another test module; fixtures
reach them by pytest injection. Sections: constants, polling, chain, escrow jobs,
agents, agent processes, money checks.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import zmq
import zmq.asyncio
from eth_account import Account
from eth_account.signers.local import LocalAccount
from typer.testing import Result

from agentmesh.config import AgentConfig, ChainConfig, Config, MeshConfig, WalletConfig
from agentmesh.envelope import Envelope, EnvelopeSigner
from agentmesh.errors import AgentMeshError
from agentmesh.mesh.card import AgentCard
from agentmesh.message import Message
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import EscrowClient, JobStatus, RegistryClient, TokenClient
from agentmesh.wallets.deployer import PROTOCOL_FEE_BPS
from agentmesh.wallets.exchange import ORACLE_PERIOD
from agentmesh.wallets.oracle import TwapOracleClient
from agentmesh.wallets.wallet import Wallet

T = TypeVar("T")
S = TypeVar("S", bound=zmq.Socket[Any])

# ---------------------------------------------------------------------------- constants

TEST_SCRYPT_N = 2**14  # fast keystores in tests; production default is 2**18
ONE_MUSD = 10**6
PASSWORD = "correct horse battery staple"  # keystores of agents run as processes
SLACK_S = 30  # moved past a boundary by this much when the exact second does not matter
TEST_AGENTS = Path(__file__).resolve().parent / "agents"  # agent files the tests run
SLOW_PROVIDER = TEST_AGENTS / "slow_provider.py"

SUMMARY_SYSTEM = "Summarize the user's text in one sentence."
TEXT = (
    "The quick brown fox jumps over the lazy dog. It was a sunny day, and the fox was "
    "happy to be out in the fields."
)

WalletFactory = Callable[..., Awaitable[Wallet]]

# ---------------------------------------------------------------------------- polling


async def eventually(
    probe: Callable[[], T] | Callable[[], Awaitable[T]],
    done: Callable[[T], object] = bool,
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
) -> T:
    """Call ``probe`` (plain or async) until ``done(value)`` holds or ``timeout`` passes.

    Returns the last value either way, for the caller to assert on, so a failure shows
    what was last seen (``assert (await eventually(...)).status == "done"``). Use it
    wherever a test waits for something another task, process or agent does a moment
    later, instead of a sleep timed to some internal period. ``done`` defaults to
    truthiness.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        value = probe()
        if inspect.isawaitable(value):
            value = await value
        result = cast(T, value)
        if done(result) or loop.time() >= deadline:
            return result
        await asyncio.sleep(interval)


def poll_blocking(
    probe: Callable[[], T],
    done: Callable[[T], object] = bool,
    *,
    timeout: float = 10.0,
    interval: float = 0.05,
) -> T:
    """:func:`eventually` for code with no event loop (it blocks the calling thread):
    the last value of ``probe`` once ``done(value)`` holds or ``timeout`` passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if done(value) or time.monotonic() >= deadline:
            return value
        time.sleep(interval)


# ---------------------------------------------------------------------------- chain


def escrow_for(chain: Chain, wallet: Wallet) -> EscrowClient:
    return EscrowClient(wallet, chain.deployment.address("TaskEscrow"))


def registry_for(chain: Chain, wallet: Wallet) -> RegistryClient:
    return RegistryClient(wallet, chain.deployment.address("AgentRegistry"))


def token_for(chain: Chain, wallet: Wallet) -> TokenClient:
    return TokenClient(wallet, chain.token_address)


async def rpc(chain: Chain, method: str, *params: Any) -> Any:
    """Raw JSON-RPC call (anvil cheat codes such as evm_increaseTime)."""
    reply = await chain.w3.provider.make_request(method, list(params))  # type: ignore[arg-type]
    return reply.get("result")


def fee_of(amount: int) -> int:
    """The protocol fee on a provider payout of ``amount`` mUSD (escrow or channel)."""
    return amount * PROTOCOL_FEE_BPS // 10_000


def net(amount: int) -> int:
    """What a provider receives of one payout of ``amount`` mUSD."""
    return amount - fee_of(amount)


async def send_as(chain: Chain, sender: str, call: Any) -> None:
    """Send contract call ``call`` from ``sender`` (a contract, say), impersonated on
    anvil; raises if it reverts."""
    await rpc(chain, "anvil_setBalance", sender, hex(10**18))
    await rpc(chain, "anvil_impersonateAccount", sender)
    try:
        tx_hash = await call.transact({"from": sender})
        receipt = await chain.w3.eth.wait_for_transaction_receipt(tx_hash)
        assert receipt["status"] == 1, f"{call.fn_name} as {sender} reverted"
    finally:
        await rpc(chain, "anvil_stopImpersonatingAccount", sender)


async def chain_now(chain: Chain) -> int:
    """Timestamp of the latest block (tests move time; never use the wall clock)."""
    block = await chain.w3.eth.get_block("latest")
    return int(block["timestamp"])


async def advance_time(chain: Chain, seconds: int) -> None:
    """Move the chain clock forward and mine a block at the new time."""
    await rpc(chain, "evm_increaseTime", seconds)
    await rpc(chain, "evm_mine")


async def observe_pools(chain: Chain, oracle: TwapOracleClient, periods: int) -> None:
    """What a keeper does: every pool's observation now, then once per oracle period for
    ``periods`` more periods (so any TWAP window ending now has its start recorded)."""
    exchange = chain.deployment.exchange
    assert exchange is not None
    for step in range(periods + 1):
        if step:
            await advance_time(chain, ORACLE_PERIOD)
        await oracle.update_pools(exchange)


async def wait_for_status(
    chain: Chain,
    wallet: Wallet,
    status: JobStatus,
    timeout: float = 60,
    watching: asyncio.Task[Any] | None = None,
) -> int:
    """The newest job once it has ``status``; fails at once if ``watching`` ended."""
    escrow = escrow_for(chain, wallet)

    async def newest() -> tuple[int, JobStatus | None]:
        count = int(await escrow.contract.functions.jobCount().call())
        return count, (await escrow.get_job(count)).status if count else None

    count, seen = await eventually(
        newest,
        lambda job: job[1] == status or (watching is not None and watching.done()),
        timeout=timeout,
        interval=0.1,
    )
    if seen == status:
        return count
    if watching is not None and watching.done():
        watching.result()  # its error explains why no job got there
        raise AssertionError(f"the task ended before a job reached {status.name}")
    raise AssertionError(f"no job reached {status.name}")


# ---------------------------------------------------------------------------- escrow jobs
# Drive TaskEscrow jobs into a named state through the real contract.


def h32(label: str) -> bytes:
    """A recognisable 32-byte hash for terms, results and reasons."""
    return hashlib.sha256(label.encode()).digest()


@dataclass
class Parties:
    client: Wallet
    provider: Wallet
    arbiter: Wallet
    stranger: Wallet

    def by_role(self, role: str) -> Wallet:
        wallet: Wallet = getattr(self, role)
        return wallet

    @property
    def addresses(self) -> list[str]:
        return [w.address for w in (self.client, self.provider, self.arbiter, self.stranger)]


async def open_job(
    chain: Chain,
    p: Parties,
    *,
    amount: int,
    deadline_in: int,
    review_window: int,
    client: Wallet | None = None,
) -> int:
    """Open (approve + deposit) a job from ``client`` (default: the parties' client)."""
    client = client or p.client
    job_id, _ = await escrow_for(chain, client).open(
        provider=p.provider.address,
        token=token_for(chain, client),
        amount=amount,
        deadline=await chain_now(chain) + deadline_in,
        review_window=review_window,
        arbiter=p.arbiter.address,
        terms_hash=h32("terms"),
    )
    return int(job_id)


# Steps from an open job to each state ("wait-deadline"/"wait-review" move chain time).
PATHS: dict[str, tuple[str, ...]] = {
    "open": (),
    "cancelled": ("cancel",),
    "refunded_open": ("wait-deadline", "refund"),
    "accepted": ("accept",),
    "refunded_accepted": ("accept", "wait-deadline", "refund"),
    "submitted": ("accept", "submit"),
    "released": ("accept", "submit", "release"),
    "claimed": ("accept", "submit", "wait-review", "claim"),
    "disputed": ("accept", "submit", "dispute"),
    "resolved": ("accept", "submit", "dispute", "resolve"),
}

# The on-chain status each named state ends in.
STATE_STATUS: dict[str, JobStatus] = {
    "open": JobStatus.OPEN,
    "accepted": JobStatus.ACCEPTED,
    "submitted": JobStatus.SUBMITTED,
    "disputed": JobStatus.DISPUTED,
    "released": JobStatus.RELEASED,
    "claimed": JobStatus.CLAIMED,
    "resolved": JobStatus.RESOLVED,
    "cancelled": JobStatus.CANCELLED,
    "refunded_open": JobStatus.REFUNDED,
    "refunded_accepted": JobStatus.REFUNDED,
}


async def drive(
    chain: Chain,
    p: Parties,
    job_id: int,
    state: str,
    *,
    split: int,
    deadline_in: int,
    review_window: int,
) -> None:
    """Move an open job to ``state``; ``split`` is the provider's share on resolve."""
    client, provider = escrow_for(chain, p.client), escrow_for(chain, p.provider)
    steps: dict[str, Callable[[], Awaitable[Any]]] = {
        "wait-deadline": lambda: advance_time(chain, deadline_in + SLACK_S),
        "wait-review": lambda: advance_time(chain, review_window + SLACK_S),
        "cancel": lambda: client.cancel(job_id),
        "refund": lambda: client.refund(job_id),
        "accept": lambda: provider.accept(job_id),
        "submit": lambda: provider.submit(job_id, h32("result")),
        "release": lambda: client.release(job_id),
        "claim": lambda: provider.claim(job_id),
        "dispute": lambda: client.dispute(job_id, h32("reason")),
        "resolve": lambda: escrow_for(chain, p.arbiter).resolve(job_id, split),
    }
    for step in PATHS[state]:
        await steps[step]()


# ---------------------------------------------------------------------------- agents


def bind_home(
    home: Path,
    chain: Chain,
    *,
    approval_threshold: str | None = None,
    review_window_s: int = 120,
    wallet_agent_idle_s: float = 60.0,
    arbiter: str | None = None,
) -> Config:
    """Point ``home`` at the session chain and its deployment (no faucet: tests fund).
    ``arbiter``: the ``[agent] arbiter`` setting (default: the product's, the jury);
    tests of what a dispute freezes for a key's decision pass "deployer"."""
    (home / "deployments").mkdir(exist_ok=True)
    chain.deployment.save(home / "deployments" / f"{chain.deployment.chain_id}.json")
    extra = f'approval_threshold = "{approval_threshold}"\n' if approval_threshold else ""
    if arbiter is not None:
        extra += f'arbiter = "{arbiter}"\n'
    (home / "config.toml").write_text(
        f'[wallet]\nscrypt_n = {TEST_SCRYPT_N}\n[chain]\nrpc_url = "{chain.rpc_url}"\n'
        f"[agent]\nfaucet = false\nproposal_window_s = 30\ndecision_timeout_s = 25\n{extra}"
        f"review_window_s = {review_window_s}\nwallet_agent_idle_s = {wallet_agent_idle_s}\n"
        "[mesh]\nheartbeat_s = 0.2\n"
    )
    return Config(
        wallet=WalletConfig(scrypt_n=TEST_SCRYPT_N),
        chain=ChainConfig(rpc_url=chain.rpc_url),
        agent=AgentConfig(
            faucet=False,
            proposal_window_s=30,
            # Inside the proposal window, and long enough that a loaded test machine
            # still gets the model's answer (the tests check it came from the model).
            decision_timeout_s=25,
            approval_threshold=approval_threshold,
            review_window_s=review_window_s,
            wallet_agent_idle_s=wallet_agent_idle_s,
            **({} if arbiter is None else {"arbiter": arbiter}),
        ),
        mesh=MeshConfig(heartbeat_s=0.2),
    )


def with_agent_settings(config: Config, **changes: object) -> Config:
    """``config`` with some ``[agent]`` settings changed (one agent's own settings)."""
    return config.model_copy(update={"agent": config.agent.model_copy(update=changes)})


async def fund(deployer: Wallet, token: TokenClient, address: str, musd: int = 100) -> None:
    """10 ETH for gas and ``musd`` whole mUSD, from the deployer (the minter)."""
    await deployer.send({"to": address, "value": 10**19})
    if musd:
        await token.mint(address, musd * ONE_MUSD)


async def funded_key(deployer: Wallet, token: TokenClient, musd: int) -> bytes:
    """A new private key whose address holds 10 ETH and ``musd`` whole mUSD."""
    key = new_key()
    await fund(deployer, token, Account.from_key(key).address, musd=musd)
    return key


def conserved(before: list[int], after: list[int]) -> list[int]:
    """Each holder's change, after checking the holders' total did not change."""
    assert sum(after) == sum(before), f"{before} -> {after}"
    return [a - b for a, b in zip(after, before, strict=True)]


def new_key() -> bytes:
    return os.urandom(32)


# ---------------------------------------------------------------------------- mesh


def raw_dealer(context: zmq.Context[S], endpoint: str, server_key: bytes | None) -> S:
    """A bare DEALER connected to a node's ROUTER at ``endpoint``, for hand-made frames.

    CurveZMQ with a throw-away client key, authenticating the server by ``server_key``
    (the curve key of its card), or plaintext when ``server_key`` is None. A
    ``zmq.asyncio`` context gives an async socket. Close it with ``close(0)``.
    """
    sock = context.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if server_key is not None:
        public, secret = zmq.curve_keypair()
        sock.curve_publickey, sock.curve_secretkey = public, secret
        sock.curve_serverkey = server_key
    sock.connect(endpoint)
    return sock


def raw_json(message: Message, **tokens: str) -> bytes:
    """``message``'s payload with some fields' JSON replaced by raw JSON text, e.g.
    ``budget="1e5"`` or ``budget='"100000"'``: what a hostile sender could sign, which
    the message type itself would never encode."""
    fields = message.model_dump(mode="json")
    marks = {name: f"@@{name}@@" for name in tokens}
    text = json.dumps({**fields, **marks})
    for name, token in tokens.items():
        text = text.replace(json.dumps(marks[name]), token)
    return text.encode()


def seal_raw(
    card: AgentCard,
    key: bytes,
    message_type: type[Message],
    payload: bytes,
    *,
    protocol: str,
    version: str,
    conversation: bytes,
) -> Envelope:
    """``payload`` (any bytes) signed by ``key`` as a ``message_type`` for the agent of
    ``card``."""
    return Envelope.seal(
        EnvelopeSigner(key),
        recipient=card.address,
        protocol=protocol,
        protocol_version=version,
        schema_digest=message_type.schema_digest(),
        payload=payload,
        conversation=conversation,
    )


async def ask_raw(card: AgentCard, envelope: Envelope, timeout: float = 30.0) -> Envelope:
    """Send ``envelope`` to the agent of ``card`` over a bare CurveZMQ DEALER; its signed
    reply (checked: signed by that agent, answering this envelope)."""
    context = zmq.asyncio.Context()
    sock = raw_dealer(context, card.endpoint, card.curve_key.encode())
    try:
        await sock.send(envelope.to_frame())
        frame = await asyncio.wait_for(sock.recv(), timeout)
    finally:
        sock.close(0)
        context.term()
    reply = Envelope.from_frame(frame)
    assert reply.verify() == card.address and reply.reply_to == envelope.id
    return reply


async def raw_request(
    card: AgentCard,
    key: bytes,
    message_type: type[Message],
    payload: bytes,
    *,
    protocol: str,
    version: str,
    conversation: bytes,
) -> Envelope:
    """:func:`seal_raw` then :func:`ask_raw`: the signed reply to a hand-made request."""
    envelope = seal_raw(
        card,
        key,
        message_type,
        payload,
        protocol=protocol,
        version=version,
        conversation=conversation,
    )
    return await ask_raw(card, envelope)


# ---------------------------------------------------------------------------- processes


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def process_gone(pid: int) -> bool:
    """True when ``pid`` no longer runs (a zombie waiting for its reaper counts as gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return True
    return fields[0] in ("Z", "X")


def wait_gone(pid: int, timeout: float = 20.0) -> bool:
    """Bounded poll for ``pid`` to exit."""
    return poll_blocking(lambda: process_gone(pid), timeout=timeout)


def cli_process(
    home: Path, *args: str, timeout: float = 180, password: str = PASSWORD
) -> subprocess.CompletedProcess[str]:
    """Run ``agentmesh --home HOME ARGS`` as its own process (as a person would)."""
    env = {**os.environ, "AGENTMESH_PASSWORD": password}
    command = [sys.executable, "-m", "agentmesh.cli.app", "--home", str(home), *args]
    return subprocess.run(
        command, check=False, env=env, capture_output=True, text=True, timeout=timeout
    )


async def cli_process_async(
    home: Path, *args: str, timeout: float = 180, password: str = PASSWORD
) -> subprocess.CompletedProcess[str]:
    """:func:`cli_process` without a worker thread: waiting on many CLI processes from
    threads would fill the default executor, which an in-process agent of the same
    event loop needs for its own work (the processes would wait on that agent)."""
    env = {**os.environ, "AGENTMESH_PASSWORD": password}
    command = [sys.executable, "-m", "agentmesh.cli.app", "--home", str(home), *args]
    process = await asyncio.create_subprocess_exec(
        *command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    assert process.returncode is not None
    return subprocess.CompletedProcess(command, process.returncode, out.decode(), err.decode())


def start_provider(
    home: Path,
    port: int,
    gate: Path,
    log: Path,
    agent_file: Path = SLOW_PROVIDER,
    wallet: str = "slow",
) -> tuple[subprocess.Popen[bytes], dict[str, str]]:
    """Run ``agentmesh run agent_file`` (``AGENTMESH_TEST_GATE=gate``) and wait for its
    ready file; returns the process and what the ready file says."""
    ready = home / "provider.ready"
    ready.unlink(missing_ok=True)
    env = {**os.environ, "AGENTMESH_PASSWORD": PASSWORD, "AGENTMESH_TEST_GATE": str(gate)}
    command = [
        sys.executable,
        "-m",
        "agentmesh.cli.app",
        "--home",
        str(home),
        "run",
        str(agent_file),
        "--wallet",
        wallet,
        "--port",
        str(port),
        "--ready-file",
        str(ready),
    ]
    with log.open("ab") as out:
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT)
    poll_blocking(lambda: ready.exists() or process.poll() is not None, timeout=30)
    if ready.exists():
        return process, json.loads(ready.read_text())
    if process.poll() is not None:
        raise AssertionError(f"provider exited {process.returncode}: {log.read_text()}")
    process.kill()
    raise AssertionError(f"provider did not start: {log.read_text()}")


def stop_agent(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM an agent process (SIGKILL if it does not leave within 20 s)."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


# ---------------------------------------------------------------------------- money checks


class Ledger:
    """Balances of the parties, the escrow (or channel contract) and the reward pool its
    protocol fee goes to, to check nothing is lost or created."""

    def __init__(self, token: TokenClient, escrow: str, *parties: str) -> None:
        self.token, self.escrow, self.parties = token, escrow, parties
        self.pool = ""
        self.start: list[int] = []

    async def read(self) -> list[int]:
        holders = (*self.parties, self.escrow, self.pool)
        return [await self.token.balance_of(a) for a in holders]

    async def open(self) -> Ledger:
        contract = self.token.wallet.w3.eth.contract(
            address=self.token.wallet.w3.to_checksum_address(self.escrow),
            abi=[
                {
                    "type": "function",
                    "name": "feeSink",
                    "inputs": [],
                    "outputs": [{"type": "address", "name": ""}],
                    "stateMutability": "view",
                }
            ],
        )
        self.pool = await contract.functions.feeSink().call()
        self.start = await self.read()
        return self

    async def conserved(self) -> list[int]:
        """Each balance's change since :meth:`open` (parties, the escrow, the reward
        pool); fails if the total moved."""
        now = await self.read()
        assert sum(now) == sum(self.start), f"{self.start} -> {now}"
        return [n - s for n, s in zip(now, self.start, strict=True)]


async def assert_settled_for_good(chain: Chain, job_id: int) -> None:
    """No job may stay open past its deadline plus the review window."""
    job = await escrow_for(chain, Wallet(Account.create(), chain.w3)).get_job(job_id)
    assert job.status.final, f"job {job_id} left {job.status.name}"


# ---------------------------------------------------------------------------- CLI in process


@dataclass
class KeystoreCli:
    """Keystore wallets in an agent home and the CLI run in process against it (typer's
    runner, in a thread so the test's loop keeps serving the agents)."""

    home: Path
    accounts: dict[str, LocalAccount]
    password: str

    def address(self, name: str) -> str:
        return self.accounts[name].address

    async def run(self, *args: str, password: bool = True) -> Result:
        from typer.testing import CliRunner

        from agentmesh.cli.app import app

        env = {"AGENTMESH_PASSWORD": self.password} if password else {}
        argv = ["--home", str(self.home), *args]
        return await asyncio.to_thread(CliRunner().invoke, app, argv, env=env)

    async def json(self, *args: str, password: bool = True) -> Any:
        done = await self.run(*args, "--json", password=password)
        assert done.exit_code == 0, f"{done.output} {done.exception!r}"
        return json.loads(done.stdout)

    async def refused(self, *args: str) -> str:
        """The one-line message of a command that must fail (exit 1)."""
        done = await self.run(*args)
        assert done.exit_code == 1, done.output
        assert isinstance(done.exception, AgentMeshError), repr(done.exception)
        return done.exception.user_message
