"""An agent's own tables: its tasks and the approvals waiting for a person.

Lives in ``<home>/agents/<name>/agent.db`` (SQLite, WAL) next to the LangGraph
checkpoints. ``agentmesh approve``/``reject`` write decisions here while the agent
runs; the agent picks them up and resumes the paused graph, so an approval given while
the agent is down is applied when it starts.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlmodel import Field, Session, SQLModel, select

from agentmesh.errors import AgentMeshValueError
from agentmesh.protocols.negotiation import Phase, TaskStatus
from agentmesh.store import sqlite_engine


class ApprovalStatus(StrEnum):
    """Where a person's approval of a spend stands."""

    PENDING = "pending"
    APPROVED = "approved"
    REJECTED = "rejected"
    EXPIRED = "expired"  # the offer lapsed before anyone decided


MAX_TRACE = 64  # phases kept in a task's trace


def _now_ms() -> int:
    return int(time.time() * 1000)


class TaskRow(SQLModel, table=True):
    """One conversation this agent takes part in."""

    __tablename__ = "tasks"

    conversation: str = Field(primary_key=True)  # hex
    role: str  # "provider" | "requester"
    service: str
    peer: str = ""  # the other party (the winner, for a requester)
    state: str = Phase.STARTED  # last phase the graph reported
    status: str = TaskStatus.ACTIVE
    price: int = 0
    job_id: int | None = None
    detail: str = ""
    txs: str = "{}"  # JSON: step name -> transaction hash, this agent's own
    # JSON: [[phase, epoch ms], ...] each phase the task entered, in order: where its
    # time went (`agentmesh task show`).
    trace: str = "[]"
    created_ms: int = Field(default_factory=_now_ms)
    updated_ms: int = Field(default_factory=_now_ms)


class ApprovalRow(SQLModel, table=True):
    """A spend that waits for a person (LangGraph ``interrupt``)."""

    __tablename__ = "approvals"

    id: str = Field(primary_key=True)
    conversation: str = Field(index=True)
    amount: int
    description: str
    status: str = ApprovalStatus.PENDING
    applied: bool = False  # the agent has resumed the graph with the decision
    created_ms: int = Field(default_factory=_now_ms)
    decided_ms: int | None = None


class EvidenceRow(SQLModel, table=True):
    """What this agent can show a jury about an escrow job: the client keeps the agreed
    terms and the input, the provider the result it delivered (their hashes are on
    chain)."""

    __tablename__ = "evidence"

    job_id: int = Field(primary_key=True)
    escrow: str
    terms: str = ""
    input: str = ""
    result: str = ""
    updated_ms: int = Field(default_factory=_now_ms)


# What update_task may set (the column names it writes into its statement).
_UPDATABLE = frozenset(TaskRow.model_fields) - {"conversation", "created_ms"}


def _plain(value: Any) -> Any:
    """A value as SQLite stores it (enums by their value)."""
    return value.value if isinstance(value, Enum) else value


class AgentRecords:
    """Tasks and approvals of one agent."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        """``readonly``: open existing records to read them only (the web console): no
        table or column is added and every write fails."""
        self.path = path
        if readonly:
            self.engine = sqlite_engine(path, readonly=True)
            self._raw = self.engine.raw_connection()
            return
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.engine = sqlite_engine(path)  # WAL, like the mesh store
        SQLModel.metadata.create_all(
            self.engine,
            tables=[
                TaskRow.__table__,  # type: ignore[attr-defined]
                ApprovalRow.__table__,  # type: ignore[attr-defined]
                EvidenceRow.__table__,  # type: ignore[attr-defined]
            ],
        )
        self._add_missing_columns()
        # The hot path (update_task, count_attempt) writes through one DBAPI connection.
        self._raw = self.engine.raw_connection()
        self._raw.cursor().execute(
            "CREATE TABLE IF NOT EXISTS attempts (conversation TEXT NOT NULL, "
            "step TEXT NOT NULL, count INTEGER NOT NULL, PRIMARY KEY (conversation, step))"
        )
        self._raw.commit()

    def _add_missing_columns(self) -> None:
        """Columns added since a home's database was created (``create_all`` adds tables,
        never columns): added with their defaults, so old homes keep working."""
        added = {"trace": "TEXT NOT NULL DEFAULT '[]'"}
        with self.engine.begin() as connection:
            have = {row[1] for row in connection.execute(text("PRAGMA table_info(tasks)"))}
            for column, kind in added.items():
                if column not in have:
                    connection.execute(text(f"ALTER TABLE tasks ADD COLUMN {column} {kind}"))

    def close(self) -> None:
        self._raw.close()
        self.engine.dispose()

    # ------------------------------------------------------------------ evidence

    def keep_evidence(self, job_id: int, escrow: str, **fields: str) -> None:
        """Record (or add to) what this agent can show a jury about ``job_id``."""
        unknown = set(fields) - {"terms", "input", "result"}
        if unknown:
            raise AgentMeshValueError(f"unknown evidence fields: {', '.join(sorted(unknown))}")
        with Session(self.engine) as session:
            row = session.get(EvidenceRow, job_id) or EvidenceRow(job_id=job_id, escrow=escrow)
            for name, value in fields.items():
                setattr(row, name, value)
            row.updated_ms = _now_ms()
            session.add(row)
            session.commit()

    def evidence(self, job_id: int) -> EvidenceRow | None:
        with Session(self.engine) as session:
            return session.get(EvidenceRow, job_id)

    # ------------------------------------------------------------------ tasks

    def start_task(self, conversation: str, role: str, service: str, peer: str = "") -> None:
        with Session(self.engine) as session:
            if session.get(TaskRow, conversation) is None:
                now = _now_ms()
                trace = json.dumps([[Phase.STARTED.value, now]])
                session.add(
                    TaskRow(
                        conversation=conversation,
                        role=role,
                        service=service,
                        peer=peer,
                        trace=trace,
                        created_ms=now,
                        updated_ms=now,
                    )
                )
                session.commit()

    def update_task(self, conversation: str, **changes: Any) -> None:
        """Set ``changes`` (TaskRow fields) on a task; a new ``state`` joins its trace.

        Plain SQL on one connection, not the ORM: it runs on every phase of every
        task, on the event loop (measured through the ORM: 0.74 ms a call under load,
        ~24 calls per purchase).
        """
        unknown = set(changes) - _UPDATABLE
        if unknown:
            raise AgentMeshValueError(f"not a task field: {', '.join(sorted(unknown))}")
        now = _now_ms()
        values = {key: _plain(value) for key, value in changes.items()}
        values["updated_ms"] = now
        cursor = self._raw.cursor()
        try:
            found = cursor.execute(
                "SELECT trace FROM tasks WHERE conversation = ?", (conversation,)
            ).fetchone()
            if found is None:
                return
            phase = changes.get("state")
            if phase is not None:
                trace = json.loads(found[0] or "[]")
                if not trace or trace[-1][0] != str(phase):
                    # Bounded: a task that loops (refused deliveries) keeps its start
                    # and its latest steps.
                    trace = [*trace[:1], *trace[1:][-(MAX_TRACE - 2) :], [str(phase), now]]
                    values["trace"] = json.dumps(trace)
            columns = sorted(values)
            assignments = ", ".join(f"{column} = ?" for column in columns)
            cursor.execute(
                f"UPDATE tasks SET {assignments} WHERE conversation = ?",
                (*(values[column] for column in columns), conversation),
            )
            self._raw.commit()
        finally:
            cursor.close()

    def count_attempt(self, conversation: str, step: str) -> int:
        """Count one more attempt at ``step`` of a task, durably and before the step
        has any effect; returns how many attempts came before. 0 means no earlier run
        of the step (one cut short by a crash included) can have left an effect to
        look for."""
        cursor = self._raw.cursor()
        try:
            found = cursor.execute(
                "SELECT count FROM attempts WHERE conversation = ? AND step = ?",
                (conversation, step),
            ).fetchone()
            before = int(found[0]) if found else 0
            cursor.execute(
                "INSERT OR REPLACE INTO attempts (conversation, step, count) VALUES (?, ?, ?)",
                (conversation, step, before + 1),
            )
            self._raw.commit()
            return before
        finally:
            cursor.close()

    def task(self, conversation: str) -> TaskRow | None:
        with Session(self.engine) as session:
            return session.get(TaskRow, conversation)

    def tasks(self, status: str | None = None) -> list[TaskRow]:
        with Session(self.engine) as session:
            query = select(TaskRow).order_by(TaskRow.created_ms)  # type: ignore[arg-type]
            if status is not None:
                query = query.where(TaskRow.status == status)
            return list(session.exec(query))

    # ------------------------------------------------------------------ approvals

    def request_approval(self, conversation: str, amount: int, description: str) -> ApprovalRow:
        """The pending approval of ``conversation`` (created once, kept across restarts)."""
        with Session(self.engine) as session:
            existing = session.exec(
                select(ApprovalRow).where(
                    ApprovalRow.conversation == conversation,
                    ApprovalRow.applied == False,  # noqa: E712 - SQL expression
                )
            ).first()
            if existing is not None:
                return existing
            row = ApprovalRow(
                id=secrets.token_hex(5),
                conversation=conversation,
                amount=amount,
                description=description,
            )
            session.add(row)
            session.commit()
            session.refresh(row)
            return row

    def decide(self, approval_id: str, approved: bool) -> ApprovalRow:
        """Record a person's decision; ``AgentMeshValueError`` if the id is not pending."""
        with Session(self.engine) as session:
            row = session.get(ApprovalRow, approval_id)
            if row is None:
                raise AgentMeshValueError(f"unknown approval id {approval_id!r}")
            if row.status != ApprovalStatus.PENDING:
                raise AgentMeshValueError(f"approval {approval_id} is already {row.status}")
            row.status = ApprovalStatus.APPROVED if approved else ApprovalStatus.REJECTED
            row.decided_ms = _now_ms()
            session.add(row)
            session.commit()
            session.refresh(row)
            return row

    def expire_approvals(self, conversation: str) -> None:
        """The task stopped waiting (its offer lapsed): a later decision is refused."""
        with Session(self.engine) as session:
            for row in session.exec(
                select(ApprovalRow).where(
                    ApprovalRow.conversation == conversation,
                    ApprovalRow.status == ApprovalStatus.PENDING,
                )
            ):
                row.status = ApprovalStatus.EXPIRED
                row.applied = True
                row.decided_ms = _now_ms()
                session.add(row)
            session.commit()

    def approvals(self, status: str | None = None) -> list[ApprovalRow]:
        with Session(self.engine) as session:
            query = select(ApprovalRow).order_by(ApprovalRow.created_ms)  # type: ignore[arg-type]
            if status is not None:
                query = query.where(ApprovalRow.status == status)
            return list(session.exec(query))

    def decided_unapplied(self) -> list[ApprovalRow]:
        """Decisions a person made that the agent has not acted on yet."""
        with Session(self.engine) as session:
            query = select(ApprovalRow).where(
                ApprovalRow.status != ApprovalStatus.PENDING,
                ApprovalRow.applied == False,  # noqa: E712 - SQL expression
            )
            return list(session.exec(query))

    def mark_applied(self, approval_id: str) -> None:
        with Session(self.engine) as session:
            row = session.get(ApprovalRow, approval_id)
            if row is not None:
                row.applied = True
                session.add(row)
                session.commit()


def each_agent(home: Path, *, readonly: bool = False) -> Iterator[tuple[str, AgentRecords]]:
    """(name, records) of each agent under ``home``, by name; each closed after its turn
    (``readonly``: see :class:`AgentRecords`)."""
    for path in sorted((home / "agents").glob("*/agent.db")):
        records = AgentRecords(path, readonly=readonly)
        try:
            yield path.parent.name, records
        finally:
            records.close()


def find_approval(home: Path, approval_id: str) -> tuple[AgentRecords, ApprovalRow]:
    """The agent (records) holding pending approval ``approval_id`` under ``home``."""
    pending: list[str] = []
    for path in sorted((home / "agents").glob("*/agent.db")):
        records = AgentRecords(path)
        try:
            rows = records.approvals()
        except BaseException:
            records.close()
            raise
        for row in rows:
            if row.id == approval_id:
                return records, row
            if row.status == ApprovalStatus.PENDING:
                pending.append(f"{row.id} ({path.parent.name})")
        records.close()
    known = ", ".join(pending) or "none"
    raise AgentMeshValueError(f"unknown approval id {approval_id!r}; pending approvals: {known}")
