"""``Message``: the base of every payload that travels in an envelope.

Messages are pydantic v2 models, frozen and with ``extra="forbid"``, so a payload with
an unknown field is rejected rather than silently dropped. Each message type has a
schema digest (sha256 of its name and JSON schema) that the envelope signs, so a
receiver knows exactly which shape the sender meant.
"""

from __future__ import annotations

import hashlib
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict

from agentmesh.canonical import canonical_json


class Message(BaseModel):
    """Base class of protocol messages."""

    model_config = ConfigDict(extra="forbid", frozen=True)

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
