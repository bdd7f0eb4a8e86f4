"""The payment-channel protocol (``agentmesh.payment@1``): many paid calls, one deposit.

A requester (the payer) opens a ``PaymentChannel`` on chain to a provider (the payee),
then fixes a price per call for a service once, and calls::

    payer                                   payee
    (open the channel on chain)
    JoinChannel(channel, service, price) -> (channel on chain: payer, payee, token,
                                         <-  ChannelTerms   open; price >= its floor)
    PaidCall(channel, service, input,    -> (voucher checked and stored durably,
             cumulative, signature)          then the work)
                                         <-  CallResult | CallRefused
    CloseChannel(channel)                -> (closes on chain with its latest voucher:
                                         <-  ChannelClosed   paid to it, rest refunded)

Every ``PaidCall`` carries the next cumulative voucher: the payer's EIP-712 signature
over (channel id, cumulative amount), bound to the chain and the contract. The payee
refuses a call, *before any work*, whose voucher is not above the last one it holds by
at least the price, is over the deposit, is not signed by the channel's payer, or whose
channel is closing or closed; it stores an accepted voucher durably (SQLite, committed)
before the work starts, so after a crash it can still claim every call it answered.

Pay before, not after: the voucher for a call travels with the call. The payee then
never works unpaid, and the payer risks one call's price per call it is waiting on: a
payee that takes a voucher and never answers keeps that one price, never more (the
voucher names an amount, not "everything"). Paying after each answer would move that
same one-price risk to the payee, but also let a payer stop paying after any answer
with all its calls served, and make every call wait for the previous answer's voucher.
A sequential payer therefore risks exactly one call; a payer with ``n`` calls in flight
risks ``n`` (``Agent.call`` callers choose their concurrency). The deposit bounds the
rest: the payee accepts no voucher above it, and the payer's way out (a close request,
then the challenge delay) leaves the payee time to claim what it holds.

Vouchers from one payer reach the payee in the order they were signed (one connection,
signed and queued without yielding), so each call's cumulative is unique and concurrent
calls never share or lose a payment. A payer that lost count (a restart, a reordered
retry) learns the payee's latest voucher from a refusal: it checks that it signed it
itself before it continues from there.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from agentmesh.message import Amount, Message, UInt
from agentmesh.protocols.negotiation import MAX_INPUT_CHARS, MAX_RESULT_CHARS

PROTOCOL = "agentmesh.payment"
VERSION = "1"
CHANNEL_ID = r"^0x[0-9a-f]{64}$"
SIGNATURE = r"^(0x[0-9a-f]{130})?$"  # 65 bytes; empty: no voucher yet
SERVICE = r"^[a-z][a-z0-9_.-]{0,63}$"


class ChannelPhase(StrEnum):
    """Where a channel is, for both sides."""

    OPEN = "open"  # calls are accepted
    CLOSING = "closing"  # the payer asked to close: no new calls; the payee still claims
    CLOSED = "closed"  # settled on chain: paid out and refunded


FINAL_PHASES = frozenset({ChannelPhase.CLOSED})


class Refusal(StrEnum):
    """Why a payee refused a call or a join (``CallRefused.code``)."""

    UNKNOWN_CHANNEL = "unknown_channel"  # not on chain, or not joined here yet
    NOT_PAYEE = "not_payee"  # the channel pays someone else, or in another token
    NOT_PAYER = "not_payer"  # the sender is not the channel's payer
    NOT_OPEN = "not_open"  # closing or closed: see ChannelTerms.phase
    UNKNOWN_SERVICE = "unknown_service"
    PRICE_TOO_LOW = "price_too_low"  # a join below the service's floor
    NOT_JOINED = "not_joined"  # no price fixed for this service on this channel
    INVALID_INPUT = "invalid_input"
    STALE_VOUCHER = "stale_voucher"  # not above the payee's latest by the price
    OVER_DEPOSIT = "over_deposit"
    BAD_SIGNATURE = "bad_signature"  # malformed, malleable, or not the payer's
    SERVICE_FAILED = "service_failed"  # the work failed after the voucher was stored
    CHAIN_UNAVAILABLE = "chain_unavailable"


class JoinChannel(Message):
    """Fix the price per call of ``service`` on ``channel`` (base units)."""

    channel: str = Field(pattern=CHANNEL_ID)
    service: str = Field(pattern=SERVICE)
    price: Amount


class ChannelTerms(Message):
    """The payee's view of a channel: the price fixed and the latest voucher it holds."""

    channel: str = Field(pattern=CHANNEL_ID)
    service: str = Field(pattern=SERVICE)
    price: Amount
    phase: str = Field(max_length=16)
    deposit: UInt
    cumulative: UInt  # the latest voucher the payee holds (0: none)
    signature: str = Field(pattern=SIGNATURE)


class PaidCall(Message):
    """One call of ``service`` paid by the voucher for ``cumulative``."""

    channel: str = Field(pattern=CHANNEL_ID)
    service: str = Field(pattern=SERVICE)
    input: str = Field(max_length=MAX_INPUT_CHARS)  # a JSON object
    cumulative: Amount
    signature: str = Field(pattern=r"^0x[0-9a-f]{130}$")


class CallResult(Message):
    """The result (canonical JSON) of a call paid by ``cumulative``."""

    result: str = Field(max_length=MAX_RESULT_CHARS)
    cumulative: UInt


class CallRefused(Message):
    """A call or join the payee did not take, and the latest voucher it holds (so a
    payer that lost count can check it signed it and go on from there)."""

    code: str = Field(max_length=32)
    detail: str = Field(max_length=500)
    cumulative: UInt = 0
    signature: str = Field(default="", pattern=SIGNATURE)


class CloseChannel(Message):
    """The payer asks the payee to close now with its latest voucher (cooperative
    close: paid out and refunded in one transaction, no challenge delay)."""

    channel: str = Field(pattern=CHANNEL_ID)


class ChannelClosed(Message):
    """The channel is closed on chain: ``cumulative`` paid in all, the rest refunded."""

    channel: str = Field(pattern=CHANNEL_ID)
    cumulative: UInt
    tx: str = Field(default="", max_length=66)


# The one table of which payer message a channel accepts in which phase (the payee's
# view). A join or call on a closing channel is refused: the payer has asked for its
# money back, and a call accepted now might not be claimable before it withdraws.
ACCEPTS: dict[type[Message], frozenset[ChannelPhase]] = {
    JoinChannel: frozenset({ChannelPhase.OPEN}),
    PaidCall: frozenset({ChannelPhase.OPEN}),
    CloseChannel: frozenset({ChannelPhase.OPEN, ChannelPhase.CLOSING}),
}
REPLIES: dict[type[Message], tuple[type[Message], ...]] = {
    JoinChannel: (ChannelTerms, CallRefused),
    PaidCall: (CallResult, CallRefused),
    CloseChannel: (ChannelClosed, CallRefused),
}
MESSAGES: tuple[type[Message], ...] = (
    JoinChannel,
    ChannelTerms,
    PaidCall,
    CallResult,
    CallRefused,
    CloseChannel,
    ChannelClosed,
)
