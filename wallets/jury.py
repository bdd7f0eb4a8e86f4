"""The ``Jury`` client: a disputed escrow job decided by staked validators.

The client of a disputed job that names the jury as arbiter opens a case (paying the
dispute fee), anyone draws the jurors from the block after, the parties show the input
and the result against the hashes on chain, jurors commit and reveal their votes, and
anyone settles (see ``contracts/src/Jury.sol`` for the rules and the outcomes).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import IntEnum

from eth_abi.abi import encode as abi_encode
from eth_typing import ChecksumAddress
from web3.exceptions import ContractLogicError
from web3.types import TxParams, TxReceipt

from agentmesh.contracts import load_artifact
from agentmesh.envelope import keccak
from agentmesh.wallets.clients import TokenClient, _Client, checksum
from agentmesh.wallets.wallet import GAS_MARGIN, Wallet, guard_rpc, revert_from


class Verdict(IntEnum):
    """How a case ended (``NONE`` while it runs)."""

    NONE = 0
    RELEASE = 1  # the client lost: the provider is paid
    REFUND = 2  # the provider lost: refunded, slashed, the client compensated
    NO_QUORUM = 3  # no majority: refunded, nobody slashed
    EXPIRED = 4  # the escrow's dispute timeout came first

    @property
    def label(self) -> str:
        return self.name.lower().replace("_", " ")


class Vote(IntEnum):
    NONE = 0
    RELEASE = 1
    REFUND = 2


@dataclass(frozen=True, slots=True)
class JuryCase:
    """One case as the contract holds it (amounts in token base units, times chain time)."""

    job_id: int
    client: ChecksumAddress
    provider: ChecksumAddress
    opened: int
    draw_block: int
    evidence_ends: int
    commit_ends: int
    reveal_ends: int
    verdict: Verdict
    input_shown: bool
    result_shown: bool
    committed: int
    for_release: int
    for_refund: int
    slashed: int
    compensation: int
    jurors: tuple[ChecksumAddress, ...]

    @property
    def drawn(self) -> bool:
        return self.evidence_ends != 0


@dataclass(frozen=True, slots=True)
class JuryTerms:
    """The contract's settings."""

    jury_size: int
    fee: int
    slash_bps: int
    open_window: int
    evidence_window: int
    commit_window: int
    reveal_window: int


@dataclass(frozen=True, slots=True)
class Ballot:
    """A juror's vote and salt, kept from commit to reveal."""

    job_id: int
    vote: Vote
    salt: bytes

    def commitment(self, juror: str) -> bytes:
        return keccak(
            abi_encode(
                ["uint256", "address", "uint8", "bytes32"],
                [self.job_id, checksum(juror), int(self.vote), self.salt],
            )
        )


def ballot(job_id: int, vote: Vote, salt: bytes | None = None) -> Ballot:
    """A ballot with a fresh random salt."""
    return Ballot(job_id, vote, salt if salt is not None else os.urandom(32))


class JuryClient(_Client):
    """The Jury contract, sending as ``wallet``."""

    contract_name = "Jury"

    @classmethod
    async def deploy(
        cls,
        wallet: Wallet,
        *,
        escrow: str,
        staking: str,
        token: str,
        reward_pool: str,
        jury_size: int,
        fee: int,
        slash_bps: int,
        windows: tuple[int, int, int, int],
    ) -> JuryClient:
        """A new Jury; ``windows`` are the open, evidence, commit and reveal seconds."""
        address, _ = await wallet.deploy(
            load_artifact("Jury"),
            checksum(escrow),
            checksum(staking),
            checksum(token),
            checksum(reward_pool),
            jury_size,
            fee,
            slash_bps,
            list(windows),
        )
        return cls(wallet, address)

    def as_wallet(self, wallet: Wallet) -> JuryClient:
        return type(self)(wallet, self.address)

    async def terms(self) -> JuryTerms:
        values = [
            int((await self._read(name))[0])
            for name in (
                "jurySize",
                "fee",
                "slashBps",
                "openWindow",
                "evidenceWindow",
                "commitWindow",
                "revealWindow",
            )
        ]
        return JuryTerms(*values)

    async def open(self, job_id: int) -> TxReceipt:
        """Bring a disputed job before a jury, approving the fee first."""
        (fee,) = await self._read("fee")
        if int(fee) > 0:
            (token,) = await self._read("token")
            await TokenClient(self.wallet, token).allow_pull(self.address, int(fee))
        return await self.wallet.transact(self.contract.functions.open(job_id))

    async def settle_unopened(self, job_id: int) -> TxReceipt:
        return await self.wallet.transact(self.contract.functions.settleUnopened(job_id))

    async def draw(self, job_id: int) -> TxReceipt:
        """Draw the jurors. The draw needs a block after the case's: the gas is estimated
        against the pending block, which is that block when nothing was mined since."""
        call = self.contract.functions.draw(job_id)
        probe: TxParams = {
            "from": self.wallet.address,
            "to": self.address,
            "data": call._encode_transaction_data(),
        }
        try:
            gas = await guard_rpc(
                self.wallet.w3.eth.estimate_gas(probe, "pending"), self.wallet.rpc_url
            )
        except ContractLogicError as exc:
            raise revert_from(exc) from None
        return await self.wallet.transact(call, gas=int(gas * GAS_MARGIN))

    async def show_input(self, job_id: int, terms: bytes, task_input: bytes) -> TxReceipt:
        return await self.wallet.transact(
            self.contract.functions.showInput(job_id, terms, task_input)
        )

    async def show_result(self, job_id: int, result: bytes) -> TxReceipt:
        return await self.wallet.transact(self.contract.functions.showResult(job_id, result))

    async def commit_vote(self, vote: Ballot) -> TxReceipt:
        return await self.wallet.transact(
            self.contract.functions.commitVote(vote.job_id, vote.commitment(self.wallet.address))
        )

    async def reveal_vote(self, vote: Ballot) -> TxReceipt:
        return await self.wallet.transact(
            self.contract.functions.revealVote(vote.job_id, int(vote.vote), vote.salt)
        )

    async def settle(self, job_id: int) -> TxReceipt:
        return await self.wallet.transact(self.contract.functions.settle(job_id))

    async def case(self, job_id: int) -> JuryCase:
        (raw,) = await self._read("caseOf", job_id)
        (
            client,
            opened,
            provider,
            draw_block,
            evidence_ends,
            commit_ends,
            reveal_ends,
            verdict,
            input_shown,
            result_shown,
            committed,
            for_release,
            for_refund,
            slashed,
            compensation,
            jurors,
        ) = raw
        return JuryCase(
            job_id=job_id,
            client=checksum(client),
            provider=checksum(provider),
            opened=int(opened),
            draw_block=int(draw_block),
            evidence_ends=int(evidence_ends),
            commit_ends=int(commit_ends),
            reveal_ends=int(reveal_ends),
            verdict=Verdict(int(verdict)),
            input_shown=bool(input_shown),
            result_shown=bool(result_shown),
            committed=int(committed),
            for_release=int(for_release),
            for_refund=int(for_refund),
            slashed=int(slashed),
            compensation=int(compensation),
            jurors=tuple(checksum(j) for j in jurors),
        )

    async def vote_of(self, job_id: int, juror: str) -> tuple[bool, Vote]:
        """(committed, revealed vote) of ``juror``."""
        (raw,) = await self._read("ballotOf", job_id, checksum(juror))
        committed_hash, vote = raw
        return bytes(committed_hash) != bytes(32), Vote(int(vote))
