"""A ``Wallet``: an account that signs (EIP-191, EIP-712) and sends transactions.

Sending is safe when many asyncio tasks use one wallet at once: a per-address nonce
manager hands out nonces under a lock held only while the transaction is signed and
submitted, so receipts are awaited concurrently. Reverts become
:class:`~agentmesh.errors.ContractRevertError` naming the custom error; a chain that
stops answering becomes :class:`~agentmesh.errors.ChainUnavailableError`.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import aiohttp
from eth_account.messages import encode_defunct, encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress
from web3 import AsyncWeb3
from web3.contract.async_contract import AsyncContractFunction
from web3.exceptions import ContractLogicError, Web3RPCError
from web3.types import TxParams, TxReceipt, Wei

from agentmesh.contracts import Artifact
from agentmesh.errors import (
    AgentMeshError,
    ChainUnavailableError,
    ContractRevertError,
    InsufficientFundsError,
    TransactionError,
)
from agentmesh.wallets.reverts import decode_revert
from agentmesh.wallets.sending import (
    Attempt,
    Pending,
    already_taken,
    public_url,
    suggest_fees,
    tx_policy,
)
from agentmesh.wallets.units import ETH_DECIMALS, format_amount

T = TypeVar("T")

INTRINSIC_GAS = 21_000  # the least any transaction costs
GAS_MARGIN = 1.25  # estimates miss the 63/64 rule on nested calls; pad them


class NonceManager:
    """Hands out consecutive nonces for one address on one chain connection."""

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self._next: int | None = None

    async def next(self, fetch: Callable[[], Awaitable[int]]) -> int:
        """The nonce to use now (call with ``lock`` held)."""
        if self._next is None:
            self._next = await fetch()
        return self._next

    def advance(self) -> None:
        assert self._next is not None
        self._next += 1

    def reset(self) -> None:
        """Forget the local count; the next send asks the chain again."""
        self._next = None


# One manager per (connection, address), shared by every Wallet object of that address.
_managers: weakref.WeakKeyDictionary[AsyncWeb3[Any], dict[str, NonceManager]] = (
    weakref.WeakKeyDictionary()
)


def reset_nonces(w3: AsyncWeb3[Any]) -> None:
    """Forget every locally tracked nonce on ``w3`` (after a chain snapshot is reverted)."""
    _managers.pop(w3, None)


def _manager(w3: AsyncWeb3[Any], address: str) -> NonceManager:
    per_chain = _managers.setdefault(w3, {})
    return per_chain.setdefault(address, NonceManager())


async def guard_rpc(awaitable: Awaitable[T], rpc_url: str = "the chain") -> T:
    """Await an RPC call, turning connection failures into ``ChainUnavailableError``."""
    try:
        return await awaitable
    except (TimeoutError, aiohttp.ClientError, ConnectionError) as exc:
        raise ChainUnavailableError(
            f"lost connection to {public_url(rpc_url)}: {exc.__class__.__name__}; is the "
            "devnet running? (`agentmesh devnet status`)"
        ) from exc


def _rpc_message(exc: Web3RPCError) -> str:
    """The node's own message out of a web3 RPC error."""
    payload = exc.args[0] if exc.args else exc
    if isinstance(payload, dict) and "message" in payload:
        return str(payload["message"])
    return str(payload)


def revert_from(exc: Exception) -> ContractRevertError:
    """Decode the revert data web3 attached to ``exc`` into a ``ContractRevertError``."""
    data = getattr(exc, "data", None)
    message = str(exc.args[0]) if exc.args else str(exc)
    return decode_revert(data if isinstance(data, str | bytes) else None, detail=message)


def revert_of_rpc_error(exc: Web3RPCError) -> AgentMeshError:
    """The error a raw JSON-RPC call's failure stands for: a decoded revert when the
    node sent revert data (code 3), else the node's message."""
    response = exc.rpc_response or {}
    error = response.get("error") if isinstance(response, dict) else None
    if isinstance(error, dict) and isinstance(error.get("data"), str):
        return decode_revert(error["data"], detail=str(error.get("message", "")))
    return TransactionError(f"the node refused the call: {_rpc_message(exc)}")


class Wallet:
    """An account bound to a chain connection."""

    def __init__(
        self,
        account: LocalAccount,
        w3: AsyncWeb3[Any],
        *,
        name: str | None = None,
    ) -> None:
        self.account = account
        self.w3 = w3
        self.name = name
        self._chain_id: int | None = None

    def __repr__(self) -> str:  # never show the key
        return f"Wallet(name={self.name!r}, address={self.address})"

    @property
    def address(self) -> ChecksumAddress:
        return self.account.address

    @property
    def rpc_url(self) -> str:
        """The endpoint this wallet talks to (for error messages)."""
        return self._rpc_url

    @property
    def _rpc_url(self) -> str:
        return str(getattr(self.w3.provider, "endpoint_uri", "the chain"))

    # ------------------------------------------------------------------ signing

    def sign_message(self, message: str | bytes) -> bytes:
        """EIP-191 ``personal_sign`` signature of ``message``."""
        payload = message.encode() if isinstance(message, str) else message
        return bytes(self.account.sign_message(encode_defunct(primitive=payload)).signature)

    def sign_typed_data(
        self, domain: dict[str, Any], types: dict[str, Any], message: dict[str, Any]
    ) -> bytes:
        """EIP-712 signature of ``message`` under ``domain`` and ``types``."""
        signable = encode_typed_data(domain_data=domain, message_types=types, message_data=message)
        return bytes(self.account.sign_message(signable).signature)

    # ------------------------------------------------------------------ chain reads

    async def chain_id(self) -> int:
        if self._chain_id is None:
            self._chain_id = int(await guard_rpc(self.w3.eth.chain_id, self._rpc_url))
        return self._chain_id

    async def eth_balance(self) -> int:
        """Native balance in wei."""
        return int(await guard_rpc(self.w3.eth.get_balance(self.address), self._rpc_url))

    async def sweep_eth(self, to: str) -> TxReceipt | None:
        """Send all the ETH this wallet holds to ``to``, less the transfer's maximum gas
        cost (what the fee does not use stays behind); None when that leaves nothing."""
        max_fee, tip = await self._fee_fields()
        value = await self.eth_balance() - INTRINSIC_GAS * max_fee
        if value <= 0:
            return None
        return await self.send(
            {
                "to": AsyncWeb3.to_checksum_address(to),
                "value": Wei(value),
                "gas": INTRINSIC_GAS,
                "maxFeePerGas": Wei(max_fee),
                "maxPriorityFeePerGas": Wei(tip),
            }
        )

    async def _fee_fields(self) -> tuple[int, int]:
        """(maxFeePerGas, maxPriorityFeePerGas) from the node's estimate, within the cap."""
        policy = tx_policy(self.w3)
        return await guard_rpc(suggest_fees(self.w3, policy.max_fee_per_gas), self._rpc_url)

    # ------------------------------------------------------------------ sending

    async def send(self, tx: TxParams, *, sent: Callable[[bytes], None] | None = None) -> TxReceipt:
        """Fill in, sign, submit and wait for ``tx`` to be confirmed; raise on revert.

        ``sent(tx hash)`` runs once the node has the transaction, before the wait, and
        again with the hash of each replacement (see :mod:`agentmesh.wallets.sending`):
        a caller that must never send twice records the hash there, and asks the chain
        about it after a failure.
        """
        full: dict[str, Any] = dict(tx)
        full.setdefault("from", self.address)
        full.setdefault("value", 0)
        full["chainId"] = await self.chain_id()
        max_fee, tip = await self._fee_fields()
        full.setdefault("maxFeePerGas", max_fee)
        full.setdefault("maxPriorityFeePerGas", tip)
        if "gas" not in full:
            # With the fee fields set, the node's estimate also checks that value plus
            # the maximum fee is covered, so no separate balance call is needed.
            full["gas"] = await self._estimate(full)
        else:
            await self._check_funds(full)

        manager = _manager(self.w3, self.address)
        async with manager.lock:
            full["nonce"] = await manager.next(self._pending_nonce)
            signed = self.account.sign_transaction(full)
            try:
                await guard_rpc(
                    self.w3.eth.send_raw_transaction(signed.raw_transaction), self._rpc_url
                )
            except Web3RPCError as exc:
                # A node that has it already (a request a fallback endpoint answered
                # after the first took it) means it is sent; anything else, refused.
                if not already_taken(exc) or "nonce too low" in str(exc).lower():
                    manager.reset()  # the chain's view of our nonce wins from here on
                    await self._check_funds(full)
                    raise TransactionError(
                        f"transaction rejected by the node: {_rpc_message(exc)}"
                    ) from None
            except BaseException:
                manager.reset()
                raise
            manager.advance()
        return await self._after_send(signed, full, sent)

    async def _after_send(
        self, signed: Any, full: dict[str, Any], sent: Callable[[bytes], None] | None
    ) -> TxReceipt:
        """Report the hash, then wait for the transaction; a wait that ends without it
        mined makes the next send ask the chain for the nonce (so a retry reuses it if
        this one is gone: then at most one of the two can ever be mined)."""
        tx_hash = bytes(signed.hash)
        if sent is not None:
            sent(tx_hash)
        fees = (int(full["maxFeePerGas"]), int(full["maxPriorityFeePerGas"]))
        attempt = Attempt(tx_hash, bytes(signed.raw_transaction), fees)
        try:
            return await self._settle(Pending(self, full, [attempt], sent, tx_policy(self.w3)))
        except ContractRevertError:
            raise  # mined: the nonce is used
        except AgentMeshError:
            _manager(self.w3, self.address).reset()
            raise

    async def wait(self, tx_hash: bytes, tx: dict[str, Any] | None = None) -> TxReceipt:
        """Wait for ``tx_hash`` (sent by anyone) to be mined and confirmed; a failed
        receipt raises the decoded revert (``tx``: its fields, to replay the call)."""
        fields = {"nonce": "?", **(tx or {})}
        return await self._settle(
            Pending(self, fields, [Attempt(bytes(tx_hash), b"", (0, 0))], None, tx_policy(self.w3))
        )

    async def _settle(self, pending: Pending) -> TxReceipt:
        receipt = await pending.settle()
        if receipt["status"] != 1:
            tx = pending.tx if "from" in pending.tx else None
            raise await self._replay_revert(tx, receipt)
        return receipt

    async def transact(
        self,
        call: AsyncContractFunction,
        *,
        value: int = 0,
        gas: int | None = None,
        sent: Callable[[bytes], None] | None = None,
    ) -> TxReceipt:
        """Send a contract function call from this wallet (``sent``: see ``send``)."""
        tx: TxParams = {
            "to": call.address,
            "data": call._encode_transaction_data(),
            "value": Wei(value),
        }
        if gas is not None:
            tx["gas"] = gas
        return await self.send(tx, sent=sent)

    async def deploy(self, artifact: Artifact, *args: Any) -> tuple[ChecksumAddress, TxReceipt]:
        """Deploy ``artifact`` with constructor ``args``; returns its address and receipt."""
        factory = self.w3.eth.contract(abi=artifact.abi, bytecode=artifact.bytecode)
        data = factory.constructor(*args).data_in_transaction
        receipt = await self.send({"data": data})
        address = receipt["contractAddress"]
        if address is None:
            raise TransactionError(f"deploying {artifact.name} returned no contract address")
        return address, receipt

    async def _pending_nonce(self) -> int:
        return int(
            await guard_rpc(
                self.w3.eth.get_transaction_count(self.address, "pending"), self._rpc_url
            )
        )

    async def _estimate(self, tx: dict[str, Any]) -> int:
        probe = {k: v for k, v in tx.items() if k not in ("gas", "nonce", "chainId")}
        try:
            estimate = await guard_rpc(self.w3.eth.estimate_gas(probe), self._rpc_url)  # type: ignore[arg-type]
        except ContractLogicError as exc:
            raise revert_from(exc) from None
        except Web3RPCError as exc:
            # Nodes word a short balance differently ("insufficient funds", "gas required
            # exceeds allowance: 0"); the balance itself tells.
            await self._check_funds({**tx, "gas": INTRINSIC_GAS})
            raise TransactionError(f"transaction would fail: {_rpc_message(exc)}") from None
        return int(estimate * GAS_MARGIN)

    async def _check_funds(self, tx: dict[str, Any]) -> None:
        """Raise ``InsufficientFundsError`` if the balance cannot cover value plus max fee."""
        cost = int(tx["value"]) + int(tx["gas"]) * int(tx["maxFeePerGas"])
        balance = await self.eth_balance()
        if balance < cost:
            raise InsufficientFundsError(
                f"{self.address} holds {format_amount(balance, ETH_DECIMALS, 'ETH')}, needs "
                f"{format_amount(cost, ETH_DECIMALS, 'ETH')} (value plus maximum gas fee)"
            )

    async def _replay_revert(
        self, tx: dict[str, Any] | None, receipt: TxReceipt
    ) -> ContractRevertError:
        """Recover the revert reason of a mined, failed transaction.

        Re-running the call on the previous block alone is not enough: a revert that
        depends on the block's time (a deadline) would pass there. So ask for the trace
        first, and otherwise re-run with the mined block's time and number.
        """
        tx_hash = receipt["transactionHash"]
        try:
            trace = await self.w3.provider.make_request(
                "debug_traceTransaction", ["0x" + bytes(tx_hash).hex(), {"tracer": "callTracer"}]
            )
            output = (trace.get("result") or {}).get("output")
            if output and output != "0x":
                return decode_revert(output)
        except Exception:  # noqa: BLE001 - not every node offers debug_; fall through
            pass
        if tx is None:
            return ContractRevertError(None, detail="status 0 in receipt")
        probe = {k: tx[k] for k in ("from", "to", "data", "value") if k in tx}
        block = await self.w3.eth.get_block(receipt["blockNumber"])
        overrides = {"time": hex(block["timestamp"]), "number": hex(block["number"])}
        try:
            reply = await self.w3.provider.make_request(
                "eth_call",
                [
                    {**probe, "value": hex(int(probe.get("value", 0)))},
                    hex(receipt["blockNumber"] - 1),
                    {},
                    overrides,
                ],
            )
        except Exception as exc:  # noqa: BLE001 - best effort: explain what we can
            return ContractRevertError(None, detail=f"status 0 ({exc})")
        error = reply.get("error") or {}
        data = error.get("data")
        if isinstance(data, dict):
            data = data.get("data")
        if isinstance(data, str) and len(data) >= 10:
            return decode_revert(data)
        return ContractRevertError(None, detail="status 0 in receipt (out of gas?)")
