"""Plain language to an intent: the local model reads a person's sentence into a
``IntentReading`` under a JSON-schema grammar, and hard rules turn that reading into
the fields of a structured command, or refuse it naming what is missing.

The model never signs anything: ``agentmesh defi ask`` shows the intent built from the
reading and asks before signing, so a misread sentence is seen, not traded. The reading
has no free-text field (tiny models loop inside free strings); tokens are an enum of
the exchange's symbols, so the grammar cannot produce an unknown one.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from decimal import ROUND_DOWN, Decimal
from functools import cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from agentmesh.chat_model import ChatModel
from agentmesh.errors import AgentMeshValueError

READING_SYSTEM = (
    "You turn a person's order to their trading agent into JSON. kind: swap (trade once "
    "now), dca (the same trade every period), stop (sell when the price falls to a level, "
    "or buy when it rises to it), limit (buy when the price falls to a level, or sell when "
    "it rises to it). sell_token is what the person gives up, buy_token what they get. "
    "amount is how much of sell_token; when they name a part of what they hold instead "
    "(half = 50), amount is 0 and share_percent says the part. every_minutes and periods "
    "only for dca, else 0. price is the trigger price in mUSD, only for limit and stop, "
    "else 0. mUSD is a dollar; WETH is ether."
)
EXAMPLES = (
    (
        "swap 50 mUSD for WETH",
        '{"kind": "swap", "sell_token": "mUSD", "buy_token": "WETH", "amount": 50, '
        '"share_percent": 0, "every_minutes": 0, "periods": 0, "price": 0}',
    ),
    (
        "buy 10 mUSD of WETH every 30 minutes, 4 times",
        '{"kind": "dca", "sell_token": "mUSD", "buy_token": "WETH", "amount": 10, '
        '"share_percent": 0, "every_minutes": 30, "periods": 4, "price": 0}',
    ),
    (
        "sell all my WETH if it drops below 1500",
        '{"kind": "stop", "sell_token": "WETH", "buy_token": "mUSD", "amount": 0, '
        '"share_percent": 100, "every_minutes": 0, "periods": 0, "price": 1500}',
    ),
)


class _Reading(BaseModel):
    model_config = ConfigDict(extra="forbid")

    kind: Literal["swap", "dca", "limit", "stop"]
    sell_token: str
    buy_token: str
    amount: float = Field(ge=0, allow_inf_nan=False)
    share_percent: int = Field(ge=0, le=100)
    every_minutes: int = Field(ge=0, le=525_600)
    periods: int = Field(ge=0, le=1_000)
    price: float = Field(ge=0, allow_inf_nan=False)


@cache
def reading_schema(symbols: tuple[str, ...]) -> type[_Reading]:
    """``_Reading`` with the tokens restricted to ``symbols`` (one grammar per set)."""
    token = Literal[symbols]  # type: ignore[valid-type]
    name = "IntentReading_" + "_".join(symbols)
    model: type[_Reading] = create_model(
        name, __base__=_Reading, sell_token=(token, ...), buy_token=(token, ...)
    )
    return model


def reading_prompt(sentence: str) -> list[dict[str, str]]:
    messages = [{"role": "system", "content": READING_SYSTEM}]
    for said, meant in EXAMPLES:
        messages += [{"role": "user", "content": said}, {"role": "assistant", "content": meant}]
    messages.append({"role": "user", "content": sentence.strip()})
    return messages


async def read_sentence(model: ChatModel, sentence: str, symbols: Sequence[str]) -> _Reading:
    """The model's reading of ``sentence`` (always a valid reading; maybe a wrong one)."""
    text = sentence.strip()
    if not text:
        raise AgentMeshValueError("say what the agent should do, e.g. 'swap 20 mUSD for WETH'")
    if len(text) > 500:
        raise AgentMeshValueError("the sentence is too long: at most 500 characters")
    schema = reading_schema(tuple(symbols))
    reading: _Reading = await model.structured(reading_prompt(text), schema, max_tokens=120)
    return reading


_NUMBER_WORDS = {
    "one": 1,
    "two": 2,
    "three": 3,
    "four": 4,
    "five": 5,
    "six": 6,
    "seven": 7,
    "eight": 8,
    "nine": 9,
    "ten": 10,
    "twelve": 12,
    "twenty": 20,
}
_SHARES = {
    "all": 100,
    "everything": 100,
    "half": 50,
    "a half": 50,
    "a third": 33,
    "a quarter": 25,
    "quarter": 25,
}
_UNIT_MINUTES = {"minute": 1, "min": 1, "hour": 60, "day": 1440, "week": 10080}
_ALIASES = {"eth": "WETH", "ether": "WETH", "usd": "mUSD", "dollars": "mUSD", "gold": "MGLD"}
_NUM = r"(\d[\d,]*(?:\.\d+)?|" + "|".join(_NUMBER_WORDS) + r")"


def _number(text: str) -> Decimal:
    text = text.lower().replace(",", "")
    return Decimal(_NUMBER_WORDS[text]) if text in _NUMBER_WORDS else Decimal(text)


def _token_pattern(symbols: Sequence[str]) -> str:
    names = sorted({n.lower() for n in [*symbols, *_ALIASES]}, key=len, reverse=True)
    return r"\b(" + "|".join(re.escape(n) for n in names) + r")\b"  # the text is lowercased


def _symbol(word: str, symbols: Sequence[str]) -> str:
    for symbol in symbols:
        if symbol.lower() == word.lower():
            return symbol
    return _ALIASES[word.lower()]


def _schedule(text: str) -> dict[str, Any]:
    """``every N units`` and ``N times`` / ``for N units``: a DCA's period and count."""
    every = re.search(r"every\s+(?:" + _NUM + r"\s+)?(minute|min|hour|day|week)s?", text)
    if not every:
        return {}
    count = _number(every.group(1)) if every.group(1) else Decimal(1)
    said: dict[str, Any] = {
        "kind": "dca",
        "every_minutes": int(count * _UNIT_MINUTES[every.group(2)]),
    }
    times = re.search(_NUM + r"\s+times", text)
    span = re.search(r"for\s+" + _NUM + r"\s+(minute|min|hour|day|week)s?", text)
    if times:
        said["periods"] = int(_number(times.group(1)))
    elif span:
        total = _number(span.group(1)) * _UNIT_MINUTES[span.group(2)]
        said["periods"] = max(1, int(total / said["every_minutes"]))
    return said


def ground(
    reading: _Reading, sentence: str, symbols: Sequence[str]
) -> tuple[dict[str, Any], list[str]]:
    """The reading with every value the sentence states outright taken from the
    sentence (tokens, amounts, shares, periods, prices, the kind their words imply);
    returns (reading fields, notes on what the sentence overruled)."""
    text = sentence.lower()
    tokens = _token_pattern(symbols)
    fields: dict[str, Any] = reading.model_dump()
    said: dict[str, Any] = {}
    amount = re.search(_NUM + r"\s*" + tokens, text)
    if amount:
        said["amount"] = float(_number(amount.group(1)))
        said["share_percent"] = 0
        amount_token = _symbol(amount.group(2), symbols)
    else:
        amount_token = None
    share = re.search(
        r"\b(" + "|".join(_SHARES) + r"|(\d+)\s*%)\s+(?:of\s+)?(?:my\s+)?" + tokens, text
    )
    if share and not amount:
        percent = int(share.group(2)) if share.group(2) else _SHARES[share.group(1)]
        said.update(amount=0.0, share_percent=percent)
        amount_token = _symbol(share.group(3), symbols)
    said.update(_schedule(text))
    every = "every_minutes" in said
    trigger = re.search(
        r"(below|under|above|over|falls? to|drops? to|rises? to|reaches)\s+\$?" + _NUM, text
    )
    mentioned = [_symbol(m.group(1), symbols) for m in re.finditer(tokens, text)]
    selling = re.search(r"\bsell\b", text) is not None
    if trigger:
        said["price"] = float(_number(trigger.group(2)))
        falls = trigger.group(1).startswith(("below", "under", "fall", "drop"))
        # A stop sells on the way down (or buys on the way up); a limit the other way.
        said["kind"] = "stop" if falls == selling else "limit"
    sell = buy = None
    swap_for = re.search(tokens + r"\s+(?:for|into|to)\s+" + tokens, text)
    if swap_for:
        sell, buy = _symbol(swap_for.group(1), symbols), _symbol(swap_for.group(2), symbols)
    elif selling and amount_token:
        sell = amount_token
        others = [t for t in mentioned if t != sell]
        buy = others[0] if others else ("mUSD" if sell != "mUSD" else None)
    elif amount_token:
        sell = amount_token
        others = [t for t in mentioned if t != sell]
        buy = others[0] if others else None
    if sell:
        said["sell_token"] = sell
    if buy:
        said["buy_token"] = buy
    conditional = re.search(r"\b(if|when|once|falls?|drops?|rises?)\b", text) is not None
    if not every and not trigger and not conditional and (amount or share):
        said["kind"] = "swap"  # an amount, no schedule, no condition: a trade now
    notes = [
        f"{key}: the model read {fields[key]!r}, the sentence says {value!r}"
        for key, value in said.items()
        if fields.get(key) != value
    ]
    fields.update(said)
    return fields, notes


def reading_fields(
    reading: dict[str, Any], held: Decimal, quote: str = "mUSD", decimals: int = 18
) -> tuple[str, dict[str, Any]]:
    """(kind, fields for ``build_intent``) from a (grounded) reading; ``held``: the
    wallet's balance of the token sold (whole units, ``decimals`` places), for a share.
    Refuses readings that cannot be an intent, naming what is missing."""
    sell, buy, kind = reading["sell_token"], reading["buy_token"], reading["kind"]
    if sell == buy:
        raise AgentMeshValueError(
            f"the reading sells and buys the same token ({sell}): say both tokens"
        )
    amount = Decimal(str(reading["amount"]))
    if amount == 0 and reading["share_percent"]:
        share = held * reading["share_percent"] / 100
        amount = share.quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_DOWN)
    if amount <= 0:
        raise AgentMeshValueError("the reading has no amount: say how much to trade")
    amount_text = f"{amount.normalize():f}"
    if kind == "swap":
        return "swap", {"amount": amount_text, "sell_token": sell, "buy_token": buy}
    if kind == "dca":
        if reading["every_minutes"] <= 0 or reading["periods"] <= 0:
            raise AgentMeshValueError("the reading of a DCA needs how often and how many times")
        return "dca", {
            "amount": amount_text,
            "sell_token": sell,
            "buy_token": buy,
            "every": f"{reading['every_minutes']}m",
            "periods": reading["periods"],
            "expires": "1m",
        }
    if reading["price"] <= 0:
        raise AgentMeshValueError(f"the reading of a {kind} order needs its price")
    base = buy if sell == quote else sell
    return kind, {
        "side": "sell" if sell == base else "buy",
        "amount": amount_text,
        "base": base,
        "quote": quote if base != quote else buy,
        "price": f"{Decimal(str(reading['price'])).normalize():f}",
        "expires": "7d",
    }
