"""A validator's epochs, in ``<home>/agents/<name>/validator.db`` (SQLite, WAL).

One row per epoch: what its probes showed per provider, the score sheet (scores and
salt) written *before* the commit transaction is sent, and the commit and reveal
transactions once mined. After a ``kill -9`` the validator finds the sheet again: it
reveals that sheet (the only one that can match what is on chain) and never scores or
commits the epoch a second time.
"""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from agentmesh.agents.probes import ProbeOutcome
from agentmesh.wallets.clients import checksum
from agentmesh.wallets.consensus import ScoreSheet

SCHEMA = """
CREATE TABLE IF NOT EXISTS epochs (
    epoch INTEGER PRIMARY KEY, sheet TEXT NOT NULL, outcomes TEXT NOT NULL,
    seconds REAL NOT NULL, commit_tx TEXT, reveal_tx TEXT, finalize_tx TEXT);
"""


@dataclass(frozen=True, slots=True)
class EpochRecord:
    """One epoch as the validator keeps it."""

    sheet: ScoreSheet
    outcomes: tuple[ProbeOutcome, ...]
    seconds: float  # spent probing (all providers)
    commit_tx: str | None
    reveal_tx: str | None
    finalize_tx: str | None

    @property
    def epoch(self) -> int:
        return self.sheet.epoch


def _sheet_json(sheet: ScoreSheet) -> str:
    return json.dumps(
        {
            "epoch": sheet.epoch,
            "providers": list(sheet.providers),
            "scores": list(sheet.scores),
            "salt": sheet.salt.hex(),
        }
    )


def _sheet(text: str) -> ScoreSheet:
    raw = json.loads(text)
    return ScoreSheet(
        int(raw["epoch"]),
        tuple(checksum(p) for p in raw["providers"]),
        tuple(int(s) for s in raw["scores"]),
        bytes.fromhex(raw["salt"]),
    )


def _outcomes_json(outcomes: tuple[ProbeOutcome, ...]) -> str:
    return json.dumps(
        [
            {
                "provider": o.provider,
                "canaries_passed": o.canaries_passed,
                "canaries": o.canaries,
                "reexec_passed": o.reexec_passed,
                "reexec": o.reexec,
                "failures": list(o.failures),
            }
            for o in outcomes
        ]
    )


def _outcomes(text: str) -> tuple[ProbeOutcome, ...]:
    return tuple(
        ProbeOutcome(
            provider=o["provider"],
            canaries_passed=int(o["canaries_passed"]),
            canaries=int(o["canaries"]),
            reexec_passed=int(o["reexec_passed"]),
            reexec=int(o["reexec"]),
            failures=tuple(o["failures"]),
        )
        for o in json.loads(text)
    )


class ValidatorStore:
    """The epochs a validator scored, committed and revealed."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")  # a sheet must outlive a power cut
        self._db.executescript(SCHEMA)

    def close(self) -> None:
        self._db.close()

    def save_sheet(
        self, sheet: ScoreSheet, outcomes: tuple[ProbeOutcome, ...], seconds: float
    ) -> EpochRecord:
        """Record an epoch's sheet before committing it; the first sheet of an epoch
        stays (a second scoring after a restart must not replace what may be on chain)."""
        self._db.execute(
            "INSERT OR IGNORE INTO epochs (epoch, sheet, outcomes, seconds) VALUES (?,?,?,?)",
            (sheet.epoch, _sheet_json(sheet), _outcomes_json(outcomes), seconds),
        )
        record = self.get(sheet.epoch)
        assert record is not None
        return record

    def mark(self, epoch: int, step: str, tx: str) -> None:
        """Record a mined commit, reveal or finalize transaction of ``epoch``."""
        column = {"commit": "commit_tx", "reveal": "reveal_tx", "finalize": "finalize_tx"}[step]
        self._db.execute(f"UPDATE epochs SET {column} = ? WHERE epoch = ?", (tx, epoch))

    def get(self, epoch: int) -> EpochRecord | None:
        row = self._db.execute(
            "SELECT sheet, outcomes, seconds, commit_tx, reveal_tx, finalize_tx FROM epochs "
            "WHERE epoch = ?",
            (epoch,),
        ).fetchone()
        return None if row is None else _record(row)

    def epochs(self) -> list[EpochRecord]:
        rows = self._db.execute(
            "SELECT sheet, outcomes, seconds, commit_tx, reveal_tx, finalize_tx FROM epochs "
            "ORDER BY epoch"
        ).fetchall()
        return [_record(row) for row in rows]


def _record(row: tuple[str, str, float, str | None, str | None, str | None]) -> EpochRecord:
    sheet, outcomes, seconds, commit_tx, reveal_tx, finalize_tx = row
    return EpochRecord(
        _sheet(sheet), _outcomes(outcomes), seconds, commit_tx, reveal_tx, finalize_tx
    )
