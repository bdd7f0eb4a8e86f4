"""How a purchase ended: ``TaskOutcome`` and ``TaskFailed``."""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from typing import Any

from pydantic import TypeAdapter

from agentmesh.errors import AgentMeshError
from agentmesh.protocols.negotiation import Phase


class TaskFailed(AgentMeshError):
    """A purchase ended without a settled result; ``outcome`` says how far it got."""

    def __init__(self, outcome: TaskOutcome) -> None:
        super().__init__(f"task {outcome.conversation[:12]} ended {outcome.phase}: {outcome.error}")
        self.outcome = outcome


@dataclass(frozen=True)
class TaskOutcome:
    """Where a purchase ended."""

    conversation: str
    phase: str
    service: str
    provider: str = ""
    price: int = 0
    job_id: int | None = None
    result: Any = None
    error: str = ""
    txs: dict[str, str] = field(default_factory=dict)

    @property
    def settled(self) -> bool:
        return self.phase == Phase.SETTLED

    @classmethod
    def from_state(
        cls, conversation: str, values: dict[str, Any], result_type: Any = None
    ) -> TaskOutcome:
        """The outcome in a task's final state; ``result`` parsed from its JSON, and
        built as ``result_type`` (any type pydantic validates: a model, a dataclass,
        ``str``, ``list[int]``...) when one is given and the task settled."""
        result = values.get("result")
        with contextlib.suppress(TypeError, ValueError):
            result = json.loads(result) if isinstance(result, str) else result
        if result_type is not None and result is not None and values.get("phase") == Phase.SETTLED:
            # The delivery check validated it against result_type before paying.
            result = TypeAdapter(result_type).validate_json(json.dumps(result), strict=True)
        return cls(
            conversation=conversation,
            phase=str(values.get("phase", Phase.UNKNOWN)),
            service=values.get("service", ""),
            provider=values.get("winner", ""),
            price=values.get("price", 0),
            job_id=values.get("job_id"),
            result=result,
            error=values.get("error", ""),
            txs=dict(values.get("txs") or {}),
        )
