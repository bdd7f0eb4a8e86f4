"""Handler registration keyed by protocol, version and payload schema digest."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from agentmesh.message import Message

if TYPE_CHECKING:
    from agentmesh.envelope import Envelope
    from agentmesh.mesh.node import MeshNode

MESH_PROTOCOL = "mesh"
MESH_VERSION = "1"


class ErrorReply(Message):
    """What a node answers when it cannot or will not handle a request."""

    code: str
    detail: str


@dataclass(frozen=True, slots=True)
class HandlerContext:
    """What a handler knows about the message it handles.

    ``record(key, value)`` queues an effect that is committed in the same transaction
    that marks the message handled: either both are durable or neither is, so after a
    crash a handler re-runs only if its effects were not kept.
    """

    node: MeshNode
    envelope: Envelope
    effects: list[tuple[str, str]] = field(default_factory=list)

    def record(self, key: str, value: str) -> None:
        self.effects.append((key, value))

    @property
    def sender(self) -> str:
        return self.envelope.sender

    @property
    def conversation(self) -> bytes:
        return self.envelope.conversation


# A handler is ``async def`` (runs as a task) or a plain function for cheap CPU-only work
# (runs inline as the message is dispatched, saving a task and a loop turn).
Handler = Callable[[HandlerContext, Any], Awaitable[Message | None] | Message | None]


@dataclass(frozen=True, slots=True)
class Route:
    protocol: str
    version: str
    message_type: type[Message]
    handler: Handler
    replies: tuple[type[Message], ...] = ()
    is_async: bool = True


@dataclass
class Routes:
    """Routes by (protocol, version, schema digest), and every known message type."""

    by_key: dict[tuple[str, str, bytes], Route] = field(default_factory=dict)
    types: dict[bytes, type[Message]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.learn(ErrorReply)

    def learn(self, message_type: type[Message]) -> None:
        self.types[message_type.schema_digest()] = message_type

    def add(self, route: Route) -> None:
        key = (route.protocol, route.version, route.message_type.schema_digest())
        if key in self.by_key:
            raise ValueError(
                f"a handler for {route.message_type.__name__} on "
                f"{route.protocol}@{route.version} is already registered"
            )
        self.by_key[key] = route
        self.learn(route.message_type)
        for reply in route.replies:
            self.learn(reply)

    def find(self, protocol: str, version: str, digest: bytes) -> Route | ErrorReply:
        route = self.by_key.get((protocol, version, digest))
        if route is not None:
            return route
        versions = sorted({v for (p, v, _) in self.by_key if p == protocol})
        if not versions:
            known = sorted({f"{p}@{v}" for (p, v, _) in self.by_key})
            return ErrorReply(
                code="unknown_protocol",
                detail=f"no protocol {protocol!r} here; known: {', '.join(known) or 'none'}",
            )
        if version not in versions:
            return ErrorReply(
                code="unknown_version",
                detail=f"{protocol} version {version!r} not supported; "
                f"supported: {', '.join(versions)}",
            )
        return ErrorReply(
            code="unknown_message",
            detail=f"no handler for that message type on {protocol}@{version}",
        )
