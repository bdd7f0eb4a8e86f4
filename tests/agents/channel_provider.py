"""A provider selling ``double`` over payment channels (for the channel fault tests).

Environment:

- ``AGENTMESH_TEST_WORK``: a file it appends each call's input to when the work starts
  (after the call's voucher is committed), so a test can compare what is claimed on
  chain with the work really done;
- ``AGENTMESH_TEST_WORK_S``: seconds each call then takes (default 0), so a stream of
  calls keeps some in flight;
- ``AGENTMESH_TEST_HOLD``: while this file exists, each call that gets there waits
  before answering (its input appended to ``<file>.held`` first), so a test knows
  exactly which calls are in flight when it kills the agent.
"""

from __future__ import annotations

import asyncio
import os

from agentmesh import Agent, ServiceContext

agent = Agent("channel-provider")
WORK = os.environ.get("AGENTMESH_TEST_WORK", os.devnull)
WORK_S = float(os.environ.get("AGENTMESH_TEST_WORK_S", "0"))
HOLD = os.environ.get("AGENTMESH_TEST_HOLD", "")


def note(path: str, n: int) -> None:
    # One write on an O_APPEND descriptor: whole lines, even with calls in parallel, and
    # in the file as soon as it returns (a SIGKILL loses nothing written).
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, f"{n}\n".encode())
    finally:
        os.close(fd)


@agent.service("double", price="0.001 mUSD")
async def double(ctx: ServiceContext, n: int) -> int:
    """Twice ``n`` (the work is recorded first)."""
    note(WORK, n)
    if WORK_S:
        await asyncio.sleep(WORK_S)
    if HOLD and os.path.exists(HOLD):
        note(HOLD + ".held", n)
        while os.path.exists(HOLD):
            await asyncio.sleep(0.02)
    return 2 * n
