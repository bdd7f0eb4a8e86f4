"""``ChatModel``: the chat model a service (and an agent) talks to.

:class:`agentmesh.LocalModel` satisfies it structurally; so can anything else with the
same methods (a remote model, a scripted fake in a unit test), without subclassing::

    class Echo:
        sha256 = ""

        async def chat(self, messages, *, max_tokens=256, temperature=0.2):
            return messages[-1]["content"]
        ...

    agent = Agent("echo", model=Echo())

It is ``runtime_checkable``: ``isinstance(x, ChatModel)`` checks that the members exist
(not their signatures; mypy checks those).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload, runtime_checkable

if TYPE_CHECKING:
    from pydantic import BaseModel

__all__ = ["ChatMessage", "ChatModel"]

ChatMessage = dict[str, str]
"""One chat turn: ``{"role": "system" | "user" | "assistant", "content": "..."}``."""

T = TypeVar("T", bound="BaseModel")


@runtime_checkable
class ChatModel(Protocol):
    """A chat model: plain, streamed and schema-constrained completions.

    Implementations must be safe to share between an agent's concurrent tasks (calls
    may be serialized, as :class:`agentmesh.LocalModel` does).
    """

    @property
    def sha256(self) -> str:
        """Identifies the model's weights (the GGUF file's sha256 for a local model);
        agents publish it in their card and proposals. ``""`` when there is none."""
        ...

    async def chat(
        self, messages: Sequence[ChatMessage], *, max_tokens: int = 256, temperature: float = 0.2
    ) -> str:
        """One chat completion: the assistant's reply to ``messages``."""
        ...

    def stream(
        self, messages: Sequence[ChatMessage], *, max_tokens: int = 256, temperature: float = 0.2
    ) -> AsyncIterator[str]:
        """The same completion, yielded piece by piece as it is generated
        (an ``async def`` generator implements it)."""
        ...

    @overload
    async def structured(
        self,
        messages: Sequence[ChatMessage],
        schema: type[T],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
    ) -> T: ...

    @overload
    async def structured(
        self,
        messages: Sequence[ChatMessage],
        schema: Mapping[str, Any],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
    ) -> Any: ...

    async def structured(
        self,
        messages: Sequence[ChatMessage],
        schema: type[BaseModel] | Mapping[str, Any],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
    ) -> Any:
        """Output that follows a schema: for a pydantic model class, an instance of it;
        for a JSON-schema dict, the parsed JSON value. Raises
        :class:`agentmesh.ModelOutputError` when the output does not fit."""
        ...
