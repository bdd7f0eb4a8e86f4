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

from agentmesh import llm
from agentmesh.errors import ContextOverflowError, ModelError, ModelNotFoundError, ModelOutputError
from agentmesh.llm import LocalModel, check_gguf, default_model_path

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
