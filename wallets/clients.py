"""Typed clients for the agentmesh contracts, each bound to a sending :class:`Wallet`.

They add what raw contract calls lack: amounts checked before sending (so a transfer
beyond the balance is a clear error, not a revert), events decoded into return values,
and job records as dataclasses.
"""

from __future__ import annotations

import asyncio
import enum
import weakref
from dataclasses import dataclass
from typing import Any

from eth_typing import ChecksumAddress
from web3 import AsyncWeb3
from web3.contract import AsyncContract
from web3.exceptions import ContractLogicError
from web3.logs import DISCARD
from web3.types import TxReceipt

from agentmesh.contracts import load_artifact
from agentmesh.errors import (
    ContractRevertError,
    InsufficientFundsError,
    InvalidAddressError,
    PolicyViolation,
)
from agentmesh.wallets.units import MUSD_DECIMALS, format_amount
from agentmesh.wallets.wallet import Wallet, guard_rpc, revert_from


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


class _Client:
    contract_name: str

    def __init__(self, wallet: Wallet, address: str) -> None:
        self.wallet = wallet
        self.address = checksum(address)
        self.contract: AsyncContract = wallet.w3.eth.contract(
            address=self.address, abi=load_artifact(self.contract_name).abi
        )

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
        return int(await self._call(self.contract.functions.balanceOf(checksum(owner))))

    async def allowance(self, owner: str, spender: str) -> int:
        return int(
            await self._call(self.contract.functions.allowance(checksum(owner), checksum(spender)))
        )

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


_open_locks: weakref.WeakKeyDictionary[Any, dict[str, asyncio.Lock]] = weakref.WeakKeyDictionary()


def _open_lock(wallet: Wallet) -> asyncio.Lock:
    """One lock per (chain connection, address), shared by every client of the wallet."""
    per_chain = _open_locks.setdefault(wallet.w3, {})
    return per_chain.setdefault(wallet.address, asyncio.Lock())


class EscrowClient(_Client):
    """TaskEscrow: open, accept, submit, release, claim, refund, dispute, resolve."""

    contract_name = "TaskEscrow"

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
        token = TokenClient(self.wallet, token.address)
        # approve() sets the allowance outright: two opens from one wallet at once would
        # overwrite each other's allowance, so approve+open run one at a time per wallet.
        async with _open_lock(self.wallet):
            await token.require_balance(amount)
            receipts = []
            if await token.allowance(self.wallet.address, self.address) < amount:
                receipts.append(await token.approve(self.address, amount))
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
        return await self.wallet.transact(self.contract.functions.resolve(job_id, provider_amount))

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

    async def get_job(self, job_id: int) -> EscrowJob:
        raw = await self._call(self.contract.functions.getJob(job_id))
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
        ) = raw
        return EscrowJob(
            job_id=job_id,
            client=client,
            provider=provider,
            arbiter=arbiter,
            token=token,
            amount=int(amount),
            deadline=int(deadline),
            review_window=int(review_window),
            accepted_at=int(accepted_at),
            submitted_at=int(submitted_at),
            status=JobStatus(status),
            terms_hash=bytes(terms_hash),
            result_hash=bytes(result_hash),
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
        count, total = await self._call(self.contract.functions.reputationOf(checksum(agent)))
        return int(count), int(total)

    async def agents(self, offset: int = 0, limit: int = 100) -> list[ChecksumAddress]:
        return list(await self._call(self.contract.functions.agents(offset, limit)))


class CapMode(enum.IntEnum):
    """Mirror of ``AgentWallet.CapMode``."""

    NONE = 0
    DAILY = 1
    ROLLING = 2


NATIVE = "0x0000000000000000000000000000000000000000"
NO_CALLDATA = b"\x00\x00\x00\x00"
# AgentWallet's refusals of an agent call under the owner's policy (``CallFailed`` is
# not one: the policy allowed the call and its target reverted).
POLICY_ERRORS = frozenset(
    {
        "NotAgent",
        "TargetNotAllowed",
        "CapExceeded",
        "MalformedCalldata",
        "SelfCallForbidden",
        "EnforcedPause",
    }
)


class AgentWalletClient(_Client):
    """AgentWallet: the owner's policy calls and the agent's ``execute``."""

    contract_name = "AgentWallet"

    @classmethod
    async def deploy(cls, owner: Wallet, agent: str) -> AgentWalletClient:
        """Deploy a new AgentWallet owned by ``owner`` and operated by ``agent``."""
        address, _ = await owner.deploy(
            load_artifact("AgentWallet"), owner.address, checksum(agent)
        )
        return cls(owner, address)

    def as_wallet(self, wallet: Wallet) -> AgentWalletClient:
        """The same contract, sending from another wallet (owner <-> agent)."""
        return type(self)(wallet, self.address)

    async def execute(self, target: str, value: int, data: bytes) -> TxReceipt:
        """Call ``target`` as the agent; a policy refusal raises ``PolicyViolation``."""
        return await self._agent_call(
            self.contract.functions.execute(checksum(target), value, data)
        )

    async def execute_with_approval(
        self, token: str, spender: str, amount: int, target: str, value: int, data: bytes
    ) -> TxReceipt:
        """Approve ``spender`` for ``amount`` of ``token``, call ``target``, reset the
        approval; a policy refusal raises ``PolicyViolation``."""
        return await self._agent_call(
            self.contract.functions.executeWithApproval(
                checksum(token), checksum(spender), amount, checksum(target), value, data
            )
        )

    async def _agent_call(self, fn: Any) -> TxReceipt:
        try:
            return await self.wallet.transact(fn)
        except ContractRevertError as exc:
            if exc.error_name not in POLICY_ERRORS or isinstance(exc, PolicyViolation):
                raise
            raise PolicyViolation(
                exc.error_name, exc.error_args, contract=exc.contract, raw=exc.raw
            ) from None

    async def set_cap(self, token: str, limit: int, mode: CapMode) -> TxReceipt:
        return await self.wallet.transact(
            self.contract.functions.setCap(checksum(token), limit, int(mode))
        )

    async def set_allowed(self, target: str, selector: bytes, allowed: bool) -> TxReceipt:
        return await self.wallet.transact(
            self.contract.functions.setAllowed(checksum(target), selector, allowed)
        )

    async def set_agent(self, agent: str) -> TxReceipt:
        return await self.wallet.transact(self.contract.functions.setAgent(checksum(agent)))

    async def revoke_agent(self) -> TxReceipt:
        return await self.wallet.transact(self.contract.functions.revokeAgent())

    async def pause(self) -> TxReceipt:
        return await self.wallet.transact(self.contract.functions.pause())

    async def unpause(self) -> TxReceipt:
        return await self.wallet.transact(self.contract.functions.unpause())

    async def withdraw(self, token: str, to: str, amount: int) -> TxReceipt:
        return await self.wallet.transact(
            self.contract.functions.withdraw(checksum(token), checksum(to), amount)
        )

    async def spendable(self, token: str) -> tuple[int, int]:
        """(spent in the current window, remaining under the cap)."""
        spent, remaining = await self._call(self.contract.functions.spendable(checksum(token)))
        return int(spent), int(remaining)

    async def agent(self) -> ChecksumAddress:
        return AsyncWeb3.to_checksum_address(await self._call(self.contract.functions.agent()))
