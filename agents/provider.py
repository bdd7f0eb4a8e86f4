"""Reference provider: sells one-paragraph summaries written by the local model.

    AGENTMESH_PASSWORD=... agentmesh run agents/provider.py --wallet summarizer

Environment: ``AGENTMESH_AGENT_NAME`` (default ``summarizer``) and ``AGENTMESH_PRICE``
(default ``0.05 mUSD``), so several providers with different prices can run from
this one file.
"""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import Field

from agentmesh import Agent, LocalModel, ServiceContext

SYSTEM = "Summarize the user's text in one or two sentences. Reply with the summary only."

agent = Agent(
    os.environ.get("AGENTMESH_AGENT_NAME", "summarizer"),
    model=LocalModel.default(),
)


@agent.service("summarize", price=os.environ.get("AGENTMESH_PRICE", "0.05 mUSD"))
async def summarize(
    ctx: ServiceContext, text: Annotated[str, Field(min_length=1, max_length=20_000)]
) -> str:
    """Summarize a text in one or two sentences."""
    summary = await ctx.model.chat(
        [{"role": "system", "content": SYSTEM}, {"role": "user", "content": text}],
        max_tokens=96,
    )
    # A tiny model can answer with nothing; never deliver an empty result.
    return summary.strip() or text.strip()[:200]
