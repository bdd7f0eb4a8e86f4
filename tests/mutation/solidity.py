"""Plant listed Solidity mutants in the contracts, recompile, run the contract tests.

Runs inside a scratch copy made by ``tests.mutation.run`` (it refuses anywhere else),
with that copy's own editable install, so ``agentmesh.contracts`` resolves to the
scratch ``contracts/``. For each mutant: apply one text edit to ``contracts/src``,
compile the edited contract with the project's compiler (``compile_sources`` and
``write_artifacts`` of ``agentmesh.contracts.compile``, the code behind ``make
contracts``; only the edited file is compiled, the other artifacts stay as
committed), run the contract's tests, then restore source and artifact.

Each mutant names the tests most likely to catch it (``focus``, a pytest ``-k``
expression). Those run first; only when they pass does the full selection run, so a
killed mutant costs one short run and a survivor is confirmed by every test.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tests.mutation.common import (
    Baseline,
    InfraError,
    baseline,
    expand_tests,
    require_scratch,
    run_pytest,
)


@dataclass(frozen=True, slots=True)
class SolMutant:
    """One planted fault: replace ``find`` (which must occur exactly once) by ``replace``."""

    id: str
    contract: str
    what: str
    find: str
    replace: str
    focus: str = ""  # pytest -k expression for the tests that should catch it first


_NR = "nonReentrant"

MUTANTS: tuple[SolMutant, ...] = (
    # ------------------------------------------------------------------ TaskEscrow
    SolMutant(
        "E01",
        "TaskEscrow",
        "open: a deadline equal to now is accepted (<= becomes <)",
        "if (deadline <= block.timestamp) revert InvalidDeadline",
        "if (deadline < block.timestamp) revert InvalidDeadline",
        "invalid_deadline",
    ),
    SolMutant(
        "E02",
        "TaskEscrow",
        "open: the client may name itself provider (self-dealing check removed)",
        "if (provider == address(0) || provider == msg.sender) revert",
        "if (provider == address(0)) revert",
        "invalid_party",
    ),
    SolMutant(
        "E03",
        "TaskEscrow",
        "open: the provider may be its own arbiter",
        "arbiter == msg.sender || arbiter == provider) {",
        "arbiter == msg.sender) {",
        "invalid_party",
    ),
    SolMutant(
        "E04",
        "TaskEscrow",
        "open: no upper bound on the review window",
        "reviewWindow < MIN_REVIEW_WINDOW || reviewWindow > MAX_REVIEW_WINDOW",
        "reviewWindow < MIN_REVIEW_WINDOW",
        "invalid_review_window or review_window_bounds",
    ),
    SolMutant(
        "E05",
        "TaskEscrow",
        "open: a short deposit (fee-on-transfer token) is not detected",
        "if (received != amount) revert DepositMismatch(amount, received);",
        "",
        "fee_on_transfer",
    ),
    SolMutant(
        "E06",
        "TaskEscrow",
        "open: reentrancy guard removed",
        f"bytes32 termsHash\n    ) external {_NR} returns (uint256 jobId) {{",
        "bytes32 termsHash\n    ) external returns (uint256 jobId) {",
        "reentry",
    ),
    SolMutant(
        "E07",
        "TaskEscrow",
        "cancel: anyone may cancel (caller check removed)",
        "if (msg.sender != job.client) revert NotClient(jobId, msg.sender);\n"
        "        if (job.status != Status.Open) revert WrongStatus(jobId, job.status);\n"
        "        job.status = Status.Cancelled;",
        "if (job.status != Status.Open) revert WrongStatus(jobId, job.status);\n"
        "        job.status = Status.Cancelled;",
        "not_client",
    ),
    SolMutant(
        "E08",
        "TaskEscrow",
        "accept: accepting exactly at the deadline is refused (> becomes >=)",
        "if (block.timestamp > job.deadline) revert DeadlinePassed(jobId, job.deadline);\n"
        "        job.status = Status.Accepted;",
        "if (block.timestamp >= job.deadline) revert DeadlinePassed(jobId, job.deadline);\n"
        "        job.status = Status.Accepted;",
        "deadline_second or deadline_passed",
    ),
    SolMutant(
        "E09",
        "TaskEscrow",
        "submit: a result may be submitted after the deadline",
        "if (block.timestamp > job.deadline) revert DeadlinePassed(jobId, job.deadline);\n"
        "        if (resultHash == bytes32(0))",
        "if (resultHash == bytes32(0))",
        "deadline_passed or deadline_second",
    ),
    SolMutant(
        "E10",
        "TaskEscrow",
        "submit: an empty result hash is accepted",
        "if (resultHash == bytes32(0)) revert EmptyResult(jobId);",
        "",
        "empty_result",
    ),
    SolMutant(
        "E11",
        "TaskEscrow",
        "release: pays the client instead of the provider",
        "emit JobReleased(jobId, job.amount);\n"
        "        IERC20(job.token).safeTransfer(job.provider, job.amount);",
        "emit JobReleased(jobId, job.amount);\n"
        "        IERC20(job.token).safeTransfer(job.client, job.amount);",
        "release_pays or conserves",
    ),
    SolMutant(
        "E12",
        "TaskEscrow",
        "release: no status check (an accepted, undelivered job can be released)",
        "if (job.status != Status.Submitted) revert WrongStatus(jobId, job.status);\n"
        "        job.status = Status.Released;",
        "job.status = Status.Released;",
        "wrong_status",
    ),
    SolMutant(
        "E13",
        "TaskEscrow",
        "claim: claimable at the last second of the review window (<= becomes <)",
        "if (block.timestamp <= endsAt) revert ReviewWindowOpen(jobId, endsAt);",
        "if (block.timestamp < endsAt) revert ReviewWindowOpen(jobId, endsAt);",
        "review_window_open or review_window_edge",
    ),
    SolMutant(
        "E14",
        "TaskEscrow",
        "claim: reentrancy guard removed",
        f"function claim(uint256 jobId) external {_NR} {{",
        "function claim(uint256 jobId) external {",
        "reentry",
    ),
    SolMutant(
        "E15",
        "TaskEscrow",
        "refund: possible at the deadline itself (<= becomes <)",
        "if (block.timestamp <= job.deadline) revert DeadlineNotReached(jobId, job.deadline);",
        "if (block.timestamp < job.deadline) revert DeadlineNotReached(jobId, job.deadline);",
        "refund_on_the_deadline or deadline_not_reached",
    ),
    SolMutant(
        "E16",
        "TaskEscrow",
        "refund: a submitted job can be refunded (status check removed)",
        "if (job.status != Status.Open && job.status != Status.Accepted) {\n"
        "            revert WrongStatus(jobId, job.status);\n"
        "        }\n",
        "",
        "wrong_status",
    ),
    SolMutant(
        "E17",
        "TaskEscrow",
        "dispute: refused at the last second of the review window (> becomes >=)",
        "if (block.timestamp > endsAt) revert ReviewWindowClosed(jobId, endsAt);",
        "if (block.timestamp >= endsAt) revert ReviewWindowClosed(jobId, endsAt);",
        "review_window_closed or review_window_edge",
    ),
    SolMutant(
        "E18",
        "TaskEscrow",
        "resolve: the whole deposit cannot go to the provider (> becomes >=)",
        "if (providerAmount > job.amount) revert InvalidSplit",
        "if (providerAmount >= job.amount) revert InvalidSplit",
        "invalid_split or resolve_splits",
    ),
    SolMutant(
        "E19",
        "TaskEscrow",
        "resolve: the client's share goes to the provider",
        "if (clientAmount > 0) token.safeTransfer(job.client, clientAmount);",
        "if (clientAmount > 0) token.safeTransfer(job.provider, clientAmount);",
        "resolve_splits or conserves",
    ),
    SolMutant(
        "E20",
        "TaskEscrow",
        "resolve: anyone may resolve (arbiter check removed)",
        "if (msg.sender != job.arbiter) revert NotArbiter(jobId, msg.sender);",
        "",
        "not_arbiter",
    ),
    SolMutant(
        "E21",
        "TaskEscrow",
        "abandon: the deposit goes to the provider instead of back to the client",
        "emit JobAbandoned(jobId, job.amount);\n"
        "        IERC20(job.token).safeTransfer(job.client, job.amount);",
        "emit JobAbandoned(jobId, job.amount);\n"
        "        IERC20(job.token).safeTransfer(job.provider, job.amount);",
        "abandon",
    ),
    SolMutant(
        "E22",
        "TaskEscrow",
        "feedbackParties: a refund without acceptance becomes rateable",
        "|| (s == Status.Refunded && job.acceptedAt != 0);",
        "|| s == Status.Refunded;",
        "feedback_parties",
    ),
    # ------------------------------------------------------------------ AgentWallet
    SolMutant(
        "W01",
        "AgentWallet",
        "execute: anyone may call (onlyAgent removed)",
        "external\n        onlyAgent\n        whenNotPaused\n",
        "external\n        whenNotPaused\n",
        "only_agent",
    ),
    SolMutant(
        "W02",
        "AgentWallet",
        "execute: works while paused (whenNotPaused removed)",
        "external\n        onlyAgent\n        whenNotPaused\n",
        "external\n        onlyAgent\n",
        "pauses",
    ),
    SolMutant(
        "W03",
        "AgentWallet",
        "allowlist not enforced",
        "if (!_allowed[target][selector]) revert TargetNotAllowed(target, selector);",
        "",
        "target_not_allowed",
    ),
    SolMutant(
        "W04",
        "AgentWallet",
        "cap: spending exactly the remaining cap is refused (> becomes >=)",
        "if (amount > remaining) revert CapExceeded(token, amount, remaining);",
        "if (amount >= remaining) revert CapExceeded(token, amount, remaining);",
        "cap_exceeded or within_cap",
    ),
    SolMutant(
        "W05",
        "AgentWallet",
        "cap: native ETH without a cap is unlimited",
        "if (token == NATIVE) revert CapExceeded(NATIVE, amount, 0);",
        "",
        "native_value_without",
    ),
    SolMutant(
        "W06",
        "AgentWallet",
        "rolling window: a bucket stays counted for 25 hours (+ 24 > becomes + 24 >=)",
        "if (b.hour + 24 > hour) spent += b.spent;",
        "if (b.hour + 24 >= hour) spent += b.spent;",
        "rolling",
    ),
    SolMutant(
        "W07",
        "AgentWallet",
        "daily window: the day never resets",
        "d.day = day;\n                d.spent = 0;",
        "d.day = day;",
        "daily",
    ),
    SolMutant(
        "W08",
        "AgentWallet",
        "an approve on a capped token is not charged",
        "if (token == approvedToken) spent += approved;",
        "",
        "approve_on_capped",
    ),
    SolMutant(
        "W09",
        "AgentWallet",
        "executeWithApproval: the one-call allowance is not revoked",
        "IERC20(token).forceApprove(spender, 0);",
        "",
        "uncharged_allowance or execute_with_approval",
    ),
    SolMutant(
        "W10",
        "AgentWallet",
        "calldata starting with 0x00000000 passes as a plain transfer",
        "if (data.length != 0 && selector == NO_CALLDATA) revert MalformedCalldata(data.length);",
        "",
        "zero_selector or malformed",
    ),
    SolMutant(
        "W11",
        "AgentWallet",
        "withdraw: anyone may withdraw (onlyOwner removed)",
        "external\n        onlyOwner\n        nonReentrant\n    {\n        if (to == address(0))",
        "external\n        nonReentrant\n    {\n        if (to == address(0))",
        "owner_functions_refuse",
    ),
    SolMutant(
        "W12",
        "AgentWallet",
        "the wallet may be allowed to call itself",
        "if (target == address(this)) revert SelfCallForbidden();\n"
        "        _allowed[target][selector] = allowed;",
        "_allowed[target][selector] = allowed;",
        "self_call",
    ),
    SolMutant(
        "W13",
        "AgentWallet",
        "a swap may pay anyone (recipient rule removed)",
        "if (to != address(this)) revert SwapRecipientNotWallet(to);",
        "",
        "recipient or exact_out or simulated",
    ),
    SolMutant(
        "W14",
        "AgentWallet",
        "the token list is not checked",
        "if (!_swapTokens[path[i]]) revert TokenNotAllowed(path[i]);",
        "",
        "token_off_the_list",
    ),
    SolMutant(
        "W15",
        "AgentWallet",
        "a path one token longer than allowed passes (> becomes > 1 +)",
        "if (n < 2 || n > policy.maxPathLength)",
        "if (n < 2 || n > policy.maxPathLength + 1)",
        "path_longer",
    ),
    SolMutant(
        "W16",
        "AgentWallet",
        "the deadline is not bounded",
        "if (deadline > latest) revert DeadlineTooFar(deadline, latest);",
        "",
        "deadline",
    ),
    SolMutant(
        "W17",
        "AgentWallet",
        "the realized price is not checked against the TWAP",
        "if (amountOut < minimumOut) revert PriceBelowTwap(amountOut, minimumOut);",
        "",
        "manipulated",
    ),
    SolMutant(
        "W18",
        "AgentWallet",
        "the price check trusts the spent amount of zero (measured amountIn dropped)",
        "policy.oracle.consultPath(swap.path, amountIn, policy.twapWindow)",
        "policy.oracle.consultPath(swap.path, 0, policy.twapWindow)",
        "manipulated or reports_the_twap",
    ),
    SolMutant(
        "W19",
        "AgentWallet",
        "the delegation never expires",
        "if (block.timestamp > validUntil) revert DelegationExpired(validUntil);",
        "",
        "expired",
    ),
    SolMutant(
        "W20",
        "AgentWallet",
        "a swap selector to an unregistered target passes unchecked",
        "if (isSwap) revert RouterNotRegistered(target);",
        "",
        "registered_routers",
    ),
    SolMutant(
        "W21",
        "AgentWallet",
        "a router with another factory may be registered",
        "revert RouterFactoryMismatch(router, routerFactory);",
        "",
        "oracles_factory",
    ),
    SolMutant(
        "W22",
        "AgentWallet",
        "the one-call allowance may go to anyone when the target is a registered router",
        "if (!(spender == target && _routers[target]) && !_allowed[token][APPROVE]) {",
        "if (!_routers[target] && !_allowed[token][APPROVE]) {",
        "approve_anyone",
    ),
    # ------------------------------------------------------------------ PaymentChannel
    SolMutant(
        "C01",
        "PaymentChannel",
        "a voucher equal to what was claimed passes (<= becomes <)",
        "if (cumulative <= c.claimed) revert StaleVoucher(cumulative, c.claimed);",
        "if (cumulative < c.claimed) revert StaleVoucher(cumulative, c.claimed);",
        "stale",
    ),
    SolMutant(
        "C02",
        "PaymentChannel",
        "a voucher over the deposit passes",
        "if (cumulative > c.deposit) revert OverDeposit(cumulative, c.deposit);",
        "",
        "stale",
    ),
    SolMutant(
        "C03",
        "PaymentChannel",
        "any signature is accepted",
        "if (signer != c.payer) revert WrongSigner(signer, c.payer);",
        "",
        "another_channel",
    ),
    SolMutant(
        "C04",
        "PaymentChannel",
        "the payee may claim after the challenge delay",
        "if (block.timestamp > until) revert ChallengePeriodOver(until);",
        "",
        "way_out",
    ),
    SolMutant(
        "C05",
        "PaymentChannel",
        "the payer may withdraw during the challenge delay",
        "if (block.timestamp <= until) revert ChallengePeriodOpen(until);",
        "",
        "way_out",
    ),
    # ------------------------------------------------------------------ Staking
    SolMutant(
        "S01",
        "Staking",
        "unbonding stake can be withdrawn before the delay",
        "if (block.timestamp < a.unbondingEnds) revert UnbondingNotOver(a.unbondingEnds);",
        "",
        "unbonding",
    ),
    SolMutant(
        "S02",
        "Staking",
        "a dispute's hold does not stop a withdrawal",
        "if (a.holds != 0) revert StakeOnHold(a.holds);",
        "",
        "hold",
    ),
    SolMutant(
        "S03",
        "Staking",
        "a slash takes only active stake (unbonding stake escapes)",
        "a.unbonding -= uint128(amount - fromActive);",
        "",
        "hold",
    ),
    SolMutant(
        "S04",
        "Staking",
        "anyone may slash",
        "if (msg.sender != slasher || slasher == address(0)) revert NotSlasher(msg.sender);",
        "",
        "slasher",
    ),
    SolMutant(
        "S05",
        "Staking",
        "one permit more than configured (>= becomes >)",
        "if (++ahead >= permits) return false;",
        "if (++ahead > permits) return false;",
        "permits",
    ),
    SolMutant(
        "S06",
        "Staking",
        "a provider below the minimum is ranked (>= becomes >, then the minimum ranks not)",
        "return _accounts[provider].active >= minProviderStake;",
        "return _accounts[provider].active > minProviderStake;",
        "ranks",
    ),
    # ------------------------------------------------------------------ Consensus
    SolMutant(
        "V01",
        "Consensus",
        "scores are not clipped at consensus (a colluder keeps its weight)",
        "rank += stakes[v] * (scores[v] < consensus ? scores[v] : consensus);",
        "rank += stakes[v] * scores[v];",
        "colluding",
    ),
    SolMutant(
        "V02",
        "Consensus",
        "the median is taken past half the stake (>= becomes >)",
        "if (seen * 2 >= total) return scores[order[i]];",
        "if (seen * 2 > total) return scores[order[i]];",
        "colluding",
    ),
    SolMutant(
        "V03",
        "Consensus",
        "a reveal need not match its commit",
        "revert RevealMismatch(epoch, msg.sender);",
        "",
        "commit_reveal",
    ),
    SolMutant(
        "V04",
        "Consensus",
        "an epoch can be finalized twice",
        "if (finalized[epoch]) revert AlreadyFinalized(epoch);",
        "",
        "colluding",
    ),
    SolMutant(
        "V05",
        "Consensus",
        "a validator without a permit may commit",
        "if (!staking.hasPermit(msg.sender)) revert NoPermit(msg.sender);",
        "",
        "commit_reveal",
    ),
    SolMutant(
        "V06",
        "Consensus",
        "a late reveal is taken",
        "if (block.timestamp >= end + revealWindow) revert RevealClosed("
        "epoch, end + revealWindow);",
        "",
        "late",
    ),
    SolMutant(
        "V07",
        "Consensus",
        "an unranked provider earns incentive",
        "if (totalStake == 0 || !staking.isRanked(provider)) continue;",
        "if (totalStake == 0) continue;",
        "unranked",
    ),
    # ------------------------------------------------------------------ Jury
    SolMutant(
        "J01",
        "Jury",
        "a vote reveal need not match its commit",
        "revert VoteMismatch(jobId, msg.sender);",
        "",
        "votes_are_refused",
    ),
    SolMutant(
        "J02",
        "Jury",
        "anyone may vote, drawn or not",
        "if (!_isJuror(c, msg.sender)) revert NotJuror(jobId, msg.sender);",
        "",
        "votes_are_refused",
    ),
    SolMutant(
        "J03",
        "Jury",
        "a result not matching the on-chain hash is taken as evidence",
        "if (sha256(result) != escrow.getJob(jobId).resultHash) {",
        "if (false) {",
        "result_not_matching",
    ),
    SolMutant(
        "J04",
        "Jury",
        "terms that do not name the shown input pass",
        "if (sha256(terms) != job.termsHash || !_namesInput(terms, sha256(input))) {",
        "if (sha256(terms) != job.termsHash) {",
        "input_not_matching",
    ),
    SolMutant(
        "J05",
        "Jury",
        "half the jury is a majority",
        "uint256 majority = c.jurors.length / 2 + 1;",
        "uint256 majority = c.jurors.length / 2;",
        "split_vote or too_few_votes",
    ),
    SolMutant(
        "J06",
        "Jury",
        "unbonding stake escapes the slash",
        "c.slashed = (uint256(a.active) + a.unbonding) * slashBps / 10_000;",
        "c.slashed = uint256(a.active) * slashBps / 10_000;",
        "unbonding",
    ),
    SolMutant(
        "J07",
        "Jury",
        "a juror that did not vote is paid",
        "if (share == 0 || _ballots[jobId][juror].vote == Vote.None) continue;",
        "if (share == 0) continue;",
        "finds_for_the_provider",
    ),
    SolMutant(
        "J08",
        "Jury",
        "a party may sit on its own jury",
        "if (v == client || v == provider || !staking.hasPermit(v)) continue;",
        "if (!staking.hasPermit(v)) continue;",
        "skips_the_parties",
    ),
    SolMutant(
        "J09",
        "Jury",
        "a provider that never shows its result can still win",
        "if (!c.resultShown) verdict = Verdict.Refund;",
        "if (false) verdict = Verdict.Refund;",
        "does_not_show",
    ),
    SolMutant(
        "J10",
        "Jury",
        "the verdict leaves the provider's stake on hold",
        "staking.release(c.provider);",
        "",
        "finds_for_the_client",
    ),
    SolMutant(
        "J11",
        "Jury",
        "a dispute can be brought before the jury after the open window",
        "if (block.timestamp > closes) revert OpenWindowClosed(jobId, closes);",
        "",
        "never_brought",
    ),
    SolMutant(
        "E23",
        "TaskEscrow",
        "a release pays the provider without the protocol fee",
        "emit JobReleased(jobId, job.amount);\n"
        "        _payWithFee(job.token, job.provider, job.amount);",
        "emit JobReleased(jobId, job.amount);\n"
        "        IERC20(job.token).safeTransfer(job.provider, job.amount);",
        "release_pays or every_path",
    ),
    # ------------------------------------------------------------------ TwapOracle
    SolMutant(
        "O01",
        "TwapOracle",
        "consult takes any observation in the slot (its period is not checked)",
        "if (observedAt == 0 || observedAt / period != startPeriod)",
        "if (observedAt == 0)",
        "without_observations or averages",
    ),
    SolMutant(
        "O02",
        "TwapOracle",
        "no counterfactual accumulation since the pair's last update",
        "if (since > 0) {\n                cumulative +=",
        "if (since > type(uint32).max) {\n                cumulative +=",
        "averages or manipulated",
    ),
    SolMutant(
        "O03",
        "TwapOracle",
        "update overwrites the period's observation",
        "            return false;\n",
        "",
        "cannot_answer",
    ),
)


@dataclass(slots=True)
class SolResult:
    id: str
    contract: str
    what: str
    outcome: str  # killed, survived, timeout, stillborn (does not compile)
    seconds: float
    diff: str
    killed_by: str = ""


def _diff(m: SolMutant) -> str:
    minus = "\n".join(f"- {line}" for line in m.find.splitlines())
    plus = "\n".join(f"+ {line}" for line in m.replace.splitlines())
    return "\n".join(part for part in (minus, plus) if part)


def _first_failure(output: str) -> str:
    for line in output.splitlines():
        if line.startswith(("FAILED ", "ERROR ")):
            return line.split(" - ")[0].split(" ", 1)[1]
    return ""


def run_mutant(
    m: SolMutant,
    root: Path,
    base: Baseline,
    pytest_args: list[str],
    timeout: float,
) -> SolResult:
    """Plant ``m``, rebuild its contract, run the tests, restore; returns the outcome."""
    # The scratch copy's own compiler module (mypy cannot follow the package-dir mapping).
    compiler: Any = importlib.import_module("agentmesh.contracts.compile")

    started = time.monotonic()
    source = root / "contracts" / "src" / f"{m.contract}.sol"
    artifact = root / "contracts" / "build" / f"{m.contract}.json"
    text = source.read_text()
    if text.count(m.find) != 1:
        raise InfraError(f"{m.id}: the text to replace occurs {text.count(m.find)} times")
    saved = artifact.read_bytes()
    mutated = text.replace(m.find, m.replace)
    try:
        source.write_text(mutated)
        with tempfile.TemporaryDirectory() as tmp:
            # The other sources come along for the contract's relative imports.
            for sibling in source.parent.glob("*.sol"):
                (Path(tmp) / sibling.name).write_text(sibling.read_text())
            (Path(tmp) / source.name).write_text(mutated)
            try:
                built = compiler.compile_sources(Path(tmp))
            except RuntimeError:
                return SolResult(
                    m.id, m.contract, m.what, "stillborn", time.monotonic() - started, _diff(m)
                )
        compiler.write_artifacts({m.contract: built[m.contract]}, artifact.parent)
        runs = [[*pytest_args, "-k", m.focus, *base.args()]] if m.focus else []
        runs.append([*pytest_args, *base.args()])
        outcome, killed_by = "survived", ""
        for args in runs:
            run = run_pytest(sys.executable, root, args, timeout=timeout)
            if run.timed_out:
                outcome = "timeout"
                break
            if run.returncode == 5:  # the focus selected nothing: go on to the full run
                continue
            if run.returncode != 0:
                outcome, killed_by = "killed", _first_failure(run.output)
                break
        return SolResult(
            m.id, m.contract, m.what, outcome, time.monotonic() - started, _diff(m), killed_by
        )
    finally:
        source.write_text(text)
        artifact.write_bytes(saved)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--config", type=Path, required=True, help="JSON: tests per contract")
    parser.add_argument("--out", type=Path, required=True, help="where to write the results")
    parser.add_argument("--only", nargs="*", default=[], help="mutant ids or contract names")
    args = parser.parse_args(argv)
    root = Path.cwd()
    require_scratch(root)
    config: dict[str, Any] = json.loads(args.config.read_text())
    pytest_args: list[str] = config["pytest_args"]
    factor, slack = float(config["timeout_factor"]), float(config["timeout_slack_s"])
    wanted = [m for m in MUTANTS if not args.only or {m.id, m.contract} & set(args.only)]
    report: dict[str, Any] = {"contracts": {}, "mutants": []}
    try:
        for contract in dict.fromkeys(m.contract for m in wanted):
            tests = expand_tests(root, config["tests"][contract])
            print(f"solidity {contract}: baseline {' '.join(tests)}", flush=True)
            base = baseline(sys.executable, root, tests, pytest_args, env=dict(os.environ))
            timeout = base.seconds * factor + slack
            report["contracts"][contract] = {
                "tests": tests,
                "deselected": base.deselected,
                "baseline_s": round(base.seconds, 1),
                "timeout_s": round(timeout, 1),
            }
            for m in (m for m in wanted if m.contract == contract):
                result = run_mutant(m, root, base, pytest_args, timeout)
                print(f"  {m.id} {result.outcome:<9} {result.seconds:5.1f}s  {m.what}", flush=True)
                report["mutants"].append(asdict(result))
                args.out.write_text(json.dumps(report, indent=1))
    except InfraError as exc:
        report["error"] = str(exc)
        args.out.write_text(json.dumps(report, indent=1))
        print(f"error: {exc}", file=sys.stderr)
        return 2
    args.out.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
