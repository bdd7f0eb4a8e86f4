"""Reference requester: buys summaries from whichever provider offers the best deal.

    AGENTMESH_PASSWORD=... agentmesh run agents/requester.py --wallet buyer

Environment: ``AGENTMESH_AGENT_NAME`` (default ``buyer``), ``AGENTMESH_BUY_COUNT``
(default 1), ``AGENTMESH_BUDGET`` (default ``0.2`` mUSD per summary). It waits for a
provider, buys, prints each result and stops.
"""

from __future__ import annotations

import os

from rich.console import Console

from agentmesh.agents.agent import Agent
from agentmesh.wallets.units import MUSD_DECIMALS, format_amount

TEXTS = (
    "ZeroMQ is a high-performance asynchronous messaging library aimed at distributed "
    "applications. It provides message queues without a dedicated broker.",
    "An escrow holds a payment until both sides have done what they agreed: the buyer "
    "pays in, the seller delivers, and the money is released to the seller.",
    "Quantized models store weights in four or five bits instead of sixteen, so a model "
    "runs on a laptop CPU with little loss of quality.",
)

agent = Agent(os.environ.get("AGENTMESH_AGENT_NAME", "buyer"))
console = Console()


@agent.main
async def buy_summaries(me: Agent) -> None:
    """Buy ``AGENTMESH_BUY_COUNT`` summaries, one after another."""
    count = int(os.environ.get("AGENTMESH_BUY_COUNT", "1"))
    budget = os.environ.get("AGENTMESH_BUDGET", "0.2")
    await me.wait_for_providers("summarize", timeout=30)
    for number in range(count):
        outcome = await me.buy("summarize", text=TEXTS[number % len(TEXTS)], budget=budget)
        price = format_amount(outcome.price, MUSD_DECIMALS, "mUSD")
        console.print(f"[green]✓[/] summary {number + 1} from {outcome.provider} for {price}:")
        console.print(f"  {outcome.result}")
