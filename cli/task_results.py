"""What a task delivered, read from its agent's LangGraph checkpoints and shown to a
person: shared by `task show`, `agentmesh demo` and the web console."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def checkpoint_values(path: Path, thread: str, *, readonly: bool = False) -> dict[str, Any]:
    """The latest LangGraph state of ``thread`` (empty if none)."""
    if not path.exists():
        return {}
    from agentmesh.agents.checkpoints import read_checkpoints

    with read_checkpoints(path, readonly=readonly) as saver:
        found = saver.get_tuple({"configurable": {"thread_id": thread}})
    if found is None:
        return {}
    return dict(found.checkpoint.get("channel_values", {}))


def result_text(result: Any, limit: int | None = None) -> str:
    """A delivered result for a person: a JSON string as its text, other JSON indented;
    cut to ``limit`` characters (with an ellipsis) when given."""
    value = result
    if isinstance(result, str):
        try:
            value = json.loads(result)
        except ValueError:
            value = result
    text = value if isinstance(value, str) else json.dumps(value, indent=1)
    text = text.strip()
    if limit is not None and len(text) > limit:
        return text[: limit - 1].rstrip() + "…"
    return text
