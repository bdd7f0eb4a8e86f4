"""Decisions the model makes, and the hard rules it cannot override.

The model answers under a grammar built from ``PriceDecision``'s JSON schema, so even
the 135M default model returns a valid object. No free-text field: tiny models loop
inside free strings until they run out of tokens. The rules then bound the answer:
never below the floor (cost), never above the buyer's budget, a budget below the floor
is always a decline, and a decline whose stated reason the numbers contradict (the
budget "below" a list price it covers) is overruled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from agentmesh.wallets.units import MUSD_DECIMALS, format_amount

PRICING_SYSTEM = (
    "You price tasks for an AI service seller. Reply with JSON: action is propose when the "
    "buyer's budget is at least your list price, else decline; price is your price in mUSD, "
    "normally the list price."
)


class PriceDecision(BaseModel):
    """The model's answer to a call for proposals."""

    model_config = ConfigDict(extra="forbid")

    action: Literal["propose", "decline"]
    price: float = Field(allow_inf_nan=False)
    reason: Literal["budget_covers_price", "budget_below_price", "input_too_long"]


@dataclass(frozen=True, slots=True)
class Decision:
    """What the agent does after the rules: propose ``price`` or decline."""

    action: Literal["propose", "decline"]
    price: int  # base units; 0 when declining
    reason: str
    model_action: str  # what the model said, for the record
    overridden: bool  # True when a rule changed the model's answer


def pricing_prompt(
    service: str, list_price: int, budget: int, input_chars: int
) -> list[dict[str, str]]:
    """The chat messages for one pricing decision (fixed system prefix: KV-cache reuse)."""
    return [
        {"role": "system", "content": PRICING_SYSTEM},
        {
            "role": "user",
            "content": f"Service: {service}\n"
            f"List price: {format_amount(list_price, MUSD_DECIMALS)} mUSD\n"
            f"Buyer budget: {format_amount(budget, MUSD_DECIMALS)} mUSD\n"
            f"Input length: {input_chars} characters",
        },
    ]


def apply_rules(
    answer: PriceDecision | None, *, floor: int, list_price: int, budget: int
) -> Decision:
    """Bound the model's answer by the hard rules; ``answer=None`` when the model failed."""
    model_action = answer.action if answer is not None else "none"
    if budget < floor:
        return Decision(
            "decline",
            0,
            f"budget {format_amount(budget, MUSD_DECIMALS)} mUSD is below the floor "
            f"{format_amount(floor, MUSD_DECIMALS)} mUSD",
            model_action,
            overridden=model_action == "propose",
        )
    if answer is None:
        # No usable model answer: fall back to the list price, capped by the budget.
        return Decision("propose", min(list_price, budget), "rules (no model answer)", "none", True)
    if answer.action == "decline":
        if answer.reason == "budget_below_price" and budget >= list_price:
            # The model's stated reason is false (small models misread numbers): the
            # facts decide. A decline for a judgement (input_too_long) stands.
            return Decision(
                "propose", list_price, "rules (the budget covers the list price)", "decline", True
            )
        return Decision("decline", 0, f"model declined: {answer.reason}", model_action, False)
    finite = math.isfinite(answer.price) and answer.price < 1e12  # no overflow on round
    wanted = round(answer.price * 10**MUSD_DECIMALS) if finite and answer.price > 0 else list_price
    price = max(floor, min(wanted, budget))
    return Decision("propose", price, answer.reason, model_action, overridden=price != wanted)
