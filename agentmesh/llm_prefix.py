"""Snapshots of a llama context keyed by the system prompt at the head of a chat.

llama-cpp-python reuses the KV cache only for the prefix a prompt shares with the
previous one, so an agent alternating two system prompts (pricing decisions, a
service's own prompt) evaluates each system prefix again on every switch. ``PrefixCache``
keeps an LRU of context snapshots, one per system prefix, taken when a prefix is first
seen; before a call whose prefix is not the one in the context it restores the
snapshot, and llama-cpp's prefix matching then skips the prefix.
"""

from __future__ import annotations

import contextlib
import ctypes
import itertools
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

Message = dict[str, str]
PrefixKey = tuple[tuple[tuple[str, str], ...], ...]


@dataclass(frozen=True, slots=True)
class PrefixCacheStats:
    """``LocalModel.prefix_cache_stats``. hits: calls whose system prefix had a snapshot;
    restores: snapshots loaded because the context held another prefix; misses: calls
    whose system prefix had none (one is taken after the call); evictions: snapshots
    dropped to stay within ``prefix_cache_size``; entries, size_bytes: snapshots held.
    Calls without a leading system message are not counted."""

    hits: int = 0
    misses: int = 0
    restores: int = 0
    evictions: int = 0
    entries: int = 0
    size_bytes: int = 0


@dataclass(frozen=True, slots=True)
class _Snapshot:
    state: Any  # ctypes buffer of llama_state bytes, or a LlamaState (fallback)
    n_state: int  # bytes of llama state in ``state``
    input_ids: Any  # numpy copy of input_ids[:n_tokens] (light path only)
    size_bytes: int


def prefix_key(messages: Sequence[Message]) -> PrefixKey | None:
    """The system message(s) at the head of ``messages``; None when there is none."""
    head = itertools.takewhile(lambda m: m.get("role") == "system", messages)
    return tuple(tuple(sorted(m.items())) for m in head) or None


def light_snapshots(llama: Any) -> bool:
    """Whether ``llama`` has what the light snapshot relies on.

    ``Llama.save_state`` also copies ``scores`` (n_batch x n_vocab floats, ~100 MB for this
    vocabulary, unused without logits_all) and ``load_state`` scans it: ~250 + ~340 ms
    here, against ~1 ms each for the llama_state bytes plus ``input_ids``. The light path
    sets ``input_ids``, ``n_tokens`` and ``_requires_eval`` as ``load_state`` does in
    llama-cpp-python 0.3.x; a version lacking them gets the slow public pair instead.
    """
    import llama_cpp

    functions = ("llama_state_get_size", "llama_state_get_data", "llama_state_set_data")
    return (
        all(hasattr(llama_cpp, f) for f in functions)
        and hasattr(getattr(llama, "_ctx", None), "ctx")
        and all(hasattr(llama, a) for a in ("input_ids", "n_tokens", "_requires_eval"))
    )


class PrefixCache:
    """LRU of context snapshots keyed by system prefix; used on the worker thread only.

    Correctness never depends on this bookkeeping: after a restore llama-cpp compares the
    prompt's tokens with the restored ``input_ids`` and evaluates whatever differs, so a
    stale ``_live`` only costs a needless or a missed restore.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._entries: OrderedDict[PrefixKey, _Snapshot] = OrderedDict()
        self._live: PrefixKey | None = None  # the system prefix at the head of the context
        self._light: bool | None = None
        self._counts = {"hits": 0, "misses": 0, "restores": 0, "evictions": 0}

    def stats(self) -> PrefixCacheStats:
        sizes = [e.size_bytes for e in list(self._entries.values())]
        return PrefixCacheStats(**self._counts, entries=len(sizes), size_bytes=sum(sizes))

    def clear(self) -> None:
        self._entries.clear()
        self._live = self._light = None

    @contextlib.contextmanager
    def around(self, llama: Any, messages: Sequence[Message]) -> Iterator[None]:
        """Restore the prefix's snapshot before a call; take one after it if it has none."""
        key = prefix_key(messages) if self.capacity else None
        if key is None:
            self._live = None
            yield
            return
        if self._light is None:
            self._light = light_snapshots(llama)
        snapshot = self._entries.get(key)
        if snapshot is None:
            self._counts["misses"] += 1
        else:
            self._counts["hits"] += 1
            self._entries.move_to_end(key)
            if key != self._live:
                self._restore(llama, key, snapshot)
        self._live = key
        try:
            yield
        except BaseException:
            self._live = None  # the context holds whatever the failed call left there
            raise
        if snapshot is None:
            self._remember(llama, key)

    def _restore(self, llama: Any, key: PrefixKey, snapshot: _Snapshot) -> None:
        import llama_cpp

        try:
            if not self._light:
                llama.load_state(snapshot.state)
            elif (
                llama_cpp.llama_state_set_data(llama._ctx.ctx, snapshot.state, snapshot.n_state)
                != snapshot.n_state
            ):
                raise RuntimeError("llama_state_set_data failed")
            else:
                n_tokens = len(snapshot.input_ids)
                llama.input_ids[:n_tokens] = snapshot.input_ids
                llama.n_tokens = n_tokens
                llama._requires_eval = True  # restored logits are not sampled from
        except RuntimeError:
            # A half-written KV cache: drop the snapshot, evaluate the next call afresh.
            del self._entries[key]
            llama.reset()
            return
        self._counts["restores"] += 1

    def _remember(self, llama: Any, key: PrefixKey) -> None:
        if self._light:
            import llama_cpp

            size = int(llama_cpp.llama_state_get_size(llama._ctx.ctx))
            buffer = (ctypes.c_uint8 * size)()
            written = int(llama_cpp.llama_state_get_data(llama._ctx.ctx, buffer, size))
            if not 0 < written <= size:
                return  # no snapshot beats a broken one
            ids = llama.input_ids[: llama.n_tokens].copy()
            snapshot = _Snapshot(buffer, written, ids, size + ids.nbytes)
        else:
            state = llama.save_state()
            size = int(state.llama_state_size) + state.scores.nbytes + state.input_ids.nbytes
            snapshot = _Snapshot(state, int(state.llama_state_size), None, size)
        self._entries[key] = snapshot
        while len(self._entries) > self.capacity:
            self._entries.popitem(last=False)
            self._counts["evictions"] += 1
