"""Amounts as people write them ("1.5") <-> integer base units, without float error;
times as people read them."""

from __future__ import annotations

import time
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
    # Exact integer arithmetic: Decimal's default 28-digit context would round wei.
    exponent = int(value.as_tuple().exponent)
    digits = int("".join(map(str, value.as_tuple().digits)) or "0")
    if exponent < -decimals and digits % 10 ** (-exponent - decimals):
        raise AgentMeshValueError(
            f"invalid amount {text!r}: at most {decimals} decimal places{label}"
        )
    shift = exponent + decimals
    scale: int = 10 ** abs(shift)
    return digits * scale if shift >= 0 else digits // scale


def format_amount(units: int, decimals: int, symbol: str = "") -> str:
    """Base units -> a plain decimal string, trailing zeros trimmed."""
    whole, fraction = divmod(units, 10**decimals)
    text = str(whole)
    if fraction:
        text += "." + str(fraction).rjust(decimals, "0").rstrip("0")
    return f"{text} {symbol}".strip()


def local_time(epoch_s: float) -> str:
    """An epoch time (chain or wall clock, seconds) as local time for a person."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(epoch_s))
