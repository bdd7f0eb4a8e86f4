"""Reference DeFi agent: carries out the intents that owners of ``AgentWallet``\\ s it
operates send it over the mesh (``agentmesh.defi@1``).

    AGENTMESH_PASSWORD=... agentmesh run agentmesh.agents.defi_agent --wallet defi-bot

Environment: ``AGENTMESH_AGENT_NAME`` (default ``defi-agent``) and
``AGENTMESH_DEFI_RETRY_S`` (default 60: how long a deferred step waits before it is
tried again). The person delegates with ``agentmesh delegate create --agent <address>``.
"""

from __future__ import annotations

import os

from agentmesh.agents.agent import Agent
from agentmesh.agents.defi_desk import DefiDesk

agent = Agent(os.environ.get("AGENTMESH_AGENT_NAME", "defi-agent"))
desk = DefiDesk(agent, retry_s=int(os.environ.get("AGENTMESH_DEFI_RETRY_S", "60")))
