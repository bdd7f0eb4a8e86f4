"""Plain language to an intent: the model's reading under the grammar, grounded by what
the sentence states outright, and refused when it cannot be an intent. Nothing here
signs: `agentmesh defi ask` shows the result and asks first (tests/test_defi_cli.py)."""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from agentmesh.agents.defi_reading import ground, read_sentence, reading_fields, reading_schema
from agentmesh.errors import AgentMeshValueError
from agentmesh.llm import LocalModel
from agentmesh.testing import FakeChatModel

SYMBOLS = ["mUSD", "WETH", "MGLD"]
WRONG = {  # a reading that gets everything wrong
    "kind": "dca",
    "sell_token": "MGLD",
    "buy_token": "MGLD",
    "amount": 7,
    "share_percent": 100,
    "every_minutes": 3,
    "periods": 9,
    "price": 42,
}
SENTENCES = {
    "buy 20 mUSD of WETH every hour for five hours": (
        "dca",
        {"amount": "20", "sell_token": "mUSD", "buy_token": "WETH", "every": "60m", "periods": 5},
    ),
    "sell half my WETH if it falls below 1,800": (
        "stop",
        {"side": "sell", "amount": "1.5", "base": "WETH", "quote": "mUSD", "price": "1800"},
    ),
    "swap 30 mUSD for MGLD": ("swap", {"amount": "30", "sell_token": "mUSD", "buy_token": "MGLD"}),
    "buy WETH with 50 mUSD if it drops below 1900": (
        "limit",
        {"side": "buy", "amount": "50", "base": "WETH", "quote": "mUSD", "price": "1900"},
    ),
    "sell 0.5 eth when it rises to 2,500": (
        "limit",
        {"side": "sell", "amount": "0.5", "base": "WETH", "quote": "mUSD", "price": "2500"},
    ),
    "every 2 days sell 10 mUSD for gold, 3 times": (
        "dca",
        {"amount": "10", "sell_token": "mUSD", "buy_token": "MGLD", "every": "2880m", "periods": 3},
    ),
}


@pytest.fixture(scope="module")
def model() -> Iterator[LocalModel]:
    shared = LocalModel.default()
    yield shared
    shared.close()


def subset(fields: dict[str, Any], expected: dict[str, Any]) -> dict[str, Any]:
    return {k: fields[k] for k in expected}


@pytest.mark.parametrize(("sentence", "expected"), SENTENCES.items())
async def test_what_a_sentence_states_overrules_a_wrong_reading(
    sentence: str, expected: tuple[str, dict[str, Any]]
) -> None:
    fake = FakeChatModel(decisions=[WRONG])
    reading = await read_sentence(fake, sentence, SYMBOLS)
    grounded, notes = ground(reading, sentence, SYMBOLS)
    kind, fields = reading_fields(grounded, held=Decimal(3))
    assert (kind, subset(fields, expected[1])) == (expected[0], expected[1])
    assert notes, "the overruled values are reported"


@pytest.mark.parametrize(("sentence", "expected"), SENTENCES.items())
async def test_the_default_model_and_the_rules_read_the_examples(
    model: LocalModel, sentence: str, expected: tuple[str, dict[str, Any]]
) -> None:
    reading = await read_sentence(model, sentence, SYMBOLS)
    assert reading.sell_token in SYMBOLS and reading.buy_token in SYMBOLS  # the grammar
    kind, fields = reading_fields(ground(reading, sentence, SYMBOLS)[0], held=Decimal(3))
    assert (kind, subset(fields, expected[1])) == (expected[0], expected[1])


async def test_the_grammar_only_allows_the_exchanges_tokens() -> None:
    schema = reading_schema(tuple(SYMBOLS))
    with pytest.raises(ValueError, match="Input should be 'mUSD', 'WETH' or 'MGLD'"):
        schema.model_validate({**WRONG, "sell_token": "DOGE"})
    fake = FakeChatModel(decisions=[{**WRONG, "buy_token": "DOGE"}])
    with pytest.raises(Exception, match="DOGE"):
        await read_sentence(fake, "swap 1 mUSD for WETH", SYMBOLS)


@pytest.mark.parametrize(
    ("sentence", "words"),
    [
        ("do something clever with my money", "no amount"),
        ("buy 5 mUSD of WETH every hour", "how many times"),
        ("swap mUSD for WETH", "no amount"),
        ("sell 5 WETH for WETH", "same token"),
        ("sell 1 WETH if it falls", "needs its price"),
    ],
)
async def test_a_reading_that_cannot_be_an_intent_is_refused(sentence: str, words: str) -> None:
    empty = {
        **WRONG,
        "buy_token": "WETH",
        "amount": 0,
        "share_percent": 0,
        "price": 0,
        "every_minutes": 0,
        "periods": 0,
    }
    if "falls" in sentence:
        empty["kind"] = "stop"
    fake = FakeChatModel(decisions=[empty])
    reading = await read_sentence(fake, sentence, SYMBOLS)
    with pytest.raises(AgentMeshValueError, match=words):
        reading_fields(ground(reading, sentence, SYMBOLS)[0], held=Decimal(3))


async def test_empty_and_overlong_sentences_never_reach_the_model() -> None:
    fake = FakeChatModel(decisions=[])
    with pytest.raises(AgentMeshValueError, match="say what the agent should do"):
        await read_sentence(fake, "   ", SYMBOLS)
    with pytest.raises(AgentMeshValueError, match="too long"):
        await read_sentence(fake, "buy " * 200, SYMBOLS)
    assert fake.calls == []
