"""Chain time as the contracts see it, for timers that compare with on-chain deadlines."""

from __future__ import annotations

from typing import Any

from eth_typing import HexStr
from web3 import AsyncWeb3
from web3.types import RPCEndpoint

# Init code that returns block.timestamp: TIMESTAMP PUSH1 0 MSTORE PUSH1 32 PUSH1 0 RETURN
TIMESTAMP_PROBE = HexStr("0x4260005260206000f3")


class ChainClock:
    """``now()``: the time the next block will see; ``block_number()``: the head."""

    def __init__(self, w3: AsyncWeb3[Any]) -> None:
        self.w3 = w3

    async def now(self) -> int:
        """Now, as the next block will see it (``block.timestamp`` of a pending call).

        The latest block's time is not enough: anvil mines only on demand, so it lags
        while nothing happens; and the wall clock is not the chain's (a devnet's clock
        can be moved). Falls back to the latest block where pending calls fail.
        """
        try:
            # A raw request: a trade reads the clock ~6 times, and web3's eth.call
            # formatting costs three times the request itself.
            raw = await self.w3.manager.coro_request(
                RPCEndpoint("eth_call"), [{"data": TIMESTAMP_PROBE}, "pending"]
            )
            return int(str(raw), 16)
        except Exception:  # noqa: BLE001 - nodes refuse pending calls in various ways
            block = await self.w3.eth.get_block("latest")
            return int(block["timestamp"])

    async def block_number(self) -> int:
        return int(await self.w3.eth.block_number)
