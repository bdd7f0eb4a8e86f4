"""A summarizer that holds each task until a gate file exists (for the restart test).

``AGENTMESH_TEST_GATE`` names the file; the test kills the agent while it waits.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from agentmesh import Agent, LocalModel, ServiceContext

agent = Agent("slow-summarizer", model=LocalModel.default())
GATE = Path(os.environ.get("AGENTMESH_TEST_GATE", "/nonexistent/gate"))


@agent.service("summarize", price="0.05 mUSD")
async def summarize(ctx: ServiceContext, text: str) -> str:
    """Wait for the gate, then summarize with the local model."""
    while not GATE.exists():
        await asyncio.sleep(0.05)
    return await ctx.model.chat(
        [
            {"role": "system", "content": "Summarize in one sentence."},
            {"role": "user", "content": text},
        ],
        max_tokens=48,
    )
