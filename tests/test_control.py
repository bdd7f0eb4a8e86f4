"""The wallet agent's control socket: every malformed request is refused with a reason
that names it, over a real Unix socket, and the server keeps serving."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from types import SimpleNamespace

import pytest

from agentmesh.agents.control import Buy, Refund, Status, exchange, parse_request
from agentmesh.agents.wallet_agent import WalletAgentServer
from agentmesh.errors import AgentMeshError, AgentMeshValueError

TASK = "ab" * 16


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b"not json", "request is not JSON"),
        (b"[1, 2]", "bad request: request:"),
        (b'{"op": "steal"}', "bad request: request:"),
        (b'{"op": "refund", "task": "xyz"}', "bad request: refund.task:"),
        (b'{"op": "refund", "task": "' + TASK.encode() + b'", "extra": 1}', "refund.extra"),
        (b'{"op": "resume", "task": "' + TASK.encode() + b'", "wait": "yes"}', "resume.wait"),
        (
            b'{"op": "buy", "service": "x", "input": {}, "budget": "1", "deadline_s": "60"}',
            "buy.deadline_s",
        ),
        (b'{"op": "buy", "service": "", "input": {}, "budget": "1"}', "buy.service"),
    ],
)
def test_malformed_requests_are_refused_naming_the_problem(line: bytes, message: str) -> None:
    with pytest.raises(AgentMeshValueError, match="bad request|not JSON") as refused:
        parse_request(line)
    assert message in refused.value.user_message


def test_well_formed_requests_parse() -> None:
    assert parse_request(b'{"op": "status"}') == Status()
    refund = json.dumps({"op": "refund", "task": TASK}).encode()
    assert parse_request(refund) == Refund(task=TASK)
    buy = parse_request(b'{"op": "buy", "service": "s", "input": {"t": 1}, "budget": "0.2"}')
    assert isinstance(buy, Buy) and buy.wait is True and buy.providers == ()


async def test_the_server_answers_garbage_with_an_error_and_keeps_serving(
    tmp_path: Path,
) -> None:
    # Only the status path touches the agent: a stand-in with a name and empty records.
    records = SimpleNamespace(tasks=lambda status=None: [])
    agent = SimpleNamespace(name="cli-x", address="0x" + "1" * 40, records=records)
    path = tmp_path / "s.sock"
    server = WalletAgentServer(agent, path, idle_s=60)  # type: ignore[arg-type]
    stop = asyncio.Event()
    serving = asyncio.create_task(server.run(stop))
    try:
        while not path.exists():
            await asyncio.sleep(0.01)
        assert path.stat().st_mode & 0o777 == 0o600
        cases = [
            (b"garbage\n", "request is not JSON"),
            (b'{"op": "steal"}\n', "bad request: request:"),
            (b"x" * (1024 * 1024 + 10) + b"\n", "request longer than 1024 KiB"),
        ]
        for raw, expected in cases:
            reader, writer = await asyncio.open_unix_connection(str(path), limit=2**21)
            writer.write(raw)
            await writer.drain()
            event = json.loads(await reader.readline())
            writer.close()
            assert event == {"event": "error", "message": event["message"]}
            assert event["message"].startswith(expected), event["message"]
        events = [e async for e in exchange(path, Status())]
        assert [e["event"] for e in events] == ["status"]
        assert events[0]["agent"] == "cli-x" and events[0]["unfinished"] == []
    finally:
        stop.set()
        await serving
    assert not path.exists()  # the socket goes with the server
    with pytest.raises(AgentMeshError, match="the wallet's agent is not running"):
        [e async for e in exchange(path, Status())]
