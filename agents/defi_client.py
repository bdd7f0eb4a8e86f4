"""The owner's side of ``agentmesh.defi@1``: sign intents and cancellations, and send
them to the agent that operates the wallet."""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentmesh.protocols.defi import (
    PROTOCOL,
    VERSION,
    AnyIntent,
    CancelIntent,
    IntentQuery,
    IntentState,
    SubmitIntent,
    cancel_typed_data,
    intent_id,
    typed_data,
)
from agentmesh.wallets.wallet import Wallet

if TYPE_CHECKING:
    from agentmesh.mesh.card import AgentCard
    from agentmesh.mesh.node import MeshNode


async def sign_intent(owner: Wallet, intent: AnyIntent) -> SubmitIntent:
    """``intent`` signed (EIP-712) by ``owner``: what the agent accepts from the owner."""
    data = typed_data(intent, await owner.chain_id())
    signature = owner.sign_typed_data(data["domain"], data["types"], data["message"])
    return SubmitIntent(intent=intent, signature="0x" + signature.hex())


async def sign_cancel(owner: Wallet, intent: AnyIntent) -> CancelIntent:
    """The owner's signed cancellation of ``intent``."""
    chain_id = await owner.chain_id()
    iid = intent_id(intent, chain_id)
    data = cancel_typed_data(iid, intent.wallet, chain_id)
    signature = owner.sign_typed_data(data["domain"], data["types"], data["message"])
    return CancelIntent(intent_id=iid, signature="0x" + signature.hex())


class DefiClient:
    """Send intents to a DeFi agent over a mesh node (the owner's)."""

    def __init__(self, node: MeshNode, timeout: float = 30.0) -> None:
        self.node = node
        self.timeout = timeout

    async def _ask(
        self, agent: str | AgentCard, msg: SubmitIntent | CancelIntent | IntentQuery
    ) -> IntentState:
        return await self.node.request(
            agent,
            msg,
            protocol=PROTOCOL,
            version=VERSION,
            expect=(IntentState,),
            timeout=self.timeout,
        )

    async def submit(self, agent: str | AgentCard, signed: SubmitIntent) -> IntentState:
        """Give ``agent`` the intent; its state, or ``RemoteError`` with the refusal."""
        return await self._ask(agent, signed)

    async def cancel(self, agent: str | AgentCard, signed: CancelIntent) -> IntentState:
        return await self._ask(agent, signed)

    async def query(self, agent: str | AgentCard, intent_id_hex: str) -> IntentState:
        return await self._ask(agent, IntentQuery(intent_id=intent_id_hex))
