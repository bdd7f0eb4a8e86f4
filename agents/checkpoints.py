"""Where task graphs keep their checkpoints: SQLite, with a serializer that knows the
negotiation's typed messages.

A paused task is resumed with the typed message that woke it (``Award``, ``Funded``,
``Timeout``, ``ApprovalDecision``...); LangGraph writes that resume value into the
checkpoint, and its msgpack serializer only rebuilds classes it is told about.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from langgraph.checkpoint.serde.jsonplus import JsonPlusSerializer
from langgraph.checkpoint.sqlite import SqliteSaver
from langgraph.checkpoint.sqlite.aio import AsyncSqliteSaver

from agentmesh.protocols.negotiation import NEGOTIATION, ApprovalDecision, Phase, Timeout


def checkpoint_serde() -> JsonPlusSerializer:
    """The serializer of agent checkpoints: the negotiation's types are allowed back."""
    types: tuple[type[Any], ...] = (*NEGOTIATION.messages, Timeout, ApprovalDecision, Phase)
    return JsonPlusSerializer(allowed_msgpack_modules=[(t.__module__, t.__name__) for t in types])


@contextlib.asynccontextmanager
async def open_checkpoints(path: Path) -> AsyncIterator[AsyncSqliteSaver]:
    """The agent's checkpoint saver on ``path`` (created if missing)."""
    import aiosqlite

    async with aiosqlite.connect(str(path)) as conn:
        # WAL (the saver sets it) with NORMAL sync, like the agent's other databases: a
        # killed process loses no committed step; only an OS crash can lose the last
        # ones, which every step is written to survive (its effects are looked up on
        # chain when it runs again). FULL would fsync every graph step.
        await conn.execute("PRAGMA synchronous=NORMAL")
        yield AsyncSqliteSaver(conn, serde=checkpoint_serde())


@contextlib.contextmanager
def read_checkpoints(path: Path, *, readonly: bool = False) -> Iterator[SqliteSaver]:
    """A synchronous saver on ``path`` for readers such as the CLI (``readonly``: the
    web console; SQLite refuses any write)."""
    import sqlite3

    target = f"file:{path}?mode=ro" if readonly else str(path)
    conn = sqlite3.connect(target, uri=readonly, check_same_thread=False)
    try:
        yield SqliteSaver(conn, serde=checkpoint_serde())
    finally:
        conn.close()
