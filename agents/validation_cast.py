"""The providers of the validation demo and its tests: one honest, two dishonest.

All sell ``embed`` through the normal market with the protocol followed to the letter;
only the dishonest ones' answers are wrong:

- ``honest_embedder``: its declared model's embeddings (as ``agents/embedder.py``).
- ``garbage_embedder``: a random unit vector per call (the right length, nothing else).
- ``impostor_embedder``: declares the local model (its card names the model's sha256)
  but answers with a cheap hashed bag-of-words embedding instead of the model's output:
  plausible vectors that even keep paraphrases close, but not what the declared model
  computes, which re-execution catches.
"""

from __future__ import annotations

import hashlib
import math
import random
import re
from typing import Annotated

from pydantic import Field

from agentmesh.llm import LocalModel

from .agent import Agent
from .service import ServiceContext

DIMENSIONS = 768
PRICE = "0.0005 mUSD"
Text = Annotated[str, Field(min_length=1, max_length=4_000)]


def _unit(values: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in values)) or 1.0
    return [round(v / norm, 6) for v in values]


def bag_of_words(text: str, dimensions: int = DIMENSIONS) -> list[float]:
    """A unit vector with one hashed bucket per word: shared words, close vectors."""
    vector = [0.0] * dimensions
    for word in re.findall(r"[a-z0-9]+", text.lower()):
        digest = hashlib.sha256(word.encode()).digest()
        bucket = int.from_bytes(digest[:4], "big") % dimensions
        vector[bucket] += 1.0 if digest[4] & 1 else -1.0
    return _unit(vector)


def garbage_embedder(name: str, *, model: LocalModel | None = None, price: str = PRICE) -> Agent:
    """A provider of ``embed`` answering random unit vectors."""
    agent = Agent(name, model=model)
    rng = random.Random()

    @agent.service("embed", price=price)
    async def embed(ctx: ServiceContext, text: Text) -> list[float]:
        """A unit-length embedding of a text (cosine similarity = dot product)."""
        return _unit([rng.gauss(0.0, 1.0) for _ in range(DIMENSIONS)])

    return agent


def impostor_embedder(name: str, *, model: LocalModel, price: str = PRICE) -> Agent:
    """A provider of ``embed`` that declares ``model`` and answers bag-of-words vectors."""
    agent = Agent(name, model=model)

    @agent.service("embed", price=price)
    async def embed(ctx: ServiceContext, text: Text) -> list[float]:
        """A unit-length embedding of a text (cosine similarity = dot product)."""
        return bag_of_words(text)

    return agent


def honest_embedder(name: str, *, model: LocalModel, price: str = PRICE) -> Agent:
    """A provider of ``embed`` answering its declared model's embeddings."""
    agent = Agent(name, model=model)

    @agent.service("embed", price=price)
    async def embed(ctx: ServiceContext, text: Text) -> list[float]:
        """A unit-length embedding of a text (cosine similarity = dot product)."""
        return [round(v, 6) for v in await model.embed(text)]

    return agent
