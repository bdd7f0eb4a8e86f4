"""A validator agent on the real model, its role run as the agent's main (for the
restart test): it probes, commits, reveals and finalizes as the chain's epochs go."""

from __future__ import annotations

from agentmesh import Agent, LocalModel, Validator, ValidatorSettings

agent = Agent("validator", model=LocalModel.default(n_threads=1))


@agent.main
async def main(agent: Agent) -> None:
    role = Validator(agent, ValidatorSettings(canaries=1, reexec=1, poll_s=0.2))
    try:
        await role.run()
    finally:
        role.close()
