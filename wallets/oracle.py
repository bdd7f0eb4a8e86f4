"""The ``TwapOracle`` client: keep a pool's observations fresh and read its TWAP.

The oracle (``contracts/src/TwapOracle.sol``) averages a Uniswap V2 pair's price over a
window chosen per query; it needs an observation in the period where the window
starts, so whoever depends on it (the DeFi agent, the devnet's demo trader) calls
``update`` once per period for the pools it trades.
"""

from __future__ import annotations

from collections.abc import Sequence

from web3.types import TxReceipt

from agentmesh.chain.deployment import Exchange
from agentmesh.wallets.clients import _Client, checksum

# Gas for ``update`` set here, not estimated: an estimate made in a period that already
# has its observation prices the no-op, and the transaction may land in the next period,
# where it writes three storage slots.
UPDATE_GAS = 150_000


class TwapOracleClient(_Client):
    """Observations and time-weighted average prices of one factory's pairs."""

    contract_name = "TwapOracle"

    async def update(self, token_a: str, token_b: str) -> TxReceipt:
        """Record the pair's cumulative prices for this period (a no-op on chain when
        the period already has an observation)."""
        return await self.wallet.transact(
            self.contract.functions.update(checksum(token_a), checksum(token_b)), gas=UPDATE_GAS
        )

    async def update_pools(self, exchange: Exchange) -> None:
        """Record this period's observation of every pool ``exchange`` lists."""
        for name in exchange.pairs:
            a, b = (exchange.tokens[symbol] for symbol in name.split("/"))
            await self.update(a, b)

    async def consult(self, token_in: str, token_out: str, amount_in: int, window: int) -> int:
        """``amount_in`` of ``token_in`` in ``token_out`` at the TWAP over ``window`` s."""
        (out,) = await self._read(
            "consult", checksum(token_in), checksum(token_out), amount_in, window
        )
        return int(out)

    async def consult_path(self, path: Sequence[str], amount_in: int, window: int) -> int:
        """``amount_in`` of ``path[0]`` in ``path[-1]``, hop by hop at each TWAP."""
        (out,) = await self._read("consultPath", [checksum(t) for t in path], amount_in, window)
        return int(out)

    async def observed_at(self, token_a: str, token_b: str, timestamp: int) -> int:
        """When the observation of ``timestamp``'s period was taken (0: none)."""
        (at,) = await self._read("observedAt", checksum(token_a), checksum(token_b), timestamp)
        return int(at)

    async def period(self) -> int:
        (seconds,) = await self._read("period")
        return int(seconds)

    async def window_range(self) -> tuple[int, int]:
        """The shortest and longest windows the oracle answers, in seconds."""
        low, high = await self._read("windowRange")
        return int(low), int(high)
