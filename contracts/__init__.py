"""Compiled agentmesh contracts, shipped as package data.

``load_artifact("TaskEscrow")`` returns the ABI and bytecode committed in ``build/``;
the sources live in ``src/`` and ``make contracts`` rebuilds them.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from typing import Any

CONTRACT_NAMES = (
    "MeshUSD",
    "TaskEscrow",
    "AgentRegistry",
    "AgentWallet",
    "DevToken",
    "TwapOracle",
    "PaymentChannel",
    "Staking",
    "Consensus",
    "Jury",
)


@dataclass(frozen=True, slots=True)
class Artifact:
    """A compiled contract: ABI, creation bytecode and the sha256 of its artifact file."""

    name: str
    abi: list[dict[str, Any]]
    bytecode: str
    deployed_bytecode: str
    sha256: str


@cache
def load_artifact(name: str) -> Artifact:
    """Load ``build/<name>.json``; raises ``KeyError`` naming the contract if unknown."""
    if name not in CONTRACT_NAMES:
        raise KeyError(f"unknown contract {name!r}; known: {', '.join(CONTRACT_NAMES)}")
    raw = resources.files(__name__).joinpath("build", f"{name}.json").read_bytes()
    data = json.loads(raw)
    return Artifact(
        name=name,
        abi=data["abi"],
        bytecode=data["bytecode"],
        deployed_bytecode=data["deployedBytecode"],
        sha256="0x" + hashlib.sha256(raw).hexdigest(),
    )


def all_artifacts() -> list[Artifact]:
    """Every shipped contract artifact."""
    return [load_artifact(name) for name in CONTRACT_NAMES]
