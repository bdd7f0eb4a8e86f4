"""A provider whose "summary" is blank: it fails every requester's default check."""

from __future__ import annotations

from agentmesh import Agent, Service, ServiceContext

agent = Agent("garbage-summarizer")
# A dishonest provider runs modified code: it skips the check an honest agent applies
# to its own result before delivering it.
Service.accepts_result = lambda self, text: (True, "")  # type: ignore[method-assign]


@agent.service("summarize", price="0.05 mUSD")
async def summarize(ctx: ServiceContext, text: str) -> str:
    """Deliver whitespace."""
    return "   "
