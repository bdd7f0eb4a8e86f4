"""Reference validator: scores the providers of a service every epoch and sits on juries.

    agentmesh stake add 20 --validator --wallet validator
    AGENTMESH_PASSWORD=... agentmesh run agentmesh.agents.validator_agent --wallet validator

Each epoch of the suite's ``Consensus`` contract it buys from a sample of the live
providers of the service through the market as a fresh identity (canaries, and
re-execution on its own copy of the model for providers declaring the same model),
commits its scores, reveals them after the epoch and finalizes it; when drawn for a
jury it judges the disputed result by re-running it (see ``agentmesh.agents.validator``).
It needs a validator permit: enough stake among the registered validators.
Environment: ``AGENTMESH_AGENT_NAME`` (default ``validator``), ``AGENTMESH_SERVICE``
(default ``embed``, the service its probes know).
"""

from __future__ import annotations

import os

from agentmesh import Agent, LocalModel, Validator, ValidatorSettings

agent = Agent(os.environ.get("AGENTMESH_AGENT_NAME", "validator"), model=LocalModel.default())


@agent.main
async def main(agent: Agent) -> None:
    role = Validator(agent, ValidatorSettings(service=os.environ.get("AGENTMESH_SERVICE", "embed")))
    try:
        await role.run()
    finally:
        role.close()
