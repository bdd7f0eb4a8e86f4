"""LocalModel against the real default model (SmolLM2-135M Q4_1), and its failure paths."""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Literal

import pytest
from pydantic import BaseModel, Field

from agentmesh import llm, llm_prefix
from agentmesh.errors import ContextOverflowError, ModelError, ModelNotFoundError, ModelOutputError
from agentmesh.llm import LocalModel, PrefixCacheStats, check_gguf, default_model_path

SYSTEM = {"role": "system", "content": "You are a concise assistant for a summarization agent."}


class Decision(BaseModel):
    action: Literal["decline", "propose"]
    price: int = Field(ge=0, le=1000)
    reason: str = Field(max_length=60)


@pytest.fixture(scope="module")
async def model() -> AsyncIterator[LocalModel]:
    local = LocalModel.default(n_threads=2, n_ctx=1024)
    await local.load()
    yield local
    local.close()


async def test_default_model_info(model: LocalModel) -> None:
    info = await model.info()
    path = default_model_path()
    assert info.path == str(path)
    assert info.quantization == "Q4_1"
    assert info.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.size_bytes == path.stat().st_size
    assert info.context == 1024
    if not llm.gpu_offload_supported():  # the CPU build on this machine
        assert (info.gpu_layers, info.backend) == (0, "cpu")


async def test_chat_returns_text_and_usage(model: LocalModel) -> None:
    text = await model.chat(
        [SYSTEM, {"role": "user", "content": "Name one colour."}], max_tokens=16
    )
    assert text.strip()
    assert 0 < model.last_usage["completion_tokens"] <= 16
    assert model.last_usage["prompt_tokens"] > 0


@pytest.mark.parametrize(
    "request_text",
    ["Summarize 300 words for a budget of 40.", "Translate a poem; budget 0.", "x" * 200, ""],
)
async def test_structured_output_is_always_valid(model: LocalModel, request_text: str) -> None:
    decision = await model.structured(
        [SYSTEM, {"role": "user", "content": f"Request: {request_text}\nDecide."}],
        Decision,
        max_tokens=80,
    )
    assert isinstance(decision, Decision)
    assert decision.action in ("decline", "propose")
    assert 0 <= decision.price <= 1000


async def test_stream_yields_tokens_within_the_limit(model: LocalModel) -> None:
    # Exact equality with `chat` is not a sound check: llama.cpp logits depend on how much
    # of the KV cache is reused, so greedy decoding can diverge between two calls.
    messages = [SYSTEM, {"role": "user", "content": "Say hello in five words."}]
    pieces = [piece async for piece in model.stream(messages, max_tokens=24, temperature=0.0)]
    assert len(pieces) > 1
    joined = "".join(pieces)
    assert joined.strip()
    assert len(model._load().tokenize(joined.encode(), add_bos=False)) <= 24 + 2


async def test_concurrent_calls_share_one_model(model: LocalModel) -> None:
    prompts = [[SYSTEM, {"role": "user", "content": f"Say the number {i}."}] for i in range(4)]
    results = await asyncio.gather(*(model.chat(p, max_tokens=8) for p in prompts))
    assert len(results) == 4
    assert all(r.strip() for r in results)


async def test_long_prompt_is_truncated_by_policy(model: LocalModel) -> None:
    long_text = "agents trade services " * 2000  # far beyond 1024 tokens
    text = await model.chat([SYSTEM, {"role": "user", "content": long_text}], max_tokens=8)
    assert isinstance(text, str)
    assert model.last_usage["prompt_tokens"] + 8 <= 1024


async def test_long_prompt_errors_under_the_error_policy() -> None:
    strict = LocalModel.default(n_threads=2, n_ctx=256, overflow="error")
    try:
        with pytest.raises(ContextOverflowError, match="256-token context"):
            await strict.chat([{"role": "user", "content": "word " * 1000}], max_tokens=8)
        # The model still works for a prompt that fits.
        assert await strict.chat([{"role": "user", "content": "Hi"}], max_tokens=4) is not None
    finally:
        strict.close()


def test_missing_model_path(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        LocalModel(tmp_path / "nope.gguf")


@pytest.mark.parametrize("content", [b"", b"not a model at all", b"GGU", json.dumps({}).encode()])
def test_file_that_is_not_gguf(tmp_path: Path, content: bytes) -> None:
    bogus = tmp_path / "model.gguf"
    bogus.write_bytes(content)
    with pytest.raises(ModelError, match="not a GGUF model"):
        LocalModel(bogus)


def test_directory_is_not_a_model(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not a file"):
        check_gguf(tmp_path)


async def test_truncated_gguf_fails_to_load_clearly(tmp_path: Path) -> None:
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(default_model_path().read_bytes()[:4096])  # right magic, cut short
    local = LocalModel(broken)
    try:
        with pytest.raises(ModelError, match="could not load"):
            await local.load()
    finally:
        local.close()


def test_default_model_missing_names_the_setup_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModelNotFoundError, match="make setup"):
        LocalModel.default()


async def test_schema_without_a_grammar_is_a_clear_error(model: LocalModel) -> None:
    class Weird(BaseModel):
        value: int

        @classmethod
        def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
            return {"type": "object", "properties": {"value": {"$ref": "#/nowhere"}}}

    with pytest.raises(ModelOutputError, match="cannot build a grammar for Weird"):
        await model.structured([{"role": "user", "content": "x"}], Weird)


async def test_output_cut_short_is_a_model_output_error(model: LocalModel) -> None:
    with pytest.raises(ModelOutputError, match="not a valid Decision"):
        await model.structured(
            [SYSTEM, {"role": "user", "content": "Decide."}], Decision, max_tokens=3
        )


def test_sha256_is_cached_across_instances(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(llm, "_sha256_cache_file", lambda: tmp_path / "sha.json")
    path = default_model_path()
    first = llm.file_sha256(path)
    cache = json.loads((tmp_path / "sha.json").read_text())
    assert list(cache.values()) == [first]

    def no_hashing(*_: Any) -> Any:
        raise AssertionError("re-hashed a cached file")

    monkeypatch.setattr(llm.hashlib, "sha256", no_hashing)
    assert llm.file_sha256(path) == first


def test_too_small_context_is_rejected() -> None:
    with pytest.raises(ModelError, match="too small"):
        LocalModel.default(n_ctx=16)


# ---------------------------------------------------------------------- system-prefix cache

PRICING = {"role": "system", "content": "You price summarization jobs for a marketplace. " * 8}
SUMMARY = {"role": "system", "content": "You summarize texts in one sentence for a reader. " * 8}


def ask(system: dict[str, str], question: str) -> list[dict[str, str]]:
    return [system, {"role": "user", "content": question}]


def prompt_evals(model: LocalModel) -> list[int]:
    """Sizes of the llama evals from now on (the first of a call is its prompt tail)."""
    llama = model._load()
    sizes: list[int] = []
    original = llama.eval

    def counting(tokens: Any) -> None:
        sizes.append(len(tokens))
        original(tokens)

    llama.eval = counting
    return sizes


@pytest.mark.parametrize("light", [True, False], ids=["state-bytes", "save_state-fallback"])
async def test_evicted_system_prefix_is_restored_exactly(
    light: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    if not light:  # as on a llama-cpp-python without the internals the light path uses
        monkeypatch.setattr(llm_prefix, "light_snapshots", lambda llama: False)
    cached = LocalModel.default(n_threads=2, n_ctx=1024)
    plain = LocalModel.default(n_threads=2, n_ctx=1024, prefix_cache_size=0)
    try:
        await cached.chat(ask(PRICING, "Price a 300-word job."), max_tokens=8, temperature=0)
        await cached.chat(ask(SUMMARY, "Summarize: agents trade."), max_tokens=8, temperature=0)
        assert cached.prefix_cache_stats == PrefixCacheStats(
            misses=2, entries=2, size_bytes=cached.prefix_cache_stats.size_bytes
        )
        evals = prompt_evals(cached)
        third = ask(PRICING, "Price a 900-word job for a law firm.")
        restored = await cached.chat(third, max_tokens=24, temperature=0)
        stats = cached.prefix_cache_stats
        assert (stats.hits, stats.restores, stats.misses) == (1, 1, 2)
        # Only the new user turn was evaluated: the system prefix came from the snapshot.
        assert evals[0] < cached.last_usage["prompt_tokens"] // 2

        # The same calls without the eviction in between, on a model without the cache:
        # llama-cpp's own prefix reuse evaluates the same tail in the same batches, so
        # greedy output must match token for token if the restored state is exact. (A
        # cold whole-prompt evaluation is not a sound reference: batch splits change the
        # logits slightly, see test_stream_yields_tokens_within_the_limit.)
        await plain.chat(ask(PRICING, "Price a 300-word job."), max_tokens=8, temperature=0)
        assert await plain.chat(third, max_tokens=24, temperature=0) == restored
        assert restored.strip()
    finally:
        cached.close()
        plain.close()


async def test_stream_and_structured_use_the_prefix_cache() -> None:
    local = LocalModel.default(n_threads=2, n_ctx=1024)
    try:
        await local.chat(ask(PRICING, "Price a short job."), max_tokens=4)
        await local.chat(ask(SUMMARY, "Summarize: a b c."), max_tokens=4)
        pieces = [p async for p in local.stream(ask(PRICING, "Say hi."), max_tokens=6)]
        assert "".join(pieces).strip()
        assert local.prefix_cache_stats.restores == 1
        decision = await local.structured(ask(SUMMARY, "Decide."), Decision, max_tokens=80)
        assert isinstance(decision, Decision)
        stats = local.prefix_cache_stats
        assert (stats.hits, stats.restores, stats.misses) == (2, 2, 2)
        # A prompt without a system message is not counted and leaves the cache alone.
        await local.chat([{"role": "user", "content": "Hi"}], max_tokens=2)
        assert local.prefix_cache_stats == stats
    finally:
        local.close()


async def test_prefix_cache_is_bounded_lru() -> None:
    local = LocalModel.default(n_threads=2, n_ctx=1024, prefix_cache_size=2)
    systems = [{"role": "system", "content": f"You are agent number {i}."} for i in range(4)]
    try:
        for system in systems:
            await local.chat(ask(system, "Hi"), max_tokens=1)
        stats = local.prefix_cache_stats
        assert (stats.misses, stats.entries, stats.evictions) == (4, 2, 2)
        await local.chat(ask(systems[2], "Hello"), max_tokens=1)  # kept: restored
        await local.chat(ask(systems[0], "Hello"), max_tokens=1)  # evicted: a miss, evicts 3
        await local.chat(ask(systems[3], "Hello"), max_tokens=1)  # so 3 is a miss again
        stats = local.prefix_cache_stats
        assert (stats.hits, stats.restores, stats.misses) == (1, 1, 6)
        assert (stats.entries, stats.evictions) == (2, 4)
        assert stats.size_bytes > 0
    finally:
        local.close()


async def test_prefix_cache_can_be_disabled() -> None:
    local = LocalModel.default(n_threads=2, n_ctx=1024, prefix_cache_size=0)
    try:
        for system in (PRICING, SUMMARY, PRICING):
            assert (await local.chat(ask(system, "Price a job."), max_tokens=4)).strip()
        assert local.prefix_cache_stats == PrefixCacheStats()
    finally:
        local.close()
    with pytest.raises(ModelError, match="prefix_cache_size -1"):
        LocalModel.default(prefix_cache_size=-1)


async def test_failed_restore_drops_the_snapshot(monkeypatch: pytest.MonkeyPatch) -> None:
    import llama_cpp

    local = LocalModel.default(n_threads=2, n_ctx=1024)
    try:
        await local.chat(ask(PRICING, "Price a job."), max_tokens=4)
        await local.chat(ask(SUMMARY, "Summarize: a."), max_tokens=4)
        monkeypatch.setattr(llama_cpp, "llama_state_set_data", lambda *args: 0)
        assert (await local.chat(ask(PRICING, "Price another."), max_tokens=4)).strip()
        stats = local.prefix_cache_stats
        assert (stats.hits, stats.restores, stats.entries) == (1, 0, 1)
        monkeypatch.undo()
        await local.chat(ask(SUMMARY, "Summarize: b."), max_tokens=4)
        await local.chat(ask(PRICING, "Price a third."), max_tokens=4)  # a miss: retaken
        assert local.prefix_cache_stats.misses == 3
    finally:
        local.close()


# ---------------------------------------------------------------------- JSON-schema dicts

OFFER_SCHEMA: dict[str, Any] = {
    "title": "Offer",
    "type": "object",
    "properties": {
        "action": {"enum": ["decline", "propose"]},
        "price": {"type": "integer", "minimum": 0, "maximum": 1000},
    },
    "required": ["action", "price"],
}


async def test_structured_with_a_json_schema_dict(model: LocalModel) -> None:
    offer = await model.structured(
        [SYSTEM, {"role": "user", "content": "Summarize 300 words, budget 40. Decide."}],
        OFFER_SCHEMA,
        max_tokens=60,
    )
    assert isinstance(offer, dict)
    assert offer["action"] in ("decline", "propose")
    assert 0 <= offer["price"] <= 1000
    prices = await model.structured(
        [SYSTEM, {"role": "user", "content": "Three prices?"}],
        {"type": "array", "items": {"type": "integer"}, "maxItems": 3},
        max_tokens=40,
    )
    assert isinstance(prices, list)
    assert len(prices) <= 3
    assert all(isinstance(p, int) for p in prices)


async def test_json_schema_dict_failures_are_clear(model: LocalModel) -> None:
    bad_ref = {"title": "Order", "type": "object", "properties": {"v": {"$ref": "#/nowhere"}}}
    with pytest.raises(ModelOutputError, match="cannot build a grammar for Order's.*nowhere"):
        await model.structured([{"role": "user", "content": "x"}], bad_ref)
    with pytest.raises(ModelOutputError, match="not a valid JSON schema.*frobnicate"):
        await model.structured([{"role": "user", "content": "x"}], {"type": "frobnicate"})
    with pytest.raises(ModelOutputError, match="Offer is not valid JSON.*max_tokens=3"):
        await model.structured(
            [SYSTEM, {"role": "user", "content": "x"}], OFFER_SCHEMA, max_tokens=3
        )
    with pytest.raises(ModelOutputError, match="pydantic model class or a JSON-schema dict"):
        await model.structured([{"role": "user", "content": "x"}], "Decision")  # type: ignore[call-overload]


async def test_output_not_matching_a_schema_dict_is_a_model_output_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    local = LocalModel.default()  # never loaded: the worker's output is substituted
    monkeypatch.setattr(local, "_chat_sync", lambda *args: '{"action": "propose"}')
    try:
        with pytest.raises(
            ModelOutputError, match=r"does not match Offer: \$: 'price' is a required"
        ):
            await local.structured([{"role": "user", "content": "x"}], OFFER_SCHEMA)
    finally:
        local.close()


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ({"action": "propose", "price": 5}, None),
        ({"action": "propose", "price": 5.0}, None),  # JSON has no separate integer type
        ({"action": "propose"}, "$: 'price' is a required property"),
        ({"action": "haggle", "price": 5}, "$.action: 'haggle' is not one of"),
        ({"action": "propose", "price": "5"}, "$.price: '5' is not of type 'integer'"),
        ({"action": "propose", "price": True}, "$.price: True is not of type 'integer'"),
        ({"action": "propose", "price": 1001}, "$.price: 1001 is greater than the maximum"),
        ([1, 2], "$: [1, 2] is not of type 'object'"),
    ],
)
def test_schema_mismatch(value: Any, problem: str | None) -> None:
    found = llm.schema_mismatch(value, OFFER_SCHEMA)
    assert found == problem if problem is None else found is not None and found.startswith(problem)
    nested = {"type": "array", "items": OFFER_SCHEMA}
    assert (llm.schema_mismatch([value], nested) is None) == (problem is None)


async def test_an_invalid_json_schema_dict_is_refused_before_generating(
    model: LocalModel,
) -> None:
    with pytest.raises(ModelOutputError, match=r"Order is not a valid JSON schema: .*minimum"):
        await model.structured(
            [{"role": "user", "content": "x"}],
            {"title": "Order", "type": "object", "properties": {"n": {"minimum": "zero"}}},
        )


async def test_embeddings_are_unit_vectors_that_rank_meaning(model: LocalModel) -> None:
    cats, kittens, stocks = [
        await model.embed(text)
        for text in ("I love my cats", "I adore kittens", "The stock market fell sharply today")
    ]
    assert len(cats) == len(stocks) > 100
    assert abs(sum(v * v for v in cats) - 1.0) < 1e-6

    def cosine(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cosine(cats, kittens) > cosine(cats, stocks)


async def test_concurrent_embeddings_are_batched_and_match_single_ones(
    model: LocalModel,
) -> None:
    texts = [f"ticket {n}: my parcel never arrived" for n in range(20)]
    together = await asyncio.gather(*(model.embed(t) for t in texts))
    alone = [await model.embed(t) for t in texts[:3]]
    for a, b in zip(together[:3], alone, strict=True):
        assert max(abs(x - y) for x, y in zip(a, b, strict=True)) < 1e-3
    assert len({tuple(round(v, 4) for v in vector) for vector in together}) == len(texts)


async def test_embedding_bad_input_is_a_clear_error_and_long_text_is_cut(
    model: LocalModel,
) -> None:
    with pytest.raises(ModelError, match="empty text"):
        await model.embed("   ")
    assert len(await model.embed("word " * 3000)) == len(await model.embed("word"))
