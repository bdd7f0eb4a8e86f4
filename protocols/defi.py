"""The DeFi intent protocol (``agentmesh.defi@1``): a person's orders to the agent that
operates their ``AgentWallet``.

An intent is a typed, versioned order signed by the wallet's owner (EIP-712), so nobody
else can give the agent work::

    owner (CLI)                       agent (operator of the AgentWallet)
    SubmitIntent (signed)  -------->  check: signer = the wallet's owner, intent possible
                           <--------  IntentAccepted | ErrorReply (why, before any trade)
    CancelIntent (signed)  -------->  only the owner's signature cancels
                           <--------  IntentState
    IntentQuery            -------->
                           <--------  IntentState (state, fills so far)

Kinds (``IntentKind``):

- ``swap``: sell ``amount_in`` of ``token_in`` for ``token_out`` once;
- ``dca``: sell ``amount_per_period`` every ``period_s`` seconds, ``periods`` times,
  from ``start_at``;
- ``limit`` / ``stop``: trade when the TWAP price of ``base`` in ``quote`` crosses
  ``price`` (a limit buys at or below it and sells at or above it; a stop buys at or
  above it and sells at or below it);
- ``rebalance``: keep ``tokens`` at ``weights_bps`` of the wallet's value (at TWAP)
  within ``tolerance_bps``, checked every ``check_every_s`` seconds.

Every intent names its ``wallet`` (the AgentWallet), carries a random ``nonce``, a
``valid_until`` and a ``max_slippage_bps``. The EIP-712 domain holds the chain id and
the wallet as verifying contract: an intent signed for one wallet or chain means nothing
on another, and its digest is its id. Amounts are token base units written as decimal
text (uint256: an 18-decimal token's amounts do not fit the wire's 64-bit integers).
Prices are decimal text: quote per whole base.
"""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Annotated, Any, ClassVar, Literal

from eth_account import Account
from eth_account.messages import encode_typed_data
from eth_utils.crypto import keccak
from pydantic import AfterValidator, Field, StrictInt, TypeAdapter, model_validator

from agentmesh.errors import SignatureError
from agentmesh.message import Message, UInt

PROTOCOL = "agentmesh.defi"
VERSION = "1"
DOMAIN_NAME = "agentmesh.defi"
ADDRESS = r"^0x[0-9a-fA-F]{40}$"
HEX32 = r"^0x[0-9a-f]{64}$"
SIGNATURE = r"^0x[0-9a-f]{130}$"
UINT256_MAX = 2**256 - 1
MAX_PERIODS = 1_000
MAX_REBALANCE_TOKENS = 4
BPS = 10_000


def _uint256(text: str) -> str:
    if int(text) > UINT256_MAX:
        raise ValueError("amount is larger than uint256")
    if int(text) == 0:
        raise ValueError("amount must be positive")
    return text


def _uint256_or_zero(text: str) -> str:
    if int(text) > UINT256_MAX:
        raise ValueError("amount is larger than uint256")
    return text


def _price(text: str) -> str:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"price {text!r} is not a decimal number") from None
    if not value.is_finite() or value <= 0:
        raise ValueError("price must be a positive number")
    return text


AmountText = Annotated[str, Field(pattern=r"^[0-9]{1,78}$"), AfterValidator(_uint256)]
"""A positive uint256 amount in token base units, as decimal text."""
PriceText = Annotated[str, Field(pattern=r"^[0-9]{1,30}(\.[0-9]{1,30})?$"), AfterValidator(_price)]
"""A positive decimal price: quote per whole base (``"1800"``, ``"0.01"``)."""
Address = Annotated[str, Field(pattern=ADDRESS)]
Bps = Annotated[int, StrictInt, Field(ge=1, le=5_000)]


class IntentKind(StrEnum):
    SWAP = "swap"
    DCA = "dca"
    LIMIT = "limit"
    STOP = "stop"
    REBALANCE = "rebalance"


class _Intent(Message):
    """Fields every intent has; each kind adds its own and its EIP-712 struct."""

    wallet: Address
    nonce: UInt
    valid_until: UInt
    max_slippage_bps: Bps
    # A trade worth more than this (the wallet's valuation token, mUSD base units, at
    # TWAP) waits for the owner's `agentmesh approve`; "0": none waits.
    approval_above: Annotated[
        str, Field(pattern=r"^[0-9]{1,78}$"), AfterValidator(_uint256_or_zero)
    ] = "0"

    # (EIP-712 field name, type, attribute): the struct signed for this kind.
    eip712_name: ClassVar[str]
    eip712_fields: ClassVar[tuple[tuple[str, str, str], ...]]

    def eip712_message(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, kind, attribute in self.eip712_fields:
            value = getattr(self, attribute)
            if kind == "uint256" and isinstance(value, str):
                value = int(value)
            elif kind == "uint256[]":
                value = [int(v) for v in value]
            elif kind.endswith("[]"):
                value = list(value)
            elif kind == "string":
                value = str(value)
            values[name] = value
        return values


_COMMON = (
    ("wallet", "address", "wallet"),
    ("nonce", "uint64", "nonce"),
    ("validUntil", "uint64", "valid_until"),
    ("maxSlippageBps", "uint16", "max_slippage_bps"),
    ("approvalAbove", "uint256", "approval_above"),
)


class SwapIntent(_Intent):
    """Sell ``amount_in`` of ``token_in`` for ``token_out``, once."""

    kind: Literal["swap"] = "swap"
    token_in: Address
    token_out: Address
    amount_in: AmountText

    eip712_name = "Swap"
    eip712_fields = (
        *_COMMON,
        ("tokenIn", "address", "token_in"),
        ("tokenOut", "address", "token_out"),
        ("amountIn", "uint256", "amount_in"),
    )

    @model_validator(mode="after")
    def _distinct(self) -> SwapIntent:
        _check_distinct(self.token_in, self.token_out)
        return self


class DcaIntent(_Intent):
    """Sell ``amount_per_period`` of ``token_in`` for ``token_out`` every ``period_s``
    seconds, ``periods`` times, the first at ``start_at``."""

    kind: Literal["dca"] = "dca"
    token_in: Address
    token_out: Address
    amount_per_period: AmountText
    period_s: Annotated[int, StrictInt, Field(ge=60, le=365 * 86_400)]
    periods: Annotated[int, StrictInt, Field(ge=1, le=MAX_PERIODS)]
    start_at: UInt

    eip712_name = "Dca"
    eip712_fields = (
        *_COMMON,
        ("tokenIn", "address", "token_in"),
        ("tokenOut", "address", "token_out"),
        ("amountPerPeriod", "uint256", "amount_per_period"),
        ("periodSeconds", "uint64", "period_s"),
        ("periods", "uint32", "periods"),
        ("startAt", "uint64", "start_at"),
    )

    @model_validator(mode="after")
    def _check(self) -> DcaIntent:
        _check_distinct(self.token_in, self.token_out)
        last = self.start_at + (self.periods - 1) * self.period_s
        if last > self.valid_until:
            raise ValueError(
                f"the last period ({last}) falls after the intent's valid_until "
                f"({self.valid_until})"
            )
        return self

    def due_at(self, period: int) -> int:
        """When period ``period`` (0-based) is due."""
        return self.start_at + period * self.period_s


class TriggerIntent(_Intent):
    """Trade once when the TWAP price of ``base`` in ``quote`` crosses ``price``.

    ``amount`` is what is sold: base units of ``base`` for a sell, of ``quote`` for a
    buy. A limit buys at or below the price and sells at or above it; a stop buys at or
    above it and sells at or below it (a stop-loss is a stop sell).
    """

    kind: Literal["limit", "stop"]
    side: Literal["buy", "sell"]  # buy: spend quote, get base; sell: the other way
    base: Address
    quote: Address
    amount: AmountText
    price: PriceText

    eip712_name = "Trigger"
    eip712_fields = (
        *_COMMON,
        ("kind", "string", "kind"),
        ("side", "string", "side"),
        ("base", "address", "base"),
        ("quote", "address", "quote"),
        ("amount", "uint256", "amount"),
        ("price", "string", "price"),
    )

    @model_validator(mode="after")
    def _distinct(self) -> TriggerIntent:
        _check_distinct(self.base, self.quote)
        return self

    @property
    def fires_below(self) -> bool:
        """True when it trades at or below the price, False at or above."""
        return (self.kind == "limit") == (self.side == "buy")

    def triggered(self, twap_price: Decimal) -> bool:
        target = Decimal(self.price)
        return twap_price <= target if self.fires_below else twap_price >= target

    @property
    def token_in(self) -> str:
        return self.base if self.side == "sell" else self.quote

    @property
    def token_out(self) -> str:
        return self.quote if self.side == "sell" else self.base


class RebalanceIntent(_Intent):
    """Keep ``tokens`` at ``weights_bps`` (summing to 10,000) of the wallet's value at
    TWAP, trading back when one drifts more than ``tolerance_bps`` from its weight."""

    kind: Literal["rebalance"] = "rebalance"
    tokens: Annotated[tuple[Address, ...], Field(min_length=2, max_length=MAX_REBALANCE_TOKENS)]
    weights_bps: Annotated[
        tuple[Annotated[int, StrictInt, Field(ge=0, le=BPS)], ...],
        Field(min_length=2, max_length=MAX_REBALANCE_TOKENS),
    ]
    tolerance_bps: Bps
    check_every_s: Annotated[int, StrictInt, Field(ge=60, le=30 * 86_400)]

    eip712_name = "Rebalance"
    eip712_fields = (
        *_COMMON,
        ("tokens", "address[]", "tokens"),
        ("weightsBps", "uint256[]", "weights_bps"),
        ("toleranceBps", "uint16", "tolerance_bps"),
        ("checkEverySeconds", "uint64", "check_every_s"),
    )

    @model_validator(mode="after")
    def _check(self) -> RebalanceIntent:
        if len(self.weights_bps) != len(self.tokens):
            raise ValueError(f"{len(self.tokens)} tokens but {len(self.weights_bps)} weights")
        if sum(self.weights_bps) != BPS:
            raise ValueError(f"weights sum to {sum(self.weights_bps) / 100:g}%, not 100%")
        if len({t.lower() for t in self.tokens}) != len(self.tokens):
            raise ValueError("a token is listed twice")
        return self


AnyIntent = SwapIntent | DcaIntent | TriggerIntent | RebalanceIntent
Intent = Annotated[AnyIntent, Field(discriminator="kind")]
INTENT: TypeAdapter[AnyIntent] = TypeAdapter(Intent)


def trade_of(intent: AnyIntent) -> tuple[str, str, int] | None:
    """(token sold, token bought, base units sold per step) of an intent's trade; None
    for a rebalance, whose trades are sized from the portfolio at each check."""
    if isinstance(intent, SwapIntent):
        return intent.token_in, intent.token_out, int(intent.amount_in)
    if isinstance(intent, DcaIntent):
        return intent.token_in, intent.token_out, int(intent.amount_per_period)
    if isinstance(intent, TriggerIntent):
        return intent.token_in, intent.token_out, int(intent.amount)
    return None


def _check_distinct(a: str, b: str) -> None:
    if a.lower() == b.lower():
        raise ValueError("the token sold and the token bought are the same")


# ---------------------------------------------------------------------- EIP-712


def domain(chain_id: int, wallet: str) -> dict[str, Any]:
    """The EIP-712 domain: this protocol, on one chain, for one AgentWallet."""
    return {
        "name": DOMAIN_NAME,
        "version": VERSION,
        "chainId": chain_id,
        "verifyingContract": wallet,
    }


def typed_data(
    intent: SwapIntent | DcaIntent | TriggerIntent | RebalanceIntent, chain_id: int
) -> dict[str, Any]:
    """The full EIP-712 typed data of ``intent`` (what a wallet displays and signs)."""
    return {
        "domain": domain(chain_id, intent.wallet),
        "types": {
            intent.eip712_name: [
                {"name": name, "type": kind} for name, kind, _ in intent.eip712_fields
            ]
        },
        "primaryType": intent.eip712_name,
        "message": intent.eip712_message(),
    }


def _signable(intent: AnyIntent, chain_id: int) -> Any:
    data = typed_data(intent, chain_id)
    return encode_typed_data(
        domain_data=data["domain"], message_types=data["types"], message_data=data["message"]
    )


def intent_id(intent: AnyIntent, chain_id: int) -> str:
    """The intent's EIP-712 digest as hex: its id, the same for signer and agent."""
    signable = _signable(intent, chain_id)
    return "0x" + keccak(b"\x19" + signable.version + signable.header + signable.body).hex()


def recover_signer(intent: AnyIntent, signature: str, chain_id: int) -> str:
    """The address that signed ``intent`` (checksummed); ``SignatureError`` when the
    signature is malformed."""
    try:
        return str(Account.recover_message(_signable(intent, chain_id), signature=signature))
    except Exception as exc:  # eth_keys raises several types for a bad signature
        raise SignatureError(f"intent signature does not verify: {exc}") from None


def cancel_typed_data(intent_id_hex: str, wallet: str, chain_id: int) -> dict[str, Any]:
    """The EIP-712 typed data of a cancellation: the owner signs the intent's id."""
    return {
        "domain": domain(chain_id, wallet),
        "types": {"Cancel": [{"name": "intentId", "type": "bytes32"}]},
        "primaryType": "Cancel",
        "message": {"intentId": bytes.fromhex(intent_id_hex.removeprefix("0x"))},
    }


def recover_cancel_signer(intent_id_hex: str, wallet: str, signature: str, chain_id: int) -> str:
    """The address that signed the cancellation of ``intent_id_hex``."""
    data = cancel_typed_data(intent_id_hex, wallet, chain_id)
    signable = encode_typed_data(
        domain_data=data["domain"], message_types=data["types"], message_data=data["message"]
    )
    try:
        return str(Account.recover_message(signable, signature=signature))
    except Exception as exc:
        raise SignatureError(f"cancel signature does not verify: {exc}") from None


# ---------------------------------------------------------------------- messages


class SubmitIntent(Message):
    """The owner gives the agent an intent, signed (EIP-712) by the wallet's owner."""

    intent: Intent
    signature: str = Field(pattern=SIGNATURE)


class CancelIntent(Message):
    """The owner withdraws an intent; the signature is over its id (``Cancel``)."""

    intent_id: str = Field(pattern=HEX32)
    signature: str = Field(pattern=SIGNATURE)


class IntentQuery(Message):
    """Where an intent stands (anyone may ask the agent about an id it was given)."""

    intent_id: str = Field(pattern=HEX32)


class FillView(Message):
    """One step of an intent as the agent recorded it."""

    step: UInt
    status: Literal["pending", "filled", "refused", "skipped"]
    tx: str = Field(default="", max_length=66)
    amount_in: str = Field(default="0", pattern=r"^[0-9]{1,78}$")
    amount_out: str = Field(default="0", pattern=r"^[0-9]{1,78}$")
    twap_out: str = Field(default="0", pattern=r"^[0-9]{1,78}$")
    gas: UInt = 0
    at: UInt = 0
    reason: str = Field(default="", max_length=500)


class IntentState(Message):
    """An intent's state and its fills so far (the agent's answer to every message)."""

    intent_id: str = Field(pattern=HEX32)
    phase: str = Field(max_length=32)
    reason: str = Field(default="", max_length=500)
    next_due: UInt = 0
    fills: tuple[FillView, ...] = Field(default=(), max_length=MAX_PERIODS)


class IntentPhase(StrEnum):
    """Where an intent is; the final ones end it."""

    ACTIVE = "active"  # waiting for its next step (a period, a trigger, a drift)
    EXECUTING = "executing"  # a step is being simulated, approved or sent
    AWAITING_APPROVAL = "awaiting_approval"
    DONE = "done"
    CANCELLED = "cancelled"
    EXPIRED = "expired"
    FAILED = "failed"


FINAL_PHASES = frozenset(
    {IntentPhase.DONE, IntentPhase.CANCELLED, IntentPhase.EXPIRED, IntentPhase.FAILED}
)
# The one table of which owner message an intent accepts in which phase: a submit
# starts one (an id seen before answers its state), a cancel stops one that is not
# final, a query is answered in every phase.
ACCEPTS: dict[type[Message], frozenset[IntentPhase] | None] = {
    SubmitIntent: None,  # no intent yet
    CancelIntent: frozenset(IntentPhase) - FINAL_PHASES,
    IntentQuery: frozenset(IntentPhase),
}
MESSAGES: tuple[type[Message], ...] = (
    SubmitIntent,
    CancelIntent,
    IntentQuery,
    IntentState,
    FillView,
)
