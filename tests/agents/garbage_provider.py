"""A provider whose "summary" is blank: it fails every requester's default check."""

from __future__ import annotations

from agentmesh.agents.agent import Agent
from agentmesh.agents.service import ServiceContext

agent = Agent("garbage-summarizer")


@agent.service("summarize", price="0.05 mUSD")
async def summarize(ctx: ServiceContext, text: str) -> str:
    """Deliver whitespace."""
    return "   "
