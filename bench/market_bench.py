"""Market benchmark: settled tasks through two agents, vs the bare escrow path.

    .venv/bin/python bench/market_bench.py [--tasks 64] [--concurrency 1 4 16]

The service is trivial and deterministic and the provider prices by rules alone (no
model), so this measures the market: discovery is done before timing; each task is
call for proposals -> proposal -> award -> escrow open (+approve) -> accept -> work ->
submit -> delivery -> check -> release -> feedback -> settled notice, on a throw-away
anvil. Baseline, same run: the same transactions (open with the agents' standing
allowance, accept, submit, release, feedback) sent directly from two wallets with no
agents and no mesh. Also: gas per settled task, and for one task at a
time the share of wall time spent in chain calls, in mesh transport and in agent logic
(graphs, checkpoints, records).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bare_purchase import BarePurchase
from eth_account import Account
from rich.console import Console
from rich.table import Table

from agentmesh import Agent, ServiceContext
from agentmesh.agents.accounting import task_gas
from agentmesh.agents.task_runner import TaskRunner
from agentmesh.chain.devnet import start_anvil
from agentmesh.config import AgentConfig, ChainConfig, Config, DevnetConfig, WalletConfig
from agentmesh.mesh.node import MeshNode
from agentmesh.wallets import clients
from agentmesh.wallets.chain import Chain, _deploy_fresh, connect
from agentmesh.wallets.chain_clock import ChainClock
from agentmesh.wallets.clients import TokenClient
from agentmesh.wallets.deployer import dev_deployer
from agentmesh.wallets.wallet import Wallet

console = Console()
Interval = tuple[float, float]


class Timeline:
    """Intervals spent in chain calls, mesh requests and graph runs."""

    def __init__(self) -> None:
        self.spans: dict[str, list[Interval]] = {"chain": [], "mesh": [], "provider": []}
        self.on = False

    @contextlib.contextmanager
    def patched(self) -> Iterator[None]:
        originals: list[tuple[Any, str, Any]] = []

        def wrap(owner: Any, name: str, kind: str) -> None:
            original = getattr(owner, name)

            async def timed(*args: Any, **kwargs: Any) -> Any:
                start = time.perf_counter()
                try:
                    return await original(*args, **kwargs)
                finally:
                    # Graph runs count only on the provider's side: they are what a
                    # requester's mesh request waits for beyond the transport.
                    owner = getattr(args[0], "ctx", args[0]) if args else None
                    owner_name = getattr(owner, "name", "")
                    if self.on and (kind != "provider" or owner_name == "bench-provider"):
                        self.spans[kind].append((start, time.perf_counter()))

            originals.append((owner, name, original))
            setattr(owner, name, timed)

        wrap(Wallet, "send", "chain")
        wrap(clients._Client, "_call", "chain")
        wrap(ChainClock, "now", "chain")
        wrap(ChainClock, "block_number", "chain")
        wrap(clients.EscrowClient, "find_opened_job", "chain")
        wrap(MeshNode, "request", "mesh")
        wrap(TaskRunner, "advance", "provider")
        try:
            yield
        finally:
            for owner, name, original in originals:
                setattr(owner, name, original)


def union(spans: list[Interval]) -> list[Interval]:
    merged: list[Interval] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def length(spans: list[Interval]) -> float:
    return sum(end - start for start, end in spans)


def minus(spans: list[Interval], cut: list[Interval]) -> list[Interval]:
    """``spans`` with every part covered by ``cut`` removed (both unions)."""
    result = []
    for start, end in spans:
        pieces = [(start, end)]
        for c_start, c_end in cut:
            next_pieces = []
            for p_start, p_end in pieces:
                if c_end <= p_start or c_start >= p_end:
                    next_pieces.append((p_start, p_end))
                    continue
                if c_start > p_start:
                    next_pieces.append((p_start, c_start))
                if c_end < p_end:
                    next_pieces.append((c_end, p_end))
            pieces = next_pieces
        result.extend(pieces)
    return result


async def bare_escrow(
    chain: Chain, client: Wallet, provider: Wallet, tasks: int, concurrency: int
) -> float:
    """Tasks/s of the purchase's own transactions sent directly (the baseline): open
    (approving as the agents do, with the default standing allowance), accept, submit,
    release, feedback."""
    bare = BarePurchase(chain, client, provider)
    slots = asyncio.Semaphore(concurrency)
    now = int((await chain.w3.eth.get_block("latest"))["timestamp"])

    async def one(n: int) -> None:
        async with slots:
            await bare.run(
                f"{concurrency} {n}", amount=10_000, deadline=now + 3600, review_window=60
            )

    start = time.perf_counter()
    await asyncio.gather(*(one(n) for n in range(tasks)))
    return tasks / (time.perf_counter() - start)


PRICE = "0.01 mUSD"
PASSWORD = "market bench"
PROVIDER_FILE = f"""
from agentmesh import Agent, ServiceContext

agent = Agent("bench-provider")


@agent.service("echo", price="{PRICE}")
async def echo(ctx: ServiceContext, text: str) -> str:
    return text
"""


def provider_process(home: Path, key: bytes, rpc_url: str) -> subprocess.Popen[bytes]:
    """The provider as its own process (``agentmesh run``), as it runs in a market."""
    from agentmesh.wallets.keystore import Keystore

    Keystore(home, scrypt_n=2**14).import_key("bench-provider", key, PASSWORD)
    (home / "config.toml").write_text(
        f'[wallet]\nscrypt_n = {2**14}\n[chain]\nrpc_url = "{rpc_url}"\n[agent]\nfaucet = false\n'
    )
    (home / "provider.py").write_text(PROVIDER_FILE)
    ready = home / "provider.ready"
    command = [sys.executable, "-m", "agentmesh.cli.app", "--home", str(home), "run"]
    command += [str(home / "provider.py"), "--wallet", "bench-provider"]
    command += ["--ready-file", str(ready)]
    log = (home / "provider.log").open("ab")
    env = {**os.environ, "AGENTMESH_PASSWORD": PASSWORD}
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while not ready.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            stop_process(process)
            raise RuntimeError(f"provider did not start: {(home / 'provider.log').read_text()}")
        time.sleep(0.1)
    return process


def stop_process(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def market(tasks: int, levels: list[int], *, split: bool = False) -> dict[str, Any]:
    """Tasks/s per concurrency level; ``split``: the provider runs as its own process
    (else both agents share this process's event loop and CPU)."""
    figures: dict[str, Any] = {"levels": {}}
    timeline = Timeline()
    with tempfile.TemporaryDirectory() as tmp, start_anvil(DevnetConfig()) as anvil:
        w3 = connect(anvil.rpc_url)
        deployment = await _deploy_fresh(w3, anvil.rpc_url, 10_000)
        chain = Chain(w3, anvil.rpc_url, deployment, "embedded", anvil)
        home = Path(tmp)
        deployment.save(home / "deployments" / f"{deployment.chain_id}.json")
        config = Config(
            chain=ChainConfig(rpc_url=anvil.rpc_url),
            wallet=WalletConfig(scrypt_n=2**14),
            agent=AgentConfig(faucet=False),
        )
        faucet = dev_deployer(w3)
        keys = {name: os.urandom(32) for name in ("provider", "requester")}
        for key in keys.values():
            await faucet.send({"to": Account.from_key(key).address, "value": 10**20})
        await TokenClient(faucet, chain.token_address).mint(
            Account.from_key(keys["requester"]).address, 10_000 * 10**6
        )
        requester = Agent("bench-requester", wallet=keys["requester"], home=home, config=config)
        provider: Agent | None = None
        process: subprocess.Popen[bytes] | None = None
        if split:
            process = provider_process(home, keys["provider"], anvil.rpc_url)
        else:
            provider = Agent("bench-provider", wallet=keys["provider"], home=home, config=config)

            @provider.service("echo", price=PRICE)
            async def echo(ctx: ServiceContext, text: str) -> str:
                return text

        with timeline.patched(), contextlib.ExitStack() as cleanup:
            if process is not None:
                cleanup.callback(stop_process, process)
            async with contextlib.AsyncExitStack() as agents:
                if provider is not None:
                    await agents.enter_async_context(provider)
                await agents.enter_async_context(requester)
                await requester.wait_for_providers("echo", timeout=30)
                await requester.buy("echo", text="warm-up", budget="1")  # connections, caches
                for level in levels:
                    slots = asyncio.Semaphore(level)
                    durations: list[float] = []
                    outcomes = []

                    async def one(
                        n: int,
                        level: int = level,
                        slots: Any = slots,
                        durations: list[float] = durations,
                        outcomes: list[Any] = outcomes,
                    ) -> None:
                        async with slots:
                            start = time.perf_counter()
                            outcomes.append(
                                await requester.buy("echo", text=f"task {level}/{n}", budget="1")
                            )
                            durations.append(time.perf_counter() - start)

                    for spans in timeline.spans.values():
                        spans.clear()
                    timeline.on = True
                    start = time.perf_counter()
                    await asyncio.gather(*(one(n) for n in range(tasks)))
                    wall = time.perf_counter() - start
                    timeline.on = False
                    row: dict[str, Any] = {
                        "tps": tasks / wall,
                        "s_per_task": statistics.median(durations),
                    }
                    if level == 1 and not split:
                        chain_spans = union(timeline.spans["chain"])
                        graph_spans = union(timeline.spans["provider"])
                        mesh_only = minus(
                            minus(union(timeline.spans["mesh"]), chain_spans), graph_spans
                        )
                        chain_s, mesh_s = length(chain_spans), length(mesh_only)
                        row["shares"] = (
                            chain_s / wall,
                            mesh_s / wall,
                            1 - (chain_s + mesh_s) / wall,
                        )
                    if level == 1:
                        gases = []
                        for outcome in outcomes:
                            gas, _ = await task_gas(chain, outcome.job_id, outcome.txs)
                            gases.append(gas)
                        figures["gas"] = int(statistics.median(gases))
                    figures["levels"][level] = row
        client = Wallet(Account.from_key(keys["requester"]), w3)
        seller = Wallet(Account.from_key(keys["provider"]), w3)
        figures["bare"] = {
            level: await bare_escrow(chain, client, seller, tasks, level) for level in levels
        }
        await w3.provider.disconnect()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=64, help="tasks per level (steady state)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    args = parser.parse_args()
    if args.tasks < 1 or min(args.concurrency) < 1:
        raise SystemExit("error: --tasks and --concurrency must be at least 1")
    levels = sorted(set(args.concurrency) | {1})
    runs = {
        "one process": asyncio.run(market(args.tasks, levels)),
        "own process": asyncio.run(market(args.tasks, levels, split=True)),
    }
    table = Table(title=f"{args.tasks} settled tasks per level, trivial service, anvil (automine)")
    columns = ("provider", "concurrent", "agents tasks/s", "s per task", "bare escrow tasks/s")
    for column in (*columns, "ratio"):
        table.add_column(column, justify="right")
    for mode, f in runs.items():
        for level in levels:
            row, bare = f["levels"][level], f["bare"][level]
            table.add_row(
                mode if level == levels[0] else "",
                str(level),
                f"{row['tps']:.2f}",
                f"{row['s_per_task']:.3f}",
                f"{bare:.2f}",
                f"{row['tps'] / bare:.2f}",
            )
    console.print(table)
    console.print(
        "provider: 'one process' = both agents on one event loop (one core between them); "
        "'own process' = the provider as `agentmesh run`, as in a market; bare escrow "
        "measured in the same run each time"
    )
    f = runs["one process"]
    chain_share, mesh_share, logic_share = f["levels"][1]["shares"]
    console.print(
        f"gas per settled task (open, accept, submit, release, feedback; approve only when "
        f"the standing allowance runs short): {f['gas']:,}"
    )
    console.print(
        f"one task at a time, share of wall time: chain calls {chain_share:.0%}, "
        f"mesh transport {mesh_share:.0%}, agent logic {logic_share:.0%}"
    )
    console.print(
        json.dumps(
            {mode: {k: f[k] for k in ("levels", "bare", "gas")} for mode, f in runs.items()},
            default=str,
        )
    )


if __name__ == "__main__":
    main()
