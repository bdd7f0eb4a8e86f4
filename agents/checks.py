"""The money checks of a trade, as pure functions (no chain, no mesh, no model).

``funded_job_problem`` is what a provider checks before it accepts an escrow job: the
job must pay this agent, the agreed amount, in the agreed token, under the terms of
this very conversation, with time left to work and an arbiter and review window it
accepts. ``delivery_problem`` is what a requester checks before it releases payment:
the result matches its hash, that hash is the one committed on chain, and the value
passes the default and the buyer's own checks. Each returns ``""`` when all is well,
else the first reason in words (sent to the other party and recorded).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from agentmesh.agents.service import CheckFn, check_result
from agentmesh.canonical import sha256_hex
from agentmesh.protocols.negotiation import terms_hash
from agentmesh.wallets.clients import EscrowJob, JobStatus

# Job states a provider may still accept (or find accepted/submitted after a restart).
ACCEPTABLE_STATUS = (JobStatus.OPEN, JobStatus.ACCEPTED, JobStatus.SUBMITTED)


@dataclass(frozen=True, slots=True)
class AgreedTerms:
    """What the provider agreed to in one conversation, and what it accepts of a job."""

    conversation: str  # hex conversation id
    requester: str
    provider: str  # this agent's address
    token: str
    price: int
    service: str
    input_sha256: str
    min_work_s: int  # the deadline must leave at least this long from now
    arbiter: str = ""  # '' accepts any arbiter
    max_review_window_s: int = 0  # 0 accepts any review window

    def terms_hash(self) -> bytes:
        return terms_hash(
            bytes.fromhex(self.conversation), self.service, self.input_sha256, self.price
        )


def funded_job_problem(job: EscrowJob, agreed: AgreedTerms, now: int) -> str:
    """Why the funded ``job`` does not match ``agreed`` at chain time ``now`` ('' if it does)."""
    checks = [
        (job.client.lower() == agreed.requester.lower(), "the client is not the requester"),
        (job.provider.lower() == agreed.provider.lower(), "the provider is not this agent"),
        (job.token.lower() == agreed.token.lower(), "the token is not the one agreed"),
        (job.amount == agreed.price, f"amount {job.amount} != agreed price {agreed.price}"),
        (job.terms_hash == agreed.terms_hash(), "the terms hash does not match this conversation"),
        (
            job.deadline >= now + agreed.min_work_s,
            f"the deadline leaves less than {agreed.min_work_s}s",
        ),
        (
            not agreed.arbiter or job.arbiter.lower() == agreed.arbiter.lower(),
            f"the arbiter {job.arbiter} is not the one this agent trusts",
        ),
        (
            not agreed.max_review_window_s or job.review_window <= agreed.max_review_window_s,
            f"the review window {job.review_window}s exceeds {agreed.max_review_window_s}s",
        ),
        (job.status in ACCEPTABLE_STATUS, f"the job is {job.status.name}"),
    ]
    return next((why for ok, why in checks if not ok), "")


def delivery_problem(
    result: str,
    result_sha256: str,
    onchain_hash: bytes,
    *,
    check: CheckFn | None = None,
    result_type: Any = None,
) -> str:
    """Why a delivered ``result`` must not be paid for ('' when it may)."""
    if sha256_hex(result) != result_sha256:
        return "the result does not match its hash"
    if onchain_hash.hex() != result_sha256:
        return "the result hash on chain differs from the delivered one"
    try:
        value = json.loads(result)
    except ValueError:
        return "result is not JSON"
    ok, why = check_result(value, check, result_type, whose="the buyer's")
    return "" if ok else why
