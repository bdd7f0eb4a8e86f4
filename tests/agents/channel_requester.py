"""A requester paying a stream of ``double`` calls over a payment channel (for the
channel fault tests).

Environment:

- ``AGENTMESH_TEST_PROVIDER``: the provider's address;
- ``AGENTMESH_TEST_ANSWERED``: a file it appends one JSON line to per answered call
  (``{"n": n, "result": r}``), and one for its close request;
- ``AGENTMESH_TEST_CALLS``: how many calls (default 0: until it is killed);
- ``AGENTMESH_TEST_WORKERS``: calls in flight at once (default 1);
- ``AGENTMESH_TEST_THEN``: ``request-close`` to ask the contract to close the channel
  right after the last answer (``{"close": "close requested", "channel": id}``), and
  exit; otherwise it just exits.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
from typing import Any

from agentmesh import Agent

agent = Agent("channel-requester")


def note(line: dict[str, Any]) -> None:
    # One write on an O_APPEND descriptor: whole lines, and kept through a SIGKILL.
    fd = os.open(os.environ["AGENTMESH_TEST_ANSWERED"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (json.dumps(line) + "\n").encode())
    finally:
        os.close(fd)


@agent.main
async def pay_for_calls(me: Agent) -> None:
    provider = os.environ["AGENTMESH_TEST_PROVIDER"]
    calls = int(os.environ.get("AGENTMESH_TEST_CALLS", "0"))
    workers = int(os.environ.get("AGENTMESH_TEST_WORKERS", "1"))
    numbers = itertools.count()
    await me.wait_for_providers("double", timeout=30)

    async def worker() -> None:
        for n in numbers:  # shared by the workers: each number is called once
            if calls and n >= calls:
                return
            result = await me.call(provider, "double", n=n, find_timeout=30)
            note({"n": n, "result": result})

    await asyncio.gather(*(worker() for _ in range(workers)))
    if os.environ.get("AGENTMESH_TEST_THEN") == "request-close":
        channel = me.payer.channel_to(provider)
        assert channel is not None
        # Straight to the contract (no peer): the payee learns it from the chain.
        done = await me.payer.close(channel, None)
        note({"close": done, "channel": "0x" + channel.id.hex()})
