"""DeFi benchmark: a swap through a policy-bound AgentWallet against the bare router swap.

    .venv/bin/python bench/defi_bench.py [--swaps 5]

Starts a throw-away anvil (automine) with the devnet's Uniswap V2 (``open_chain``) and
makes the same swaps two ways, alternating, in the same run:

- baseline: a trader's ``swapExactTokensForTokens`` straight to Router02 (its standing
  allowance already granted, so only the swap is counted);
- through an ``AgentWallet`` with every rule on: caps on the tokens sold, the token
  list, the registered router, the deadline bound, the realized price against the
  pool's TWAP, and an expiry (``executeWithApproval``: a one-call allowance granted
  and reset inside the swap's transaction).

Printed: gas per swap (one hop mUSD -> WETH, two hops mUSD -> WETH -> MGLD; first swap
of a day, when the cap's day record is written, and the next), the ratio, and seconds
per swap from sending to the receipt, p50 over ``--swaps``.
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
        for name in exchange.pairs:
            a, b = (exchange.tokens[s] for s in name.split("/"))
            await oracle.update(a, b)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--swaps", type=int, default=5, help="swaps per path and way")
    args = parser.parse_args()
    asyncio.run(run(args.swaps))


if __name__ == "__main__":
    main()
