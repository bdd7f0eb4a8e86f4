"""The money checks as pure functions: what a provider checks before it accepts a funded
escrow job, and what a requester checks before it pays for a delivery.

No chain, no mesh: each test builds the on-chain job (an ``EscrowJob``) by hand, changes
one field, and asserts the exact reason given (the reason is what the other party is
told and what is recorded). A check that can be deleted without a test failing is a
check that does not exist.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import pytest
from eth_account import Account

from agentmesh.agents.checks import (
    ACCEPTABLE_STATUS,
    AgreedTerms,
    delivery_problem,
    funded_job_problem,
)
from agentmesh.canonical import canonical_json, sha256_hex
from agentmesh.protocols.negotiation import terms_hash
from agentmesh.wallets.clients import EscrowJob, JobStatus

NOW = 1_700_000_000  # chain time of the check
MIN_WORK_S = 60
PRICE = 50_000
CONVERSATION = bytes(range(16))
SERVICE = "summarize"
INPUT = canonical_json({"text": "hello"})
REQUESTER = Account.create().address
PROVIDER = Account.create().address
TOKEN = Account.create().address
ARBITER = Account.create().address
STRANGER = Account.create().address


def agreed(**changes: Any) -> AgreedTerms:
    """What the provider agreed to in ``CONVERSATION``."""
    values: dict[str, Any] = {
        "conversation": CONVERSATION.hex(),
        "requester": REQUESTER,
        "provider": PROVIDER,
        "token": TOKEN,
        "price": PRICE,
        "service": SERVICE,
        "input_sha256": sha256_hex(INPUT),
        "min_work_s": MIN_WORK_S,
        "arbiter": ARBITER,
        "max_review_window_s": 600,
    }
    values.update(changes)
    return AgreedTerms(**values)


def funded(**changes: Any) -> EscrowJob:
    """The job an honest requester opens for ``agreed()``."""
    values: dict[str, Any] = {
        "job_id": 7,
        "client": REQUESTER,
        "provider": PROVIDER,
        "arbiter": ARBITER,
        "token": TOKEN,
        "amount": PRICE,
        "deadline": NOW + 3_600,
        "review_window": 600,
        "accepted_at": 0,
        "submitted_at": 0,
        "status": JobStatus.OPEN,
        "terms_hash": terms_hash(CONVERSATION, SERVICE, sha256_hex(INPUT), PRICE),
        "result_hash": bytes(32),
    }
    values.update(changes)
    return EscrowJob(**values)


# ---------------------------------------------------------------------------- funded job


def test_the_job_opened_for_the_agreed_terms_passes() -> None:
    assert funded().terms_hash == agreed().terms_hash()
    assert funded_job_problem(funded(), agreed(), NOW) == ""


def test_addresses_compare_without_regard_to_checksum_case() -> None:
    job = funded(
        client=REQUESTER.lower(),
        provider=PROVIDER.lower(),
        token=TOKEN.lower(),
        arbiter=ARBITER.lower(),
    )
    assert funded_job_problem(job, agreed(), NOW) == ""


def test_a_job_from_another_client_is_refused() -> None:
    problem = funded_job_problem(funded(client=STRANGER), agreed(), NOW)
    assert problem == "the client is not the requester"


def test_a_job_paying_another_provider_is_refused() -> None:
    problem = funded_job_problem(funded(provider=STRANGER), agreed(), NOW)
    assert problem == "the provider is not this agent"


def test_a_job_in_another_token_is_refused() -> None:
    problem = funded_job_problem(funded(token=STRANGER), agreed(), NOW)
    assert problem == "the token is not the one agreed"


@pytest.mark.parametrize("amount", [PRICE - 1, 1, PRICE + 1, PRICE * 2], ids=str)
def test_an_amount_other_than_the_agreed_price_is_refused(amount: int) -> None:
    # Same terms hash as agreed: only the deposit is wrong (less and more both refused:
    # more is a deposit the provider cannot honestly claim as the agreed price).
    problem = funded_job_problem(funded(amount=amount), agreed(), NOW)
    assert problem == f"amount {amount} != agreed price {PRICE}"


TERMS_MISMATCH = "the terms hash does not match this conversation"


def test_the_terms_of_another_conversation_are_refused() -> None:
    other = terms_hash(bytes(16), SERVICE, sha256_hex(INPUT), PRICE)
    assert funded_job_problem(funded(terms_hash=other), agreed(), NOW) == TERMS_MISMATCH


def test_the_terms_of_another_price_are_refused() -> None:
    # The amount is right, but the job commits to other terms (the requester could later
    # claim before an arbiter that a different price was agreed).
    other = terms_hash(CONVERSATION, SERVICE, sha256_hex(INPUT), PRICE + 1)
    assert funded_job_problem(funded(terms_hash=other), agreed(), NOW) == TERMS_MISMATCH


@pytest.mark.parametrize(
    ("service", "text"),
    [("translate", INPUT), (SERVICE, canonical_json({"text": "other input"}))],
    ids=["other-service", "other-input"],
)
def test_the_terms_of_another_service_or_input_are_refused(service: str, text: str) -> None:
    other = terms_hash(CONVERSATION, service, sha256_hex(text), PRICE)
    assert funded_job_problem(funded(terms_hash=other), agreed(), NOW) == TERMS_MISMATCH


def test_a_zero_terms_hash_is_refused() -> None:
    assert funded_job_problem(funded(terms_hash=bytes(32)), agreed(), NOW) == TERMS_MISMATCH


def test_a_deadline_exactly_min_work_away_is_accepted() -> None:
    job = funded(deadline=NOW + MIN_WORK_S)
    assert funded_job_problem(job, agreed(), NOW) == ""


def test_a_deadline_one_second_short_of_min_work_is_refused() -> None:
    job = funded(deadline=NOW + MIN_WORK_S - 1)
    problem = funded_job_problem(job, agreed(), NOW)
    assert problem == f"the deadline leaves less than {MIN_WORK_S}s"


def test_a_deadline_already_past_is_refused() -> None:
    problem = funded_job_problem(funded(deadline=NOW - 1), agreed(), NOW)
    assert problem == f"the deadline leaves less than {MIN_WORK_S}s"


def test_no_trusted_arbiter_accepts_any_arbiter() -> None:
    job = funded(arbiter=STRANGER)
    assert funded_job_problem(job, agreed(arbiter=""), NOW) == ""


def test_an_arbiter_other_than_the_trusted_one_is_refused() -> None:
    problem = funded_job_problem(funded(arbiter=STRANGER), agreed(), NOW)
    assert problem == f"the arbiter {STRANGER} is not the one this agent trusts"


def test_no_review_window_limit_accepts_any_window() -> None:
    job = funded(review_window=30 * 24 * 3600)
    assert funded_job_problem(job, agreed(max_review_window_s=0), NOW) == ""


def test_a_review_window_at_the_limit_is_accepted() -> None:
    assert funded_job_problem(funded(review_window=600), agreed(), NOW) == ""


def test_a_review_window_one_second_over_the_limit_is_refused() -> None:
    problem = funded_job_problem(funded(review_window=601), agreed(), NOW)
    assert problem == "the review window 601s exceeds 600s"


@pytest.mark.parametrize("status", list(ACCEPTABLE_STATUS), ids=lambda s: s.name)
def test_a_job_open_or_already_taken_by_this_provider_is_accepted(status: JobStatus) -> None:
    # ACCEPTED/SUBMITTED: this provider took it before a restart and resumes it.
    assert funded_job_problem(funded(status=status), agreed(), NOW) == ""


REFUSED_STATUS = [s for s in JobStatus if s not in ACCEPTABLE_STATUS]


def test_the_acceptable_statuses_are_exactly_open_accepted_submitted() -> None:
    assert set(ACCEPTABLE_STATUS) == {JobStatus.OPEN, JobStatus.ACCEPTED, JobStatus.SUBMITTED}
    assert {s.name for s in REFUSED_STATUS} == {
        "NONE",
        "RELEASED",
        "CLAIMED",
        "REFUNDED",
        "DISPUTED",
        "RESOLVED",
        "CANCELLED",
    }


@pytest.mark.parametrize("status", REFUSED_STATUS, ids=lambda s: s.name)
def test_a_job_in_any_other_status_is_refused(status: JobStatus) -> None:
    problem = funded_job_problem(funded(status=status), agreed(), NOW)
    assert problem == f"the job is {status.name}"


def test_the_first_problem_is_the_one_reported() -> None:
    # Everything wrong at once: the reason names the first check (who the client is).
    job = funded(client=STRANGER, amount=1, terms_hash=bytes(32), status=JobStatus.CANCELLED)
    assert funded_job_problem(job, agreed(), NOW) == "the client is not the requester"
    job = dataclasses.replace(job, client=REQUESTER)
    assert funded_job_problem(job, agreed(), NOW) == f"amount 1 != agreed price {PRICE}"


# ---------------------------------------------------------------------------- delivery


RESULT = json.dumps("A fox jumps over a dog.")
RESULT_SHA = sha256_hex(RESULT)


def test_a_delivery_matching_its_hash_on_chain_passes() -> None:
    assert delivery_problem(RESULT, RESULT_SHA, bytes.fromhex(RESULT_SHA)) == ""


def test_a_result_that_does_not_match_its_hash_is_refused() -> None:
    tampered = json.dumps("A fox jumps over a cat.")
    problem = delivery_problem(tampered, RESULT_SHA, bytes.fromhex(RESULT_SHA))
    assert problem == "the result does not match its hash"


def test_a_hash_on_chain_other_than_the_delivered_one_is_refused() -> None:
    other = bytes.fromhex(sha256_hex(json.dumps("something else")))
    problem = delivery_problem(RESULT, RESULT_SHA, other)
    assert problem == "the result hash on chain differs from the delivered one"


def test_nothing_on_chain_yet_is_refused() -> None:
    problem = delivery_problem(RESULT, RESULT_SHA, bytes(32))
    assert problem == "the result hash on chain differs from the delivered one"


def test_a_result_that_is_not_json_is_refused() -> None:
    text = "A fox jumps over a dog."  # plain text, not a JSON document
    problem = delivery_problem(text, sha256_hex(text), bytes.fromhex(sha256_hex(text)))
    assert problem == "result is not JSON"


def _deliver(value: Any, **kwargs: Any) -> str:
    text = json.dumps(value)
    digest = sha256_hex(text)
    return delivery_problem(text, digest, bytes.fromhex(digest), **kwargs)


@pytest.mark.parametrize("value", ["", [], {}, None], ids=["str", "list", "dict", "null"])
def test_an_empty_result_is_refused(value: Any) -> None:
    assert _deliver(value) == "result is empty"


@pytest.mark.parametrize("value", ["   ", "\n\t "], ids=["spaces", "whitespace"])
def test_a_blank_result_is_refused(value: str) -> None:
    assert _deliver(value) == "result is blank"


def test_a_result_of_the_wrong_type_is_refused() -> None:
    problem = _deliver(42, result_type=str)
    assert problem == "result is not a valid <class 'str'>: input: Input should be a valid string"


def test_a_result_of_the_declared_type_passes() -> None:
    assert _deliver({"summary": "ok", "words": 1}, result_type=dict[str, Any]) == ""


def test_a_check_saying_no_refuses_the_result() -> None:
    assert _deliver("fine", check=lambda value: False) == "result failed the buyer's check"


def test_a_check_that_raises_refuses_the_result_without_crashing() -> None:
    def broken(value: Any) -> bool:
        raise KeyError("summary")

    assert _deliver("fine", check=broken) == "the buyer's check raised KeyError: 'summary'"


def test_a_check_saying_yes_passes_and_sees_the_decoded_value() -> None:
    seen: list[Any] = []

    def check(value: Any) -> bool:
        seen.append(value)
        return True

    assert _deliver({"summary": "ok"}, check=check) == ""
    assert seen == [{"summary": "ok"}]


def test_the_hashes_are_checked_before_the_value() -> None:
    # A blank result that also fails its hash is refused for the hash.
    text = json.dumps("   ")
    problem = delivery_problem(text, RESULT_SHA, bytes.fromhex(RESULT_SHA), check=lambda v: True)
    assert problem == "the result does not match its hash"


def test_by_default_any_arbiter_and_review_window_are_accepted() -> None:
    # Left out, the optional limits accept anything (what a provider with no arbiter of
    # its own and no review-window cap agrees to).
    terms = AgreedTerms(
        conversation=CONVERSATION.hex(),
        requester=REQUESTER,
        provider=PROVIDER,
        token=TOKEN,
        price=PRICE,
        service=SERVICE,
        input_sha256=sha256_hex(INPUT),
        min_work_s=MIN_WORK_S,
    )
    job = funded(review_window=30 * 24 * 3600, arbiter=STRANGER)
    assert funded_job_problem(job, terms, NOW) == ""


def test_the_agreed_terms_cannot_be_changed_once_made() -> None:
    terms = agreed()
    with pytest.raises(dataclasses.FrozenInstanceError):
        terms.price = PRICE // 2  # type: ignore[misc]
    assert funded_job_problem(funded(amount=PRICE // 2), terms, NOW).startswith("amount")


def test_a_result_that_only_converts_to_the_buyers_type_is_refused() -> None:
    # "5" is not an int: the buyer's result_type is checked strictly, not coerced.
    text = canonical_json("5")
    problem = delivery_problem(
        text, sha256_hex(text), bytes.fromhex(sha256_hex(text)), result_type=int
    )
    assert problem.startswith("result is not a valid")
