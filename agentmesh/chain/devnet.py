"""Run anvil: a throw-away devnet for library code and tests, or a persistent one.

:func:`start_anvil` starts anvil on a configured or free loopback port, waits until it
answers JSON-RPC, and returns an :class:`AnvilProcess` that stops it. With a
``state_file``, anvil loads the chain state from it and dumps it back periodically and
on exit, so ``agentmesh devnet down`` / ``up`` keeps balances.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from agentmesh.chain.rpc import is_up
from agentmesh.config import DevnetConfig
from agentmesh.errors import DevnetError, PortInUseError
from agentmesh.tools import find_anvil

# anvil's well-known first dev account (mnemonic "test test ... junk"). Public
# knowledge, used only as the devnet deployer and faucet; never for real funds.
DEV_DEPLOYER_KEY = "0xac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80"
DEV_MNEMONIC = "test test test test test test test test test test test junk"
STATE_DUMP_INTERVAL_S = 1


@dataclass
class AnvilProcess:
    """A running anvil. ``stop()`` ends it gracefully so it can dump its state."""

    process: subprocess.Popen[bytes]
    host: str
    port: int
    log_path: Path
    _log: IO[bytes] | None = field(default=None, repr=False)

    @property
    def rpc_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def pid(self) -> int:
        return self.process.pid

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (anvil dumps state on it), then SIGKILL after ``timeout``."""
        if self.alive():
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def detach(self) -> None:
        """Let the process outlive us: close our side of its log, keep it running."""
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> AnvilProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def free_port(host: str = "127.0.0.1") -> int:
    """A port on ``host`` (an IPv4 or IPv6 address) that nothing listens on right now."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def check_port_free(host: str, port: int) -> None:
    """Raise :class:`PortInUseError` when ``host:port`` cannot be bound."""
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        # Like any server (anvil included), ignore TIME_WAIT leftovers of old
        # connections: only a live listener makes the port unusable.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
            sock.listen(1)
        except OSError as exc:
            raise PortInUseError(
                f"port {port} on {host} is in use; choose another with --port "
                "or devnet.port in config.toml"
            ) from exc


def _log_tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])


def start_anvil(
    config: DevnetConfig | None = None,
    *,
    port: int | None = None,
    state_file: Path | None = None,
    log_path: Path | None = None,
    detach: bool = False,
) -> AnvilProcess:
    """Start anvil and wait until it answers; raises ``DevnetError`` subclasses on failure.

    ``detach=True`` starts it in its own session so it outlives the calling process
    (``agentmesh devnet up``).
    """
    config = config or DevnetConfig()
    binary = find_anvil(config.anvil_path)
    host = config.host
    chosen = config.port if port is None else port
    if chosen:
        check_port_free(host, chosen)
    else:
        chosen = free_port(host)
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix="agentmesh-anvil-", suffix=".log")
        os.close(fd)
        log_path = Path(name)
    args = [
        str(binary),
        "--host",
        host,
        "--port",
        str(chosen),
        "--chain-id",
        str(config.chain_id),
        "--accounts",
        str(config.accounts),
        "--mnemonic",
        DEV_MNEMONIC,
    ]
    if config.block_time:
        args += ["--block-time", str(config.block_time)]
    if state_file is not None:
        state_file.parent.mkdir(parents=True, exist_ok=True)
        args += ["--state", str(state_file), "--state-interval", str(STATE_DUMP_INTERVAL_S)]
    log = open(log_path, "ab")  # noqa: SIM115 - owned by the AnvilProcess
    try:
        process = subprocess.Popen(
            args,
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=detach,
        )
    except OSError as exc:
        log.close()
        raise DevnetError(f"cannot run anvil at {binary}: {exc.strerror}") from exc
    anvil = AnvilProcess(process, host, chosen, log_path, log)
    try:
        _wait_ready(anvil, config.startup_timeout)
    except BaseException:
        anvil.stop(timeout=2)
        raise
    return anvil


def _wait_ready(anvil: AnvilProcess, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    delay = 0.02
    while time.monotonic() < deadline:
        if not anvil.alive():
            tail = _log_tail(anvil.log_path)
            if "in use" in tail.lower():
                raise PortInUseError(f"port {anvil.port} on {anvil.host} is in use: {tail}")
            raise DevnetError(
                f"anvil exited with code {anvil.process.returncode} while starting: {tail}"
            )
        if is_up(anvil.rpc_url, timeout=0.5):
            return
        time.sleep(delay)
        delay = min(delay * 2, 0.2)
    raise DevnetError(f"anvil did not answer on {anvil.rpc_url} within {timeout:.0f}s")


def pid_alive(pid: int) -> bool:
    """True when a process with ``pid`` exists (and is not a zombie we own)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(ChildProcessError):
        done, _ = os.waitpid(pid, os.WNOHANG)
        if done == pid:
            return False
    return True
