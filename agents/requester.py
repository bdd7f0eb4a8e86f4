"""Reference requester: buys summaries from whichever provider offers the best deal.

    AGENTMESH_PASSWORD=... agentmesh run agents/requester.py --wallet buyer

Environment: ``AGENTMESH_AGENT_NAME`` (default ``buyer``), ``AGENTMESH_BUY_COUNT``
(default 1), ``AGENTMESH_CONCURRENCY`` (default 1), ``AGENTMESH_BUDGET`` (default
``0.2`` mUSD per summary), ``AGENTMESH_PROVIDERS`` (providers to wait for, default 1).
It waits for the providers, buys, prints each result and stops; it exits non-zero if
any purchase did not settle.
"""

from __future__ import annotations

import asyncio
import os

from rich.console import Console

from agentmesh import Agent, AgentMeshError
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
    """Buy ``AGENTMESH_BUY_COUNT`` summaries, ``AGENTMESH_CONCURRENCY`` at a time."""
    count = int(os.environ.get("AGENTMESH_BUY_COUNT", "1"))
    budget = os.environ.get("AGENTMESH_BUDGET", "0.2")
    providers = int(os.environ.get("AGENTMESH_PROVIDERS", "1"))
    slots = asyncio.Semaphore(max(1, int(os.environ.get("AGENTMESH_CONCURRENCY", "1"))))
    await me.wait_for_providers("summarize", count=providers, timeout=60)

    async def buy_one(number: int) -> bool:
        async with slots:
            try:
                outcome = await me.buy("summarize", text=TEXTS[number % len(TEXTS)], budget=budget)
            except AgentMeshError as exc:
                console.print(f"[red]✗[/] summary {number + 1}: {exc.user_message}")
                return False
        price = format_amount(outcome.price, MUSD_DECIMALS, "mUSD")
        console.print(f"[green]✓[/] summary {number + 1} from {outcome.provider} for {price}:")
        console.print(f"  {outcome.result}")
        return True

    settled = await asyncio.gather(*(buy_one(n) for n in range(count)))
    if not all(settled):
        raise AgentMeshError(f"{settled.count(False)} of {count} purchases did not settle")
