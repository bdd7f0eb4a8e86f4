"""The HTTP connection to a chain: kept-alive connections, several endpoints in order.

web3's HTTP provider opens one TCP connection per request and talks to one URL. An
agent on a shared chain needs more: a pooled connection (~70 requests per purchase),
and a second (third, ...) endpoint of the same chain to use while the first is down.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Any

import aiohttp
from aiohttp import ClientSession, TCPConnector
from eth_typing import URI
from web3 import AsyncHTTPProvider, AsyncWeb3
from web3.types import RPCEndpoint

from agentmesh.errors import ChainUnavailableError, DevnetError
from agentmesh.wallets.sending import public_url

log = logging.getLogger("agentmesh.chain")

KEEPALIVE_S = 15.0  # idle pooled connections close after this

# Failures of the endpoint itself (not an answer of the node): the next one is tried.
TRANSPORT_ERRORS = (aiohttp.ClientError, TimeoutError, ConnectionError)

# Default web3 middleware that costs CPU on every call and guards nothing here:
# ``validation`` compares each transaction's chainId with the node's (Wallet signs with
# the node's chain id, and a node refuses a transaction for another chain) and
# ``ens_name_to_address`` resolves ENS names (agentmesh takes addresses only).
# Measured: an eth_call 1.61 -> 1.13 ms CPU, a transaction 2.98 -> 2.32 ms.
UNUSED_MIDDLEWARE = ("validation", "ens_name_to_address")


class ChainProvider(AsyncHTTPProvider):
    """web3's HTTP provider over pooled keep-alive connections, with fallback endpoints.

    web3 builds its aiohttp session with ``force_close=True``: every JSON-RPC request
    opens and closes its own TCP connection (measured: one connect per request). This
    provider caches a keep-alive session per event loop and endpoint in web3's own
    session cache, so ``disconnect()`` still closes them.

    With several ``urls``, a request that cannot reach the endpoint in use goes to the
    next, in order, and the one that answers is used from then on; the first is tried
    again after ``retry_first_s``. An error *answer* of a node is not a failover reason.
    When no endpoint answers, the request raises ``ChainUnavailableError``: every chain
    call in agentmesh fails the same, named way during an outage.
    """

    def __init__(
        self, urls: Sequence[str], *, timeout: float = 10.0, retry_first_s: float = 30.0
    ) -> None:
        if not urls:
            raise ValueError("a chain provider needs at least one endpoint")
        super().__init__(
            urls[0],
            request_kwargs={"timeout": aiohttp.ClientTimeout(total=timeout)},
            cache_allowed_requests=True,
            # No retries inside one request: a failed endpoint hands over to the next,
            # and the callers (wallet, task runner) decide how long to wait for the chain.
            exception_retry_configuration=None,
        )
        self.urls = tuple(urls)
        self.retry_first_s = retry_first_s
        self._current = 0
        self._left_first_at = 0.0
        self._pooled: set[tuple[int, str]] = set()

    async def _session(self, url: str) -> None:
        loop = asyncio.get_running_loop()
        key = (id(loop), url)
        if key in self._pooled:
            return
        self._pooled.add(key)
        mine = ClientSession(
            raise_for_status=True,
            connector=TCPConnector(limit=64, keepalive_timeout=KEEPALIVE_S),
        )
        cached = await self._request_session_manager.async_cache_and_return_session(URI(url), mine)
        if cached is not mine:
            await mine.close()  # this loop already had one: keep that

    async def _post(self, url: str, request_data: bytes) -> bytes:
        await self._session(url)
        return await self._request_session_manager.async_make_post_request(
            URI(url), request_data, **self.get_request_kwargs()
        )

    def _order(self) -> list[int]:
        if self._current and time.monotonic() - self._left_first_at > self.retry_first_s:
            return list(range(len(self.urls)))  # the first (preferred) one again
        start = self._current
        return [start, *(i for i in range(len(self.urls)) if i != start)]

    async def _make_request(self, method: RPCEndpoint, request_data: bytes) -> bytes:
        failure: BaseException | None = None
        for index in self._order():
            try:
                reply = await self._post(self.urls[index], request_data)
            except aiohttp.ClientResponseError as exc:
                if exc.status < 500 and exc.status != 429:
                    # The endpoint answers, and refuses us (a wrong key, a bad path):
                    # no outage to wait out, and no reason to think the next one differs.
                    raise DevnetError(
                        f"chain endpoint {public_url(self.urls[index])} refused the request: "
                        f"HTTP {exc.status} {exc.message}; check the URL (and its API key)"
                    ) from None
                failure = exc
                continue
            except TRANSPORT_ERRORS as exc:
                failure = exc
                if index == 0 and self._current:
                    self._left_first_at = time.monotonic()  # still down: later again
                continue
            if index != self._current:
                self._switch(index)
            return reply
        tried = ", ".join(public_url(url) for url in self.urls)
        raise ChainUnavailableError(
            f"chain unavailable: no answer from {tried} ({type(failure).__name__}); is the "
            "node running? (`agentmesh chain status`, `agentmesh devnet status`)"
        ) from failure

    def _switch(self, index: int) -> None:
        if index == 0:
            log.info("chain endpoint %s answers again: using it", public_url(self.urls[0]))
        else:
            log.warning(
                "chain endpoint %s does not answer: using %s",
                public_url(self.urls[self._current]),
                public_url(self.urls[index]),
            )
        if self._current == 0:
            self._left_first_at = time.monotonic()
        self._current = index
        self.endpoint_uri = URI(self.urls[index])


def connect(
    rpc_url: str | Sequence[str], timeout: float = 10.0, *, retry_first_s: float = 30.0
) -> AsyncWeb3[Any]:
    """An AsyncWeb3 on ``rpc_url`` (or several endpoints of one chain, tried in order),
    keeping its HTTP connections open."""
    urls = [rpc_url] if isinstance(rpc_url, str) else list(rpc_url)
    w3 = AsyncWeb3(ChainProvider(urls, timeout=timeout, retry_first_s=retry_first_s))
    for name in UNUSED_MIDDLEWARE:
        w3.middleware_onion.remove(name)
    return w3
