"""Amounts as people write them ("1.5") <-> integer base units, without float error."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation

from agentmesh.errors import AgentMeshValueError

MUSD_DECIMALS = 6
ETH_DECIMALS = 18


def parse_amount(text: str | int | Decimal, decimals: int, *, symbol: str = "") -> int:
    """Parse a non-negative decimal amount into base units; rejects excess precision."""
    label = f" {symbol}" if symbol else ""
    try:
        value = Decimal(str(text).strip())
    except InvalidOperation:
        raise AgentMeshValueError(f"invalid amount {text!r}: not a number") from None
    if not value.is_finite() or value < 0:
        raise AgentMeshValueError(f"invalid amount {text!r}: must be zero or positive")
    scaled = value.scaleb(decimals)
    if scaled != scaled.to_integral_value():
        raise AgentMeshValueError(
            f"invalid amount {text!r}: at most {decimals} decimal places{label}"
        )
    return int(scaled)


def format_amount(units: int, decimals: int, symbol: str = "") -> str:
    """Base units -> a plain decimal string, trailing zeros trimmed."""
    value = Decimal(units).scaleb(-decimals)
    text = f"{value:f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return f"{text} {symbol}".strip()
