"""The chain as the console reads it: connected from what the home names (config's
``rpc_url``, else a running ``devnet up``), with the deployment read from its record.

Read-only by construction: unlike ``open_chain`` it never deploys or funds anything,
and a chain that does not answer is a page note, not an error page.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from agentmesh.errors import AgentMeshError

T = TypeVar("T")

CALL_TIMEOUT_S = 3.0  # a page waits this long for the chain, then says it is unreachable
RETRY_S = 5.0  # after a failed connect, try again no sooner than this


class ChainUnavailable(AgentMeshError):
    """The home names no chain, or it does not answer."""


@dataclass
class ChainView:
    """A lazily opened, cached read-only chain per home."""

    home: Path
    _chain: Any = None
    _failed_at: float = 0.0
    _problem: str = ""
    _url: str = ""  # the RPC endpoint last tried, named when it does not answer
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def get(self) -> Any:
        """The ``Chain`` (``agentmesh.wallets.chain.Chain``), or ``ChainUnavailable``."""
        async with self._lock:
            if self._chain is not None:
                return self._chain
            if time.monotonic() - self._failed_at < RETRY_S:
                raise ChainUnavailable(self._problem)
            try:
                self._chain = await asyncio.wait_for(self._open(), CALL_TIMEOUT_S)
            except (AgentMeshError, OSError, TimeoutError) as exc:
                self._failed_at = time.monotonic()
                self._problem = _reason(exc, self._url)
                raise ChainUnavailable(self._problem) from None
            return self._chain

    async def call(self, awaitable: Awaitable[T], timeout: float = CALL_TIMEOUT_S) -> T:
        """``awaitable`` (chain reads) within ``timeout``. A transport failure or a
        timeout forgets the connection, so the next page reconnects (the devnet may have
        restarted); a node's error answer is reported as such. Any other exception is a
        bug and propagates."""
        from web3.exceptions import Web3Exception

        chain = self._chain
        try:
            return await asyncio.wait_for(awaitable, timeout)
        except (OSError, TimeoutError, Web3Exception, AgentMeshError) as exc:
            problem = _reason(exc, self._url)
            if isinstance(exc, OSError | TimeoutError):
                await self.forget(problem, chain)
            raise ChainUnavailable(problem) from None

    async def forget(self, problem: str, chain: Any = None) -> None:
        """Drop the connection (only ``chain``'s, when given: another request may
        already have reconnected)."""
        if chain is not None and chain is not self._chain:
            return
        chain, self._chain = self._chain, None
        self._problem, self._failed_at = problem, time.monotonic()
        if chain is not None:
            await chain.w3.provider.disconnect()

    async def close(self) -> None:
        await self.forget("closed")

    async def _open(self) -> Any:
        from agentmesh.chain.deployment import Deployment
        from agentmesh.chain.home import DevnetPaths, DevnetRecord
        from agentmesh.config import load_config
        from agentmesh.wallets.chain import Chain, connect

        # Files only (off the event loop); the devnet's record is read as it is, never
        # probed or removed as `running_devnet` does: the chain answers below or not.
        config = await asyncio.to_thread(load_config, self.home)
        if config.chain.rpc_url:
            url, record = config.chain.rpc_url, None
        else:
            devnet = DevnetRecord.load(DevnetPaths.of(self.home).record)
            if devnet is None:
                raise ChainUnavailable(
                    "no chain: this home has no chain.rpc_url and no `agentmesh devnet up`"
                )
            url, record = devnet.rpc_url, DevnetPaths.of(self.home).deployment
        self._url = url
        w3 = connect(url, CALL_TIMEOUT_S)
        try:
            chain_id = int(await w3.eth.chain_id)
            path = record or self.home / "deployments" / f"{chain_id}.json"
            if not path.exists():
                raise ChainUnavailable(f"no agentmesh deployment recorded for chain {chain_id}")
            deployment = await asyncio.to_thread(Deployment.load, path)
            if deployment.chain_id != chain_id:
                raise ChainUnavailable(
                    f"the deployment record is for chain {deployment.chain_id}, "
                    f"{url} is chain {chain_id}"
                )
        except BaseException:
            await w3.provider.disconnect()
            raise
        return Chain(w3, url, deployment, "configured" if record is None else "devnet")


def _reason(exc: BaseException, url: str) -> str:
    """One line for a page: what failed, where, and what is missing because of it."""
    if isinstance(exc, AgentMeshError):
        return exc.user_message
    where = f"the chain at {url}" if url else "the chain"
    if isinstance(exc, TimeoutError):
        problem = f"{where} did not answer within {CALL_TIMEOUT_S:g} s"
    elif isinstance(exc, OSError) or "Connect" in type(exc).__name__:
        problem = f"{where} does not answer ({type(exc).__name__})"
    else:  # it answered, but not as this home's records expect (a reset devnet?)
        problem = f"a read from {where} failed ({type(exc).__name__}: {str(exc)[:160]})"
    # A demo's devnet stops with the demo; its records stay and are shown without it.
    return f"{problem}: balances, gas and on-chain state are not shown"
