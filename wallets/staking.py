"""The ``Staking`` client: stake, unbond, withdraw, validator permits.

Providers and validators lock mUSD in the suite's ``Staking`` contract: a provider with
at least ``minProviderStake`` active is ranked, and the ``permits`` registered
validators with the most active stake hold a validator permit. Unbonding stake can be
withdrawn ``unbondingDelay`` seconds after the last ``unbond``, and not while a dispute
holds it; until then it can still be slashed.
"""

from __future__ import annotations

from dataclasses import dataclass

from eth_typing import ChecksumAddress
from web3.types import TxReceipt

from agentmesh.contracts import load_artifact
from agentmesh.wallets.clients import TokenClient, _Client, checksum
from agentmesh.wallets.wallet import Wallet


@dataclass(frozen=True, slots=True)
class StakeInfo:
    """One account's stake (token base units; ``unbonding_ends`` is chain time)."""

    active: int
    unbonding: int
    unbonding_ends: int
    holds: int  # open disputes holding the stake
    validator: bool


@dataclass(frozen=True, slots=True)
class StakingTerms:
    """The contract's settings."""

    token: ChecksumAddress
    unbonding_delay: int
    min_provider_stake: int
    permits: int
    max_validators: int
    slasher: ChecksumAddress


class StakingClient(_Client):
    """The Staking contract, sending as ``wallet``."""

    contract_name = "Staking"

    @classmethod
    async def deploy(
        cls,
        wallet: Wallet,
        token: str,
        *,
        unbonding_delay: int,
        min_provider_stake: int,
        permits: int,
        max_validators: int,
    ) -> StakingClient:
        address, _ = await wallet.deploy(
            load_artifact("Staking"),
            checksum(token),
            unbonding_delay,
            min_provider_stake,
            permits,
            max_validators,
            wallet.address,
        )
        return cls(wallet, address)

    def as_wallet(self, wallet: Wallet) -> StakingClient:
        return type(self)(wallet, self.address)

    async def terms(self) -> StakingTerms:
        (token,) = await self._read("token")
        (delay,) = await self._read("unbondingDelay")
        (minimum,) = await self._read("minProviderStake")
        (permits,) = await self._read("permits")
        (most,) = await self._read("maxValidators")
        (slasher,) = await self._read("slasher")
        return StakingTerms(
            token=checksum(token),
            unbonding_delay=int(delay),
            min_provider_stake=int(minimum),
            permits=int(permits),
            max_validators=int(most),
            slasher=checksum(slasher),
        )

    async def stake(self, amount: int) -> TxReceipt:
        """Approve (if needed) and stake ``amount`` more."""
        (token,) = await self._read("token")
        await TokenClient(self.wallet, token).allow_pull(self.address, amount)
        return await self.wallet.transact(self.contract.functions.stake(amount))

    async def unbond(self, amount: int) -> TxReceipt:
        return await self.wallet.transact(self.contract.functions.unbond(amount))

    async def withdraw(self) -> TxReceipt:
        return await self.wallet.transact(self.contract.functions.withdraw())

    async def register_validator(self) -> TxReceipt:
        return await self.wallet.transact(self.contract.functions.registerValidator())

    async def set_slasher(self, slasher: str) -> TxReceipt:
        return await self.wallet.transact(self.contract.functions.setSlasher(checksum(slasher)))

    async def stake_of(self, account: str) -> StakeInfo:
        (raw,) = await self._read("accountOf", checksum(account))
        active, unbonding, ends, holds, validator = raw
        return StakeInfo(int(active), int(unbonding), int(ends), int(holds), bool(validator))

    async def validators(self) -> list[ChecksumAddress]:
        (found,) = await self._read("validators")
        return [checksum(a) for a in found]

    async def has_permit(self, validator: str) -> bool:
        (permit,) = await self._read("hasPermit", checksum(validator))
        return bool(permit)

    async def is_ranked(self, provider: str) -> bool:
        (ranked,) = await self._read("isRanked", checksum(provider))
        return bool(ranked)
