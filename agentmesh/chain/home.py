"""The persistent devnet of an agentmesh home (``agentmesh devnet up``).

Files in ``<home>/devnet/``: ``devnet.json`` (pid, port, rpc url of the running anvil),
``state.json`` (anvil's dumped chain state), ``deployment.json`` and ``anvil.log``.
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from agentmesh.chain.devnet import pid_alive
from agentmesh.chain.rpc import is_up


@dataclass(frozen=True, slots=True)
class DevnetPaths:
    """The files of one home's persistent devnet."""

    root: Path

    @classmethod
    def of(cls, home: Path) -> DevnetPaths:
        return cls(home / "devnet")

    @property
    def record(self) -> Path:
        return self.root / "devnet.json"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def deployment(self) -> Path:
        return self.root / "deployment.json"

    @property
    def log(self) -> Path:
        return self.root / "anvil.log"


@dataclass(frozen=True, slots=True)
class DevnetRecord:
    """What ``devnet up`` started."""

    pid: int
    port: int
    rpc_url: str
    started_at: float

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(self)))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> DevnetRecord | None:
        try:
            return cls(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None


def running_devnet(home: Path) -> DevnetRecord | None:
    """The home's devnet if its process is alive and answering; stale records are removed."""
    paths = DevnetPaths.of(home)
    record = DevnetRecord.load(paths.record)
    if record is None:
        return None
    if pid_alive(record.pid) and is_up(record.rpc_url):
        return record
    paths.record.unlink(missing_ok=True)
    return None


def _is_anvil(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"anvil" in cmdline.split(b"\0")[0]


def stop_devnet(home: Path, timeout: float = 15.0) -> DevnetRecord | None:
    """Stop the home's devnet (SIGTERM lets anvil dump its state); returns what was stopped."""
    paths = DevnetPaths.of(home)
    record = DevnetRecord.load(paths.record)
    if record is None:
        return None
    # A stale record's pid may belong to another program by now: only signal a
    # process that is really our anvil.
    if pid_alive(record.pid) and _is_anvil(record.pid):
        os.kill(record.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while pid_alive(record.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        if pid_alive(record.pid):
            os.kill(record.pid, signal.SIGKILL)
    paths.record.unlink(missing_ok=True)
    return record
