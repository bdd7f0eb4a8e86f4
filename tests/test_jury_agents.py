"""A dispute decided by a jury of validator agents, end to end: real anvil, real mesh,
real SQLite and the real default model. A buyer whose check rejects a garbage embedding
disputes the job; its agent brings the case before the jury and shows the terms and the
input, the provider's agent shows its result, three validators judge it by re-running
the model, commit and reveal, and the case is settled: refunded, the provider slashed,
the jurors paid, every mUSD accounted for."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from agentmesh.agents.agent import Agent
from agentmesh.agents.outcome import TaskFailed
from agentmesh.agents.probes import cosine
from agentmesh.agents.validation_cast import garbage_embedder, honest_embedder
from agentmesh.agents.validator import Validator
from agentmesh.llm import LocalModel
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import JobStatus, TokenClient
from agentmesh.wallets.deployer import JURY_FEE, JURY_SLASH_BPS
from agentmesh.wallets.jury import JuryCase, JuryClient, Verdict
from agentmesh.wallets.staking import StakingClient
from agentmesh.wallets.wallet import Wallet
from tests.helpers import (
    ONE_MUSD,
    WalletFactory,
    bind_home,
    eventually,
    fee_of,
    fund,
    net,
    new_key,
    with_agent_settings,
)

STAKE = 20 * ONE_MUSD
TEXT = "The parcel arrived two weeks late and the box was crushed."


@pytest.fixture(scope="module")
def model() -> Iterator[LocalModel]:
    shared = LocalModel.default(n_threads=2)
    yield shared
    shared.close()


async def staked_key(
    deployer: Wallet, token: TokenClient, chain: Chain, *, validator: bool
) -> bytes:
    key = new_key()
    await fund(deployer, token, Account.from_key(key).address, musd=100)
    staking = StakingClient(
        Wallet(Account.from_key(key), chain.w3), chain.deployment.address("Staking")
    )
    await staking.stake(STAKE)
    if validator:
        await staking.register_validator()
    return key


@contextlib.asynccontextmanager
async def court(
    chain: Chain,
    home: Path,
    deployer: Wallet,
    token: TokenClient,
    model: LocalModel,
    provider: Agent,
) -> AsyncIterator[tuple[Agent, list[Agent]]]:
    """``provider``, a buyer and three validators, all naming the jury as arbiter."""
    config = with_agent_settings(bind_home(home, chain), arbiter="jury")
    buyer = Agent("buyer", model=model)
    validators = [Agent(f"validator{i}", model=model) for i in range(3)]
    for agent in (provider, *validators):
        key = await staked_key(deployer, token, chain, validator=agent is not provider)
        agent.bind(home=home, config=config, wallet=key)
    buyer_key = new_key()
    await fund(deployer, token, Account.from_key(buyer_key).address, musd=100)
    buyer.bind(home=home, config=config, wallet=buyer_key)
    async with contextlib.AsyncExitStack() as stack:
        for agent in (provider, buyer, *validators):
            await stack.enter_async_context(agent)
        roles = [Validator(v) for v in validators]  # each judges as a juror from now on
        for role in roles:
            stack.callback(role.close)
        await buyer.wait_for_providers("embed", timeout=30)
        yield buyer, validators


async def disputed_and_decided(
    buyer: Agent, jury_address: str, deployer: Wallet, check: Callable[[Any], bool]
) -> JuryCase:
    """The buyer buys an embedding, rejects it with ``check`` and disputes it; the case
    once the jury decided it (the agents' own jury loops do the work)."""
    with pytest.raises(TaskFailed) as failed:
        await buyer.buy("embed", text=TEXT, budget="0.01", check=check)
    job_id = failed.value.outcome.job_id
    assert job_id is not None
    jury = JuryClient(deployer, jury_address)
    return await eventually(
        lambda: jury.case(job_id), lambda c: c.verdict != Verdict.NONE, timeout=180, interval=1
    )


async def holdings(chain: Chain, token: TokenClient, agents: list[Agent]) -> dict[str, int]:
    holders = {a.name: a.address for a in agents} | {
        name: chain.deployment.address(name)
        for name in ("TaskEscrow", "Jury", "Staking", "Consensus")
    }
    return {name: await token.balance_of(address) for name, address in holders.items()}


async def test_a_garbage_delivery_is_refunded_by_a_jury_of_validators_and_its_provider_slashed(
    chain: Chain, home: Path, deployer: Wallet, token: TokenClient, model: LocalModel
) -> None:
    seller = garbage_embedder("seller")
    own = await model.embed(TEXT)
    async with court(chain, home, deployer, token, model, seller) as (buyer, validators):
        everyone = [seller, buyer, *validators]
        before = await holdings(chain, token, everyone)
        case = await disputed_and_decided(
            buyer, chain.deployment.address("Jury"), deployer, lambda v: cosine(v, own) >= 0.99
        )
        job_id = case.job_id
        assert case.verdict == Verdict.REFUND and (case.for_refund, case.for_release) == (3, 0)
        assert case.input_shown and case.result_shown
        assert set(case.jurors) == {v.address for v in validators}
        slashed = STAKE * JURY_SLASH_BPS // 10_000
        assert (case.slashed, case.compensation) == (slashed, slashed - JURY_FEE)
        job = await buyer.escrow.get_job(job_id)
        assert job.status == JobStatus.RESOLVED
        after = await holdings(chain, token, everyone)
        price = job.amount
        assert after["buyer"] - before["buyer"] == case.compensation  # refunded, fee back
        assert after["seller"] == before["seller"]
        for v in validators:
            assert after[v.name] - before[v.name] == JURY_FEE // 3
        assert after["Staking"] - before["Staking"] == -slashed
        assert after["Consensus"] - before["Consensus"] == JURY_FEE - 3 * (JURY_FEE // 3)
        assert after["Jury"] == after["TaskEscrow"] == 0
        assert sum(after.values()) == sum(before.values())
        assert price > 0 and fee_of(price) >= 0  # no fee: nothing was paid out
        # The buyer's records end the purchase as the jury decided it.
        row = await eventually(
            lambda: _task(buyer, job_id),
            lambda r: r is not None and r.status != "disputed",
            timeout=30,
            interval=0.5,
        )
        assert row is not None and "resolved by the arbiter" in row.detail


async def test_an_honest_delivery_disputed_anyway_is_paid_and_the_buyer_loses_its_fee(
    chain: Chain, home: Path, deployer: Wallet, token: TokenClient, model: LocalModel
) -> None:
    seller = honest_embedder("seller", model=model)
    async with court(chain, home, deployer, token, model, seller) as (buyer, validators):
        everyone = [seller, buyer, *validators]
        before = await holdings(chain, token, everyone)
        # A buyer that rejects everything.
        case = await disputed_and_decided(
            buyer, chain.deployment.address("Jury"), deployer, lambda v: False
        )
        job_id = case.job_id
        assert case.verdict == Verdict.RELEASE and case.slashed == 0
        price = (await buyer.escrow.get_job(job_id)).amount
        after = await holdings(chain, token, everyone)
        assert after["seller"] - before["seller"] == net(price)
        assert after["buyer"] - before["buyer"] == -price - JURY_FEE
        assert sum(after.values()) == sum(before.values())


async def _task(agent: Agent, job_id: int):  # type: ignore[no-untyped-def]
    return next((r for r in agent.records.tasks() if r.job_id == job_id), None)


async def test_by_default_a_dispute_goes_to_the_jury_and_with_no_validators_is_refunded(
    chain: Chain, home: Path, deployer: Wallet, token: TokenClient
) -> None:
    """The default arbiter is the jury; with nobody to draw, the case ends at once as
    documented: no quorum, the deposit and the fee back to the buyer, nobody slashed."""
    config = bind_home(home, chain)  # the default [agent] arbiter
    seller = garbage_embedder("seller")
    buyer = Agent("buyer")
    seller_key = await staked_key(deployer, token, chain, validator=False)
    buyer_key = new_key()
    await fund(deployer, token, Account.from_key(buyer_key).address, musd=100)
    seller.bind(home=home, config=config, wallet=seller_key)
    buyer.bind(home=home, config=config, wallet=buyer_key)
    async with seller, buyer:
        assert buyer.arbiter == chain.deployment.address("Jury")
        await buyer.wait_for_providers("embed", timeout=30)
        before = await holdings(chain, token, [seller, buyer])
        case = await disputed_and_decided(
            buyer, chain.deployment.address("Jury"), deployer, lambda v: False
        )
        job_id = case.job_id
        assert (case.verdict, case.jurors, case.slashed) == (Verdict.NO_QUORUM, (), 0)
        after = await holdings(chain, token, [seller, buyer])
        assert after["buyer"] == before["buyer"]  # the deposit and the fee came back
        assert after["seller"] == before["seller"]
        assert sum(after.values()) == sum(before.values())
        row = await eventually(
            lambda: _task(buyer, job_id),
            lambda r: r is not None and r.status != "disputed",
            timeout=30,
            interval=0.5,
        )
        assert row is not None and row.status == "done"


async def test_a_dispute_not_brought_in_time_is_dropped_for_the_provider(
    chain: Chain, home: Path, deployer: Wallet, token: TokenClient, make_wallet: WalletFactory
) -> None:
    """A buyer's agent that was away longer than the jury's open window: instead of
    trying to open the case again and again, it settles the dropped dispute."""
    import hashlib

    from agentmesh.wallets.clients import EscrowClient
    from agentmesh.wallets.deployer import JURY_WINDOWS_S
    from tests.helpers import advance_time, chain_now, h32

    config = bind_home(home, chain)
    buyer_key = new_key()
    await fund(deployer, token, Account.from_key(buyer_key).address, musd=100)
    buyer = Agent("buyer", wallet=buyer_key, home=home, config=config)
    seller = await make_wallet(eth=5, musd=0, name="seller")
    async with buyer:
        job_id, _ = await buyer.escrow.open(
            provider=seller.address,
            token=buyer.token,
            amount=ONE_MUSD,
            deadline=await chain_now(chain) + 3600,
            review_window=600,
            arbiter=buyer.arbiter,
            terms_hash=h32("terms"),
        )
        as_seller = EscrowClient(seller, buyer.escrow.address)
        await as_seller.accept(job_id)
        await as_seller.submit(job_id, hashlib.sha256(b"[1]").digest())
        await buyer.escrow.dispute(job_id, h32("late"))
        await advance_time(chain, JURY_WINDOWS_S[0] + 1)
        assert buyer.jury_duty is not None
        case = await buyer.jury_duty.bring(job_id)
        assert case.verdict == Verdict.NONE and int(case.client, 16) == 0  # never opened
        job = await buyer.escrow.get_job(job_id)
        assert job.status == JobStatus.RESOLVED
        assert await token.balance_of(seller.address) == net(ONE_MUSD)
