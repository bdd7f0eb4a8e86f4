"""An agent's part in the cases of the ``Jury`` contract, as client, provider or juror.

Every agent on a chain with a jury runs ``JuryDuty.tick`` now and then (``Agent`` does
when it holds a disputed job or may be drawn):

- **Client**: a purchase it disputed whose arbiter is the jury is brought before one
  (``open``, paying the dispute fee), the jurors drawn, and the agreed terms and the
  input shown (from ``records.evidence``, kept when the job was funded).
- **Provider**: in a case against it, it shows the result it delivered (kept when it
  submitted).
- **Juror** (a validator, with a ``judge``): it judges from what the parties showed,
  commits its vote and reveals it (the ballot is derived from its key and the job, so a
  restart neither loses nor changes it), and settles the case once it can be.

Anyone settles a case that is due; the escrow's and the jury's own timeouts decide the
rest (see ``contracts/src/Jury.sol``).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from agentmesh.errors import AgentMeshError, AgentMeshValueError
from agentmesh.wallets.clients import JobStatus
from agentmesh.wallets.jury import Ballot, JuryCase, JuryClient, Verdict, Vote

if TYPE_CHECKING:
    from agentmesh.chain.deployment import Deployment

    from .agent import Agent

log = logging.getLogger("agentmesh.agent")

# (service, input JSON text, result JSON text) -> the juror's vote; None: it cannot
# judge that service and abstains (no commit: it earns no share of the fee).
Judge = Callable[[str, str, str], Awaitable[Vote | None]]


def arbiter_address(setting: str, deployment: Deployment) -> str:
    """The arbiter an agent names in its jobs, from its ``[agent] arbiter`` setting."""
    if setting == "deployer":
        return deployment.deployer
    if setting == "jury":
        if "Jury" not in deployment.contracts:
            raise AgentMeshValueError(
                'arbiter = "jury", but this chain\'s agentmesh deployment has no Jury contract'
            )
        return deployment.address("Jury")
    return setting


def juror_ballot(key: bytes, jury: str, job_id: int, vote: Vote) -> Ballot:
    """A juror's ballot with a salt derived from its key, the jury and the job: the same
    after a restart, unknowable to anyone else before the reveal."""
    salt = hashlib.sha256(
        b"agentmesh.jury.ballot"
        + key
        + bytes.fromhex(jury.removeprefix("0x"))
        + job_id.to_bytes(32, "big")
    ).digest()
    return Ballot(job_id, vote, salt)


class JuryDuty:
    """One agent's cases before the jury (client, provider and, with ``judge``, juror)."""

    def __init__(self, agent: Agent, judge: Judge | None = None) -> None:
        self.agent = agent
        self.judge = judge
        self.jury = JuryClient(agent.wallet, agent.chain.deployment.address("Jury"))
        self.from_block = agent.chain.deployment.block_number
        self.decided: set[int] = set()

    async def tick(self) -> None:
        """Do whatever this agent's cases need now; a failed step is logged, not raised
        (the next tick tries again)."""
        for step in (self._as_client, self._as_provider, self._as_juror):
            try:
                await step()
            except AgentMeshError as exc:
                log.warning("%s: jury step failed: %s", self.agent.name, exc.user_message)

    # ------------------------------------------------------------------ client

    async def bring(self, job_id: int) -> JuryCase:
        """Bring disputed ``job_id`` before the jury (once), draw the jurors, show the
        terms and the input."""
        case = await self.jury.case(job_id)
        if case.client == _ZERO:
            job = await self.agent.escrow.get_job(job_id)
            closes = job.disputed_at + (await self.jury.terms()).open_window
            if await self.agent.clock.now() > closes:
                # Too late to bring it (the agent was away): the dispute is dropped and
                # the job paid to the provider, as the contract has it.
                log.warning("job %s: the jury's open window closed; dispute dropped", job_id)
                await self.jury.settle_unopened(job_id)
                return case
            await self.jury.open(job_id)
            case = await self.jury.case(job_id)
        if case.verdict == Verdict.NONE and not case.drawn:
            await self.jury.draw(job_id)
            case = await self.jury.case(job_id)
        now = await self.agent.clock.now()
        if case.verdict == Verdict.NONE and not case.input_shown and now < case.evidence_ends:
            evidence = self.agent.records.evidence(job_id)
            if evidence is None or not evidence.terms:
                raise AgentMeshError(f"job {job_id}: no terms kept to show the jury")
            await self.jury.show_input(job_id, evidence.terms.encode(), evidence.input.encode())
            case = await self.jury.case(job_id)
        return case

    async def _as_client(self) -> None:
        from agentmesh.protocols.negotiation import Role, TaskStatus

        for row in self.agent.records.tasks(TaskStatus.DISPUTED):
            if Role.of(row.conversation) is not Role.REQUESTER or row.job_id is None:
                continue
            if row.job_id in self.decided:
                continue
            job = await self.agent.escrow.get_job(row.job_id)
            if job.arbiter.lower() != self.jury.address.lower():
                continue
            await self._settle_if_due(await self.bring(row.job_id))
            job = await self.agent.escrow.get_job(row.job_id)
            if job.status != JobStatus.DISPUTED:
                # Recorded now rather than at the dispute watch's next look.
                self.decided.add(row.job_id)
                self.agent.runner.disputes.settled(row, job)

    # ------------------------------------------------------------------ provider

    async def _as_provider(self) -> None:
        if not self.agent.services:
            return  # sells nothing: no case can be against it
        for job_id in await self._job_ids("CaseOpened", provider=self.agent.address):
            if job_id in self.decided:
                continue
            case = await self.jury.case(job_id)
            if case.verdict != Verdict.NONE:
                self.decided.add(job_id)
                continue
            now = await self.agent.clock.now()
            if case.drawn and not case.result_shown and now < case.evidence_ends:
                evidence = self.agent.records.evidence(job_id)
                if evidence is None or not evidence.result:
                    log.warning("job %s: no result kept to show the jury", job_id)
                    continue
                await self.jury.show_result(job_id, evidence.result.encode())
            await self._settle_if_due(await self.jury.case(job_id))

    # ------------------------------------------------------------------ juror

    async def _as_juror(self) -> None:
        if self.judge is None:
            return
        me = self.agent.address.lower()
        for log_entry in await self._logs("JurorsDrawn"):
            job_id = int(log_entry["args"]["jobId"])
            if job_id in self.decided:
                continue
            if me not in {j.lower() for j in log_entry["args"]["jurors"]}:
                continue
            await self.serve(job_id)

    async def serve(self, job_id: int) -> JuryCase:
        """One juror step on ``job_id``: judge and commit, reveal, or settle."""
        case = await self.jury.case(job_id)
        if case.verdict != Verdict.NONE:
            self.decided.add(job_id)
            return case
        now = await self.agent.clock.now()
        committed, revealed = await self.jury.vote_of(job_id, self.agent.address)
        key = bytes(self.agent.wallet.account.key)
        if not committed and now < case.commit_ends and case.input_shown and case.result_shown:
            vote = await self._judge(job_id)
            if vote is None:
                log.warning("job %s: %s cannot judge it; abstains", job_id, self.agent.name)
                self.decided.add(job_id)
                return case
            await self.jury.commit_vote(juror_ballot(key, self.jury.address, job_id, vote))
            case = await self.jury.case(job_id)
        elif (
            committed
            and revealed == Vote.NONE
            and now < case.reveal_ends
            and (now >= case.commit_ends or case.committed == len(case.jurors))
        ):
            vote = await self._judge(job_id)
            if vote is not None:
                await self.jury.reveal_vote(juror_ballot(key, self.jury.address, job_id, vote))
                case = await self.jury.case(job_id)
        return await self._settle_if_due(case)

    async def _judge(self, job_id: int) -> Vote | None:
        """The vote on what the parties showed (the same each time: judged again on a
        reveal after a restart, it must match the commit; the judge is deterministic)."""
        assert self.judge is not None
        (shown_input,) = await self._logs("InputShown", jobId=job_id)
        (shown_result,) = await self._logs("ResultShown", jobId=job_id)
        terms = json.loads(bytes(shown_input["args"]["terms"]).decode())
        return await self.judge(
            str(terms["service"]),
            bytes(shown_input["args"]["input"]).decode(),
            bytes(shown_result["args"]["result"]).decode(),
        )

    # ------------------------------------------------------------------ shared

    async def _settle_if_due(self, case: JuryCase) -> JuryCase:
        if case.verdict != Verdict.NONE:
            self.decided.add(case.job_id)
            return case
        now = await self.agent.clock.now()
        everyone = case.for_release + case.for_refund == len(case.jurors)
        shown = case.input_shown and case.result_shown
        if case.drawn and (now >= case.reveal_ends or (everyone and shown)):
            await self.jury.settle(case.job_id)
            case = await self.jury.case(case.job_id)
            self.decided.add(case.job_id)
            log.info("job %s: the jury decided %s", case.job_id, case.verdict.label)
        return case

    async def _logs(self, event: str, **filters: Any) -> list[Any]:
        found = await getattr(self.jury.contract.events, event)().get_logs(
            from_block=self.from_block, argument_filters=filters or None
        )
        return list(found)

    async def _job_ids(self, event: str, **filters: Any) -> list[int]:
        return sorted({int(e["args"]["jobId"]) for e in await self._logs(event, **filters)})


_ZERO = "0x0000000000000000000000000000000000000000"
