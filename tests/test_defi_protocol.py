"""``agentmesh.defi@1`` without a chain: intents parse strictly, sign and recover under
EIP-712 bound to one chain and one wallet, and malformed or impossible shapes are
refused with the problem named."""

from __future__ import annotations

from typing import Any

import pytest
from eth_account import Account
from eth_account.messages import encode_typed_data
from pydantic import ValidationError

from agentmesh.errors import SignatureError
from agentmesh.protocols.defi import (
    ACCEPTS,
    FINAL_PHASES,
    INTENT,
    CancelIntent,
    DcaIntent,
    IntentPhase,
    RebalanceIntent,
    SubmitIntent,
    SwapIntent,
    TriggerIntent,
    cancel_typed_data,
    intent_id,
    recover_cancel_signer,
    recover_signer,
    typed_data,
)

WALLET = "0x" + "11" * 20
MUSD = "0x" + "22" * 20
WETH = "0x" + "33" * 20
CHAIN = 31337
OWNER = Account.create()


def swap(**changes: Any) -> SwapIntent:
    fields: dict[str, Any] = {
        "wallet": WALLET,
        "nonce": 1,
        "valid_until": 2_000_000_000,
        "max_slippage_bps": 100,
        "token_in": MUSD,
        "token_out": WETH,
        "amount_in": "20000000",
        **changes,
    }
    return SwapIntent(**fields)


def sign(intent: Any, chain_id: int = CHAIN, account: Any = OWNER) -> str:
    signed = account.sign_message(encode_typed_data(full_message=typed_data(intent, chain_id)))
    return "0x" + bytes(signed.signature).hex()


def test_the_owners_signature_recovers_to_the_owner() -> None:
    intent = swap()
    assert recover_signer(intent, sign(intent), CHAIN) == OWNER.address


def test_a_signature_binds_the_chain_the_wallet_and_every_field() -> None:
    intent = swap()
    signature = sign(intent)
    assert recover_signer(intent, signature, 1) != OWNER.address  # another chain
    other_wallet = swap(wallet="0x" + "44" * 20)
    assert recover_signer(other_wallet, signature, CHAIN) != OWNER.address
    bigger = swap(amount_in="20000001")
    assert recover_signer(bigger, signature, CHAIN) != OWNER.address
    looser = swap(max_slippage_bps=101)
    assert recover_signer(looser, signature, CHAIN) != OWNER.address
    assert len({intent_id(i, CHAIN) for i in (intent, other_wallet, bigger, looser)}) == 4
    assert intent_id(intent, CHAIN) != intent_id(intent, 1)


def test_a_forged_or_malformed_signature_is_a_signature_error() -> None:
    with pytest.raises(SignatureError, match="does not verify"):
        recover_signer(swap(), "0x" + "00" * 65, CHAIN)
    with pytest.raises(ValidationError):
        SubmitIntent(intent=swap(), signature="0x1234")


def test_cancel_signatures_name_the_intent() -> None:
    intent = swap()
    iid = intent_id(intent, CHAIN)
    data = cancel_typed_data(iid, WALLET, CHAIN)
    signature = (
        "0x" + bytes(OWNER.sign_message(encode_typed_data(full_message=data)).signature).hex()
    )
    assert recover_cancel_signer(iid, WALLET, signature, CHAIN) == OWNER.address
    other = intent_id(swap(nonce=2), CHAIN)
    assert recover_cancel_signer(other, WALLET, signature, CHAIN) != OWNER.address
    assert CancelIntent(intent_id=iid, signature=signature).intent_id == iid


def test_every_kind_round_trips_through_the_wire_and_keeps_its_id() -> None:
    intents = [
        swap(),
        DcaIntent(
            wallet=WALLET,
            nonce=2,
            valid_until=2_000_000_000,
            max_slippage_bps=50,
            token_in=MUSD,
            token_out=WETH,
            amount_per_period="20000000",
            period_s=3600,
            periods=5,
            start_at=1_999_000_000,
        ),
        TriggerIntent(
            kind="stop",
            side="sell",
            wallet=WALLET,
            nonce=3,
            valid_until=2_000_000_000,
            max_slippage_bps=100,
            base=WETH,
            quote=MUSD,
            amount=str(5 * 10**17),
            price="1800",
        ),
        RebalanceIntent(
            wallet=WALLET,
            nonce=4,
            valid_until=2_000_000_000,
            max_slippage_bps=100,
            tokens=(WETH, MUSD),
            weights_bps=(6000, 4000),
            tolerance_bps=200,
            check_every_s=3600,
        ),
    ]
    for intent in intents:
        signed = SubmitIntent(intent=intent, signature=sign(intent))
        back = SubmitIntent.decode(signed.encode())
        assert back == signed
        assert intent_id(back.intent, CHAIN) == intent_id(intent, CHAIN)
        assert recover_signer(back.intent, back.signature, CHAIN) == OWNER.address


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"amount_in": "-5"}, "String should match pattern"),
        ({"amount_in": "0"}, "amount must be positive"),
        ({"amount_in": str(2**256)}, "larger than uint256"),
        ({"amount_in": 5}, "Input should be a valid string"),
        ({"token_out": MUSD}, "the same"),
        ({"token_in": "WETH"}, "String should match pattern"),
        ({"max_slippage_bps": 0}, "greater than or equal to 1"),
        ({"max_slippage_bps": 5001}, "less than or equal to 5000"),
        ({"extra": 1}, "Extra inputs are not permitted"),
    ],
)
def test_a_malformed_swap_is_refused_with_the_problem_named(
    changes: dict[str, Any], words: str
) -> None:
    with pytest.raises(ValidationError, match=words):
        swap(**changes)


def test_impossible_shapes_of_the_other_kinds_are_refused() -> None:
    base: dict[str, Any] = {
        "wallet": WALLET,
        "nonce": 1,
        "valid_until": 2_000_000_000,
        "max_slippage_bps": 100,
    }
    with pytest.raises(ValidationError, match="weights sum to 90%, not 100%"):
        RebalanceIntent(
            **base,
            tokens=(WETH, MUSD),
            weights_bps=(5000, 4000),
            tolerance_bps=1,
            check_every_s=60,
        )
    with pytest.raises(ValidationError, match="2 tokens but 3 weights"):
        RebalanceIntent(
            **base,
            tokens=(WETH, MUSD),
            weights_bps=(5000, 4000, 1000),
            tolerance_bps=1,
            check_every_s=60,
        )
    with pytest.raises(ValidationError, match="listed twice"):
        RebalanceIntent(
            **base,
            tokens=(WETH, WETH.upper().replace("0X", "0x")),
            weights_bps=(5000, 5000),
            tolerance_bps=1,
            check_every_s=60,
        )
    with pytest.raises(ValidationError, match="falls after the intent's valid_until"):
        DcaIntent(
            **base,
            token_in=MUSD,
            token_out=WETH,
            amount_per_period="1",
            period_s=3600,
            periods=5,
            start_at=2_000_000_000 - 3600,
        )
    with pytest.raises(ValidationError, match="not a decimal number|String should match"):
        TriggerIntent(
            **base, kind="limit", side="buy", base=WETH, quote=MUSD, amount="1", price="1e3"
        )
    with pytest.raises(ValidationError, match="Input should be 'buy' or 'sell'"):
        TriggerIntent(
            **base, kind="limit", side="short", base=WETH, quote=MUSD, amount="1", price="1"
        )
    with pytest.raises(ValidationError):
        INTENT.validate_json('{"kind": "margin"}')


def test_limits_and_stops_fire_on_the_right_side_of_the_price() -> None:
    from decimal import Decimal

    def trigger(kind: str, side: str) -> TriggerIntent:
        return TriggerIntent(
            kind=kind,  # type: ignore[arg-type]
            side=side,  # type: ignore[arg-type]
            wallet=WALLET,
            nonce=1,
            valid_until=1,
            max_slippage_bps=1,
            base=WETH,
            quote=MUSD,
            amount="1",
            price="1800",
        )

    below, at, above = Decimal("1799"), Decimal("1800"), Decimal("1801")
    stop_sell = trigger("stop", "sell")
    assert (stop_sell.triggered(below), stop_sell.triggered(at)) == (True, True)
    assert not stop_sell.triggered(above)
    assert (stop_sell.token_in, stop_sell.token_out) == (WETH, MUSD)
    limit_buy = trigger("limit", "buy")
    assert limit_buy.triggered(below) and not limit_buy.triggered(above)
    assert (limit_buy.token_in, limit_buy.token_out) == (MUSD, WETH)
    limit_sell = trigger("limit", "sell")
    assert limit_sell.triggered(above) and not limit_sell.triggered(below)
    stop_buy = trigger("stop", "buy")
    assert stop_buy.triggered(above) and not stop_buy.triggered(below)


def test_the_accept_table_lets_nothing_cancel_a_final_intent() -> None:
    cancellable = ACCEPTS[CancelIntent]
    assert cancellable is not None
    assert not cancellable & FINAL_PHASES
    assert IntentPhase.ACTIVE in cancellable and IntentPhase.AWAITING_APPROVAL in cancellable
