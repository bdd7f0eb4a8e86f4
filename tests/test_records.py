"""``AgentRecords``' hot path: the phase trace of a task and the attempt counter a
money step uses to know whether an earlier run may have left an effect (real SQLite)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentmesh.agents.records import MAX_TRACE, AgentRecords
from agentmesh.errors import AgentMeshValueError
from agentmesh.protocols.negotiation import Phase, TaskStatus


@pytest.fixture
def records(tmp_path: Path) -> AgentRecords:
    opened = AgentRecords(tmp_path / "agent.db")
    yield opened  # type: ignore[misc]
    opened.close()


def phases(records: AgentRecords, conversation: str) -> list[str]:
    row = records.task(conversation)
    assert row is not None
    return [phase for phase, _ in json.loads(row.trace)]


def test_update_task_sets_fields_and_traces_each_new_phase(records: AgentRecords) -> None:
    records.start_task("r:1", "requester", "echo")
    records.update_task("r:1", state=Phase.SOLICITED, price=7)
    records.update_task("r:1", state=Phase.SOLICITED, detail="again")  # same phase: once
    records.update_task("r:1", state=Phase.CHOSEN, status=TaskStatus.DONE, job_id=3)
    row = records.task("r:1")
    assert row is not None
    assert (row.state, row.status, row.price, row.job_id, row.detail) == (
        "chosen",
        "done",
        7,
        3,
        "again",
    )
    assert phases(records, "r:1") == ["started", "solicited", "chosen"]
    times = [ms for _, ms in json.loads(row.trace)]
    assert times == sorted(times) and row.updated_ms == times[-1]


def test_the_trace_is_bounded_and_keeps_the_start(records: AgentRecords) -> None:
    records.start_task("p:1", "provider", "echo")
    for n in range(MAX_TRACE + 20):
        records.update_task("p:1", state=f"step{n}")
    trace = phases(records, "p:1")
    assert len(trace) == MAX_TRACE
    assert trace[0] == "started"
    assert trace[-1] == f"step{MAX_TRACE + 19}"
    assert trace[1] == f"step{20 + 1}"  # the oldest steps after the start went first


def test_update_task_refuses_unknown_fields_and_ignores_unknown_tasks(
    records: AgentRecords,
) -> None:
    records.start_task("r:1", "requester", "echo")
    with pytest.raises(AgentMeshValueError, match="not a task field: created_ms, nope"):
        records.update_task("r:1", nope=1, created_ms=5)
    records.update_task("r:404", state="x")  # nothing to update, nothing created
    assert records.task("r:404") is None


def test_count_attempt_counts_per_step_and_survives_a_restart(tmp_path: Path) -> None:
    first = AgentRecords(tmp_path / "agent.db")
    assert first.count_attempt("r:1", "fund") == 0
    assert first.count_attempt("r:1", "fund") == 1
    assert first.count_attempt("r:1", "other") == 0
    assert first.count_attempt("r:2", "fund") == 0
    first.close()
    again = AgentRecords(tmp_path / "agent.db")  # a restarted agent
    try:
        assert again.count_attempt("r:1", "fund") == 2
    finally:
        again.close()
