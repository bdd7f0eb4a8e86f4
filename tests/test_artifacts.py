"""The committed contract artifacts are exactly what the pinned compiler produces."""

from __future__ import annotations

import pytest

from agentmesh.contracts import CONTRACT_NAMES
from agentmesh.contracts.compile import BUILD_DIR, compile_sources, render


@pytest.mark.slow
def test_committed_artifacts_match_a_rebuild() -> None:
    rebuilt = compile_sources()
    assert sorted(rebuilt) == sorted(CONTRACT_NAMES)
    committed = sorted(p.stem for p in BUILD_DIR.glob("*.json"))
    assert committed == sorted(rebuilt), "stale or missing artifacts: run `make contracts`"
    for name, artifact in rebuilt.items():
        on_disk = (BUILD_DIR / f"{name}.json").read_text()
        assert on_disk == render(artifact), f"{name}.json differs from a rebuild: `make contracts`"
