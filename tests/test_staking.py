"""Staking against a real anvil: stake, unbonding delay, withdraw, validator permits by
stake, and the slasher's holds and slashes, with every rule's failure path. Every test
that moves money checks it is conserved across the stakers, the slashed-to account and
the contract."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from agentmesh.errors import ContractRevertError
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import TokenClient
from agentmesh.wallets.staking import StakingClient
from agentmesh.wallets.wallet import Wallet
from tests.helpers import ONE_MUSD, WalletFactory, advance_time, chain_now

DELAY = 100
MIN_PROVIDER = 10 * ONE_MUSD


@dataclass
class Stage:
    chain: Chain
    owner: Wallet
    staking: StakingClient  # as the owner
    jury: Wallet  # stands in for the jury contract (the slasher)
    token: TokenClient
    make_wallet: WalletFactory

    async def staker(self, musd: int = 100) -> tuple[Wallet, StakingClient]:
        wallet = await self.make_wallet(eth=5, musd=musd)
        return wallet, self.staking.as_wallet(wallet)

    async def total(self, *wallets: Wallet) -> int:
        holders = [w.address for w in wallets] + [self.staking.address, self.jury.address]
        return sum([await self.token.balance_of(h) for h in holders])


@pytest.fixture
async def st(chain: Chain, deployer: Wallet, make_wallet: WalletFactory) -> Stage:
    staking = await StakingClient.deploy(
        deployer,
        chain.token_address,
        unbonding_delay=DELAY,
        min_provider_stake=MIN_PROVIDER,
        permits=2,
        max_validators=3,
    )
    jury = await make_wallet(eth=5, musd=0, name="jury")
    await staking.set_slasher(jury.address)
    return Stage(
        chain, deployer, staking, jury, TokenClient(deployer, chain.token_address), make_wallet
    )


def error(exc: pytest.ExceptionInfo[ContractRevertError]) -> str:
    return str(exc.value.error_name)


async def test_stake_ranks_a_provider_and_unbonding_waits_for_the_delay(st: Stage) -> None:
    wallet, mine = await st.staker()
    before = await st.total(wallet)
    await mine.stake(6 * ONE_MUSD)
    assert not await mine.is_ranked(wallet.address)
    await mine.stake(4 * ONE_MUSD)
    assert await mine.is_ranked(wallet.address)  # exactly the minimum
    await mine.unbond(ONE_MUSD)
    assert not await mine.is_ranked(wallet.address)  # unbonding stake does not count
    info = await mine.stake_of(wallet.address)
    assert (info.active, info.unbonding) == (9 * ONE_MUSD, ONE_MUSD)
    assert info.unbonding_ends == await chain_now(st.chain) + DELAY
    with pytest.raises(ContractRevertError) as exc:
        await mine.withdraw()
    assert (error(exc), exc.value.error_args) == ("UnbondingNotOver", (info.unbonding_ends,))
    await advance_time(st.chain, DELAY)
    await mine.withdraw()
    assert await st.token.balance_of(wallet.address) == 91 * ONE_MUSD
    assert (await mine.stake_of(wallet.address)).unbonding == 0
    with pytest.raises(ContractRevertError) as exc:
        await mine.withdraw()
    assert error(exc) == "NothingToWithdraw"
    assert await st.total(wallet) == before


async def test_a_new_unbond_restarts_the_delay_for_everything_unbonding(st: Stage) -> None:
    wallet, mine = await st.staker()
    await mine.stake(10 * ONE_MUSD)
    await mine.unbond(ONE_MUSD)
    await advance_time(st.chain, DELAY - 10)
    await mine.unbond(ONE_MUSD)
    await advance_time(st.chain, 20)  # the first unbond's delay is over, not the second's
    with pytest.raises(ContractRevertError) as exc:
        await mine.withdraw()
    assert error(exc) == "UnbondingNotOver"
    await advance_time(st.chain, DELAY)
    await mine.withdraw()
    assert await st.token.balance_of(wallet.address) == 92 * ONE_MUSD


async def test_bad_amounts_revert(st: Stage) -> None:
    wallet, mine = await st.staker(musd=5)
    for call in (mine.stake(0), mine.unbond(0)):
        with pytest.raises(ContractRevertError) as exc:
            await call
        assert error(exc) == "ZeroAmount"
    await mine.stake(2 * ONE_MUSD)
    with pytest.raises(ContractRevertError) as exc:
        await mine.unbond(2 * ONE_MUSD + 1)
    assert (error(exc), exc.value.error_args) == (
        "InsufficientStake",
        (2 * ONE_MUSD + 1, 2 * ONE_MUSD),
    )


async def test_permits_go_to_the_most_staked_registered_validators(st: Stage) -> None:
    (a, sa), (b, sb), (c, sc) = [await st.staker() for _ in range(3)]
    for staking, amount in ((sa, 5), (sb, 7), (sc, 6)):
        await staking.stake(amount * ONE_MUSD)
    assert not await sa.has_permit(a.address)  # not registered
    for staking in (sa, sb, sc):
        await staking.register_validator()
    assert await sa.validators() == [a.address, b.address, c.address]
    permits = [await sa.has_permit(w.address) for w in (a, b, c)]
    assert permits == [False, True, True]  # two permits: 7 and 6
    await sa.stake(ONE_MUSD)  # a's 6 = c's 6 for the second permit: the lower address
    low, high = sorted((a, c), key=lambda w: int(w.address, 16))
    assert await sa.has_permit(low.address) and not await sa.has_permit(high.address)
    assert await sa.has_permit(b.address)
    await sc.unbond(6 * ONE_MUSD)  # no active stake: no permit, whatever the rank
    assert not await sc.has_permit(c.address)
    assert await sa.has_permit(a.address) and await sa.has_permit(b.address)
    with pytest.raises(ContractRevertError) as exc:
        await sa.register_validator()
    assert error(exc) == "AlreadyValidator"
    _, sd = await st.staker()
    with pytest.raises(ContractRevertError) as exc:
        await sd.register_validator()
    assert (error(exc), exc.value.error_args) == ("TooManyValidators", (3,))


async def test_a_hold_blocks_withdrawal_and_unbonding_stake_stays_slashable(st: Stage) -> None:
    wallet, mine = await st.staker()
    before = await st.total(wallet)
    jury = st.staking.as_wallet(st.jury)
    await mine.stake(10 * ONE_MUSD)
    await jury.wallet.transact(jury.contract.functions.hold(wallet.address))
    await mine.unbond(8 * ONE_MUSD)  # trying to leave while a dispute is open
    await advance_time(st.chain, DELAY)
    with pytest.raises(ContractRevertError) as exc:
        await mine.withdraw()
    assert (error(exc), exc.value.error_args) == ("StakeOnHold", (1,))
    # Slashed 5: the 2 active first, then 3 of the 8 unbonding.
    await jury.wallet.transact(
        jury.contract.functions.slash(wallet.address, 5 * ONE_MUSD, st.jury.address)
    )
    info = await mine.stake_of(wallet.address)
    assert (info.active, info.unbonding, info.holds) == (0, 5 * ONE_MUSD, 1)
    assert await st.token.balance_of(st.jury.address) == 5 * ONE_MUSD
    with pytest.raises(ContractRevertError) as exc:
        await jury.wallet.transact(
            jury.contract.functions.slash(wallet.address, 5 * ONE_MUSD + 1, st.jury.address)
        )
    assert (error(exc), exc.value.error_args) == ("SlashTooLarge", (5 * ONE_MUSD + 1, 5 * ONE_MUSD))
    await jury.wallet.transact(jury.contract.functions.release(wallet.address))
    with pytest.raises(ContractRevertError) as exc:
        await jury.wallet.transact(jury.contract.functions.release(wallet.address))
    assert error(exc) == "NoHold"
    await mine.withdraw()
    assert await st.token.balance_of(wallet.address) == 95 * ONE_MUSD
    assert await st.total(wallet) == before


async def test_only_the_slasher_holds_and_slashes_and_it_is_set_once(st: Stage) -> None:
    wallet, mine = await st.staker()
    await mine.stake(ONE_MUSD)
    functions = mine.contract.functions
    for call in (
        functions.hold(wallet.address),
        functions.release(wallet.address),
        functions.slash(wallet.address, 1, wallet.address),
    ):
        with pytest.raises(ContractRevertError) as exc:
            await wallet.transact(call)
        assert (error(exc), exc.value.error_args) == ("NotSlasher", (wallet.address,))
    with pytest.raises(ContractRevertError) as exc:
        await st.staking.set_slasher(wallet.address)
    assert error(exc) == "SlasherAlreadySet"
    with pytest.raises(ContractRevertError) as exc:
        await mine.set_slasher(wallet.address)
    assert error(exc) == "OwnableUnauthorizedAccount"
    terms = await st.staking.terms()
    assert (terms.slasher, terms.unbonding_delay, terms.permits) == (st.jury.address, DELAY, 2)


async def test_a_contract_without_a_slasher_lets_nobody_slash(
    chain: Chain, deployer: Wallet
) -> None:
    staking = await StakingClient.deploy(
        deployer,
        chain.token_address,
        unbonding_delay=DELAY,
        min_provider_stake=MIN_PROVIDER,
        permits=1,
        max_validators=1,
    )
    with pytest.raises(ContractRevertError) as exc:
        await deployer.transact(staking.contract.functions.hold(deployer.address))
    assert error(exc) == "NotSlasher"
    for bad in ({"permits": 2, "max_validators": 1}, {"permits": 0, "max_validators": 1}):
        with pytest.raises(ContractRevertError) as exc:
            await StakingClient.deploy(
                deployer,
                chain.token_address,
                unbonding_delay=DELAY,
                min_provider_stake=MIN_PROVIDER,
                **bad,
            )
        assert error(exc) == "BadConfig"


async def test_the_suite_deploys_staking_for_mUSD(chain: Chain, deployer: Wallet) -> None:  # noqa: N802
    staking = StakingClient(deployer, chain.deployment.address("Staking"))
    terms = await staking.terms()
    assert terms.token == chain.token_address and terms.min_provider_stake == 10 * ONE_MUSD
    assert terms.unbonding_delay == 24 * 3600 and terms.permits == 8
