"""The validator role against a real anvil, real mesh, real SQLite and the real default
model: three providers of ``embed`` (honest, garbage, an impostor of its declared
model) probed through the market by a fresh buyer identity, scores committed, revealed
and finalized; a restarted validator never scores or commits an epoch twice. The scoring
rules themselves are checked on vectors made here."""

from __future__ import annotations

import contextlib
import dataclasses
import math
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from eth_account import Account

from agentmesh.agents.agent import Agent
from agentmesh.agents.probes import (
    CANARIES,
    ProbeOutcome,
    as_vector,
    canary_passes,
    cosine,
    plan_probes,
    reexec_passes,
)
from agentmesh.agents.reputation import ChainConsensusScores
from agentmesh.agents.validation_cast import (
    bag_of_words,
    garbage_embedder,
    honest_embedder,
    impostor_embedder,
)
from agentmesh.agents.validator import Validator, ValidatorSettings, probe_key
from agentmesh.config import Config
from agentmesh.errors import AgentMeshValueError
from agentmesh.llm import LocalModel
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import TokenClient
from agentmesh.wallets.consensus import MAX_SCORE, ONE, ConsensusClient
from agentmesh.wallets.staking import StakingClient
from agentmesh.wallets.wallet import Wallet
from tests.helpers import ONE_MUSD, advance_time, bind_home, chain_now, fund, new_key

STAKE = 20 * ONE_MUSD


@pytest.fixture(scope="module")
def model() -> Iterator[LocalModel]:
    shared = LocalModel.default(n_threads=2)
    yield shared
    shared.close()


# ---------------------------------------------------------------------------- scoring


def unit(values: list[float]) -> list[float]:
    norm = math.sqrt(sum(v * v for v in values))
    return [v / norm for v in values]


def test_a_canary_passes_only_when_repeatable_unit_and_paraphrase_nearer() -> None:
    anchor, near, far = unit([1, 0.1, 0]), unit([0.9, 0.3, 0]), unit([0, 0.2, 1])
    assert canary_passes(anchor, anchor, near, far)
    assert not canary_passes(anchor, anchor, far, near)  # paraphrase farther
    assert not canary_passes(anchor, unit([0, 1, 0]), near, far)  # not repeatable
    assert not canary_passes([2.0, 0, 0], [2.0, 0, 0], near, far)  # not unit length
    assert not canary_passes(anchor, anchor, near, unit([0, 1]))  # dimensions differ
    assert not canary_passes(anchor, anchor, anchor, anchor)  # one answer for every text
    for bad in (None, "text", [], [True, False, True], [float("nan"), 0, 0], {"a": 1}):
        assert not canary_passes(anchor, anchor, near, bad)


def test_reexecution_needs_the_same_vector_and_the_score_multiplies() -> None:
    own = unit([1, 2, 3])
    assert reexec_passes([round(v, 6) for v in own], own)
    assert not reexec_passes(unit([3, 2, 1]), own)
    assert not reexec_passes("nope", own)
    assert cosine([1, 0], [1, 0, 0]) == 0.0 and as_vector([1, 2]) == [1.0, 2.0]
    assert cosine([2, 0], [3, 0]) == 1.0 and cosine([0, 2], [3, 0]) == 0.0  # lengths apart
    assert cosine([0, 0], [1, 0]) == 0.0  # a zero vector is like nothing
    for bad in (7, None, {}, ["x"], [True, 1.0], [1.0, float("inf")]):
        assert as_vector(bad) is None, bad
    honest = ProbeOutcome("0xa", 2, 2, 2, 2)
    impostor = ProbeOutcome("0xb", 2, 2, 0, 2)
    no_model = ProbeOutcome("0xc", 1, 2, 0, 0)
    silent = ProbeOutcome("0xd", 0, 0, 0, 0, ("timed out",))
    assert [o.score for o in (honest, impostor, no_model, silent)] == [MAX_SCORE, 0, 5_000, 0]


def test_probe_plans_are_random_and_reexecute_only_with_the_model() -> None:
    import random

    plans = {
        plan_probes(random.Random(seed), canaries=2, reexec=2, can_reexecute=True)
        for seed in range(20)
    }
    assert len(plans) > 1
    assert all(len(p.canaries) == 2 and len(p.reexec) == 2 for p in plans)
    assert plan_probes(random.Random(1), canaries=9, reexec=2, can_reexecute=False).reexec == ()
    assert len(
        plan_probes(random.Random(1), canaries=99, reexec=0, can_reexecute=False).canaries
    ) == len(CANARIES)


def test_bag_of_words_keeps_paraphrases_near_but_is_not_the_model() -> None:
    anchor, paraphrase, unrelated = CANARIES[1]
    a, p, u = (bag_of_words(t) for t in (anchor, paraphrase, unrelated))
    assert cosine(a, p) > cosine(a, u)


def test_probe_keys_differ_per_epoch_and_validator_and_are_valid() -> None:
    contract = "0x" + "11" * 20
    keys = {probe_key(k, contract, e) for k in (b"\x01" * 32, b"\x02" * 32) for e in range(5)}
    assert len(keys) == 10
    assert all(Account.from_key(k).address for k in keys)


# ---------------------------------------------------------------------------- on chain


@dataclasses.dataclass
class Cast:
    chain: Chain
    token: TokenClient
    consensus: ConsensusClient
    honest: Agent
    garbage: Agent
    impostor: Agent
    validator: Agent
    home: Path
    config: Config

    @property
    def providers(self) -> list[Agent]:
        return [self.honest, self.garbage, self.impostor]

    async def total(self, *extra: str) -> int:
        holders = [a.address for a in (*self.providers, self.validator)] + [
            self.chain.deployment.address("PaymentChannel"),
            self.consensus.address,
            *extra,
        ]
        return sum([await self.token.balance_of(h) for h in holders])


async def staked(deployer: Wallet, token: TokenClient, chain: Chain, *, validator: bool) -> bytes:
    key = new_key()
    address = Account.from_key(key).address
    await fund(deployer, token, address, musd=100)
    wallet = Wallet(Account.from_key(key), chain.w3)
    staking = StakingClient(wallet, chain.deployment.address("Staking"))
    await staking.stake(STAKE)
    if validator:
        await staking.register_validator()
    return key


@contextlib.asynccontextmanager
async def running_cast(
    chain: Chain, home: Path, deployer: Wallet, token: TokenClient, model: LocalModel
) -> AsyncIterator[Cast]:
    config = bind_home(home, chain)
    agents = [
        honest_embedder("honest", model=model),
        garbage_embedder("garbage"),
        impostor_embedder("impostor", model=model),
        Agent("validator", model=model),
    ]
    for agent in agents:
        key = await staked(deployer, token, chain, validator=agent.name == "validator")
        agent.bind(home=home, config=config, wallet=key)
    async with contextlib.AsyncExitStack() as stack:
        for agent in agents:
            await stack.enter_async_context(agent)
        await agents[3].wait_for_providers("embed", count=3, timeout=30)
        consensus = ConsensusClient(deployer, chain.deployment.address("Consensus"))
        yield Cast(chain, token, consensus, *agents, home=home, config=config)


@pytest.fixture
async def cast(
    chain: Chain, home: Path, deployer: Wallet, token: TokenClient, model: LocalModel
) -> AsyncIterator[Cast]:
    async with running_cast(chain, home, deployer, token, model) as started:
        # Start at the beginning of an epoch: anvil's clock runs with the wall clock.
        epoch = await started.consensus.current_epoch()
        await advance_time(
            chain, await started.consensus.epoch_end(epoch) - await chain_now(chain) + 1
        )
        yield started


SETTINGS = ValidatorSettings(canaries=2, reexec=2)


async def test_probes_score_the_honest_provider_and_consensus_gives_it_the_incentive(
    cast: Cast,
) -> None:
    before = await cast.total()
    validator = Validator(cast.validator, SETTINGS)
    epoch = await cast.consensus.current_epoch()
    record = await validator.score_and_commit(epoch)
    scores = dict(zip(record.sheet.providers, record.sheet.scores, strict=True))
    assert scores[cast.honest.address] == MAX_SCORE
    assert scores[cast.garbage.address] == 0  # fails the canaries
    assert scores[cast.impostor.address] == 0  # passes canaries, fails re-execution
    by_provider = {o.provider: o for o in record.outcomes}
    assert by_provider[cast.impostor.address].canaries_passed == 2
    assert by_provider[cast.impostor.address].reexec_passed == 0
    assert record.commit_tx is not None and record.commit_tx.startswith("0x")
    on_chain = await cast.consensus.commit_of(epoch, cast.validator.address)
    assert on_chain == record.sheet.commitment(cast.validator.address)

    # Reveal after the epoch, finalize after the reveal window.
    end = await cast.consensus.epoch_end(epoch)
    await advance_time(cast.chain, end - await chain_now(cast.chain) + 1)
    assert await validator.reveal_due(await chain_now(cast.chain)) == [epoch]
    window = await cast.consensus.reveal_window()
    await advance_time(cast.chain, window)
    assert await validator.finalize_due(await chain_now(cast.chain), epoch + 1) == [epoch]
    assert await cast.consensus.finalized(epoch)
    assert await cast.consensus.incentive_of(epoch, cast.honest.address) == ONE
    assert await cast.consensus.incentive_of(epoch, cast.garbage.address) == 0
    # What a requester ranks proposals by from now on.
    scores = ChainConsensusScores(cast.consensus, cast.chain.deployment.block_number)
    assert await scores.score(cast.honest.address) == MAX_SCORE
    assert await scores.score(cast.garbage.address) == 0
    assert await scores.score(cast.validator.address) is None  # never scored
    # Every mUSD the probes spent is with the providers, the channel contract or the
    # reward pool (the protocol fee); the probe identity kept nothing.
    probe = Account.from_key(
        probe_key(bytes(cast.validator.wallet.account.key), cast.consensus.address, epoch)
    ).address
    assert await cast.token.balance_of(probe) == 0
    assert await cast.total() == before
    validator.close()


async def test_probes_come_from_a_fresh_buyer_the_provider_cannot_link(cast: Cast) -> None:
    validator = Validator(cast.validator, ValidatorSettings(canaries=1, reexec=0))
    payers = []
    for _ in range(2):
        epoch = await cast.consensus.current_epoch()
        await validator.score_and_commit(epoch)
        payers.append({ch.payer for ch in cast.honest.payee.channels.values()})
        await advance_time(
            cast.chain, await cast.consensus.epoch_end(epoch) - await chain_now(cast.chain) + 1
        )
    first, both = payers[0], payers[1]
    assert len(first) == 1 and len(both) == 2  # one new payer per epoch
    assert cast.validator.address not in both
    # The probe's card (what the provider sees of it) is an ordinary buyer's.
    names = {card.name for card in (r.card for r in cast.honest.node.peers.all())}
    assert not any(
        "probe" in n or n == "validator" for n in names - {"validator", "garbage", "impostor"}
    )
    validator.close()


async def test_a_restarted_validator_reveals_its_sheet_and_never_commits_twice(
    cast: Cast, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = Validator(cast.validator, ValidatorSettings(canaries=1, reexec=1))
    epoch = await cast.consensus.current_epoch()
    record = await first.score_and_commit(epoch)
    first.close()
    # A crash after the commit was mined but before it was recorded.
    db = cast.validator.agent_dir / "validator.db"
    import sqlite3

    with contextlib.closing(sqlite3.connect(db)) as raw:
        raw.execute("UPDATE epochs SET commit_tx = NULL")
        raw.commit()

    again = Validator(cast.validator, ValidatorSettings(canaries=1, reexec=1))

    async def no_probing(epoch: int) -> list[ProbeOutcome]:
        raise AssertionError("a restarted validator probed an epoch it had scored")

    monkeypatch.setattr(again, "probe", no_probing)
    nonce = await cast.validator.wallet.w3.eth.get_transaction_count(cast.validator.address)
    await again.step()
    assert await cast.validator.wallet.w3.eth.get_transaction_count(cast.validator.address) == nonce
    assert again.store.get(epoch).commit_tx == "on chain"  # type: ignore[union-attr]
    end = await cast.consensus.epoch_end(epoch)
    await advance_time(cast.chain, end - await chain_now(cast.chain) + 1)
    # It reveals the stored sheet, the only one that matches the commit.
    assert await again.reveal_due(await chain_now(cast.chain)) == [epoch]
    (scored, score) = await cast.consensus.contract.functions.scoreOf(
        epoch, cast.validator.address, cast.honest.address
    ).call()
    assert (
        scored
        and score
        == dict(zip(record.sheet.providers, record.sheet.scores, strict=True))[cast.honest.address]
    )
    again.close()


async def test_a_validator_without_a_permit_probes_nothing_and_unknown_services_are_refused(
    cast: Cast, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(AgentMeshValueError, match="no probes for service 'summarize'"):
        Validator(cast.validator, ValidatorSettings(service="summarize"))
    staking = StakingClient(cast.validator.wallet, cast.chain.deployment.address("Staking"))
    await staking.unbond(STAKE)  # no active stake: no permit
    validator = Validator(cast.validator, SETTINGS)

    async def no_probing(epoch: int) -> list[ProbeOutcome]:
        raise AssertionError("a validator without a permit probed")

    monkeypatch.setattr(validator, "probe", no_probing)
    await validator.step()
    await validator.step()  # said once, and still nothing probed or committed
    assert validator.store.epochs() == []
    validator.close()


async def test_a_probe_channel_its_payee_would_not_close_is_reclaimed_later(
    cast: Cast, deployer: Wallet, token: TokenClient
) -> None:
    """A probe identity whose channel was not closed with the payee (a provider that
    would not answer the close): the validator asks to close it, withdraws it after the
    challenge delay and sweeps the identity back, in later steps."""
    from agentmesh.agents.channel_store import ChannelStore, PayerChannel
    from agentmesh.agents.validator import probe_name
    from agentmesh.wallets.channel import PaymentChannelClient

    validator = Validator(cast.validator, SETTINGS)
    epoch = await cast.consensus.current_epoch()
    await validator.score_and_commit(epoch)
    key = probe_key(bytes(cast.validator.wallet.account.key), cast.consensus.address, epoch)
    folder = cast.validator.home / "agents" / probe_name(key)
    assert not folder.exists()  # every channel closed with its payee: nothing kept
    # Leave one behind, as a payee that never answered the close would.
    probe = Wallet(Account.from_key(key), cast.validator.chain.w3)  # its nonces, as in use
    await fund(deployer, token, probe.address, musd=1)
    channels = PaymentChannelClient(probe, cast.chain.deployment.address("PaymentChannel"))
    channel_id, receipt = await channels.open(
        cast.honest.address, cast.chain.token_address, ONE_MUSD
    )
    store = ChannelStore(folder / "channels.db")
    store.save_payer(
        PayerChannel(channel_id, cast.honest.address, cast.chain.token_address, ONE_MUSD)
    )
    store.close()
    before = await cast.total(probe.address)
    await advance_time(
        cast.chain, await cast.consensus.epoch_end(epoch) - await chain_now(cast.chain) + 1
    )
    assert await validator.reclaim() == 1  # asked to close; the payee's time to claim runs
    assert (await channels.channel(channel_id)).close_requested_at > 0
    await advance_time(cast.chain, await channels.challenge_delay() + 1)
    assert await validator.reclaim() == 0
    assert (await channels.channel(channel_id)).closed
    assert not folder.exists()
    assert await token.balance_of(probe.address) == 0
    assert await cast.total(probe.address) == before  # it all went back to the validator
    validator.close()


async def test_probes_that_outlast_their_epoch_commit_nothing(cast: Cast) -> None:
    """A commit sent after the epoch would count for the next one: none is sent."""
    validator = Validator(cast.validator, ValidatorSettings(canaries=1, reexec=0))
    past = await cast.consensus.current_epoch() - 1
    record = await validator.score_and_commit(past)
    assert record.commit_tx == "late" and record.sheet.providers
    assert await cast.consensus.commit_of(past + 1, cast.validator.address) == bytes(32)
    assert await validator.reveal_due(await chain_now(cast.chain)) == []
    validator.close()
