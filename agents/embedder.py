"""Reference provider: sells text embeddings from the local model, paid per call.

    AGENTMESH_PASSWORD=... agentmesh run agentmesh.agents.embedder --wallet embedder

``embed`` returns a unit-length vector (the mean of the model's token embeddings), so
the dot product of two results is their cosine similarity; ``classify`` returns the
label whose embedding is nearest the text's. Both are cheap enough to sell per call
over a payment channel (``Agent.call``); concurrent calls are embedded as one batch.
Environment: ``AGENTMESH_AGENT_NAME`` (default ``embedder``), ``AGENTMESH_PRICE``
(default ``0.0005 mUSD`` a call).
"""

from __future__ import annotations

import os
from typing import Annotated

from pydantic import Field

from agentmesh import Agent, LocalModel, ServiceContext

MODEL = LocalModel.default()
PRICE = os.environ.get("AGENTMESH_PRICE", "0.0005 mUSD")
Text = Annotated[str, Field(min_length=1, max_length=4_000)]
Label = Annotated[str, Field(min_length=1, max_length=200)]

agent = Agent(os.environ.get("AGENTMESH_AGENT_NAME", "embedder"), model=MODEL)
_labels: dict[str, list[float]] = {}  # label -> its embedding (labels repeat across calls)


@agent.service("embed", price=PRICE)
async def embed(ctx: ServiceContext, text: Text) -> list[float]:
    """A unit-length embedding of a text (cosine similarity = dot product)."""
    return [round(v, 6) for v in await MODEL.embed(text)]


@agent.service("classify", price=PRICE)
async def classify(
    ctx: ServiceContext,
    text: Text,
    labels: Annotated[list[Label], Field(min_length=2, max_length=32)],
) -> str:
    """The label nearest the text by embedding similarity."""
    vector = await MODEL.embed(text)
    best, best_score = labels[0], -2.0
    for label in labels:
        if label not in _labels:
            if len(_labels) >= 4_096:  # bounded: labels come from callers
                _labels.clear()
            _labels[label] = await MODEL.embed(label)
        score = sum(a * b for a, b in zip(vector, _labels[label], strict=True))
        if score > best_score:
            best, best_score = label, score
    return best
