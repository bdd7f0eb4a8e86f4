"""The devnet's Uniswap V2 as a DeFi agent sees it: routes, TWAP prices, balances.

``UniswapMarket`` reads the exchange recorded in the deployment (``Exchange``) and its
``TwapOracle``: which pools a trade goes through (a direct pool, else through WETH),
what an amount is worth at the pools' time-weighted average price, and it keeps the
oracle's observations fresh for the pools it trades (one ``update`` per period, paid by
the agent's key; without them the wallet can price no swap).
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

from agentmesh.chain.deployment import Exchange
from agentmesh.errors import AgentMeshValueError
from agentmesh.wallets.clients import TokenClient, checksum
from agentmesh.wallets.oracle import TwapOracleClient
from agentmesh.wallets.wallet import Wallet


class UniswapMarket:
    """Routes and TWAP prices on one Uniswap V2 deployment, for ``wallet`` to act on."""

    def __init__(self, wallet: Wallet, exchange: Exchange) -> None:
        if exchange.oracle is None:
            raise AgentMeshValueError(
                "this devnet's exchange has no TwapOracle: restart it with `agentmesh devnet "
                "up` (an older devnet is upgraded on start)"
            )
        self.wallet = wallet
        self.exchange = exchange
        self.router = checksum(exchange.router)
        self.oracle = TwapOracleClient(wallet, exchange.oracle)
        self._symbols = {checksum(a): s for s, a in exchange.tokens.items()}
        self._pairs = {
            frozenset(checksum(exchange.tokens[s]) for s in name.split("/"))
            for name in exchange.pairs
        }

    # ------------------------------------------------------------------ tokens

    def address(self, token: str) -> str:
        """A token's address from its symbol (``WETH``) or address; a clear error for a
        token this exchange does not list."""
        for symbol, address in self.exchange.tokens.items():
            if token.lower() in (symbol.lower(), address.lower()):
                return checksum(address)
        known = ", ".join(self.exchange.tokens)
        raise AgentMeshValueError(f"unknown token {token!r}: this exchange lists {known}")

    def symbol(self, address: str) -> str:
        return self._symbols.get(checksum(address), address)

    def decimals(self, address: str) -> int:
        return self.exchange.decimals[self.symbol(address)]

    def whole(self, address: str, amount: int) -> Decimal:
        """``amount`` base units of ``address`` in whole tokens."""
        return Decimal(amount) / Decimal(10 ** self.decimals(address))

    def units(self, address: str, whole: Decimal | str | int) -> int:
        """Whole tokens in base units of ``address``."""
        return int(Decimal(whole) * Decimal(10 ** self.decimals(address)))

    async def balance(self, token: str, owner: str) -> int:
        return await TokenClient(self.wallet, token).balance_of(owner)

    # ------------------------------------------------------------------ routes

    def route(self, token_in: str, token_out: str) -> tuple[str, ...]:
        """The path a trade takes: the direct pool, else through WETH."""
        a, b = checksum(token_in), checksum(token_out)
        if frozenset((a, b)) in self._pairs:
            return (a, b)
        weth = checksum(self.exchange.weth)
        if frozenset((a, weth)) in self._pairs and frozenset((weth, b)) in self._pairs:
            return (a, weth, b)
        raise AgentMeshValueError(
            f"no pool route from {self.symbol(a)} to {self.symbol(b)} on this exchange"
        )

    @staticmethod
    def hops(path: Sequence[str]) -> list[tuple[str, str]]:
        return list(zip(path[:-1], path[1:], strict=True))

    # ------------------------------------------------------------------ prices

    async def twap_out(self, path: Sequence[str], amount_in: int, window: int) -> int:
        """What ``amount_in`` of ``path[0]`` is worth in ``path[-1]`` at the TWAP."""
        return await self.oracle.consult_path(path, amount_in, window)

    async def twap_price(self, base: str, quote: str, window: int) -> Decimal:
        """The TWAP price of one whole ``base`` in whole ``quote`` (through its route)."""
        one = 10 ** self.decimals(base)
        out = await self.twap_out(self.route(base, quote), one, window)
        return self.whole(quote, out)

    async def keep_fresh(self, path: Sequence[str], now: int) -> int:
        """Record an observation of each pool on ``path`` that has none this period;
        returns how many transactions that took."""
        sent = 0
        for a, b in self.hops(path):
            if await self.oracle.observed_at(a, b, now) == 0:
                await self.oracle.update(a, b)
                sent += 1
        return sent

    async def twap_ready(self, path: Sequence[str], window: int, now: int) -> bool:
        """True when every pool on ``path`` has an observation where a ``window``
        ending now starts (else the wallet cannot price a swap yet)."""
        for a, b in self.hops(path):
            if await self.oracle.observed_at(a, b, now - window) == 0:
                return False
        return True
