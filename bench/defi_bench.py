"""DeFi benchmark: a swap through a policy-bound AgentWallet against the bare router swap.

    .venv/bin/python bench/defi_bench.py [--swaps 5] [--intents 5]

Starts a throw-away anvil (automine) with the devnet's Uniswap V2 (``open_chain``) and
makes the same swaps two ways, alternating, in the same run:

- baseline: a trader's ``swapExactTokensForTokens`` straight to Router02 (its standing
  allowance already granted, so only the swap is counted);
- through an ``AgentWallet`` with every rule on: caps on the tokens sold, the token
  list, the registered router, the deadline bound, the realized price against the
  pool's TWAP, and an expiry (``executeWithApproval``: a one-call allowance granted
  and reset inside the swap's transaction).

Printed: gas per swap (one hop mUSD -> WETH, two hops mUSD -> WETH -> MGLD; the first
swap, when storage is written for the first time, and the next), the ratio, and seconds
per swap from sending to the receipt, p50 over ``--swaps``.

Then intent to fill, on the demo's stage (``agentmesh demo defi``: a devnet, a
delegation, a DeFi agent process): seconds from the person's command starting to the
fill mined (read from the agent's store), p50 over ``--intents``, for the structured
command (``agentmesh defi swap 5 mUSD WETH``) and the plain-language one (``agentmesh
defi ask "swap 5 mUSD for WETH" --yes``: loads the local model each time), against a
bare router swap sent and mined in the same run. The first command also starts the
owner's wallet agent: it is reported apart (cold).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from chain_bench import new_wallet  # bench/ is on sys.path when a bench script runs
from rich.console import Console
from rich.table import Table
from web3 import AsyncWeb3

from agentmesh import Config
from agentmesh.wallets import exchange as ex
from agentmesh.wallets.agent_wallet import AgentWalletClient, SwapCall, SwapPolicy
from agentmesh.wallets.chain import Chain, open_chain
from agentmesh.wallets.delegation import Cap, DelegationTerms, create_delegation
from agentmesh.wallets.deployer import dev_deployer
from agentmesh.wallets.oracle import TwapOracleClient
from agentmesh.wallets.wallet import Wallet

console = Console()
MUSD = 10**6
AMOUNT = 100 * MUSD


async def now(chain: Chain) -> int:
    return int((await chain.w3.eth.get_block("latest"))["timestamp"])


async def keep_oracle_fresh(chain: Chain, oracle: TwapOracleClient, periods: int) -> None:
    """What a keeper does: one observation of each pool per period."""
    exchange = chain.deployment.exchange
    assert exchange is not None
    for step in range(periods + 1):
        await oracle.update_pools(exchange)
        if step < periods:
            await chain.w3.provider.make_request("evm_increaseTime", [ex.ORACLE_PERIOD])  # type: ignore[arg-type]
            await chain.w3.provider.make_request("evm_mine", [])  # type: ignore[arg-type]


class Direct:
    """The baseline: a trader swapping through Router02 with a standing allowance."""

    def __init__(self, chain: Chain, trader: Wallet) -> None:
        exchange = chain.deployment.exchange
        assert exchange is not None
        self.chain, self.trader, self.exchange = chain, trader, exchange
        self.router = chain.w3.eth.contract(
            address=AsyncWeb3.to_checksum_address(exchange.router),
            abi=ex.npm_artifact("UniswapV2Router02").abi,
        )

    async def approve(self) -> None:
        token = self.chain.w3.eth.contract(
            address=AsyncWeb3.to_checksum_address(self.exchange.tokens["mUSD"]),
            abi=ex.npm_artifact("WETH9").abi,
        )
        await self.trader.transact(token.functions.approve(self.exchange.router, 2**255))

    async def swap(self, path: list[str]) -> Any:
        tokens = [self.exchange.tokens[s] for s in path]
        fn = self.router.functions.swapExactTokensForTokens(
            AMOUNT, 0, tokens, self.trader.address, await now(self.chain) + 60
        )
        return await self.trader.transact(fn)


async def delegated(chain: Chain, faucet: Wallet) -> tuple[AgentWalletClient, Wallet]:
    exchange = chain.deployment.exchange
    assert exchange is not None and exchange.oracle is not None
    owner = await new_wallet(chain, faucet, musd=10_000)
    agent = await new_wallet(chain, faucet)
    tokens = exchange.tokens
    terms = DelegationTerms(
        agent=agent.address,
        router=exchange.router,
        tokens=(tokens["mUSD"], tokens["WETH"], tokens["MGLD"]),
        caps={tokens["mUSD"]: Cap(5_000 * MUSD), tokens["WETH"]: Cap(10**18)},
        policy=SwapPolicy(
            oracle=exchange.oracle,
            twap_window=2 * ex.ORACLE_PERIOD,
            max_deadline_delay=300,
            # The bench's own swaps move the pools a few % within one TWAP window; what
            # the check costs does not depend on its bound.
            max_slippage_bps=1_000,
            max_path_length=3,
        ),
        valid_until=await now(chain) + 30 * 86_400,
    )
    wallet = await create_delegation(owner, terms)
    token = chain.w3.eth.contract(
        address=AsyncWeb3.to_checksum_address(tokens["mUSD"]), abi=ex.npm_artifact("WETH9").abi
    )
    await owner.transact(token.functions.transfer(wallet.address, 5_000 * MUSD))
    return wallet.as_wallet(agent), agent


async def run(swaps: int) -> None:
    with tempfile.TemporaryDirectory() as home:
        async with open_chain(Path(home), Config()) as chain:
            exchange = chain.deployment.exchange
            if exchange is None or exchange.oracle is None:
                raise SystemExit("no Uniswap V2 on the devnet: run `make setup` first")
            faucet = dev_deployer(chain.w3)
            trader = await new_wallet(chain, faucet, musd=10_000)
            direct = Direct(chain, trader)
            await direct.approve()
            wallet, agent = await delegated(chain, faucet)
            await keep_oracle_fresh(chain, TwapOracleClient(agent, exchange.oracle), 3)

            async def via_wallet(path: list[str]) -> Any:
                call = SwapCall(
                    router=exchange.router,
                    path=tuple(exchange.tokens[s] for s in path),
                    amount_in=AMOUNT,
                    min_out=0,
                    recipient=wallet.address,
                    deadline=await now(chain) + 60,
                )
                return await wallet.swap(call)

            gas: dict[tuple[str, str], list[int]] = {}
            seconds: dict[str, list[float]] = {"direct": [], "AgentWallet": []}
            for path in (["mUSD", "WETH"], ["mUSD", "WETH", "MGLD"]):
                hops = f"{len(path) - 1} hop{'s' if len(path) > 2 else ''}"
                for i in range(swaps):
                    for how, swap in (("direct", direct.swap), ("AgentWallet", via_wallet)):
                        started = time.perf_counter()
                        receipt = await swap(path)
                        seconds[how].append(time.perf_counter() - started)
                        when = "first swap" if i == 0 else "next"
                        gas.setdefault((f"{hops}, {when}", how), []).append(int(receipt["gasUsed"]))

            table = Table(title="Gas per swap: AgentWallet with every rule on vs Router02")
            for column in ("swap", "direct (baseline)", "via AgentWallet", "ratio"):
                table.add_column(column, justify="left" if column == "swap" else "right")
            for label in dict.fromkeys(label for label, _ in gas):
                base = int(statistics.median(gas[(label, "direct")]))
                wrapped = int(statistics.median(gas[(label, "AgentWallet")]))
                table.add_row(label, f"{base:,}", f"{wrapped:,}", f"{wrapped / base:.2f}x")
            console.print(table)
            base_s = statistics.median(seconds["direct"])
            wallet_s = statistics.median(seconds["AgentWallet"])
            console.print(
                f"seconds per swap, send to receipt, p50 of {len(seconds['direct'])}: "
                f"direct {base_s:.3f} s, via AgentWallet {wallet_s:.3f} s "
                f"({wallet_s / base_s:.2f}x)"
            )


async def intent_to_fill(runs: int) -> None:
    from agentmesh.cli.demo_defi import _cli, _store_rows, stage

    async with stage(console, fund=1_000, cap=1_000) as st:
        direct = Direct(st.chain, st.trader)
        await direct.approve()

        async def fill_seconds(*command: str) -> float:
            started = time.perf_counter()
            answer = await asyncio.to_thread(_cli, st.home, st.env, *command)
            intent_id = answer["state"]["intent_id"]
            while True:
                _, fills = _store_rows(st.store_path)
                if any(f.status == "filled" for f in fills.get(intent_id, [])):
                    return time.perf_counter() - started
                if time.perf_counter() - started > 120:
                    raise SystemExit(f"intent {intent_id} did not fill within 120 s")
                await asyncio.sleep(0.02)

        structured_cmd = ("defi", "swap", "5", "mUSD", "WETH")
        cold = await fill_seconds(*structured_cmd)
        times: dict[str, list[float]] = {"structured": [], "plain language": [], "bare": []}
        for _ in range(runs):
            times["structured"].append(await fill_seconds(*structured_cmd))
            ask = ("defi", "ask", "swap 5 mUSD for WETH", "--yes")
            times["plain language"].append(await fill_seconds(*ask))
            started = time.perf_counter()
            await direct.swap(["mUSD", "WETH"])
            times["bare"].append(time.perf_counter() - started)
        bare = statistics.median(times["bare"])
        table = Table(title=f"Intent submitted to fill mined, p50 of {runs} (seconds)")
        for column in ("path", "p50", "vs a bare router swap"):
            table.add_column(column, justify="left" if column == "path" else "right")
        table.add_row("bare router swap (baseline)", f"{bare:.3f}", "1.00x")
        for path in ("structured", "plain language"):
            p50 = statistics.median(times[path])
            table.add_row(f"agentmesh defi, {path}", f"{p50:.3f}", f"{p50 / bare:.0f}x")
        table.add_row("agentmesh defi, structured, cold wallet agent", f"{cold:.3f}", "")
        console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--swaps", type=int, default=5, help="swaps per path and way")
    parser.add_argument("--intents", type=int, default=5, help="intents per path (0: none)")
    args = parser.parse_args()
    asyncio.run(run(args.swaps))
    if args.intents:
        asyncio.run(intent_to_fill(args.intents))


if __name__ == "__main__":
    main()
