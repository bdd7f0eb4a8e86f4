"""How a transaction gets onto a live chain and stays there.

What a devnet that mines each transaction at once never shows, and a shared chain does:

- **Fees.** EIP-1559 fields from the node's own estimate: the next block's base fee
  (``eth_feeHistory``) and the tip it suggests (``eth_maxPriorityFeePerGas``). The
  maximum is twice the base fee plus the tip (room for six full blocks of base-fee
  rise), never above the cap of the chain's :class:`TxPolicy`; a base fee above the cap
  is refused (:class:`~agentmesh.errors.FeeCapError`) instead of paid.
- **Confirmations.** A receipt counts once ``confirmations`` blocks (its own included)
  are on the chain and it is still in the block it was seen in.
- **Stuck transactions.** One not mined after ``replace_after_s`` is signed again with
  the same nonce and at least 12.5% more fee (the replacement rule of geth and anvil),
  within the cap; at the cap, the same transaction is sent again (the node may have
  dropped it).
- **Reorganizations.** A receipt that disappears (its block was dropped) is noticed
  while the confirmations are awaited, and the signed transaction is sent again. Its
  nonce makes that safe: whatever is sent for one nonce, at most one is ever mined.
- **Outages.** A transaction sent before the endpoint went away is waited for across
  the outage (up to ``timeout_s``): the step that sent it resumes when the chain is
  back, instead of failing and sending again.

The policy belongs to a chain connection (``set_tx_policy(w3, ...)``, done by
``open_chain``), so every wallet and contract client on it follows the same one.
"""

from __future__ import annotations

import asyncio
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp
from eth_typing import Hash32
from web3 import AsyncWeb3
from web3.exceptions import TransactionNotFound, Web3RPCError
from web3.types import RPCEndpoint, TxReceipt

from agentmesh.errors import (
    AgentMeshError,
    ChainUnavailableError,
    FeeCapError,
    TransactionError,
)

if TYPE_CHECKING:
    from agentmesh.wallets.wallet import Wallet

log = logging.getLogger("agentmesh.wallet")

GWEI = 10**9
FEE_TTL_S = 1.0  # fee estimates are shared by every wallet on a connection this long
DEFAULT_TIP = GWEI  # where a node offers no tip estimate
BUMP_NUM, BUMP_DEN = 9, 8  # a replacement pays at least 12.5% more
POLL_FIRST_S = 0.02  # an automining devnet has the receipt at once: look again soon
POLL_MAX_S = 0.25  # ... and at most this far apart on a chain with block times


@dataclass(frozen=True, slots=True)
class TxPolicy:
    """How transactions are sent and awaited on one chain (from ``[chain]``)."""

    confirmations: int = 1
    max_fee_per_gas: int = 100 * GWEI
    replace_after_s: float = 30.0
    timeout_s: float = 120.0


_policies: weakref.WeakKeyDictionary[AsyncWeb3[Any], TxPolicy] = weakref.WeakKeyDictionary()
_fees: weakref.WeakKeyDictionary[AsyncWeb3[Any], tuple[float, int, int]] = (
    weakref.WeakKeyDictionary()
)


def set_tx_policy(w3: AsyncWeb3[Any], policy: TxPolicy) -> None:
    """Make ``policy`` the one every wallet on ``w3`` follows."""
    _policies[w3] = policy


def tx_policy(w3: AsyncWeb3[Any]) -> TxPolicy:
    """The policy of ``w3`` (the devnet's defaults where none was set)."""
    return _policies.get(w3) or TxPolicy()


async def _raw(w3: AsyncWeb3[Any], method: str, params: list[Any]) -> Any:
    return await w3.manager.coro_request(RPCEndpoint(method), params)


async def next_base_fee(w3: AsyncWeb3[Any]) -> int:
    """The base fee of the next block (0 on a chain without EIP-1559)."""
    history = await _raw(w3, "eth_feeHistory", [1, "latest", []])
    fees = history.get("baseFeePerGas") or [0]
    return int(str(fees[-1]), 16) if isinstance(fees[-1], str) else int(fees[-1])


async def suggested_tip(w3: AsyncWeb3[Any]) -> int:
    try:
        return int(str(await _raw(w3, "eth_maxPriorityFeePerGas", [])), 16)
    except Web3RPCError:  # not every node implements it
        return DEFAULT_TIP


async def suggest_fees(w3: AsyncWeb3[Any], cap: int) -> tuple[int, int]:
    """(maxFeePerGas, maxPriorityFeePerGas) for a transaction sent now, within ``cap``.

    Cached for ``FEE_TTL_S`` per connection: a purchase sends several transactions
    within a second, and each would otherwise cost two more requests.
    """
    now = time.monotonic()
    cached = _fees.get(w3)
    if cached is None or now - cached[0] > FEE_TTL_S:
        base, tip = await asyncio.gather(next_base_fee(w3), suggested_tip(w3))
        cached = (now, base, tip)
        _fees[w3] = cached
    _, base, tip = cached
    if base >= cap:
        raise FeeCapError(
            f"the chain's base fee is {base / GWEI:.3f} gwei, at or above this agent's cap "
            f"of {cap / GWEI:.3f} gwei ([chain] max_fee_gwei): not sending until it falls"
        )
    tip = min(tip, cap - base)
    return min(cap, 2 * base + tip), tip


def already_taken(exc: Web3RPCError) -> bool:
    """Whether a node's refusal of a raw transaction means it has it already (or mined
    its nonce): the transaction is out there, which is what sending it was for."""
    text = str(exc).lower()
    return any(
        phrase in text
        for phrase in ("already known", "known transaction", "already imported", "nonce too low")
    ) or ("already" in text and "pool" in text)


def public_url(url: str) -> str:
    """``url`` without what may be secret in it (user, password, path, query: RPC
    providers put API keys there): safe in logs and in errors a peer may see."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.hostname:
        return "the chain"
    host = f"[{parts.hostname}]" if ":" in parts.hostname else parts.hostname
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{host}{port}"


def bumped(old: tuple[int, int], fresh: tuple[int, int], cap: int) -> tuple[int, int] | None:
    """Fees for a replacement: the fresh estimate, or 12.5% over the old ones if that is
    more, within ``cap``; None when the cap leaves no room for a valid replacement."""
    max_fee = max(fresh[0], -(-old[0] * BUMP_NUM // BUMP_DEN))
    tip = max(fresh[1], -(-old[1] * BUMP_NUM // BUMP_DEN))
    if max_fee > cap:
        return None
    return max_fee, min(tip, max_fee)


@dataclass
class Attempt:
    """One signed version of the transaction (all share a nonce)."""

    tx_hash: bytes
    raw: bytes
    fees: tuple[int, int]


@dataclass
class Pending:
    """A sent transaction, followed until it is confirmed."""

    wallet: Wallet
    tx: dict[str, Any]  # the fields it was signed with (nonce included)
    attempts: list[Attempt]
    sent: Callable[[bytes], None] | None = None
    policy: TxPolicy = field(default_factory=TxPolicy)
    _seen_in: TxReceipt | None = field(default=None, init=False)  # seen mined, here
    _last_sent: float = field(default=0.0, init=False)  # when it was last broadcast
    _started: float = field(default=0.0, init=False)  # when the timeout's count began

    @property
    def w3(self) -> AsyncWeb3[Any]:
        return self.wallet.w3

    async def _receipt(self) -> TxReceipt | None:
        """The receipt of whichever attempt was mined (newest first), or None."""
        for attempt in reversed(self.attempts):
            try:
                receipt: TxReceipt = await self.w3.eth.get_transaction_receipt(
                    Hash32(attempt.tx_hash)
                )
            except TransactionNotFound:
                continue
            return receipt
        return None

    async def _broadcast(self, raw: bytes) -> bool:
        """Send ``raw``; True if the node took it (or has it, or mined its nonce), False
        if it refused it (the attempt is then not one that can be mined)."""
        try:
            await self.w3.eth.send_raw_transaction(raw)
        except Web3RPCError as exc:
            if already_taken(exc):
                return True
            log.warning("the node refused to take a transaction again: %s", exc)
            return False
        return True

    async def _replace(self) -> None:
        """Send a stuck transaction again: with more fee where the cap and the balance
        allow, else as it is (the node may have dropped it)."""
        last = self.attempts[-1]
        nonce = int(self.tx["nonce"])
        mined_nonce = int(await self.w3.eth.get_transaction_count(self.wallet.address, "latest"))
        if mined_nonce > nonce and await self._receipt() is None:
            raise TransactionError(
                f"nonce {nonce} of {self.wallet.address} was used by another transaction "
                "(is this key used elsewhere?); 0x"
                f"{last.tx_hash.hex()} will never be mined"
            )
        fees = await self._replacement_fees(last)
        if fees is None:
            await self._broadcast(last.raw)
            return
        tx = {**self.tx, "maxFeePerGas": fees[0], "maxPriorityFeePerGas": fees[1]}
        signed = self.wallet.account.sign_transaction(tx)
        attempt = Attempt(bytes(signed.hash), bytes(signed.raw_transaction), fees)
        if not await self._broadcast(attempt.raw):
            return  # refused: the earlier attempts are still the ones that count
        self.attempts.append(attempt)  # only one the node took is looked for
        log.warning(
            "0x%s not mined after %.0fs: replaced by 0x%s (nonce %d, max fee %.3f -> %.3f gwei)",
            last.tx_hash.hex(),
            self.policy.replace_after_s,
            attempt.tx_hash.hex(),
            nonce,
            last.fees[0] / GWEI,
            fees[0] / GWEI,
        )
        if self.sent is not None:
            self.sent(attempt.tx_hash)

    async def _replacement_fees(self, last: Attempt) -> tuple[int, int] | None:
        """Fees for a replacement of ``last``, or None when it must go again as it is:
        the base fee is above the cap (a bump could not get in either), the cap leaves
        no room, or the balance could not pay the higher maximum."""
        cap = self.policy.max_fee_per_gas
        why = ""
        try:
            fees = bumped(last.fees, await suggest_fees(self.w3, cap), cap)
        except FeeCapError as exc:
            fees, why = None, exc.user_message
        if fees is None:
            why = why or "the fee cap leaves no room to raise its fee"
        else:
            cost = int(self.tx.get("value", 0)) + int(self.tx["gas"]) * fees[0]
            if await self.wallet.eth_balance() < cost:
                fees, why = None, "the balance cannot cover a higher maximum fee"
        if fees is None:
            log.warning(
                "0x%s not mined after %.0fs: sent again as it is (%s)",
                last.tx_hash.hex(),
                self.policy.replace_after_s,
                why,
            )
        return fees

    async def _confirmed(self, receipt: TxReceipt) -> TxReceipt | None:
        """``receipt`` once it has its confirmations and is still where it was seen;
        None while it has too few (or its block was dropped: the next look tells)."""
        need = self.policy.confirmations
        if need <= 1:
            return receipt
        head = int(await self.w3.eth.block_number)
        if head - int(receipt["blockNumber"]) + 1 < need:
            return None
        again = await self._receipt()
        if again is not None and again["blockHash"] == receipt["blockHash"]:
            return again
        return None

    async def settle(self) -> TxReceipt:
        """Wait until one attempt is mined and confirmed; see the module doc. The
        timeout counts from the send, and again from the block it is first seen in."""
        self._started = self._last_sent = time.monotonic()
        outage: str | None = None
        delay = POLL_FIRST_S
        while True:
            try:
                done = await self._look()
                if outage is not None:
                    log.info("%s answers again: still waiting for the transaction", outage)
                    outage = None
                if done is not None:
                    return done
            except (ChainUnavailableError, TimeoutError, OSError, aiohttp.ClientError) as exc:
                if outage is None:
                    outage = public_url(self.wallet.rpc_url)
                    log.warning(
                        "lost %s (%s); waiting for it: the transaction is sent",
                        outage,
                        type(exc).__name__,
                    )
            except Web3RPCError as exc:
                # A node busy indexing, a rate limit: the transaction is sent all the same.
                log.warning("the node did not answer about the transaction: %s", exc)
            if time.monotonic() - self._started > self.policy.timeout_s:
                raise self._timed_out(outage)
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, POLL_MAX_S)

    async def _look(self) -> TxReceipt | None:
        """One look at the chain: the receipt once confirmed (a failed one too: the
        caller decodes its revert), else None after doing what is due (sending again
        after a reorganization, replacing)."""
        receipt = await self._receipt()
        if receipt is not None:
            if self._seen_in is None:
                self._started = time.monotonic()  # from here, the confirmations' wait
            self._seen_in = receipt
            return await self._confirmed(receipt)
        last = self.attempts[-1]
        if self._seen_in is not None:
            log.warning(
                "0x%s was mined in block %d, which the chain no longer has (a "
                "reorganization): sending it again, same nonce",
                bytes(self._seen_in["transactionHash"]).hex(),
                int(self._seen_in["blockNumber"]),
            )
            self._seen_in = None
            try:
                if last.raw:
                    await self._broadcast(last.raw)
            finally:
                self._last_sent = time.monotonic()
        elif last.raw and time.monotonic() - self._last_sent >= self.policy.replace_after_s:
            # Only what this process signed can be sent again.
            try:
                await self._replace()
            finally:
                # Even when the node did not answer: no retry on every poll.
                self._last_sent = time.monotonic()
        return None

    def _timed_out(self, outage: str | None) -> AgentMeshError:
        first = self.attempts[0].tx_hash.hex()
        if outage is not None:
            return ChainUnavailableError(
                f"lost connection to {outage} for good while waiting for 0x{first} "
                f"(nonce {self.tx['nonce']}, waited {self.policy.timeout_s:.0f}s); it was "
                "sent and may still be mined"
            )
        return TransactionError(
            f"0x{first} (nonce {self.tx['nonce']}) is not mined and confirmed "
            f"yet after {self.policy.timeout_s:.0f}s; it may still be mined"
        )
