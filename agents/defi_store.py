"""A DeFi agent's intents and fills, in ``<home>/agents/<name>/defi.db`` (SQLite, WAL).

One row per intent (its signed body, where it stands, when it is next due) and one row
per step of an intent (a DCA period, a trigger's trade, a rebalance trade). A step row
is written *before* its transaction is sent (``pending``, with the block to search
from) and completed after: an agent killed in between finds the pending row on restart
and reconciles it from the chain (the wallet's ``Swapped`` events) instead of trading
again. ``(intent, step)`` is the primary key, so no step can be recorded twice.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sqlmodel import Field, Session, SQLModel, select

from agentmesh.protocols.defi import FINAL_PHASES, FillView, IntentPhase, IntentState
from agentmesh.store import sqlite_engine


def _now_ms() -> int:
    return int(time.time() * 1000)


class IntentRow(SQLModel, table=True):
    """One intent the owner gave this agent."""

    __tablename__ = "intents"

    id: str = Field(primary_key=True)  # the EIP-712 digest, 0x-hex
    kind: str
    body: str  # the intent's JSON, as signed
    signature: str
    owner: str
    wallet: str
    phase: str = IntentPhase.ACTIVE
    reason: str = ""
    step: int = 0  # the next step to take
    next_due: int = 0  # chain time the next step is due (0: now)
    created_ms: int = Field(default_factory=_now_ms)
    updated_ms: int = Field(default_factory=_now_ms)


class FillRow(SQLModel, table=True):
    """One step of an intent: pending while its transaction may be in flight."""

    __tablename__ = "fills"

    intent_id: str = Field(primary_key=True)
    step: int = Field(primary_key=True)
    status: str = "pending"  # pending | filled | refused | skipped
    from_block: int = 0  # where a reconcile searches the wallet's Swapped events
    token_in: str = ""  # what the step sells and buys (set when it is sent)
    token_out: str = ""
    tx: str = ""
    amount_in: str = "0"
    amount_out: str = "0"
    twap_out: str = "0"
    gas: int = 0
    at: int = 0  # chain time of the fill (or of the refusal)
    reason: str = ""


class DefiStore:
    """The intents and fills of one DeFi agent."""

    TABLES: tuple[type[SQLModel], ...] = (IntentRow, FillRow)

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        """``readonly``: read an existing store only (no table is created)."""
        if readonly:
            self.engine = sqlite_engine(path, readonly=True)
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = sqlite_engine(path)
        SQLModel.metadata.create_all(
            self.engine,
            tables=[t.__table__ for t in self.TABLES],  # type: ignore[attr-defined]
        )

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as session:
            yield session

    def close(self) -> None:
        self.engine.dispose()

    # ------------------------------------------------------------------ intents

    def add_intent(self, row: IntentRow) -> bool:
        """Store a new intent; False (and nothing written) when its id is known."""
        with self._session() as session:
            if session.get(IntentRow, row.id) is not None:
                return False
            session.add(row)
            session.commit()
            return True

    def intent(self, intent_id: str) -> IntentRow | None:
        with self._session() as session:
            return session.get(IntentRow, intent_id)

    def intents(self, *, live_only: bool = False) -> list[IntentRow]:
        with self._session() as session:
            rows = list(session.exec(select(IntentRow).order_by(IntentRow.created_ms)))  # type: ignore[arg-type]
        if live_only:
            rows = [r for r in rows if r.phase not in FINAL_PHASES]
        return rows

    def update_intent(self, intent_id: str, **fields: Any) -> IntentRow:
        """Change an intent's row. A final phase sticks: a run that read the intent before
        it was cancelled cannot bring it back to life by writing its own phase."""
        with self._session() as session:
            row = session.get(IntentRow, intent_id)
            if row is None:
                raise KeyError(intent_id)
            if row.phase in FINAL_PHASES:
                fields = {k: v for k, v in fields.items() if k not in ("phase", "next_due")}
            for key, value in fields.items():
                setattr(row, key, value)
            row.updated_ms = _now_ms()
            session.add(row)
            session.commit()
            return row

    # ------------------------------------------------------------------ steps

    def fill(self, intent_id: str, step: int) -> FillRow | None:
        with self._session() as session:
            return session.get(FillRow, (intent_id, step))

    def recorded_txs(self) -> frozenset[str]:
        """Every transaction a step of any intent was recorded with."""
        with self._session() as session:
            rows = session.exec(select(FillRow.tx).where(FillRow.tx != ""))
            return frozenset(str(tx) for tx in rows)

    def fills(self, intent_id: str) -> list[FillRow]:
        with self._session() as session:
            query = select(FillRow).where(FillRow.intent_id == intent_id).order_by(FillRow.step)  # type: ignore[arg-type]
            return list(session.exec(query))

    def begin_step(
        self,
        intent_id: str,
        step: int,
        *,
        from_block: int,
        token_in: str,
        token_out: str,
        amount_in: int,
    ) -> FillRow:
        """Mark the step pending with the swap about to be sent, before it is sent (a
        row already pending keeps its ``from_block``: the earliest a swap could be)."""
        with self._session() as session:
            row = session.get(FillRow, (intent_id, step))
            if row is None:
                row = FillRow(intent_id=intent_id, step=step, from_block=from_block)
            row.status, row.tx = "pending", ""
            row.token_in, row.token_out, row.amount_in = token_in, token_out, str(amount_in)
            session.add(row)
            session.commit()
            return row

    def note_sent(self, intent_id: str, step: int, tx: str) -> None:
        """The step's transaction is with the node: from now on only the chain says
        whether the step happened (it is never sent again while this hash is pending)."""
        with self._session() as session:
            row = session.get(FillRow, (intent_id, step))
            if row is not None and row.status == "pending":
                row.tx = tx
                session.add(row)
                session.commit()

    def finish_step(self, intent_id: str, step: int, status: str, **fields: Any) -> FillRow:
        """Record the step's outcome (filled, refused or skipped), once."""
        with self._session() as session:
            row = session.get(FillRow, (intent_id, step))
            if row is None:
                row = FillRow(intent_id=intent_id, step=step)
            row.status = status
            for key, value in fields.items():
                setattr(row, key, value)
            session.add(row)
            session.commit()
            return row

    # ------------------------------------------------------------------ views

    def state(self, intent_id: str) -> IntentState | None:
        """The intent as the protocol reports it (``IntentState``)."""
        row = self.intent(intent_id)
        if row is None:
            return None
        fills = tuple(
            FillView(
                step=f.step,
                status=f.status,  # type: ignore[arg-type]
                tx=f.tx,
                amount_in=f.amount_in,
                amount_out=f.amount_out,
                twap_out=f.twap_out,
                gas=f.gas,
                at=f.at,
                reason=f.reason,
            )
            for f in self.fills(intent_id)
        )
        return IntentState(
            intent_id=row.id,
            phase=row.phase,
            reason=row.reason,
            next_due=row.next_due,
            fills=fills,
        )
