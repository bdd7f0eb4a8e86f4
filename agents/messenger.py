"""``MeshMessenger``: the negotiation protocol's requests and notices over a mesh node."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from agentmesh.errors import AgentMeshError
from agentmesh.mesh.card import AgentCard
from agentmesh.message import Message
from agentmesh.protocols.negotiation import NEGOTIATION, Ack

if TYPE_CHECKING:
    from agentmesh.mesh.node import MeshNode

log = logging.getLogger("agentmesh.agent")


class MeshMessenger:
    """Sends ``agentmesh.negotiation@1`` messages from one agent's node."""

    def __init__(self, node: MeshNode) -> None:
        self.node = node

    @property
    def card(self) -> AgentCard:
        if self.node.card is None:
            raise AgentMeshError("the mesh node has not started: it has no card yet")
        return self.node.card

    def find(self, service: str) -> list[AgentCard]:
        return self.node.find(service)

    async def ask(
        self,
        peer: AgentCard,
        message: Message,
        conversation: str,
        *,
        expect: tuple[type[Message], ...] = (Ack,),
        timeout: float | None = None,
        retries: int | None = None,
    ) -> Message:
        """One negotiation request to ``peer`` in ``conversation`` (hex); the reply."""
        reply: Message = await self.node.request(
            peer,
            message,
            protocol=NEGOTIATION.name,
            version=NEGOTIATION.version,
            expect=expect,
            timeout=timeout,
            retries=retries,
            conversation=bytes.fromhex(conversation),
        )
        return reply

    async def tell(
        self, peer: AgentCard, message: Message, conversation: str, *, retries: int | None = None
    ) -> bool:
        """A notice whose loss changes nothing on chain: a failure is logged, not raised."""
        try:
            await self.ask(peer, message, conversation, retries=retries)
        except AgentMeshError as exc:
            log.info("%s to %s not delivered: %s", type(message).__name__, peer.address, exc)
            return False
        return True
