"""Purchase benchmark: seconds per purchase as a person makes one, against its floor.

    .venv/bin/python bench/purchase_bench.py [--runs 8]

A throw-away home with a devnet (`agentmesh devnet up`) and two provider processes
(`agentmesh run`) that sell a trivial deterministic service and price every call for
proposals with the real default model. Measured, each over ``--runs`` purchases:

- ``agent.buy`` in a running agent (warm: discovery done, connections open);
- ``agentmesh task request`` as its own process, warm (the wallet's agent is running)
  and cold (no wallet agent: the command starts one, which unlocks the keystore, joins
  the chain and the mesh);
- 8 concurrent ``agentmesh task request`` processes paying from one wallet.

Floor, measured in the same run: the purchase's own transactions sent bare from two
wallets (open, approving as the agents do, accept, submit, release, feedback), plus the
mesh round trips of a purchase (call for proposals, award, funded, delivery, settled)
between two bare nodes, plus one pricing call of the default model. A CLI process cannot go below
a bare Python process that imports what a buyer needs and unlocks its keystore: that is
added to the floor of the cold CLI.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()
PASSWORD = "purchase bench password"
PROVIDER = """
import os
from agentmesh import Agent, LocalModel, ServiceContext

agent = Agent(os.environ["AGENTMESH_AGENT_NAME"], model=LocalModel.default())


@agent.service("echo", price="0.05 mUSD")
async def echo(ctx: ServiceContext, text: str) -> str:
    return text.upper()
"""
ROUND_TRIPS = 5  # call for proposals, award, funded, delivery, settled


def cli(home: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "AGENTMESH_PASSWORD": PASSWORD, "AGENTMESH_HOME": str(home)}
    command = [sys.executable, "-m", "agentmesh.cli.app", "--home", str(home), *args]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {done.stdout}{done.stderr}")
    return done


def start_provider(home: Path, name: str) -> subprocess.Popen[bytes]:
    ready = home / f"{name}.ready"
    env = {**os.environ, "AGENTMESH_PASSWORD": PASSWORD, "AGENTMESH_AGENT_NAME": name}
    command = [sys.executable, "-m", "agentmesh.cli.app", "--home", str(home), "run"]
    command += [str(home / "provider.py"), "--wallet", name, "--ready-file", str(ready)]
    log = (home / f"{name}.log").open("ab")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(
                f"provider {name} did not start: {(home / f'{name}.log').read_text()}"
            )
        time.sleep(0.1)
    return process


def timed_cli_purchase(home: Path, n: int) -> float:
    start = time.perf_counter()
    done = cli(
        home,
        "task",
        "request",
        "echo",
        "--text",
        f"cli {n}",
        "--budget",
        "0.2",
        "--json",
        "--wallet",
        "buyer",
    )
    took = time.perf_counter() - start
    assert json.loads(done.stdout)["phase"] == "settled"
    return took


def p50_p90(values: list[float]) -> tuple[float, float]:
    ordered = sorted(values)
    return statistics.median(ordered), ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]


# ---------------------------------------------------------------------- floor


async def bare_transactions(home: Path, runs: int) -> list[float]:
    """Seconds per purchase for its transactions alone, sent directly from two wallets."""
    from bare_purchase import BarePurchase
    from eth_account import Account

    from agentmesh.config import load_config
    from agentmesh.wallets.chain import open_chain
    from agentmesh.wallets.faucet import top_up
    from agentmesh.wallets.wallet import Wallet

    durations = []
    async with open_chain(home, load_config(home), allow_embedded=False) as chain:
        client = Wallet(Account.create(), chain.w3)
        provider = Wallet(Account.create(), chain.w3)
        for wallet in (client, provider):
            await top_up(chain, wallet)
        bare = BarePurchase(chain, client, provider)
        for n in range(runs):
            now = int((await chain.w3.eth.get_block("latest"))["timestamp"])
            start = time.perf_counter()
            await bare.run(str(n), amount=50_000, deadline=now + 300, review_window=120)
            durations.append(time.perf_counter() - start)
    return durations


async def mesh_round_trip(samples: int = 50) -> float:
    """Median seconds of one signed request/reply between two bare nodes."""
    from agentmesh.config import MeshConfig
    from agentmesh.mesh.discovery import Discovery, Ping, Pong
    from agentmesh.mesh.node import MeshNode
    from agentmesh.mesh.routes import MESH_PROTOCOL, MESH_VERSION

    server = MeshNode(os.urandom(32), name="floor-server", config=MeshConfig())
    client = MeshNode(os.urandom(32), name="floor-client", config=MeshConfig())
    Discovery(server)  # installs the Ping handler
    times = []
    async with server, client:
        assert server.card is not None
        for _ in range(samples):
            start = time.perf_counter()
            await client.request(
                server.card, Ping(), protocol=MESH_PROTOCOL, version=MESH_VERSION, expect=(Pong,)
            )
            times.append(time.perf_counter() - start)
    return statistics.median(times[5:])


async def pricing_call(samples: int = 5) -> float:
    """Median seconds of one pricing decision of the default model (warmed up)."""
    from agentmesh.agents.decisions import PriceDecision, pricing_prompt
    from agentmesh.agents.pricing import PRICING_MAX_TOKENS
    from agentmesh.llm import LocalModel

    model = LocalModel.default()
    times = []
    try:
        for n in range(samples + 1):
            prompt = pricing_prompt("echo", 50_000, 200_000, 20 + n)
            start = time.perf_counter()
            await model.structured(prompt, PriceDecision, max_tokens=PRICING_MAX_TOKENS)
            times.append(time.perf_counter() - start)
    finally:
        model.close()
    return statistics.median(times[1:])


def bare_process(home: Path, samples: int = 3) -> float:
    """Median seconds of a Python process importing what a buyer needs and unlocking
    its keystore (the least a cold CLI purchase must do before any purchase work)."""
    code = (
        "import sys; from pathlib import Path; import agentmesh.agents.agent; "
        "from agentmesh.config import load_config; from agentmesh.wallets.keystore import "
        "Keystore; home = Path(sys.argv[1]); "
        "Keystore(home, scrypt_n=load_config(home).wallet.scrypt_n).load('buyer', sys.argv[2])"
    )
    times = []
    for _ in range(samples):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code, str(home), PASSWORD], check=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


# ---------------------------------------------------------------------- the purchases


async def agent_buys(home: Path, runs: int) -> list[float]:
    from agentmesh import Agent

    durations = []
    async with Agent("bench-direct", wallet="direct", home=home) as agent:
        await agent.wait_for_providers("echo", count=2, timeout=60)
        await agent.buy("echo", text="warm-up", budget="0.2")
        for n in range(runs):
            start = time.perf_counter()
            outcome = await agent.buy("echo", text=f"direct {n}", budget="0.2")
            durations.append(time.perf_counter() - start)
            assert outcome.settled
    return durations


def concurrent_cli(home: Path, count: int) -> tuple[int, float]:
    env = {**os.environ, "AGENTMESH_PASSWORD": PASSWORD, "AGENTMESH_HOME": str(home)}
    command = [sys.executable, "-m", "agentmesh.cli.app", "--home", str(home), "task", "request"]
    start = time.perf_counter()
    processes = [
        subprocess.Popen(
            [
                *command,
                "echo",
                "--text",
                f"together {n}",
                "--budget",
                "0.2",
                "--json",
                "--wallet",
                "buyer",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(count)
    ]
    settled = 0
    for process in processes:
        out, _ = process.communicate(timeout=600)
        if process.returncode == 0 and json.loads(out)["phase"] == "settled":
            settled += 1
    return settled, time.perf_counter() - start


def run(runs: int) -> dict[str, Any]:
    from agentmesh.agents.control import stop_wallet_agents

    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp) / "home"
        home.mkdir(mode=0o700)
        (home / "provider.py").write_text(PROVIDER)
        cli(home, "devnet", "up")
        providers: list[subprocess.Popen[bytes]] = []
        try:
            for name in ("p1", "p2", "buyer", "direct"):
                cli(home, "wallet", "new", name)
            providers = [start_provider(home, name) for name in ("p1", "p2")]
            console.log("providers up; agent.buy ...")
            figures["agent.buy (warm)"] = asyncio.run(agent_buys(home, runs))
            console.log("CLI warm ...")
            timed_cli_purchase(home, -1)  # starts the wallet's agent
            figures["task request (warm CLI)"] = [timed_cli_purchase(home, n) for n in range(runs)]
            console.log("CLI cold ...")
            cold = []
            for n in range(runs):
                stop_wallet_agents(home)
                cold.append(timed_cli_purchase(home, 100 + n))
            figures["task request (cold CLI)"] = cold
            console.log("8 concurrent CLI purchases from one wallet ...")
            figures["concurrent"] = concurrent_cli(home, 8)
            console.log("floor ...")
            figures["bare_tx"] = statistics.median(asyncio.run(bare_transactions(home, runs)))
            figures["rtt"] = asyncio.run(mesh_round_trip())
            figures["pricing"] = asyncio.run(pricing_call())
            figures["process"] = bare_process(home)
        finally:
            stop_wallet_agents(home)
            for process in providers:
                process.terminate()
                process.wait(30)
            cli(home, "devnet", "down", check=False)
    return figures


def main() -> None:
    os.environ["AGENTMESH_PASSWORD"] = PASSWORD  # the in-process agent's wallet
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=8, help="purchases per measurement")
    args = parser.parse_args()
    figures = run(args.runs)
    floor = figures["bare_tx"] + ROUND_TRIPS * figures["rtt"] + figures["pricing"]
    floors = {
        "agent.buy (warm)": (floor, 1.0),
        "task request (warm CLI)": (floor, None),
        "task request (cold CLI)": (floor + figures["process"], 3.0),
    }
    table = Table(title=f"seconds per purchase ({args.runs} runs each), floor measured in this run")
    for column in ("purchase", "p50", "p90", "floor", "p50 / floor", "aim"):
        table.add_column(column, justify="right")
    for name, (row_floor, aim) in floors.items():
        p50, p90 = p50_p90(figures[name])
        aim_text = f"<= {aim:g} s and <= 2x floor" if aim else "-"
        table.add_row(
            name, f"{p50:.3f}", f"{p90:.3f}", f"{row_floor:.3f}", f"{p50 / row_floor:.2f}", aim_text
        )
    console.print(table)
    console.print(
        f"floor parts: transactions bare {figures['bare_tx']:.3f} s + {ROUND_TRIPS} mesh round "
        f"trips x {figures['rtt'] * 1000:.2f} ms + one pricing call {figures['pricing']:.3f} s; "
        f"a cold CLI adds a bare process (imports + keystore) {figures['process']:.3f} s"
    )
    settled, wall = figures["concurrent"]
    console.print(
        f"8 concurrent CLI purchases from one wallet: {settled}/8 settled in {wall:.1f} s"
    )


if __name__ == "__main__":
    main()
