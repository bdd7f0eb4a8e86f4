"""The agent's SQLite store (WAL) through sqlmodel: peers, messages, dialogues, stats.

Tables are declared with sqlmodel. The message hot path (thousands a second) writes
through the engine's DBAPI connection in batches, one transaction per batch of frames
drained from the socket, because an ORM round trip per message would cost more than
signing it.

Delivery guarantees: a message is recorded as ``received`` before its handler runs and
flips to ``handled`` (with its reply) after, in one transaction per batch. A message id
that is already present is a duplicate: its stored reply is sent again and the handler
does not run. On start, ``received`` rows left by a crash are handed back for handling.

Retention (:meth:`Store.prune_messages`, run by the node): messages older than a maximum
age go, and the oldest go first while the table holds more rows or frame bytes than its
limits. Two kinds of rows are never pruned: ``received`` ones (accepted, not yet handled:
restart recovery needs them) and those young enough that a copy of their envelope could
still pass the clock check (their ids are what refuses a replay after a restart; past
that window the clock check refuses a copy on its own). Peers are pruned by last sighting
and count (:meth:`Store.prune_peers`).
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import time
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, create_engine, select


class PeerRow(SQLModel, table=True):
    """A peer as last seen; ``card_json`` is the full signed card."""

    __tablename__ = "peers"

    address: str = Field(primary_key=True)
    name: str
    endpoint: str
    presence_endpoint: str
    curve_key: str
    services_json: str = "[]"
    model_sha256: str = ""
    card_json: str
    source: str  # bootstrap, gossip, registry, self
    state: str = "up"  # up, down
    first_seen_ms: int
    last_seen_ms: int


class MessageRow(SQLModel, table=True):
    """Every message received and sent, with its delivery status."""

    __tablename__ = "messages"

    id: bytes = Field(primary_key=True)
    direction: str  # in, out
    peer: str = Field(index=True)
    protocol: str
    version: str
    conversation: bytes = Field(index=True)
    reply_to: bytes
    status: str = Field(index=True)  # received, handled, failed, sent
    frame: bytes
    reply_frame: bytes | None = None
    created_ms: int = Field(index=True)  # retention prunes oldest first
    handled_ms: int | None = None


class DialogueRow(SQLModel, table=True):
    """State of one conversation under a protocol."""

    __tablename__ = "dialogues"

    conversation: bytes = Field(primary_key=True)
    protocol: str
    peer: str
    state: str
    updated_ms: int


class EffectRow(SQLModel, table=True):
    """An effect a handler recorded; committed together with its message's status."""

    __tablename__ = "effects"

    seq: int | None = Field(default=None, primary_key=True)
    message_id: bytes = Field(index=True)
    key: str = Field(index=True)
    value: str


class StatRow(SQLModel, table=True):
    """A snapshot of a node counter (for `agentmesh mesh stats` in another process)."""

    __tablename__ = "stats"

    name: str = Field(primary_key=True)
    value: int
    updated_ms: int


@dataclass(frozen=True, slots=True)
class MessageRetention:
    """What :meth:`Store.prune_messages` keeps (see the module docstring)."""

    max_age_ms: int
    max_rows: int
    max_bytes: int
    # Rows younger than this are kept whatever the limits: the replay window.
    protect_ms: int


@dataclass(frozen=True, slots=True)
class PendingMessage:
    """A message accepted before a crash and not yet handled."""

    id: bytes
    frame: bytes


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


@event.listens_for(Engine, "connect")
def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    if isinstance(dbapi_connection, sqlite3.Connection):
        cursor = dbapi_connection.cursor()
        # WAL: readers (the CLI) never block the agent; NORMAL: durable at checkpoints,
        # and a crash of the process (not the OS) loses nothing. (A read-only connection
        # cannot change the mode; the writers have set it.)
        with contextlib.suppress(sqlite3.OperationalError):
            cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=5000")
        cursor.close()


def sqlite_engine(path: Path, *, readonly: bool = False) -> Engine:
    """An engine on the SQLite file ``path``; every connection gets the pragmas above.
    ``readonly``: SQLite refuses every write (readers such as the web console)."""
    if readonly:
        return create_engine(
            f"sqlite:///file:{path}?mode=ro&uri=true", connect_args={"check_same_thread": False}
        )
    return create_engine(f"sqlite:///{path}", connect_args={"check_same_thread": False})


class Store:
    """One agent's database file."""

    TABLES: ClassVar[tuple[type[SQLModel], ...]] = (
        PeerRow,
        MessageRow,
        DialogueRow,
        EffectRow,
        StatRow,
    )

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        """``readonly``: open an existing store to read it only (no table is created or
        changed; every write fails)."""
        self.path = path
        if readonly:
            self.engine = sqlite_engine(path, readonly=True)
            self._raw = self.engine.raw_connection()
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self.engine = sqlite_engine(path)
        # Only the mesh tables: other modules' SQLModel tables live in their own files.
        SQLModel.metadata.create_all(
            self.engine,
            # sqlmodel does not declare the ``__table__`` that table=True classes get.
            tables=[t.__table__ for t in self.TABLES],  # type: ignore[attr-defined]
        )
        self._raw = self.engine.raw_connection()
        # Stores made before the index was declared (create_all never adds one to an
        # existing table).
        cursor = self._raw.cursor()
        cursor.execute("CREATE INDEX IF NOT EXISTS ix_messages_created_ms ON messages (created_ms)")
        self._raw.commit()
        cursor.close()

    def close(self) -> None:
        self._raw.close()
        self.engine.dispose()

    # ------------------------------------------------------------------ messages

    def known_ids(self, ids: Sequence[bytes]) -> dict[bytes, tuple[str, bytes | None]]:
        """Status and stored reply of the ids already recorded."""
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        cursor = self._raw.cursor()
        cursor.execute(
            f"SELECT id, status, reply_frame FROM messages WHERE id IN ({marks})", list(ids)
        )
        found = {row[0]: (row[1], row[2]) for row in cursor.fetchall()}
        cursor.close()
        return found

    def record_received(
        self, rows: Iterable[tuple[bytes, str, str, str, bytes, bytes, bytes]]
    ) -> None:
        """Insert inbound messages as ``received``.

        Rows: (id, peer, protocol, version, conversation, reply_to, frame).
        """
        now = _now_ms()
        cursor = self._raw.cursor()
        cursor.executemany(
            "INSERT OR IGNORE INTO messages (id, direction, peer, protocol, version, "
            "conversation, reply_to, status, frame, created_ms) "
            "VALUES (?, 'in', ?, ?, ?, ?, ?, 'received', ?, ?)",
            [(*row, now) for row in rows],
        )
        self._raw.commit()
        cursor.close()

    def record_done(
        self,
        rows: Iterable[tuple[tuple[Any, ...], str, bytes | None]],
        effects: Iterable[tuple[bytes, str, str]] = (),
    ) -> None:
        """Record finished inbound messages: ``(columns, status, reply)`` per message.

        Inserts messages not yet recorded (requests) and updates those recorded as
        ``received`` (one-way), in one transaction.
        """
        now = _now_ms()
        items = list(rows)
        cursor = self._raw.cursor()
        cursor.executemany(
            "INSERT INTO messages (id, direction, peer, protocol, version, conversation, "
            "reply_to, frame, status, reply_frame, created_ms, handled_ms) "
            "VALUES (?, 'in', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET status = excluded.status, "
            "reply_frame = excluded.reply_frame, handled_ms = excluded.handled_ms",
            [(*cols, status, reply, now, now) for cols, status, reply in items],
        )
        effect_rows = list(effects)
        if effect_rows:
            cursor.executemany(
                "INSERT INTO effects (message_id, key, value) VALUES (?, ?, ?)", effect_rows
            )
        self._raw.commit()
        cursor.close()

    def record_sent(self, rows: Iterable[tuple[bytes, str, str, str, bytes, bytes, bytes]]) -> None:
        """Insert outbound messages as ``sent``."""
        now = _now_ms()
        cursor = self._raw.cursor()
        cursor.executemany(
            "INSERT OR IGNORE INTO messages (id, direction, peer, protocol, version, "
            "conversation, reply_to, status, frame, created_ms) "
            "VALUES (?, 'out', ?, ?, ?, ?, ?, 'sent', ?, ?)",
            [(*row, now) for row in rows],
        )
        self._raw.commit()
        cursor.close()

    def pending(self) -> list[PendingMessage]:
        """Inbound messages accepted but never handled (the process died in between)."""
        with Session(self.engine) as session:
            rows = session.exec(
                select(MessageRow)
                .where(MessageRow.direction == "in", MessageRow.status == "received")
                .order_by(MessageRow.created_ms)  # type: ignore[arg-type]
            ).all()
            return [PendingMessage(r.id, r.frame) for r in rows]

    def effects(self, key: str | None = None) -> list[EffectRow]:
        """Recorded handler effects, oldest first (optionally one key only)."""
        with Session(self.engine) as session:
            query = select(EffectRow).order_by(EffectRow.seq)  # type: ignore[arg-type]
            if key is not None:
                query = query.where(EffectRow.key == key)
            return list(session.exec(query).all())

    def message_totals(self) -> tuple[int, int]:
        """Rows in the message table and the bytes of their frames (with replies)."""
        cursor = self._raw.cursor()
        cursor.execute(
            "SELECT COUNT(*), COALESCE(SUM(LENGTH(frame) + COALESCE(LENGTH(reply_frame), 0)), 0)"
            " FROM messages"
        )
        rows, size = cursor.fetchone() or (0, 0)  # an aggregate always has one row
        cursor.close()
        return int(rows), int(size)

    def prune_messages(self, retention: MessageRetention, now_ms: int | None = None) -> int:
        """Apply ``retention``; returns how many messages were deleted.

        Deletes unprotected rows older than ``max_age_ms``, then the oldest unprotected
        rows while more than ``max_rows`` rows or ``max_bytes`` bytes remain. Protected:
        ``received`` rows and rows younger than ``protect_ms``.
        """
        now = _now_ms() if now_ms is None else now_ms
        protected_from = now - retention.protect_ms
        prunable = "status != 'received' AND created_ms < ?"
        cursor = self._raw.cursor()
        try:
            cursor.execute(
                f"DELETE FROM messages WHERE {prunable} AND created_ms < ?",
                (protected_from, now - retention.max_age_ms),
            )
            deleted = max(cursor.rowcount, 0)
            self._raw.commit()
            rows, size = self.message_totals()
            if rows <= retention.max_rows and size <= retention.max_bytes:
                return deleted
            # Oldest first, until both limits hold (or nothing unprotected is left).
            cursor.execute(
                "SELECT rowid, LENGTH(frame) + COALESCE(LENGTH(reply_frame), 0) "
                f"FROM messages WHERE {prunable} ORDER BY created_ms, rowid",
                (protected_from,),
            )
            victims: list[tuple[int]] = []
            while rows > retention.max_rows or size > retention.max_bytes:
                batch = cursor.fetchmany(1024)
                if not batch:
                    break  # the rest is protected
                for rowid, frame_bytes in batch:
                    victims.append((rowid,))
                    rows, size = rows - 1, size - int(frame_bytes)
                    if rows <= retention.max_rows and size <= retention.max_bytes:
                        break
            cursor.executemany("DELETE FROM messages WHERE rowid = ?", victims)
            self._raw.commit()
            return deleted + len(victims)
        finally:
            cursor.close()

    def message_counts(self) -> dict[str, int]:
        cursor = self._raw.cursor()
        cursor.execute("SELECT direction || '.' || status, COUNT(*) FROM messages GROUP BY 1")
        counts = {k: int(v) for k, v in cursor.fetchall()}
        cursor.close()
        return counts

    # ------------------------------------------------------------------ peers

    def upsert_peer(self, row: PeerRow) -> None:
        with Session(self.engine) as session:
            existing = session.get(PeerRow, row.address)
            if existing is not None:
                row.first_seen_ms = existing.first_seen_ms
            session.merge(row)
            session.commit()

    def set_peer_state(self, address: str, state: str) -> None:
        with Session(self.engine) as session:
            existing = session.get(PeerRow, address)
            if existing is not None:
                existing.state = state
                session.add(existing)
                session.commit()

    def touch_peers(self, seen: dict[str, int]) -> None:
        """Update last-seen times in one transaction (heartbeats arrive often)."""
        if not seen:
            return
        cursor = self._raw.cursor()
        cursor.executemany(
            "UPDATE peers SET last_seen_ms = ?, state = 'up' WHERE address = ?",
            [(ms, address) for address, ms in seen.items()],
        )
        self._raw.commit()
        cursor.close()

    def remove_peer(self, address: str) -> None:
        with Session(self.engine) as session:
            existing = session.get(PeerRow, address)
            if existing is not None:
                session.delete(existing)
                session.commit()

    def peers(self) -> list[PeerRow]:
        with Session(self.engine) as session:
            return list(session.exec(select(PeerRow).order_by(PeerRow.name)).all())

    def prune_peers(self, keep: Collection[str], max_rows: int, seen_before_ms: int) -> int:
        """Drop peer rows not in ``keep`` (the node's live table) that were last seen
        before ``seen_before_ms``, and the longest-unseen others beyond ``max_rows``
        rows in all (rows left by earlier runs); returns how many were dropped."""
        cursor = self._raw.cursor()
        try:
            cursor.execute("SELECT address, last_seen_ms FROM peers ORDER BY last_seen_ms DESC")
            rows = cursor.fetchall()
            others = [(address, seen) for address, seen in rows if address not in keep]
            room = max(max_rows - (len(rows) - len(others)), 0)
            doomed = [
                (address,)
                for i, (address, seen) in enumerate(others)
                if i >= room or seen < seen_before_ms
            ]
            cursor.executemany("DELETE FROM peers WHERE address = ?", doomed)
            self._raw.commit()
            return len(doomed)
        finally:
            cursor.close()

    # ------------------------------------------------------------------ stats

    def save_stats(self, counters: dict[str, int]) -> None:
        now = _now_ms()
        cursor = self._raw.cursor()
        cursor.executemany(
            "INSERT INTO stats (name, value, updated_ms) VALUES (?, ?, ?) "
            "ON CONFLICT(name) DO UPDATE SET value = excluded.value, "
            "updated_ms = excluded.updated_ms",
            [(name, int(value), now) for name, value in counters.items()],
        )
        self._raw.commit()
        cursor.close()

    def stats(self) -> dict[str, int]:
        with Session(self.engine) as session:
            return {row.name: row.value for row in session.exec(select(StatRow)).all()}


def services_json(services: Iterable[Any]) -> str:
    return json.dumps([{"name": s.name, "price": s.price} for s in services])
