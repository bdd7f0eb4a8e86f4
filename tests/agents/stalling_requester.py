"""A requester that freezes while checking a delivery (the test kills it there).

Its check blocks the whole process, like a crash between receiving the result and
releasing the payment. It first touches the file ``AGENTMESH_TEST_GATE`` names, so the
test knows it is frozen there.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from agentmesh import Agent

agent = Agent("stalling-buyer")


def freeze(result: Any) -> bool:
    if "AGENTMESH_TEST_GATE" in os.environ:
        Path(os.environ["AGENTMESH_TEST_GATE"]).touch()
    time.sleep(3600)
    return True


@agent.main
async def buy_once(me: Agent) -> None:
    await me.wait_for_providers("summarize", timeout=30)
    await me.buy("summarize", text="Summarize me, then get stuck.", budget="0.5", check=freeze)
