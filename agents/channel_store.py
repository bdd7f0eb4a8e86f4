"""An agent's payment channels, in ``<home>/agents/<name>/channels.db`` (SQLite, WAL).

Two sides, two tables: ``payee_channels`` (channels paying this agent: the latest
voucher it holds, what it claimed) and ``payer_channels`` (channels this agent pays
from: the highest voucher it signed). Prices fixed per service live beside each.

The payee's voucher is on the hot path of every paid call and must be durable before
the work starts. Writes are group-committed: every call accepted in one loop turn waits
on the same commit (WAL, ``synchronous=NORMAL``: a killed process loses nothing
committed). The payer's count is written lazily: after a crash a payer may have signed
more than its row says, and learns the true figure from the payee's refusal, which
carries the payee's latest voucher (see ``agentmesh.protocols.payment``).

Amounts are stored as decimal text: a deposit on chain is a uint128. Rows keep the order
in which channels were first written (an upsert keeps a row's place), so "the latest
channel opened to a payee" is the last row.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from agentmesh.protocols.payment import ChannelPhase

SCHEMA = """
CREATE TABLE IF NOT EXISTS payee_channels (
    id TEXT PRIMARY KEY, payer TEXT NOT NULL, token TEXT NOT NULL, deposit TEXT NOT NULL,
    claimed TEXT NOT NULL, latest TEXT NOT NULL, signature BLOB NOT NULL, phase TEXT NOT NULL,
    claim_until INTEGER NOT NULL, calls INTEGER NOT NULL, updated_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS payer_channels (
    id TEXT PRIMARY KEY, payee TEXT NOT NULL, token TEXT NOT NULL, deposit TEXT NOT NULL,
    claimed TEXT NOT NULL, signed TEXT NOT NULL, phase TEXT NOT NULL,
    calls INTEGER NOT NULL, open_tx TEXT NOT NULL, updated_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS channel_prices (
    side TEXT NOT NULL, channel TEXT NOT NULL, service TEXT NOT NULL, price TEXT NOT NULL,
    PRIMARY KEY (side, channel, service));
"""


PAYER_FLUSH_S = 0.05


def _upsert(table: str, columns: str) -> str:
    """Insert a row, or update every column of the one with its id in place (an upsert
    keeps the row's place, unlike ``INSERT OR REPLACE``)."""
    names = columns.split()
    updates = ", ".join(f"{n} = excluded.{n}" for n in names[1:])
    marks = ",".join("?" * len(names))
    return f"INSERT INTO {table} VALUES ({marks}) ON CONFLICT(id) DO UPDATE SET {updates}"


PAYEE_UPSERT = _upsert(
    "payee_channels",
    "id payer token deposit claimed latest signature phase claim_until calls updated_ms",
)
PAYER_UPSERT = _upsert(
    "payer_channels", "id payee token deposit claimed signed phase calls open_tx updated_ms"
)


def _now_ms() -> int:
    return int(time.time() * 1000)


@dataclass(slots=True, eq=False)
class PayeeChannel:
    """A channel paying this agent, as this agent holds it."""

    id: bytes
    payer: str
    token: str
    deposit: int
    claimed: int = 0  # on chain, as last seen
    latest: int = 0  # the highest voucher held (cumulative base units)
    signature: bytes = b""
    phase: ChannelPhase = ChannelPhase.OPEN
    claim_until: int = 0  # chain time: the end of the challenge delay, once requested
    calls: int = 0  # calls whose voucher was accepted
    prices: dict[str, int] = field(default_factory=dict)
    claiming: bool = False

    @property
    def unclaimed(self) -> int:
        return self.latest - self.claimed


@dataclass(slots=True, eq=False)
class PayerChannel:
    """A channel this agent pays from, as this agent holds it."""

    id: bytes
    payee: str
    token: str
    deposit: int
    claimed: int = 0
    signed: int = 0  # the highest voucher signed (cumulative base units)
    phase: ChannelPhase = ChannelPhase.OPEN
    calls: int = 0  # calls answered
    open_tx: str = ""
    prices: dict[str, int] = field(default_factory=dict)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    in_flight: int = 0  # calls sent and not answered yet
    unsure: bool = False  # a call got no answer: ask the payee what it holds


class ChannelStore:
    """The channel tables of one agent (one connection, used from the event loop)."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        """``readonly``: read an existing store only (the web console); writes fail."""
        self.path = path
        if readonly:
            self.db = sqlite3.connect(
                f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
            )
            self.db.execute("PRAGMA busy_timeout=5000")
        else:
            # Vouchers are money: the agent's folder is private, as the keystores are.
            path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self.db.execute("PRAGMA busy_timeout=5000")
            self.db.executescript(SCHEMA)
        self._vouchers: dict[bytes, PayeeChannel] = {}
        self._signed: dict[bytes, PayerChannel] = {}
        self._waiters: list[asyncio.Future[None]] = []
        self._scheduled = False
        self._payer_scheduled = False

    def close(self) -> None:
        self._flush()
        self.db.close()

    # ------------------------------------------------------------------ payee

    def payee_channels(self) -> list[PayeeChannel]:
        rows = self.db.execute(
            "SELECT id, payer, token, deposit, claimed, latest, signature, phase, claim_until,"
            " calls FROM payee_channels ORDER BY rowid"
        ).fetchall()
        prices = self._prices("payee")
        return [
            PayeeChannel(
                id=bytes.fromhex(r[0][2:]),
                payer=r[1],
                token=r[2],
                deposit=int(r[3]),
                claimed=int(r[4]),
                latest=int(r[5]),
                signature=bytes(r[6]),
                phase=ChannelPhase(r[7]),
                claim_until=int(r[8]),
                calls=int(r[9]),
                prices=prices.get(r[0], {}),
            )
            for r in rows
        ]

    def save_payee(self, ch: PayeeChannel) -> None:
        """Write the whole row and its prices now (joins, claims, phase changes)."""
        key = "0x" + ch.id.hex()
        with self._transaction():
            self.db.execute(
                PAYEE_UPSERT,
                (
                    key,
                    ch.payer,
                    ch.token,
                    str(ch.deposit),
                    str(ch.claimed),
                    str(ch.latest),
                    ch.signature,
                    str(ch.phase),
                    ch.claim_until,
                    ch.calls,
                    _now_ms(),
                ),
            )
            self._save_prices("payee", key, ch.prices.items())

    async def voucher_stored(self, ch: PayeeChannel) -> None:
        """Return once ``ch``'s latest voucher is committed (group commit)."""
        self._vouchers[ch.id] = ch
        future = asyncio.get_running_loop().create_future()
        self._waiters.append(future)
        self._schedule()
        await future

    # ------------------------------------------------------------------ payer

    def payer_channels(self) -> list[PayerChannel]:
        rows = self.db.execute(
            "SELECT id, payee, token, deposit, claimed, signed, phase, calls, open_tx"
            " FROM payer_channels ORDER BY rowid"
        ).fetchall()
        prices = self._prices("payer")
        return [
            PayerChannel(
                id=bytes.fromhex(r[0][2:]),
                payee=r[1],
                token=r[2],
                deposit=int(r[3]),
                claimed=int(r[4]),
                signed=int(r[5]),
                phase=ChannelPhase(r[6]),
                calls=int(r[7]),
                open_tx=r[8],
                prices=prices.get(r[0], {}),
            )
            for r in rows
        ]

    def save_payer(self, ch: PayerChannel) -> None:
        key = "0x" + ch.id.hex()
        with self._transaction():
            self.db.execute(
                PAYER_UPSERT,
                (
                    key,
                    ch.payee,
                    ch.token,
                    str(ch.deposit),
                    str(ch.claimed),
                    str(ch.signed),
                    str(ch.phase),
                    ch.calls,
                    ch.open_tx,
                    _now_ms(),
                ),
            )
            self._save_prices("payer", key, ch.prices.items())

    def note_signed(self, ch: PayerChannel) -> None:
        """Record the payer's count soon (not waited for: see the module docstring):
        within ``PAYER_FLUSH_S``, one commit for every call signed meanwhile."""
        self._signed[ch.id] = ch
        if not self._payer_scheduled:
            self._payer_scheduled = True
            asyncio.get_running_loop().call_later(PAYER_FLUSH_S, self._flush)

    # ------------------------------------------------------------------ internals

    def _prices(self, side: str) -> dict[str, dict[str, int]]:
        found: dict[str, dict[str, int]] = {}
        for channel, service, price in self.db.execute(
            "SELECT channel, service, price FROM channel_prices WHERE side = ?", (side,)
        ):
            found.setdefault(channel, {})[service] = int(price)
        return found

    def _save_prices(self, side: str, key: str, prices: Iterable[tuple[str, int]]) -> None:
        self.db.executemany(
            "INSERT OR REPLACE INTO channel_prices VALUES (?,?,?,?)",
            [(side, key, service, str(price)) for service, price in prices],
        )

    def _transaction(self) -> _Transaction:
        return _Transaction(self.db)

    def _schedule(self) -> None:
        if not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = self._payer_scheduled = False
        vouchers, self._vouchers = self._vouchers, {}
        signed, self._signed = self._signed, {}
        waiters, self._waiters = self._waiters, []
        if not (vouchers or signed):
            return
        now = _now_ms()
        try:
            with self._transaction():
                self.db.executemany(
                    "UPDATE payee_channels SET latest = ?, signature = ?, calls = ?,"
                    " updated_ms = ? WHERE id = ?",
                    [
                        (str(c.latest), c.signature, c.calls, now, "0x" + c.id.hex())
                        for c in vouchers.values()
                    ],
                )
                self.db.executemany(
                    "UPDATE payer_channels SET signed = ?, calls = ?, updated_ms = ? WHERE id = ?",
                    [(str(c.signed), c.calls, now, "0x" + c.id.hex()) for c in signed.values()],
                )
        except sqlite3.Error as exc:
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(exc)
            return
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


class _Transaction:
    """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on error) on an autocommit
    connection: one commit per group of writes."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> None:
        self.db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: object, *rest: object) -> None:
        self.db.execute("ROLLBACK" if kind is not None else "COMMIT")
