"""The local web console (``agentmesh ui``): pages over what an agentmesh home already
holds (agent records, mesh stores, checkpoints, channel and DeFi stores) and the chain,
live while agents run. Read-only except approve/reject, which write a decision the
owning agent applies, exactly as ``agentmesh approve|reject`` do."""
