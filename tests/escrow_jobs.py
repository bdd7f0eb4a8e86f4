"""Drive TaskEscrow jobs into a named state through the real contract (shared by tests)."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import JobStatus
from agentmesh.wallets.wallet import Wallet
from tests.conftest import advance_time, chain_now, escrow_for, token_for

SLACK_S = 30  # moved past a boundary by this much when the exact second does not matter


def h32(label: str) -> bytes:
    """A recognisable 32-byte hash for terms, results and reasons."""
    return hashlib.sha256(label.encode()).digest()


@dataclass
class Parties:
    client: Wallet
    provider: Wallet
    arbiter: Wallet
    stranger: Wallet

    def by_role(self, role: str) -> Wallet:
        wallet: Wallet = getattr(self, role)
        return wallet

    @property
    def addresses(self) -> list[str]:
        return [w.address for w in (self.client, self.provider, self.arbiter, self.stranger)]


async def open_job(
    chain: Chain,
    p: Parties,
    *,
    amount: int,
    deadline_in: int,
    review_window: int,
    client: Wallet | None = None,
) -> int:
    """Open (approve + deposit) a job from ``client`` (default: the parties' client)."""
    client = client or p.client
    job_id, _ = await escrow_for(chain, client).open(
        provider=p.provider.address,
        token=token_for(chain, client),
        amount=amount,
        deadline=await chain_now(chain) + deadline_in,
        review_window=review_window,
        arbiter=p.arbiter.address,
        terms_hash=h32("terms"),
    )
    return int(job_id)


# Steps from an open job to each state ("wait-deadline"/"wait-review" move chain time).
PATHS: dict[str, tuple[str, ...]] = {
    "open": (),
    "cancelled": ("cancel",),
    "refunded_open": ("wait-deadline", "refund"),
    "accepted": ("accept",),
    "refunded_accepted": ("accept", "wait-deadline", "refund"),
    "submitted": ("accept", "submit"),
    "released": ("accept", "submit", "release"),
    "claimed": ("accept", "submit", "wait-review", "claim"),
    "disputed": ("accept", "submit", "dispute"),
    "resolved": ("accept", "submit", "dispute", "resolve"),
}

# The on-chain status each named state ends in.
STATE_STATUS: dict[str, JobStatus] = {
    "open": JobStatus.OPEN,
    "accepted": JobStatus.ACCEPTED,
    "submitted": JobStatus.SUBMITTED,
    "disputed": JobStatus.DISPUTED,
    "released": JobStatus.RELEASED,
    "claimed": JobStatus.CLAIMED,
    "resolved": JobStatus.RESOLVED,
    "cancelled": JobStatus.CANCELLED,
    "refunded_open": JobStatus.REFUNDED,
    "refunded_accepted": JobStatus.REFUNDED,
}


async def drive(
    chain: Chain,
    p: Parties,
    job_id: int,
    state: str,
    *,
    split: int,
    deadline_in: int,
    review_window: int,
) -> None:
    """Move an open job to ``state``; ``split`` is the provider's share on resolve."""
    client, provider = escrow_for(chain, p.client), escrow_for(chain, p.provider)
    steps: dict[str, Callable[[], Awaitable[Any]]] = {
        "wait-deadline": lambda: advance_time(chain, deadline_in + SLACK_S),
        "wait-review": lambda: advance_time(chain, review_window + SLACK_S),
        "cancel": lambda: client.cancel(job_id),
        "refund": lambda: client.refund(job_id),
        "accept": lambda: provider.accept(job_id),
        "submit": lambda: provider.submit(job_id, h32("result")),
        "release": lambda: client.release(job_id),
        "claim": lambda: provider.claim(job_id),
        "dispute": lambda: client.dispute(job_id, h32("reason")),
        "resolve": lambda: escrow_for(chain, p.arbiter).resolve(job_id, split),
    }
    for step in PATHS[state]:
        await steps[step]()
