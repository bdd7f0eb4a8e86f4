"""Canonical JSON: the one text (and hash) every agentmesh value signs or commits to.

Compact separators, sorted keys and UTF-8 as is (``ensure_ascii=False``), so the same
value always has the same text on every machine. Card signatures, message schema
digests, task inputs and results, and the escrow terms hash all go through here.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

__all__ = ["canonical_bytes", "canonical_json", "sha256_hex"]


def canonical_json(value: Any) -> str:
    """Compact, key-sorted JSON text of ``value``."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def canonical_bytes(value: Any) -> bytes:
    """``canonical_json(value)`` as UTF-8 bytes (what is hashed or signed)."""
    return canonical_json(value).encode()


def sha256_hex(text: str) -> str:
    """Hex sha256 of ``text``'s UTF-8 bytes."""
    return hashlib.sha256(text.encode()).hexdigest()
