"""The ``PaymentChannel`` client: open, top up, claim, close, and sign vouchers.

A voucher is the payer's EIP-712 signature over (channel id, cumulative amount) under
the domain ``{agentmesh.PaymentChannel, 1, chain id, the contract}``; ``sign_voucher``
makes one with a keystore wallet (the key never leaves it), ``voucher_signer`` tells who
signed one (what a payee checks before doing any work).

``VoucherDomain`` is the same, for the hot path of paid calls: eth-account builds the
domain separator once, and each voucher's digest is then two keccaks (the encoding is
checked against eth-account's and the contract's own ``voucherDigest`` in the tests).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_account.signers.local import LocalAccount
from eth_typing import ChecksumAddress, Hash32, HexAddress, HexStr
from web3.constants import ADDRESS_ZERO
from web3.logs import DISCARD
from web3.types import TxReceipt

from agentmesh.contracts import load_artifact
from agentmesh.envelope import EnvelopeSigner, keccak, recover_address
from agentmesh.errors import SignatureError
from agentmesh.wallets.clients import TokenClient, _Client, checksum
from agentmesh.wallets.wallet import Wallet

DOMAIN_NAME, DOMAIN_VERSION = "agentmesh.PaymentChannel", "1"
VOUCHER_TYPES = {
    "Voucher": [
        {"name": "channelId", "type": "bytes32"},
        {"name": "cumulative", "type": "uint256"},
    ]
}

VOUCHER_TYPEHASH = keccak(b"Voucher(bytes32 channelId,uint256 cumulative)")


@dataclass(frozen=True, slots=True)
class ChannelState:
    """A channel as the contract holds it (base units)."""

    payer: ChecksumAddress
    payee: ChecksumAddress
    token: ChecksumAddress
    deposit: int
    claimed: int
    close_requested_at: int  # 0: no close requested
    closed: bool

    @property
    def unclaimed_room(self) -> int:
        """What the payee could still be paid (deposit not yet claimed)."""
        return self.deposit - self.claimed


def voucher_data(contract: str, chain_id: int, channel_id: bytes, cumulative: int) -> Any:
    return encode_typed_data(
        domain_data={
            "name": DOMAIN_NAME,
            "version": DOMAIN_VERSION,
            "chainId": chain_id,
            "verifyingContract": checksum(contract),
        },
        message_types=VOUCHER_TYPES,
        message_data={"channelId": channel_id, "cumulative": cumulative},
    )


async def sign_voucher(payer: Wallet, contract: str, channel_id: bytes, cumulative: int) -> bytes:
    """The payer's voucher for ``cumulative`` base units on ``channel_id``."""
    data = voucher_data(contract, await payer.chain_id(), channel_id, cumulative)
    return bytes(payer.account.sign_message(data).signature)


def voucher_signer(
    contract: str, chain_id: int, channel_id: bytes, cumulative: int, signature: bytes
) -> ChecksumAddress:
    """Who signed a voucher; ``SignatureError`` when it does not recover."""
    try:
        signer = Account.recover_message(
            voucher_data(contract, chain_id, channel_id, cumulative), signature=signature
        )
    except Exception as exc:  # eth_keys raises several types for a bad signature
        raise SignatureError(f"voucher signature does not verify: {exc}") from None
    return checksum(signer)


@dataclass(frozen=True, slots=True)
class VoucherDomain:
    """Vouchers of one ``PaymentChannel`` contract on one chain."""

    contract: ChecksumAddress
    chain_id: int
    separator: bytes

    @classmethod
    def of(cls, contract: str, chain_id: int) -> VoucherDomain:
        header = voucher_data(contract, chain_id, bytes(32), 0).header
        return cls(checksum(contract), chain_id, bytes(header))

    def digest(self, channel_id: bytes, cumulative: int) -> bytes:
        body = keccak(VOUCHER_TYPEHASH + channel_id + cumulative.to_bytes(32, "big"))
        return keccak(b"\x19\x01" + self.separator + body)

    def sign(
        self, signer: LocalAccount | EnvelopeSigner, channel_id: bytes, cumulative: int
    ) -> bytes:
        """The voucher signature (an ``EnvelopeSigner`` holding the payer's key is the
        fast way: one key object for every voucher)."""
        digest = self.digest(channel_id, cumulative)
        if isinstance(signer, EnvelopeSigner):
            return signer.sign_digest(digest)
        return bytes(signer.unsafe_sign_hash(Hash32(digest)).signature)

    def signer(self, channel_id: bytes, cumulative: int, signature: bytes) -> ChecksumAddress:
        """Who signed; ``SignatureError`` for a malformed or malleable signature (the
        contract's ECDSA refuses those, so a payee must never accept one)."""
        try:
            signer = recover_address(self.digest(channel_id, cumulative), signature)
            return ChecksumAddress(HexAddress(HexStr(signer)))
        except SignatureError as exc:
            raise SignatureError(f"voucher {exc}") from None


class PaymentChannelClient(_Client):
    """One PaymentChannel contract, sending as ``wallet`` (payer or payee)."""

    contract_name = "PaymentChannel"

    @classmethod
    async def deploy(
        cls,
        wallet: Wallet,
        challenge_delay: int,
        *,
        fee_sink: str = ADDRESS_ZERO,
        fee_token: str = ADDRESS_ZERO,
        fee_bps: int = 0,
    ) -> PaymentChannelClient:
        """A new PaymentChannel; with ``fee_bps``, that share of every payout in
        ``fee_token`` goes to ``fee_sink``."""
        address, _ = await wallet.deploy(
            load_artifact("PaymentChannel"), challenge_delay, fee_sink, fee_token, fee_bps
        )
        return cls(wallet, address)

    def as_wallet(self, wallet: Wallet) -> PaymentChannelClient:
        return type(self)(wallet, self.address)

    async def open(
        self, payee: str, token: str, amount: int, salt: bytes | None = None
    ) -> tuple[bytes, TxReceipt]:
        """Approve (if needed) and open a channel; (its id, the open receipt)."""
        salt = salt if salt is not None else os.urandom(32)
        await TokenClient(self.wallet, token).allow_pull(self.address, amount)
        receipt = await self.wallet.transact(
            self.contract.functions.open(checksum(payee), checksum(token), amount, salt)
        )
        (event,) = self.contract.events.Opened().process_receipt(receipt, errors=DISCARD)
        return bytes(event["args"]["id"]), receipt

    async def top_up(self, channel_id: bytes, amount: int) -> TxReceipt:
        state = await self.channel(channel_id)
        await TokenClient(self.wallet, state.token).allow_pull(self.address, amount)
        return await self.wallet.transact(self.contract.functions.topUp(channel_id, amount))

    async def claim(self, channel_id: bytes, cumulative: int, signature: bytes) -> TxReceipt:
        return await self.wallet.transact(
            self.contract.functions.claim(channel_id, cumulative, signature)
        )

    async def close(self, channel_id: bytes, cumulative: int, signature: bytes) -> TxReceipt:
        return await self.wallet.transact(
            self.contract.functions.close(channel_id, cumulative, signature)
        )

    async def request_close(self, channel_id: bytes) -> TxReceipt:
        return await self.wallet.transact(self.contract.functions.requestClose(channel_id))

    async def withdraw(self, channel_id: bytes) -> TxReceipt:
        return await self.wallet.transact(self.contract.functions.withdraw(channel_id))

    async def channel(self, channel_id: bytes) -> ChannelState:
        (raw,) = await self._read("channel", channel_id)
        payer, requested, closed, payee, token, deposit, claimed = raw
        return ChannelState(
            payer=checksum(payer),
            payee=checksum(payee),
            token=checksum(token),
            deposit=int(deposit),
            claimed=int(claimed),
            close_requested_at=int(requested),
            closed=bool(closed),
        )

    async def challenge_delay(self) -> int:
        (delay,) = await self._read("challengeDelay")
        return int(delay)
