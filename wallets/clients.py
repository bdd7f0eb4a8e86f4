"""Typed clients for the agentmesh contracts, each bound to a sending :class:`Wallet`.

They add what raw contract calls lack: amounts checked before sending (so a transfer
beyond the balance is a clear error, not a revert), events decoded into return values,
and job records as dataclasses.
"""

from __future__ import annotations

import asyncio
import enum
import functools
import weakref
from dataclasses import dataclass
from typing import Any, cast

from eth_abi.abi import decode as abi_decode
from eth_abi.abi import encode as abi_encode
from eth_typing import ABIFunction, ChecksumAddress
from eth_utils.abi import (
    function_abi_to_4byte_selector,
    get_abi_input_types,
    get_abi_output_types,
)
from web3 import AsyncWeb3
from web3.contract import AsyncContract
from web3.exceptions import ContractLogicError, Web3RPCError
from web3.logs import DISCARD
from web3.types import RPCEndpoint, TxReceipt

from agentmesh.contracts import load_artifact
from agentmesh.errors import (
    ContractRevertError,
    InsufficientFundsError,
    InvalidAddressError,
)
from agentmesh.wallets.units import MUSD_DECIMALS, format_amount
from agentmesh.wallets.wallet import Wallet, guard_rpc, revert_from, revert_of_rpc_error


def checksum(address: str) -> ChecksumAddress:
    """Validate and checksum ``address``; raises ``InvalidAddressError`` naming it."""
    text = address.strip()
    if not AsyncWeb3.is_address(text):
        raise InvalidAddressError(f"invalid address {address!r}: expected 0x and 40 hex digits")
    if (
        text != text.lower()
        and text[2:] != text[2:].upper()
        and not AsyncWeb3.is_checksum_address(text)
    ):
        raise InvalidAddressError(f"invalid address {address!r}: checksum does not match")
    return AsyncWeb3.to_checksum_address(text)


@functools.cache
def _function_spec(contract_name: str, function: str) -> tuple[bytes, list[str], list[str]]:
    """Selector, input types and output types of ``function`` of a contract (one
    without overloads)."""
    abi = load_artifact(contract_name).abi
    (found,) = (e for e in abi if e.get("type") == "function" and e.get("name") == function)
    entry = cast(ABIFunction, found)
    return (
        function_abi_to_4byte_selector(entry),
        get_abi_input_types(entry),
        get_abi_output_types(entry),
    )


class _Client:
    contract_name: str

    def __init__(self, wallet: Wallet, address: str) -> None:
        self.wallet = wallet
        self.address = checksum(address)
        self.contract: AsyncContract = wallet.w3.eth.contract(
            address=self.address, abi=load_artifact(self.contract_name).abi
        )

    async def _read(self, function: str, *args: Any) -> tuple[Any, ...]:
        """A read call of ``function`` encoded and decoded here: the hot reads of a
        trade (a job, a balance, an allowance) skip web3's contract-call machinery,
        which costs ~1 ms of CPU a call against ~0.3 ms for the request itself."""
        selector, inputs, outputs = _function_spec(self.contract_name, function)
        data = "0x" + (selector + abi_encode(inputs, args)).hex()
        request = self.wallet.w3.manager.coro_request(
            RPCEndpoint("eth_call"), [{"to": self.address, "data": data}, "latest"]
        )
        try:
            result = await guard_rpc(request, self.wallet.rpc_url)
        except Web3RPCError as exc:
            raise revert_of_rpc_error(exc) from None
        # Addresses come back lowercase: callers checksum those they return.
        return tuple(abi_decode(outputs, bytes.fromhex(str(result).removeprefix("0x"))))

    async def _call(self, fn: Any) -> Any:
        """A read call; a revert comes back decoded, like a failed transaction's."""
        try:
            return await guard_rpc(fn.call(), self.wallet.rpc_url)
        except ContractLogicError as exc:
            raise revert_from(exc) from None


class TokenClient(_Client):
    """MeshUSD (or any ERC-20 with the same ABI subset)."""

    contract_name = "MeshUSD"
    symbol = "mUSD"
    decimals = MUSD_DECIMALS

    async def balance_of(self, owner: str) -> int:
        return int((await self._read("balanceOf", checksum(owner)))[0])

    async def allowance(self, owner: str, spender: str) -> int:
        return int((await self._read("allowance", checksum(owner), checksum(spender)))[0])

    async def total_supply(self) -> int:
        return int(await self._call(self.contract.functions.totalSupply()))

    async def require_balance(self, amount: int) -> None:
        """Raise ``InsufficientFundsError`` unless the wallet holds ``amount``."""
        held = await self.balance_of(self.wallet.address)
        if held < amount:
            raise InsufficientFundsError(
                f"{self.wallet.address} holds {format_amount(held, self.decimals, self.symbol)}"
                f", cannot spend {format_amount(amount, self.decimals, self.symbol)}"
            )

    async def allow_pull(self, spender: str, amount: int) -> None:
        """Before a contract pulls ``amount`` from the wallet: the balance is there
        (``InsufficientFundsError`` if not) and ``spender`` may take it (approved only
        when the allowance is short)."""
        await self.require_balance(amount)
        if await self.allowance(self.wallet.address, spender) < amount:
            await self.approve(spender, amount)

    async def transfer(self, to: str, amount: int) -> TxReceipt:
        """Send ``amount`` base units; a short balance is ``InsufficientFundsError``.

        The balance is not read first: the gas estimate already runs the transfer, and
        its ``ERC20InsufficientBalance`` revert is turned into the same clear error
        (one RPC call fewer on the hot path; nothing is sent either way).
        """
        try:
            return await self.wallet.transact(
                self.contract.functions.transfer(checksum(to), amount)
            )
        except ContractRevertError as exc:
            if exc.error_name != "ERC20InsufficientBalance":
                raise
            _, held, needed = exc.error_args
            raise InsufficientFundsError(
                f"{self.wallet.address} holds {format_amount(held, self.decimals, self.symbol)}"
                f", cannot spend {format_amount(needed, self.decimals, self.symbol)}"
            ) from None

    async def approve(self, spender: str, amount: int) -> TxReceipt:
        return await self.wallet.transact(
            self.contract.functions.approve(checksum(spender), amount)
        )

    async def mint(self, to: str, amount: int) -> TxReceipt:
        return await self.wallet.transact(self.contract.functions.mint(checksum(to), amount))


class JobStatus(enum.IntEnum):
    """Mirror of ``TaskEscrow.Status``."""

    NONE = 0
    OPEN = 1
    ACCEPTED = 2
    SUBMITTED = 3
    RELEASED = 4
    CLAIMED = 5
    REFUNDED = 6
    DISPUTED = 7
    RESOLVED = 8
    CANCELLED = 9

    @property
    def final(self) -> bool:
        return self in {
            JobStatus.RELEASED,
            JobStatus.CLAIMED,
            JobStatus.REFUNDED,
            JobStatus.RESOLVED,
            JobStatus.CANCELLED,
        }


# TaskEscrow.DISPUTE_TIMEOUT: how long an arbiter has to resolve a dispute.
DISPUTE_TIMEOUT_S = 7 * 24 * 3600


@dataclass(frozen=True, slots=True)
class EscrowJob:
    """A ``TaskEscrow`` job as stored on chain."""

    job_id: int
    client: ChecksumAddress
    provider: ChecksumAddress
    arbiter: ChecksumAddress
    token: ChecksumAddress
    amount: int
    deadline: int
    review_window: int
    accepted_at: int
    submitted_at: int
    status: JobStatus
    terms_hash: bytes
    result_hash: bytes
    disputed_at: int = 0  # when the client disputed it (0: never)

    def dispute_ends_at(self) -> int | None:
        """The last second the arbiter may resolve this job's dispute (None if it is
        not disputed); after it the deposit can only go back to the client."""
        if self.status != JobStatus.DISPUTED:
            return None
        return self.disputed_at + DISPUTE_TIMEOUT_S


_open_locks: weakref.WeakKeyDictionary[Any, dict[str, asyncio.Lock]] = weakref.WeakKeyDictionary()


def _open_lock(wallet: Wallet) -> asyncio.Lock:
    """One lock per (chain connection, address), shared by every client of the wallet."""
    per_chain = _open_locks.setdefault(wallet.w3, {})
    return per_chain.setdefault(wallet.address, asyncio.Lock())


class EscrowClient(_Client):
    """TaskEscrow: open, accept, submit, release, claim, refund, dispute, resolve."""

    contract_name = "TaskEscrow"

    def __init__(self, wallet: Wallet, address: str, *, standing_allowance: int = 0) -> None:
        """``standing_allowance``: when ``open`` must approve, it approves this much (or
        the job's amount if more), so later opens need no approve transaction. Safe to
        leave standing: ``TaskEscrow`` draws only in ``open``, from its caller, the
        amount of the job that caller opens."""
        super().__init__(wallet, address)
        self.standing_allowance = standing_allowance
        self._tokens: dict[str, TokenClient] = {}

    async def open(
        self,
        *,
        provider: str,
        token: TokenClient,
        amount: int,
        deadline: int,
        review_window: int,
        arbiter: str,
        terms_hash: bytes,
    ) -> tuple[int, list[TxReceipt]]:
        """Approve the escrow for ``amount`` (if needed) and open the job.

        Returns the new job id and the receipts (approve, open).
        """
        # Approve and pay from this escrow client's own wallet, whatever wallet the
        # given token client is bound to.
        token = self._own_token(token.address)
        # approve() sets the allowance outright: two opens from one wallet at once would
        # overwrite each other's allowance, so approve+open run one at a time per wallet.
        async with _open_lock(self.wallet):
            await token.require_balance(amount)
            receipts = []
            if await token.allowance(self.wallet.address, self.address) < amount:
                allowance = max(amount, self.standing_allowance)
                receipts.append(await token.approve(self.address, allowance))
            receipt = await self.wallet.transact(
                self.contract.functions.open(
                    checksum(provider),
                    token.address,
                    amount,
                    deadline,
                    review_window,
                    checksum(arbiter),
                    terms_hash,
                )
            )
        receipts.append(receipt)
        # The receipt also holds the token's Transfer/Approval logs: skip them.
        events = self.contract.events.JobOpened().process_receipt(receipt, errors=DISCARD)
        return int(events[0]["args"]["jobId"]), receipts

    def _own_token(self, address: str) -> TokenClient:
        """A token client bound to this client's wallet (built once: a contract object
        costs an ABI parse)."""
        if address not in self._tokens:
            self._tokens[address] = TokenClient(self.wallet, address)
        return self._tokens[address]

    async def accept(self, job_id: int) -> TxReceipt:
        return await self.wallet.transact(self.contract.functions.accept(job_id))

    async def submit(self, job_id: int, result_hash: bytes) -> TxReceipt:
        return await self.wallet.transact(self.contract.functions.submit(job_id, result_hash))

    async def release(self, job_id: int) -> TxReceipt:
        return await self.wallet.transact(self.contract.functions.release(job_id))

    async def claim(self, job_id: int) -> TxReceipt:
        return await self.wallet.transact(self.contract.functions.claim(job_id))

    async def abandon(self, job_id: int) -> TxReceipt:
        """Provider gives up an accepted job; the client is refunded at once."""
        return await self.wallet.transact(self.contract.functions.abandon(job_id))

    async def refund(self, job_id: int) -> TxReceipt:
        return await self.wallet.transact(self.contract.functions.refund(job_id))

    async def cancel(self, job_id: int) -> TxReceipt:
        return await self.wallet.transact(self.contract.functions.cancel(job_id))

    async def dispute(self, job_id: int, reason_hash: bytes) -> TxReceipt:
        return await self.wallet.transact(self.contract.functions.dispute(job_id, reason_hash))

    async def resolve(self, job_id: int, provider_amount: int) -> TxReceipt:
        """Arbiter: split a disputed deposit (``provider_amount`` to the provider, the
        rest to the client), within ``DISPUTE_TIMEOUT_S`` of the dispute."""
        return await self.wallet.transact(self.contract.functions.resolve(job_id, provider_amount))

    async def expire_dispute(self, job_id: int) -> TxReceipt:
        """Anyone: return the deposit of a dispute left unresolved past its timeout to
        the client."""
        return await self.wallet.transact(self.contract.functions.expireDispute(job_id))

    async def pending_transactions(self) -> int:
        """Transactions of this client's wallet the node holds but has not mined."""
        w3, address = self.wallet.w3, self.wallet.address
        pending = await guard_rpc(w3.eth.get_transaction_count(address, "pending"))
        mined = await guard_rpc(w3.eth.get_transaction_count(address, "latest"))
        return max(0, int(pending) - int(mined))

    async def find_opened_job(
        self, client: str, provider: str, terms_hash: bytes, from_block: int
    ) -> int | None:
        """The job ``client`` opened for ``provider`` under ``terms_hash`` since
        ``from_block`` (None if none): finds a job whose receipt was lost to a crash or a
        timeout, so it is not paid twice."""
        logs = await self.contract.events.JobOpened().get_logs(
            argument_filters={"client": checksum(client), "provider": checksum(provider)},
            from_block=from_block,
        )
        for entry in logs:
            if bytes(entry["args"]["termsHash"]) == terms_hash:
                return int(entry["args"]["jobId"])
        return None

    async def fee_on(self, token: str, amount: int) -> int:
        """The protocol fee the escrow takes from a payout of ``amount`` of ``token`` to
        a provider (it goes to the validators' reward pool)."""
        (fee,) = await self._read("feeOn", checksum(token), amount)
        return int(fee)

    async def get_job(self, job_id: int) -> EscrowJob:
        (raw,) = await self._read("getJob", job_id)
        (
            client,
            status,
            deadline,
            provider,
            review_window,
            arbiter,
            accepted_at,
            token,
            submitted_at,
            amount,
            terms_hash,
            result_hash,
            disputed_at,
        ) = raw
        return EscrowJob(
            job_id=job_id,
            client=AsyncWeb3.to_checksum_address(client),
            provider=AsyncWeb3.to_checksum_address(provider),
            arbiter=AsyncWeb3.to_checksum_address(arbiter),
            token=AsyncWeb3.to_checksum_address(token),
            amount=int(amount),
            deadline=int(deadline),
            review_window=int(review_window),
            accepted_at=int(accepted_at),
            submitted_at=int(submitted_at),
            status=JobStatus(status),
            terms_hash=bytes(terms_hash),
            result_hash=bytes(result_hash),
            disputed_at=int(disputed_at),
        )


@dataclass(frozen=True, slots=True)
class ServiceOffer:
    """A service an agent sells, with its unit price in token base units."""

    name: str
    unit_price: int


@dataclass(frozen=True, slots=True)
class RegistryCard:
    """An agent's on-chain card in ``AgentRegistry``."""

    name: str
    endpoint: str
    curve_key: bytes
    model_sha256: bytes
    metadata_uri: str
    services: tuple[ServiceOffer, ...]
    registered_at: int = 0
    updated_at: int = 0

    def as_input(self) -> tuple[Any, ...]:
        return (
            self.name,
            self.endpoint,
            self.curve_key,
            self.model_sha256,
            self.metadata_uri,
            [(s.name, s.unit_price) for s in self.services],
        )


class RegistryClient(_Client):
    """AgentRegistry: cards and reputation."""

    contract_name = "AgentRegistry"

    async def register(self, card: RegistryCard) -> TxReceipt:
        return await self.wallet.transact(self.contract.functions.register(card.as_input()))

    async def update(self, card: RegistryCard) -> TxReceipt:
        return await self.wallet.transact(self.contract.functions.update(card.as_input()))

    async def deregister(self) -> TxReceipt:
        return await self.wallet.transact(self.contract.functions.deregister())

    async def give_feedback(self, job_id: int, score: int, comment_hash: bytes) -> TxReceipt:
        return await self.wallet.transact(
            self.contract.functions.giveFeedback(job_id, score, comment_hash)
        )

    async def is_registered(self, agent: str) -> bool:
        return bool(await self._call(self.contract.functions.isRegistered(checksum(agent))))

    async def get_agent(self, agent: str) -> RegistryCard:
        raw = await self._call(self.contract.functions.getAgent(checksum(agent)))
        return RegistryCard(
            raw[0],
            raw[1],
            bytes(raw[2]),
            bytes(raw[3]),
            raw[4],
            tuple(ServiceOffer(s[0], int(s[1])) for s in raw[5]),
            int(raw[6]),
            int(raw[7]),
        )

    async def reputation(self, agent: str) -> tuple[int, int]:
        """(number of ratings, sum of scores)."""
        count, total = await self._read("reputationOf", checksum(agent))
        return int(count), int(total)

    async def agents(self, offset: int = 0, limit: int = 100) -> list[ChecksumAddress]:
        return list(await self._call(self.contract.functions.agents(offset, limit)))
