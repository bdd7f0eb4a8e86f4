"""The ``Consensus`` client: validators commit and reveal scores of providers each epoch;
finalizing computes each provider's consensus score and incentive and each validator's
dividend, and pays the reward pool out (see ``contracts/src/Consensus.sol``).

Scores are 0..10,000; incentives and dividends are fractions scaled by 1e18.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from eth_abi.abi import encode as abi_encode
from eth_typing import ChecksumAddress
from web3.types import TxReceipt

from agentmesh.contracts import load_artifact
from agentmesh.envelope import keccak
from agentmesh.wallets.clients import TokenClient, _Client, checksum
from agentmesh.wallets.wallet import Wallet

MAX_SCORE = 10_000
ONE = 10**18  # an incentive or dividend of 1e18 is all of it


@dataclass(frozen=True, slots=True)
class ScoreSheet:
    """What a validator commits to for one epoch (kept until it reveals)."""

    epoch: int
    providers: tuple[ChecksumAddress, ...]
    scores: tuple[int, ...]
    salt: bytes

    def commitment(self, validator: str) -> bytes:
        return keccak(
            abi_encode(
                ["uint256", "address", "address[]", "uint16[]", "bytes32"],
                [
                    self.epoch,
                    checksum(validator),
                    list(self.providers),
                    list(self.scores),
                    self.salt,
                ],
            )
        )


def score_sheet(epoch: int, scores: dict[str, int], salt: bytes | None = None) -> ScoreSheet:
    """A sheet from ``{provider: score}`` with a fresh random salt."""
    return ScoreSheet(
        epoch,
        tuple(checksum(p) for p in scores),
        tuple(scores.values()),
        salt if salt is not None else os.urandom(32),
    )


class ConsensusClient(_Client):
    """One Consensus contract, sending as ``wallet``."""

    contract_name = "Consensus"

    @classmethod
    async def deploy(
        cls,
        wallet: Wallet,
        staking: str,
        token: str,
        *,
        epoch_length: int,
        reveal_window: int,
        provider_share_bps: int,
    ) -> ConsensusClient:
        address, _ = await wallet.deploy(
            load_artifact("Consensus"),
            checksum(staking),
            checksum(token),
            epoch_length,
            reveal_window,
            provider_share_bps,
        )
        return cls(wallet, address)

    def as_wallet(self, wallet: Wallet) -> ConsensusClient:
        return type(self)(wallet, self.address)

    async def current_epoch(self) -> int:
        (epoch,) = await self._read("currentEpoch")
        return int(epoch)

    async def epoch_end(self, epoch: int) -> int:
        (end,) = await self._read("epochEnd", epoch)
        return int(end)

    async def commit(self, sheet: ScoreSheet) -> TxReceipt:
        return await self.wallet.transact(
            self.contract.functions.commit(sheet.commitment(self.wallet.address))
        )

    async def reveal(self, sheet: ScoreSheet) -> TxReceipt:
        return await self.wallet.transact(
            self.contract.functions.reveal(
                sheet.epoch, list(sheet.providers), list(sheet.scores), sheet.salt
            )
        )

    async def finalize(self, epoch: int) -> TxReceipt:
        return await self.wallet.transact(self.contract.functions.finalize(epoch))

    async def fund(self, amount: int) -> TxReceipt:
        (token,) = await self._read("token")
        await TokenClient(self.wallet, token).allow_pull(self.address, amount)
        return await self.wallet.transact(self.contract.functions.fund(amount))

    async def claim(self) -> TxReceipt:
        return await self.wallet.transact(self.contract.functions.claim())

    async def consensus_of(self, epoch: int, provider: str) -> int:
        (value,) = await self._read("consensusOf", epoch, checksum(provider))
        return int(value)

    async def incentive_of(self, epoch: int, provider: str) -> int:
        (value,) = await self._read("incentiveOf", epoch, checksum(provider))
        return int(value)

    async def dividend_of(self, epoch: int, validator: str) -> int:
        (value,) = await self._read("dividendOf", epoch, checksum(validator))
        return int(value)

    async def claimable(self, account: str) -> int:
        (value,) = await self._read("claimable", checksum(account))
        return int(value)

    async def pool(self) -> int:
        (value,) = await self._read("pool")
        return int(value)

    async def owed(self) -> int:
        (value,) = await self._read("owed")
        return int(value)

    async def providers_of(self, epoch: int) -> list[ChecksumAddress]:
        """The providers some validator scored in ``epoch``."""
        (found,) = await self._read("providersOf", epoch)
        return [checksum(a) for a in found]

    async def last_finalized(self, from_block: int) -> int | None:
        """The latest epoch finalized since ``from_block`` (its ``Finalized`` events), or
        None if none was."""
        events = await self.contract.events.Finalized().get_logs(from_block=from_block)
        return max((int(e["args"]["epoch"]) for e in events), default=None)

    async def reveal_window(self) -> int:
        (value,) = await self._read("revealWindow")
        return int(value)

    async def commit_of(self, epoch: int, validator: str) -> bytes:
        """The hash ``validator`` committed for ``epoch`` (32 zero bytes: none)."""
        (raw,) = await self._read("commitOf", epoch, checksum(validator))
        return bytes(raw[0])

    async def finalized(self, epoch: int) -> bool:
        (value,) = await self._read("finalized", epoch)
        return bool(value)
