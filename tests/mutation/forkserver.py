"""A pytest fork server: third-party imports once, one forked pytest per mutant.

Starting pytest here costs ~3 s, mostly importing web3, eth_account and friends, while
a focused test file runs in well under a second; with hundreds of mutants that start-up
would be most of the run. The server imports those libraries (never agentmesh or the
tests: they are what gets mutated) and waits on a Unix socket. The client is what
cosmic-ray runs as its test command: it hands over its stdout/stderr, working folder,
environment and pytest arguments; the server forks, the child runs ``pytest.main``
there (importing the project fresh from disk, mutant included), and the client exits
with pytest's status. If the client dies (cosmic-ray's timeout kills it), the server
kills the child's whole process group (anvil included).

    python tests/mutation/forkserver.py serve --socket S
    python tests/mutation/forkserver.py run --socket S -- -x -q tests/test_envelope.py

It is run as a script, not ``-m``, so that not even the ``tests`` package is imported
before the fork.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import select
import signal
import socket
import struct
import sys
from collections.abc import Sequence

# Imported before any fork. Nothing here may start a thread or import agentmesh.
PRELOAD = (
    "pytest",
    "pytest_asyncio",
    "hypothesis",
    "_hypothesis_pytestplugin",
    "coincurve",
    "msgpack",
    "sha3",
    "pydantic",
    "eth_utils",
    "eth_abi",
    "eth_account",
    "eth_keyfile",
    "web3",
    "aiohttp",
    "sqlalchemy",
    "sqlmodel",
    "zmq",
    "zmq.asyncio",
    "platformdirs",
    "jsonschema",
    "rich",
    "typer",
    "langgraph.graph",
    "langgraph.checkpoint.sqlite",
)
_HEADER = struct.Struct("!I")


def _send(conn: socket.socket, payload: bytes, fds: Sequence[int] = ()) -> None:
    header = _HEADER.pack(len(payload))
    if fds:  # the descriptors travel with the 4-byte header
        socket.send_fds(conn, [header], list(fds))
    else:
        conn.sendall(header)
    conn.sendall(payload)


def _recv_exact(conn: socket.socket, size: int) -> bytes:
    chunks = b""
    while len(chunks) < size:
        part = conn.recv(size - len(chunks))
        if not part:
            raise ConnectionError("peer closed")
        chunks += part
    return chunks


# ---------------------------------------------------------------------------- server


def _child(request: dict[str, object], fds: list[int], listener: socket.socket) -> None:
    """In the forked child: become pytest in the client's folder, with its fds and env."""
    try:
        os.setsid()
        listener.close()
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        for fd in fds:
            os.close(fd)
        cwd = str(request["cwd"])
        os.chdir(cwd)
        env = request["env"]
        assert isinstance(env, dict)
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in env.items()})
        sys.dont_write_bytecode = bool(os.environ.get("PYTHONDONTWRITEBYTECODE"))
        sys.path[0] = cwd  # as `python -m pytest` run there would have it
        args = [str(a) for a in request["args"]]  # type: ignore[attr-defined]
        sys.argv = ["pytest", *args]
        import pytest

        code = int(pytest.main(args))
    except BaseException:  # noqa: BLE001 - report anything as a failed run
        import traceback

        traceback.print_exc()
        code = 3
    with contextlib.suppress(Exception):
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _serve_one(conn: socket.socket, listener: socket.socket) -> None:
    header, fds, _flags, _addr = socket.recv_fds(conn, _HEADER.size, 2)
    if len(header) < _HEADER.size:
        header += _recv_exact(conn, _HEADER.size - len(header))
    (size,) = _HEADER.unpack(header)
    request = json.loads(_recv_exact(conn, size))
    pid = os.fork()
    if pid == 0:
        conn.close()
        _child(request, fds, listener)
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    try:
        readable, _, _ = select.select([pidfd, conn.fileno()], [], [])
        if pidfd not in readable:  # the client went away first: its run is cancelled
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
        code = os.waitstatus_to_exitcode(status)
        with contextlib.suppress(OSError):
            _send(conn, json.dumps({"returncode": code}).encode())
    finally:
        os.close(pidfd)
        # Anything the child started in its session (anvil, agents) goes with it.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)


def serve(path: str) -> int:
    for name in PRELOAD:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)
    leaked = [m for m in sys.modules if m.split(".")[0] in ("agentmesh", "tests")]
    if leaked:
        print(f"forkserver: preloading imported project modules: {leaked}", file=sys.stderr)
        return 2
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(4)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    print("forkserver: ready", flush=True)
    try:
        while True:
            conn, _ = listener.accept()
            with conn:
                try:
                    _serve_one(conn, listener)
                except (OSError, ValueError, ConnectionError) as exc:
                    print(f"forkserver: request failed: {exc}", file=sys.stderr, flush=True)
    finally:
        listener.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


# ---------------------------------------------------------------------------- client


def run(path: str, args: Sequence[str]) -> int:
    """Have the server run pytest; without a server, become a plain pytest run instead.

    cosmic-ray counts any failing exit as a killed mutant, so a missing or crashed server
    must never look like a failing test: the fallback gives the real answer, slower.
    """
    try:
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(path)
        request = {"cwd": os.getcwd(), "env": dict(os.environ), "args": list(args)}
        sys.stdout.flush()
        sys.stderr.flush()
        _send(conn, json.dumps(request).encode(), [1, 2])
        (size,) = _HEADER.unpack(_recv_exact(conn, _HEADER.size))
        code = int(json.loads(_recv_exact(conn, size))["returncode"])
    except (OSError, ValueError, KeyError) as exc:
        print(f"forkserver: {exc!r}; running pytest directly", file=sys.stderr, flush=True)
        os.execv(sys.executable, [sys.executable, "-m", "pytest", *args])
    return code if code >= 0 else 128 - code


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) < 3 or args[0] not in ("serve", "run") or args[1] != "--socket":
        print(__doc__, file=sys.stderr)
        return 2
    mode, path, rest = args[0], args[2], args[3:]
    if mode == "serve":
        return serve(path)
    return run(path, rest[1:] if rest[:1] == ["--"] else rest)


if __name__ == "__main__":
    raise SystemExit(main())
