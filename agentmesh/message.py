"""``Message``: the base of every payload that travels in an envelope.

Messages are pydantic v2 models, frozen and with ``extra="forbid"``, so a payload with
an unknown field is rejected rather than silently dropped. Each message type has a
schema digest (sha256 of its name and JSON schema) that the envelope signs, so a
receiver knows exactly which shape the sender meant.

Parsing is strict (``strict=True``): a number is a JSON number of the declared kind, never
a string (``"100000"``), a float for an int (``1e5``) or a boolean (``true``). Integer
fields use the bounded types below, so a value that storage cannot hold is refused when
the message is decoded, before any handler or task sees it.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, Field, Strict

from agentmesh.canonical import canonical_json

# The largest integer a message field may carry. What a message says ends up stored:
# in LangGraph checkpoints (msgpack: at most 64 bits; a larger int makes the checkpoint
# write fail, which left a task stalled and retried forever) and in SQLite rows (an
# INTEGER column is a signed 64-bit value). 2**63 - 1 fits both, and is far below
# uint256, so every amount and job id that goes on chain is a valid uint256 too.
# (In base units of a 6-decimal token it is ~9.2e12 whole tokens.)
MAX_WIRE_INT = 2**63 - 1

UInt = Annotated[int, Strict(), Field(ge=0, le=MAX_WIRE_INT)]
"""A non-negative message integer (ids, times, counts) that storage can hold."""
Amount = Annotated[int, Strict(), Field(gt=0, le=MAX_WIRE_INT)]
"""A positive amount (token base units: budgets, prices) that storage can hold."""


class Message(BaseModel):
    """Base class of protocol messages (frozen, ``extra="forbid"``, strict types)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    _digests: ClassVar[dict[type[Any], bytes]] = {}

    @classmethod
    def schema_digest(cls) -> bytes:
        """32-byte sha256 over the type's name and canonical JSON schema (cached)."""
        digest = Message._digests.get(cls)
        if digest is None:
            schema = canonical_json(cls.model_json_schema())
            digest = hashlib.sha256(f"{cls.__name__}:{schema}".encode()).digest()
            Message._digests[cls] = digest
        return digest

    def encode(self) -> bytes:
        """The payload bytes that are signed and sent (compact JSON)."""
        return self.model_dump_json().encode()

    @classmethod
    def decode(cls, payload: bytes) -> Self:
        """Validate ``payload`` against this type; raises pydantic ``ValidationError``."""
        return cls.model_validate_json(payload)
