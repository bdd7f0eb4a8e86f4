"""A provider with no model: ``echo`` returns the text upper-cased (the rules price it).

For tests where the chain and the network are what is tested, not the model.
"""

from __future__ import annotations

from agentmesh import Agent, ServiceContext

agent = Agent("echo-seller")


@agent.service("echo", price="0.05 mUSD")
async def echo(ctx: ServiceContext, text: str) -> str:
    """The text, upper-cased."""
    return text.upper()
