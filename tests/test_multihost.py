"""Agents on separate "hosts": network namespaces joined by veth links to a bridge.

The first test runs three mesh agents; the second a chain host (anvil with a block
time, the suite deployed by ``agentmesh chain deploy``) and two agent hosts that trade.

Topology (every name carries this process's pid, so parallel runs cannot clash)::

    am-a-<pid>  veth0 10.231.0.1/24 ─┐
    am-b-<pid>  veth0 10.231.0.2/24 ─┼─ pa/pb/pc ── br0   (in am-hub-<pid>)
    am-c-<pid>  veth0 10.231.0.3/24 ─┘

Every link is created directly inside namespaces this test creates; nothing is added
to the host's own namespace, and deleting the namespaces (always, in fixture teardown)
deletes every link with them. Each agent is a real ``python -m agentmesh.testing``
process run with ``ip netns exec``; all three bind the same port numbers, which only
works because they really are on separate network stacks.

The test skips only where ``ip netns`` cannot be used (not root, no iproute2, or
``ip netns add`` fails for a throw-away namespace).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from agentmesh.config import MeshConfig
from agentmesh.store import Store
from agentmesh.tools import find_anvil
from agentmesh.wallets.keystore import Keystore
from tests.helpers import PASSWORD, TEST_SCRYPT_N, poll_blocking

REPO = Path(__file__).resolve().parents[1]
HEARTBEAT_S = 0.3
SUBNET = "10.231.0"
PORT = 7411  # ROUTER, the same in every namespace
PRESENCE_PORT = 7412  # PUB, the same in every namespace
READY_TIMEOUT_S = 30.0
MESH_TIMEOUT_S = 20.0  # discovery through one bootstrap + gossip
CLIENT_TIMEOUT_S = 60.0
AGENTS = ("a", "b", "c")
DOWN_AFTER_MISSED = MeshConfig().down_after_missed  # what the test peers run with

# Runs inside one namespace: a throw-away MeshNode that sends ``test.work`` requests to
# the given agent cards and prints the replies as JSON. The job is argv[1] (JSON).
CLIENT = r"""
import asyncio, json, os, sys

from agentmesh.config import MeshConfig
from agentmesh.mesh.card import AgentCard
from agentmesh.mesh.node import MeshNode
from agentmesh.testing import TEST_PROTOCOL_VERSION, Work, WorkDone


async def main() -> None:
    job = json.loads(sys.argv[1])
    node = MeshNode(
        os.urandom(32), name="client", config=MeshConfig(host=job["host"], request_timeout_s=3)
    )
    await node.start()
    try:
        out = []
        for card_json, text in job["requests"]:
            card = AgentCard.model_validate_json(card_json)
            card.verify()
            reply = await node.request(
                card,
                Work(text=text),
                protocol="test.work",
                version=TEST_PROTOCOL_VERSION,
                expect=(WorkDone,),
            )
            out.append({"to": card.address, "text": reply.text})
        print(json.dumps(out))
    finally:
        await node.stop()


asyncio.run(main())
"""


# --------------------------------------------------------------------------- helpers


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["ip", *args],
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=20,
        check=check,
    )


def netns_unavailable() -> str | None:
    """Why ``ip netns`` cannot be used here, or None when a throw-away namespace works."""
    if shutil.which("ip") is None:
        return "iproute2 `ip` is not installed"
    if os.geteuid() != 0:
        return "network namespaces need root (euid is not 0)"
    probe = f"am-probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    try:
        result = ip("netns", "add", probe, check=False)
    except (OSError, subprocess.SubprocessError) as exc:
        return f"`ip netns add` could not run: {exc}"
    if result.returncode != 0:
        return f"`ip netns add` failed: {result.stderr.strip() or result.returncode}"
    ip("netns", "del", probe, check=False)
    return None


@dataclass
class Agent:
    name: str
    ns: str
    host: str
    home: Path
    ready_file: Path
    log_file: Path
    process: subprocess.Popen[bytes]
    ready: dict[str, Any] = field(default_factory=dict)
    store: Store | None = None

    @property
    def address(self) -> str:
        return str(self.ready["address"])

    def log(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-4000:]
        except OSError:
            return ""

    def peer_states(self) -> dict[str, str]:
        assert self.store is not None
        return {row.address: row.state for row in self.store.peers()}


@dataclass
class Mesh:
    """The namespaces, links and agent processes of one test; ``close`` undoes all."""

    tmp: Path
    names: tuple[str, ...] = AGENTS  # the hosts, besides the hub
    tag: str = field(default_factory=lambda: str(os.getpid()))
    namespaces: list[str] = field(default_factory=list)
    agents: dict[str, Agent] = field(default_factory=dict)

    @property
    def hub(self) -> str:
        return f"am-hub-{self.tag}"

    def ns(self, name: str) -> str:
        return f"am-{name}-{self.tag}"

    def add_namespace(self, ns: str) -> None:
        ip("netns", "add", ns)
        self.namespaces.append(ns)
        ip("-n", ns, "link", "set", "lo", "up")

    def build(self) -> None:
        self.add_namespace(self.hub)
        ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        ip("-n", self.hub, "link", "set", "br0", "up")
        for index, name in enumerate(self.names, start=1):
            ns = self.ns(name)
            self.add_namespace(ns)
            port = f"p{name}"
            # Both ends are created inside our namespaces: the host's stack is untouched.
            ip("-n", self.hub, "link", "add", port, "type", "veth", "peer", "name", "veth0",
               "netns", ns)  # fmt: skip
            ip("-n", self.hub, "link", "set", port, "master", "br0")
            ip("-n", self.hub, "link", "set", port, "up")
            ip("-n", ns, "addr", "add", f"{SUBNET}.{index}/24", "dev", "veth0")
            ip("-n", ns, "link", "set", "veth0", "up")

    def host(self, name: str) -> str:
        return f"{SUBNET}.{self.names.index(name) + 1}"

    def start_agent(self, name: str, bootstrap: str | None = None) -> Agent:
        home = self.tmp / name
        home.mkdir()
        ready_file = self.tmp / f"{name}.ready.json"
        log_file = self.tmp / f"{name}.log"
        cmd = [
            "ip", "netns", "exec", self.ns(name),
            sys.executable, "-m", "agentmesh.testing",
            "--home", str(home),
            "--ready-file", str(ready_file),
            "--name", f"agent-{name}",
            "--host", self.host(name),
            "--port", str(PORT),
            "--presence-port", str(PRESENCE_PORT),
            "--heartbeat", str(HEARTBEAT_S),
        ]  # fmt: skip
        if bootstrap:
            cmd.append(f"--bootstrap={bootstrap}")  # a value may start with "-"
        with log_file.open("wb") as log:
            process = subprocess.Popen(
                cmd,
                cwd=REPO,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        agent = Agent(name, self.ns(name), self.host(name), home, ready_file, log_file, process)
        self.agents[name] = agent
        return agent

    def wait_ready(self, agent: Agent) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        alive = poll_blocking(
            lambda: agent.ready_file.exists() or agent.process.poll() is not None,
            timeout=deadline - time.monotonic(),
        )
        assert agent.process.poll() is None, (
            f"agent {agent.name} exited with {agent.process.returncode}:\n{agent.log()}"
        )
        assert alive and agent.ready_file.exists(), (
            f"agent {agent.name} not ready within {READY_TIMEOUT_S}s:\n{agent.log()}"
        )
        agent.ready = json.loads(agent.ready_file.read_text())
        assert agent.ready["pid"] == agent.process.pid  # `ip netns exec` execs python
        assert f"@tcp://{agent.host}:{PORT}" in agent.ready["bootstrap"]
        agent.store = Store(agent.home / "mesh" / f"{agent.ready['address']}.db")

    def run_client(self, name: str, targets: list[str], tag: str) -> subprocess.Popen[str]:
        """Start a client inside ``name``'s namespace asking each target to do work."""
        requests = [[self.agents[t].ready["card"], f"{tag}:{name}->{t}"] for t in targets]
        job = json.dumps({"host": self.host(name), "requests": requests})
        return subprocess.Popen(
            ["ip", "netns", "exec", self.ns(name), sys.executable, "-c", CLIENT, job],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def close(self) -> None:
        for agent in self.agents.values():
            if agent.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    agent.process.send_signal(signal.SIGTERM)
        for agent in self.agents.values():
            try:
                agent.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                agent.process.kill()
                agent.process.wait(timeout=10)
            if agent.store is not None:
                agent.store.close()
        # Deleting a namespace deletes the veth ends and the bridge inside it.
        for ns in reversed(self.namespaces):
            ip("netns", "del", ns, check=False)
        self.namespaces.clear()


def collect(process: subprocess.Popen[str]) -> list[dict[str, str]]:
    try:
        stdout, stderr = process.communicate(timeout=CLIENT_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        stdout, stderr = process.communicate()
        raise AssertionError(f"client timed out:\n{stderr[-4000:]}") from None
    assert process.returncode == 0, f"client failed ({process.returncode}):\n{stderr[-4000:]}"
    return list(json.loads(stdout.strip().splitlines()[-1]))


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def netns_ok() -> None:
    reason = netns_unavailable()
    if reason is not None:
        pytest.skip(f"ip netns unavailable: {reason}")


@pytest.fixture
def mesh(netns_ok: None, tmp_path: Path) -> Iterator[Mesh]:
    topology = Mesh(tmp_path)
    try:
        topology.build()
        yield topology
    finally:
        topology.close()
        leftover = ip("netns", "list", check=False).stdout
        assert f"-{topology.tag}" not in leftover, f"namespaces left behind:\n{leftover}"


# --------------------------------------------------------------------------- the test


@pytest.mark.slow
def test_three_hosts_discover_talk_and_notice_a_cut_link(mesh: Mesh) -> None:
    # A first; B and C know only A's bootstrap address.
    a = mesh.start_agent("a")
    mesh.wait_ready(a)
    b = mesh.start_agent("b", bootstrap=a.ready["bootstrap"])
    c = mesh.start_agent("c", bootstrap=a.ready["bootstrap"])
    mesh.wait_ready(b)
    mesh.wait_ready(c)
    agents = [a, b, c]
    assert len({x.address for x in agents}) == 3

    # Every store shows the two others up: B and C learned each other only via A.
    def all_up() -> bool:
        for agent in agents:
            states = agent.peer_states()
            for other in agents:
                if other is not agent and states.get(other.address) != "up":
                    return False
        return True

    deadline = time.monotonic() + MESH_TIMEOUT_S
    assert poll_blocking(all_up, timeout=deadline - time.monotonic(), interval=0.1), (
        "mesh did not form:\n"
        + "\n".join(f"{x.name}: {x.peer_states()}\n{x.log()}" for x in agents)
    )
    b_rows = {row.address: row for row in b.store.peers()}  # type: ignore[union-attr]
    c_rows = {row.address: row for row in c.store.peers()}  # type: ignore[union-attr]
    # Whichever of B and C joined second found the other in A's answer ("bootstrap"
    # lists what A knows) and greeted it, so the first learned it by gossip; if they
    # joined at the same instant both learn by gossip. Either way gossip was involved.
    assert "gossip" in (b_rows[c.address].source, c_rows[b.address].source), (
        b_rows[c.address].source,
        c_rows[b.address].source,
    )
    # Their cards advertise the namespace addresses, not loopback.
    for agent in agents:
        card = json.loads(agent.ready["card"])
        assert card["endpoint"] == f"tcp://{agent.host}:{PORT}"
        assert card["presence_endpoint"] == f"tcp://{agent.host}:{PRESENCE_PORT}"

    # Messages across the bridge: from each namespace to both other agents.
    clients = {
        name: mesh.run_client(name, [t for t in AGENTS if t != name], "before") for name in AGENTS
    }
    for name, process in clients.items():
        replies = collect(process)
        targets = [t for t in AGENTS if t != name]
        assert replies == [
            {"to": mesh.agents[t].address, "text": f"before:{name}->{t}"} for t in targets
        ]

    # Cut C's cable (its port on the bridge); C's process keeps running.
    ip("-n", mesh.hub, "link", "set", "pc", "down")
    cut = time.monotonic()
    limit = HEARTBEAT_S * DOWN_AFTER_MISSED + 2.0
    seen_down: dict[str, float] = {}

    def c_down_at_a_and_b() -> bool:
        for agent in (a, b):
            if agent.name not in seen_down and agent.peer_states().get(c.address) == "down":
                seen_down[agent.name] = time.monotonic() - cut
        return len(seen_down) == 2

    assert poll_blocking(
        c_down_at_a_and_b, timeout=cut + limit - time.monotonic(), interval=0.02
    ), (
        f"C not marked down by both A and B within {limit:.1f}s "
        f"(3 heartbeats of {HEARTBEAT_S}s + 2s); marked: {seen_down}; "
        f"A: {a.peer_states()}; B: {b.peer_states()}"
    )
    # ... and not too early either: at least close to 3 missed beats after the cut.
    for name, after in seen_down.items():
        assert after >= HEARTBEAT_S * (DOWN_AFTER_MISSED - 1), (name, after)
    # A and B still see each other up.
    assert a.peer_states()[b.address] == "up"
    assert b.peer_states()[a.address] == "up"

    # The cut-off side notices too: C marks A and B down.
    assert poll_blocking(
        lambda: all(c.peer_states().get(x.address) == "down" for x in (a, b)),
        timeout=cut + limit - time.monotonic(),
    ), f"C did not mark A and B down within {limit:.1f}s: {c.peer_states()}"

    # A and B still talk to each other across the bridge.
    replies = collect(mesh.run_client("a", ["b"], "after"))
    assert replies == [{"to": b.address, "text": "after:a->b"}]
    assert a.peer_states()[b.address] == "up"
    assert b.peer_states()[a.address] == "up"
    assert a.peer_states()[c.address] == "down"
    assert b.peer_states()[c.address] == "down"
    for agent in agents:
        assert agent.process.poll() is None, f"agent {agent.name} died:\n{agent.log()}"

    # Each handler's effect is durable with its handled mark (agentmesh.testing records
    # ``work`` = the text): checked last so that a store bug cannot hide the network part.
    expected = {x.name: [f"before:{s}->{x.name}" for s in AGENTS if s != x.name] for x in agents}
    expected["b"].append("after:a->b")
    recorded = {
        x.name: sorted(e.value for e in x.store.effects("work"))  # type: ignore[union-attr]
        for x in agents
    }
    assert recorded == {name: sorted(texts) for name, texts in expected.items()}


# --------------------------------------------------------------------------- a chain host

CHAIN_PORT = 8545
BLOCK_S = 1
PRICE = 50_000  # echo_provider.py's 0.05 mUSD
FEE_BPS = 100  # the suite's protocol fee on a release (1%)

# Runs on the chain host: ETH from anvil's unlocked first account to argv[2], the way a
# testnet faucet funds an operator (the only use of a dev account in this test).
FAUCET = r"""
import sys, time
from agentmesh.chain.rpc import rpc_call

url, to = sys.argv[1], sys.argv[2]
(sender, *_) = rpc_call(url, "eth_accounts")
tx = rpc_call(url, "eth_sendTransaction", [{"from": sender, "to": to, "value": hex(100 * 10**18)}])
while not rpc_call(url, "eth_getTransactionReceipt", [tx]):
    time.sleep(0.05)
"""

# Runs on the chain host: mUSD balances of argv[3:] at the token argv[2], as JSON.
BALANCES = r"""
import json, sys
from eth_abi import encode
from agentmesh.chain.rpc import rpc_call

url, token, holders = sys.argv[1], sys.argv[2], sys.argv[3:]
out = []
for holder in holders:
    data = "0x70a08231" + encode(["address"], [holder]).hex()
    out.append(int(rpc_call(url, "eth_call", [{"to": token, "data": data}, "latest"]), 16))
print(json.dumps(out))
"""

# Runs on an agent host: one purchase by the keystore wallet "buyer", its outcome as JSON.
BUYER = r"""
import asyncio, json, sys
from agentmesh import Agent

async def main() -> None:
    async with Agent("buyer", wallet="buyer", home=sys.argv[1], throwaway_devnet=False) as buyer:
        await buyer.wait_for_providers("echo", timeout=60)
        outcome = await buyer.buy("echo", text="across three hosts", budget="0.5")
        print(json.dumps({"settled": outcome.settled, "result": outcome.result,
                          "provider": outcome.provider, "price": outcome.price,
                          "job_id": outcome.job_id, "txs": outcome.txs}))

asyncio.run(main())
"""


def in_ns(
    ns: str, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        env={**os.environ, "AGENTMESH_PASSWORD": PASSWORD, **(env or {})},
        check=False,
    )
    assert done.returncode == 0, f"{args} in {ns} failed:\n{done.stdout}\n{done.stderr}"
    return done


def cli_in(ns: str, home: Path, *args: str, timeout: float = 120) -> str:
    command = (sys.executable, "-m", "agentmesh.cli.app", "--home", str(home), *args)
    return in_ns(ns, *command, timeout=timeout).stdout


def agent_home(root: Path, name: str, mesh_host: str) -> Path:
    home = root / name
    home.mkdir()
    (home / "config.toml").write_text(
        f'[wallet]\nscrypt_n = {TEST_SCRYPT_N}\n[mesh]\nhost = "{mesh_host}"\n'
        f"heartbeat_s = {HEARTBEAT_S}\n[agent]\nproposal_window_s = 20\n"
    )
    Keystore(home, scrypt_n=TEST_SCRYPT_N).create(name, PASSWORD)
    return home


@pytest.mark.slow
def test_a_chain_host_and_two_agent_hosts_trade_on_a_chain_with_block_times(
    netns_ok: None, tmp_path: Path
) -> None:
    """The chain on its own host (anvil mining a block a second, the suite deployed by
    `agentmesh chain deploy` from a keystore wallet), a seller and a buyer on two more;
    the agents find each other through the on-chain registry and trade across the bridge."""
    mesh = Mesh(tmp_path, names=("chain", "seller", "buyer"))
    anvil: subprocess.Popen[bytes] | None = None
    seller: subprocess.Popen[bytes] | None = None
    try:
        mesh.build()
        chain_ns = mesh.ns("chain")
        url = f"http://{mesh.host('chain')}:{CHAIN_PORT}"
        with (tmp_path / "anvil.log").open("wb") as log:
            anvil = subprocess.Popen(
                ["ip", "netns", "exec", chain_ns, str(find_anvil()), "--host", mesh.host("chain"),
                 "--port", str(CHAIN_PORT), "--block-time", str(BLOCK_S)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            )  # fmt: skip
        probe = "import sys; from agentmesh.chain.rpc import is_up; sys.exit(0 if is_up(sys.argv[1]) else 1)"  # noqa: E501
        assert poll_blocking(
            lambda: subprocess.run(
                ["ip", "netns", "exec", chain_ns, sys.executable, "-c", probe, url],
                capture_output=True, check=False,
            ).returncode == 0,
            timeout=READY_TIMEOUT_S,
        ), (tmp_path / "anvil.log").read_text()  # fmt: skip

        # The operator, on the chain host: funded from outside, deploys, funds the agents.
        ops = agent_home(tmp_path, "ops", mesh.host("chain"))
        ops_address = Keystore(ops, scrypt_n=TEST_SCRYPT_N).entry("ops").address
        in_ns(chain_ns, sys.executable, "-c", FAUCET, url, ops_address)
        report = json.loads(cli_in(chain_ns, ops, "chain", "deploy", "--rpc-url", url,
                                   "--wallet", "ops", "--json"))  # fmt: skip
        assert set(report["code"].values()) == {"matches"}
        cli_in(chain_ns, ops, "chain", "use", url)
        homes = {name: agent_home(tmp_path, name, mesh.host(name)) for name in ("seller", "buyer")}
        addresses = {
            name: Keystore(home, scrypt_n=TEST_SCRYPT_N).entry(name).address
            for name, home in homes.items()
        }
        for name, home in homes.items():
            (home / "deployments").mkdir()
            shutil.copy(report["record"], home / "deployments" / "31337.json")
            # Run on the agent's host: it reaches the chain host, and the code matches.
            cli_in(mesh.ns(name), home, "chain", "use", url)
            cli_in(chain_ns, ops, "wallet", "send", "ops", addresses[name], "1", "--token", "eth")
        cli_in(chain_ns, ops, "chain", "mint", addresses["buyer"], "1", "--wallet", "ops")
        token, escrow = report["contracts"]["MeshUSD"], report["contracts"]["TaskEscrow"]
        holders = [addresses["seller"], addresses["buyer"], escrow,
                   report["contracts"]["Consensus"]]  # fmt: skip
        before = json.loads(in_ns(chain_ns, sys.executable, "-c", BALANCES, url, token,
                                  *holders).stdout)  # fmt: skip

        ready = tmp_path / "seller.ready"
        with (tmp_path / "seller.log").open("wb") as log:
            seller = subprocess.Popen(
                ["ip", "netns", "exec", mesh.ns("seller"), sys.executable, "-m",
                 "agentmesh.cli.app", "--home", str(homes["seller"]), "run",
                 str(REPO / "tests" / "agents" / "echo_provider.py"), "--wallet", "seller",
                 "--port", str(PORT), "--ready-file", str(ready)],
                cwd=REPO, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env={**os.environ, "AGENTMESH_PASSWORD": PASSWORD},
            )  # fmt: skip
        assert poll_blocking(lambda: ready.exists() or seller.poll() is not None, timeout=60)
        assert ready.exists(), (tmp_path / "seller.log").read_text()
        started = json.loads(ready.read_text())
        assert started["endpoint"] == f"tcp://{mesh.host('seller')}:{PORT}"  # its own host

        bought = in_ns(mesh.ns("buyer"), sys.executable, "-c", BUYER, str(homes["buyer"]),
                       timeout=240)  # fmt: skip
        outcome = json.loads(bought.stdout.strip().splitlines()[-1])
        assert outcome["settled"] and outcome["result"] == "ACROSS THREE HOSTS"
        assert outcome["provider"] == addresses["seller"] and outcome["price"] == PRICE
        after = json.loads(in_ns(chain_ns, sys.executable, "-c", BALANCES, url, token,
                                 *holders).stdout)  # fmt: skip
        fee = PRICE * FEE_BPS // 10_000
        # Seller, buyer, escrow, reward pool: every unit accounted for.
        assert [a - b for a, b in zip(after, before, strict=True)] == [PRICE - fee, -PRICE, 0, fee]
        log = (tmp_path / "seller.log").read_text()
        assert "no devnet faucet or dev accounts here" in log
    finally:
        for process in (seller, anvil):
            if process is not None and process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        mesh.close()
        leftover = ip("netns", "list", check=False).stdout
        assert f"-{mesh.tag}" not in leftover, f"namespaces left behind:\n{leftover}"
