"""The local control socket of a wallet's agent: what ``agentmesh task`` asks it.

Every purchase the CLI makes with one wallet goes through one running agent of that
wallet (``cli-<wallet>``), started on demand by the first command that needs it and
gone once it has nothing left to do. One process per wallet is what makes parallel
purchases safe: its transactions come from one nonce sequence, its records from one
database, and it carries every purchase to its end whether or not the command that
started it is still waiting (``--no-wait``, a timeout, Ctrl-C).

Why not a nonce shared between CLI processes instead: the wallet's address is also the
agent's identity on the mesh, so two processes of one wallet would answer for one
address, each seeing only half of its conversations.

The socket is a Unix socket in a private (0700) directory, so only this OS user can
reach it; like ``ssh-agent``, a running wallet agent spends without asking for the
password again, until it exits. The protocol is one JSON request line, answered by
JSON event lines (``accepted``, ``phase``, ``outcome``, ``error``). This module holds the
messages and the client; it imports nothing heavy, so a CLI command that only talks to
a running agent starts fast.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import json
import os
import stat
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, ValidationError

from agentmesh.agents.service import parse_price
from agentmesh.errors import AgentMeshError, AgentMeshValueError

MAX_LINE = 1024 * 1024  # one request or event; inputs are at most this big
TASK_ID = r"^[0-9a-f]{32}$"
ADDRESS = r"^0x[0-9a-fA-F]{40}$"


def parse_budget(value: str | int) -> int:
    """A purchase's budget in base units: a price (``"0.2"``, ``"0.2 mUSD"``, base units
    as an int) above zero."""
    amount = parse_price(value)
    if amount <= 0:
        raise AgentMeshValueError(f"invalid budget {value!r}: must be above 0 mUSD")
    return amount


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Buy(_Request):
    """Start a purchase (``agentmesh task request``)."""

    op: Literal["buy"] = "buy"
    service: Annotated[str, Field(min_length=1, max_length=64)]
    input: dict[str, Any]
    budget: Annotated[str, Field(min_length=1, max_length=40)]
    providers: tuple[Annotated[str, Field(pattern=ADDRESS)], ...] = ()
    deadline_s: Annotated[StrictInt, Field(ge=10, le=7 * 24 * 3600)] | None = None
    wait: StrictBool = True  # stream the task's phases and outcome


class Watch(_Request):
    """Follow a task to its end."""

    op: Literal["watch"] = "watch"
    task: Annotated[str, Field(pattern=TASK_ID)]


class Resume(_Request):
    """Run a stalled task again now and follow it (``agentmesh task resume``)."""

    op: Literal["resume"] = "resume"
    task: Annotated[str, Field(pattern=TASK_ID)]
    wait: StrictBool = True


class Refund(_Request):
    """Take back the deposit of a job past its deadline (``agentmesh task refund``)."""

    op: Literal["refund"] = "refund"
    task: Annotated[str, Field(pattern=TASK_ID)]


class Status(_Request):
    """Who is running, and what it still carries."""

    op: Literal["status"] = "status"


class Defi(_Request):
    """Give a DeFi agent an intent (signed here, by the wallet's key), cancel one, or
    ask where one stands (``agentmesh defi``)."""

    op: Literal["defi"] = "defi"
    action: Literal["submit", "cancel", "query"]
    agent: Annotated[str, Field(pattern=ADDRESS)]
    intent: dict[str, Any] | None = None  # submit, cancel: the intent (its JSON object)
    intent_id: Annotated[str, Field(pattern=r"^0x[0-9a-f]{64}$")] | None = None  # query


AnyRequest = Buy | Watch | Resume | Refund | Status | Defi
Request = Annotated[AnyRequest, Field(discriminator="op")]


class Envelope(BaseModel):
    model_config = ConfigDict(extra="forbid")
    request: Request


def parse_request(line: bytes) -> AnyRequest:
    """A request line; ``AgentMeshValueError`` naming the problem if it is not one."""
    try:
        data = json.loads(line)
    except ValueError as exc:
        raise AgentMeshValueError(f"request is not JSON: {exc}") from None
    try:
        return Envelope.model_validate({"request": data}).request
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"][1:]) or "request"
        raise AgentMeshValueError(f"bad request: {where}: {first['msg']}") from None


# ---------------------------------------------------------------------- where it listens


def wallet_agent_name(wallet: str) -> str:
    """The agent that buys for keystore wallet ``wallet`` from the CLI."""
    return f"cli-{wallet}"


def lock_path(home: Path, agent_name: str) -> Path:
    """The lock the running agent ``agent_name`` holds (it contains its pid)."""
    return home / "agents" / agent_name / "wallet-agent.lock"


def running_pid(home: Path, agent_name: str) -> int | None:
    """The pid of the running wallet agent ``agent_name``, or None if none runs (its
    lock is free)."""
    path = lock_path(home, agent_name)
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:  # held: the agent runs
            text = path.read_text().strip()
            return int(text) if text.isdigit() else None
        return None  # we got it: nobody holds it (closing releases it)
    finally:
        os.close(fd)


def stop_wallet_agents(home: Path, timeout: float = 20.0) -> list[int]:
    """SIGTERM every running wallet agent of ``home`` and wait for them to exit;
    returns their pids. Their unfinished tasks resume when one starts again."""
    import signal
    import time

    pids = [
        pid
        for lock in (home / "agents").glob("*/wallet-agent.lock")
        if (pid := running_pid(home, lock.parent.name)) is not None
    ]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for lock in (home / "agents").glob("*/wallet-agent.lock"):
        while running_pid(home, lock.parent.name) is not None and time.monotonic() < deadline:
            time.sleep(0.05)
    return pids


def socket_path(home: Path, agent_name: str) -> Path:
    """The control socket of ``agent_name`` under ``home``.

    Unix socket paths are limited to ~107 bytes, and homes (test temp dirs) can be long:
    the socket lives in a private per-user directory under the temp dir, named by a
    hash of the home and the agent.
    """
    key = hashlib.sha256(f"{home.resolve()}\0{agent_name}".encode()).hexdigest()[:20]
    return private_runtime_dir() / f"{key}.sock"


def private_runtime_dir() -> Path:
    """``$TMPDIR/agentmesh-<uid>``, created 0700; refused if someone else owns it or
    others may write into it (they could put their own socket in our place)."""
    path = Path(tempfile.gettempdir()) / f"agentmesh-{os.getuid()}"
    path.mkdir(mode=0o700, exist_ok=True)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid():
        raise AgentMeshError(f"{path} is not a directory of this user: remove it")
    if info.st_mode & 0o077:
        raise AgentMeshError(f"{path} is open to other users (mode {info.st_mode & 0o777:o})")
    return path


# ---------------------------------------------------------------------- client


async def connect(path: Path) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
    """A connection to the agent listening on ``path``; None if none listens."""
    try:
        return await asyncio.open_unix_connection(str(path), limit=MAX_LINE)
    except (FileNotFoundError, ConnectionRefusedError):
        return None


async def exchange(path: Path, request: _Request) -> AsyncIterator[dict[str, Any]]:
    """Send ``request`` to the agent on ``path`` and yield its events until it closes
    the connection; ``AgentMeshError`` if nobody listens or the answer is garbled."""
    streams = await connect(path)
    if streams is None:
        raise AgentMeshError("the wallet's agent is not running")
    reader, writer = streams
    try:
        writer.write(request.model_dump_json().encode() + b"\n")
        await writer.drain()
        while line := await reader.readline():
            try:
                event = json.loads(line)
            except ValueError:
                raise AgentMeshError(f"the wallet's agent sent garbage: {line[:80]!r}") from None
            if not isinstance(event, dict) or "event" not in event:
                raise AgentMeshError(f"the wallet's agent sent no event: {line[:80]!r}")
            yield event
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@contextlib.contextmanager
def single_instance(lock_path: Path) -> Iterator[bool]:
    """Hold an exclusive lock on ``lock_path`` while inside; yields False (and holds
    nothing) when another process has it: that one is the wallet's agent."""
    lock_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        yield True
    finally:
        os.close(fd)  # closing releases the lock
