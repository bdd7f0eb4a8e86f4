"""Paid calls over payment channels between two agents: real anvil, real mesh, real
SQLite. One channel and one price per payee, a voucher per call, the payee's checks
before any work, concurrency, top-ups, resync after a lost count, claims on a close
request and on start, the cooperative close, and ``buy`` through an open channel.
Every test that moves money checks it is conserved across payer, payee and contract."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from agentmesh.agents.agent import Agent
from agentmesh.agents.channel_payer import PaidCallRefused
from agentmesh.agents.service import ServiceContext
from agentmesh.config import Config
from agentmesh.errors import PeerUnreachable
from agentmesh.mesh.node import MeshNode
from agentmesh.protocols.payment import (
    PROTOCOL,
    VERSION,
    CallRefused,
    CallResult,
    ChannelPhase,
    PaidCall,
)
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.channel import PaymentChannelClient, VoucherDomain, voucher_data
from agentmesh.wallets.clients import TokenClient
from agentmesh.wallets.wallet import Wallet
from tests.helpers import (
    advance_time,
    bind_home,
    eventually,
    fund,
    net,
    new_key,
    with_agent_settings,
)

PRICE = 1_000  # 0.001 mUSD a call
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


@pytest.fixture
def config(home: Path, chain: Chain) -> Config:
    return with_agent_settings(
        bind_home(home, chain),
        channel_deposit="0.1",  # 100 calls
        channel_claim_threshold="1000",  # claims only when asked, in these tests
        channel_poll_s=0.1,
    )


class Work:
    """What the payee's service really did (to tell refused calls did no work)."""

    def __init__(self) -> None:
        self.inputs: list[int] = []


def make_provider(home: Path, config: Config, key: bytes, work: Work) -> Agent:
    agent = Agent("provider", wallet=key, home=home, config=config)

    @agent.service("double", price=PRICE)
    async def double(ctx: ServiceContext, n: int) -> int:
        work.inputs.append(n)
        return 2 * n

    @agent.service("square", price=2 * PRICE, floor=PRICE)
    async def square(ctx: ServiceContext, n: int) -> int:
        return n * n

    @agent.service("fail", price=PRICE)
    async def fail(ctx: ServiceContext, n: int) -> int:
        raise RuntimeError("broken on purpose")

    return agent


@dataclasses.dataclass
class Pair:
    chain: Chain
    token: TokenClient
    provider: Agent
    requester: Agent
    work: Work
    provider_key: bytes
    home: Path
    config: Config

    async def total(self) -> int:
        holders = (
            self.provider.address,
            self.requester.address,
            self.chain.deployment.address("PaymentChannel"),
            self.chain.deployment.address("Consensus"),  # the protocol fee on claims
        )
        return sum([await self.token.balance_of(h) for h in holders])


@pytest.fixture
async def pair(
    chain: Chain, home: Path, config: Config, deployer: Wallet, token: TokenClient
) -> AsyncIterator[Pair]:
    async with running_pair(chain, home, config, deployer, token) as started:
        yield started


async def funded_keys(deployer: Wallet, token: TokenClient) -> tuple[bytes, bytes]:
    """Keys of a provider (gas only) and a requester (gas and 10 mUSD)."""
    provider_key, requester_key = new_key(), new_key()
    await fund(deployer, token, Account.from_key(provider_key).address, musd=0)
    await fund(deployer, token, Account.from_key(requester_key).address, musd=10)
    return provider_key, requester_key


@contextlib.asynccontextmanager
async def running_pair(
    chain: Chain, home: Path, config: Config, deployer: Wallet, token: TokenClient
) -> AsyncIterator[Pair]:
    """A provider and a requester that has found it, both running with ``config``."""
    provider_key, requester_key = await funded_keys(deployer, token)
    work = Work()
    provider = make_provider(home, config, provider_key, work)
    requester = Agent("requester", wallet=requester_key, home=home, config=config)
    async with provider, requester:
        await requester.wait_for_providers("double", timeout=20)
        yield Pair(chain, token, provider, requester, work, provider_key, home, config)


def payee_channel(p: Pair):  # type: ignore[no-untyped-def]
    (ch,) = p.provider.payee.channels.values()
    return ch


async def test_voucher_digest_matches_eth_account_and_the_contract(chain: Chain) -> None:
    address = chain.deployment.address("PaymentChannel")
    domain = VoucherDomain.of(address, await chain.w3.eth.chain_id)
    channel_id, cumulative = bytes(range(32)), 123_456_789
    library = voucher_data(address, domain.chain_id, channel_id, cumulative)
    from eth_account.messages import _hash_eip191_message

    assert domain.digest(channel_id, cumulative) == _hash_eip191_message(library)
    contract = chain.contract("PaymentChannel")
    on_chain = await contract.functions.voucherDigest(channel_id, cumulative).call()
    assert domain.digest(channel_id, cumulative) == bytes(on_chain)


async def test_calls_share_one_channel_and_a_cooperative_close_settles(pair: Pair) -> None:
    before = await pair.total()
    results = [await pair.requester.call("provider", "double", n=n) for n in range(20)]
    assert results == [2 * n for n in range(20)]
    (payer_ch,) = pair.requester.payer.channels.values()
    ch = payee_channel(pair)
    assert payer_ch.id == ch.id and payer_ch.prices == {"double": PRICE} == ch.prices
    assert ch.latest == payer_ch.signed == 20 * PRICE and ch.calls == 20
    # The voucher is durable: the store holds what memory holds.
    (stored,) = pair.provider.payee.store.payee_channels()
    assert (stored.latest, stored.signature) == (ch.latest, ch.signature)
    payer_start = await pair.token.balance_of(pair.requester.address)
    assert await pair.requester.close_channel("provider") == "closed"
    state = await pair.provider.payee.client.channel(ch.id)
    assert state.closed and state.claimed == 20 * PRICE
    assert await pair.token.balance_of(pair.provider.address) == net(20 * PRICE)
    refund = payer_ch.deposit - 20 * PRICE
    assert await pair.token.balance_of(pair.requester.address) == payer_start + refund
    assert payer_ch.phase is ChannelPhase.CLOSED and ch.phase is ChannelPhase.CLOSED
    assert await pair.total() == before


async def test_64_concurrent_calls_pay_distinct_amounts_and_the_claim_is_their_sum(
    pair: Pair,
) -> None:
    before = await pair.total()
    await pair.requester.call("provider", "double", n=0)  # opens and joins
    results = await asyncio.gather(
        *(pair.requester.call("provider", "double", n=n) for n in range(1, 65))
    )
    assert results == [2 * n for n in range(1, 65)]
    ch = payee_channel(pair)
    answered = len(pair.work.inputs)
    assert answered == 65 and sorted(pair.work.inputs) == list(range(65))
    # The deposit (100 calls) was topped up by nobody: 65 calls fit.
    assert (
        ch.latest
        == answered * PRICE
        == pair.requester.payer.channel_to(pair.provider.address).signed
    )  # type: ignore[union-attr]
    tx = await pair.provider.payee.claim(ch)
    assert tx is not None
    state = await pair.provider.payee.client.channel(ch.id)
    assert state.claimed == answered * PRICE
    assert await pair.token.balance_of(pair.provider.address) == net(answered * PRICE)
    assert await pair.total() == before


async def test_deposit_is_topped_up_when_calls_pass_it(pair: Pair) -> None:
    before = await pair.total()
    for n in range(105):  # the deposit covers 100
        assert await pair.requester.call("provider", "double", n=n) == 2 * n
    payer_ch = pair.requester.payer.channel_to(pair.provider.address)
    assert payer_ch is not None and payer_ch.deposit == 2 * 100 * PRICE
    state = await pair.provider.payee.client.channel(payer_ch.id)
    assert state.deposit == payer_ch.deposit and payee_channel(pair).latest == 105 * PRICE
    assert await pair.total() == before


async def raw_call(
    node: MeshNode, provider: Agent, channel: bytes, cumulative: int, signature: bytes, **kw: object
) -> CallResult | CallRefused:
    message = PaidCall(
        channel="0x" + channel.hex(),
        service=str(kw.get("service", "double")),
        input=json.dumps(kw.get("input", {"n": 1})),
        cumulative=cumulative,
        signature="0x" + signature.hex(),
    )
    reply: CallResult | CallRefused = await node.request(
        provider.node.card,  # type: ignore[arg-type]
        message,
        protocol=PROTOCOL,
        version=VERSION,
        expect=(CallResult, CallRefused),
    )
    return reply


async def test_bad_vouchers_are_refused_before_any_work(pair: Pair, chain: Chain) -> None:
    await pair.requester.call("provider", "double", n=7)
    ch = payee_channel(pair)
    payer = pair.requester.payer
    domain, account, node = payer.domain, payer.signer, pair.requester.node
    done = len(pair.work.inputs)

    async def refused(cumulative: int, signature: bytes, **kw: object) -> str:
        reply = await raw_call(
            node, pair.provider, kw.pop("channel", ch.id), cumulative, signature, **kw
        )  # type: ignore[arg-type]
        assert isinstance(reply, CallRefused), reply
        return reply.code

    latest = ch.latest
    # Not above the last one (the same amount again, or a raise smaller than the price).
    assert await refused(latest, domain.sign(account, ch.id, latest)) == "stale_voucher"
    short = latest + PRICE - 1
    assert await refused(short, domain.sign(account, ch.id, short)) == "stale_voucher"
    # Over the deposit.
    over = ch.deposit + PRICE
    assert await refused(over, domain.sign(account, ch.id, over)) == "over_deposit"
    nxt = latest + PRICE
    # Signed for another channel, for another contract, for another chain.
    other = bytes(32)
    assert await refused(nxt, domain.sign(account, other, nxt)) == "bad_signature"
    elsewhere = VoucherDomain.of("0x" + "22" * 20, domain.chain_id)
    assert await refused(nxt, elsewhere.sign(account, ch.id, nxt)) == "bad_signature"
    other_chain = VoucherDomain.of(domain.contract, domain.chain_id + 1)
    assert await refused(nxt, other_chain.sign(account, ch.id, nxt)) == "bad_signature"
    # Forged (another key) and malleable (the same signature with s -> n - s).
    forger = Account.from_key(new_key())
    assert await refused(nxt, domain.sign(forger, ch.id, nxt)) == "bad_signature"
    good = domain.sign(account, ch.id, nxt)
    r, s, v = good[:32], int.from_bytes(good[32:64], "big"), good[64]
    flipped = r + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - v])
    assert await refused(nxt, flipped) == "bad_signature"
    # Bad input, an unknown channel, a service not joined on this channel.
    assert await refused(nxt, good, input={"n": "x"}) == "invalid_input"
    assert await refused(nxt, good, channel=other) == "unknown_channel"
    assert await refused(nxt, good, service="fail") == "not_joined"
    assert len(pair.work.inputs) == done  # no work for any of them
    assert ch.latest == latest
    # Someone else's node sending the payer's valid voucher: not the payer.
    stranger = MeshNode(new_key(), name="stranger", config=pair.config.mesh)
    async with stranger:
        stranger.peers.add(pair.provider.node.card, "test")  # type: ignore[arg-type]
        reply = await raw_call(stranger, pair.provider, ch.id, nxt, good)
    assert isinstance(reply, CallRefused) and reply.code == "not_payer"
    # The payer's own next voucher still works after all that.
    assert await pair.requester.call("provider", "double", n=8) == 16


async def test_a_payer_that_lost_count_resumes_from_the_payees_voucher(pair: Pair) -> None:
    for n in range(5):
        await pair.requester.call("provider", "double", n=n)
    payer_ch = pair.requester.payer.channel_to(pair.provider.address)
    assert payer_ch is not None
    payer_ch.signed = PRICE  # as after a crash before the count was written
    assert await pair.requester.call("provider", "double", n=9) == 18
    assert payer_ch.signed == payee_channel(pair).latest == 6 * PRICE


async def test_a_failed_service_is_answered_and_the_agent_goes_on(pair: Pair) -> None:
    with pytest.raises(PaidCallRefused) as raised:
        await pair.requester.call("provider", "fail", n=1)
    assert raised.value.code == "service_failed"
    assert await pair.requester.call("provider", "double", n=2) == 4


async def test_a_close_request_makes_the_payee_claim_and_the_payer_withdraws_the_rest(
    pair: Pair, chain: Chain
) -> None:
    before = await pair.total()
    for n in range(10):
        await pair.requester.call("provider", "double", n=n)
    payer_ch = pair.requester.payer.channel_to(pair.provider.address)
    assert payer_ch is not None
    as_payer = pair.requester.payer.client
    await as_payer.request_close(payer_ch.id)
    # The payee sees the event and claims at once; it takes no more calls.
    state = await eventually(
        lambda: as_payer.channel(payer_ch.id), lambda s: s.claimed == 10 * PRICE, timeout=15
    )
    assert state.claimed == 10 * PRICE
    assert payee_channel(pair).phase is ChannelPhase.CLOSING
    payer_ch.phase = ChannelPhase.OPEN  # the payer's desk does not know it asked
    with pytest.raises(PaidCallRefused) as raised:
        await pair.requester.call("provider", "double", n=1)
    assert raised.value.code == "not_open"
    # The refusal tells the payer's desk: the next call opens a new channel.
    assert payer_ch.phase is ChannelPhase.CLOSING
    assert await pair.requester.call("provider", "double", n=3) == 6
    fresh = pair.requester.payer.channel_to(pair.provider.address)
    assert fresh is not None and fresh.id != payer_ch.id and fresh.signed == PRICE
    await advance_time(chain, await as_payer.challenge_delay() + 1)
    await as_payer.withdraw(payer_ch.id)
    assert (await as_payer.channel(payer_ch.id)).closed
    assert await pair.token.balance_of(pair.provider.address) == net(10 * PRICE)
    assert await pair.total() == before


async def test_a_payee_down_during_the_delay_claims_when_it_is_back(
    pair: Pair, chain: Chain
) -> None:
    before = await pair.total()
    for n in range(12):
        await pair.requester.call("provider", "double", n=n)
    payer_ch = pair.requester.payer.channel_to(pair.provider.address)
    assert payer_ch is not None
    await pair.provider.stop()
    as_payer = pair.requester.payer.client
    await as_payer.request_close(payer_ch.id)
    await advance_time(chain, await as_payer.challenge_delay() // 2)
    # Back (same home, same key): it claims on start what it stored, still in time.
    again = make_provider(pair.home, pair.config, pair.provider_key, pair.work)
    async with again:
        state = await as_payer.channel(payer_ch.id)
        assert state.claimed == 12 * PRICE
        (ch,) = again.payee.channels.values()
        assert ch.phase is ChannelPhase.CLOSING and ch.claimed == 12 * PRICE
    await advance_time(chain, await as_payer.challenge_delay())
    await as_payer.withdraw(payer_ch.id)
    assert await pair.token.balance_of(pair.provider.address) == net(12 * PRICE)
    assert await pair.total() == before


async def test_buy_pays_through_an_open_channel_under_the_threshold(pair: Pair) -> None:
    await pair.requester.call("provider", "double", n=1)
    escrow_before = await pair.token.balance_of(pair.chain.deployment.address("TaskEscrow"))
    outcome = await pair.requester.buy("double", {"n": 21}, budget="0.01", result_type=int)
    assert outcome.settled and outcome.result == 42 and outcome.job_id is None
    assert outcome.price == PRICE and outcome.provider == pair.provider.address
    assert payee_channel(pair).latest == 2 * PRICE
    assert await pair.token.balance_of(pair.chain.deployment.address("TaskEscrow")) == escrow_before
    assert not pair.requester.records.tasks()  # no escrow task was started


async def test_the_payee_claims_past_its_threshold(
    chain: Chain, home: Path, config: Config, deployer: Wallet, token: TokenClient
) -> None:
    config = with_agent_settings(config, channel_claim_threshold="0.005")  # 5 calls
    async with running_pair(chain, home, config, deployer, token) as p:
        provider, requester = p.provider, p.requester
        for n in range(12):
            await requester.call(provider.address, "double", n=n)
        (ch,) = provider.payee.channels.values()
        client = PaymentChannelClient(provider.wallet, chain.deployment.address("PaymentChannel"))
        # Claimed each time 5 calls were unclaimed: under 5 are left unclaimed.
        state = await eventually(
            lambda: client.channel(ch.id),
            lambda s: s.claimed > 0 and 12 * PRICE - s.claimed < 5 * PRICE,
        )
        pool = await token.balance_of(chain.deployment.address("Consensus"))
        assert await token.balance_of(provider.address) + pool == state.claimed == ch.claimed
        assert provider.counters["channel.claims"] >= 2


async def test_prices_are_fixed_once_and_never_raised_or_under_the_floor(pair: Pair) -> None:
    requester, card = pair.requester, pair.provider.node.card
    assert card is not None
    # Below the floor: refused at the join, nothing opened but the channel itself.
    with pytest.raises(PaidCallRefused) as raised:
        await requester.call(card, "double", n=1, max_price=PRICE - 1)
    assert raised.value.code == "price_too_low"
    assert await requester.call(card, "double", n=1, max_price=PRICE) == 2
    ch = requester.payer.channel_to(card.address)
    assert ch is not None and ch.prices == {"double": PRICE}
    # A join offering less later: the payee keeps its first price, the payer refuses it.
    assert await requester.call(card, "square", n=3) == 9  # list price 2x, floor 1x
    with pytest.raises(PaidCallRefused, match="offered"):
        await requester.payer._join(card, ch, "square", PRICE)
    assert ch.prices == {"double": PRICE, "square": 2 * PRICE}
    with pytest.raises(PaidCallRefused) as raised:
        await requester.call(card, "summarize", text="x")
    assert raised.value.code == "unknown_service"


async def test_a_voucher_that_never_reached_the_payee_is_not_paid(
    chain: Chain, home: Path, config: Config, deployer: Wallet, token: TokenClient
) -> None:
    provider_key, requester_key = await funded_keys(deployer, token)
    work = Work()
    impatient = config.model_copy(
        update={
            "mesh": config.mesh.model_copy(update={"request_timeout_s": 0.5, "request_retries": 0})
        }
    )
    requester = Agent("requester", wallet=requester_key, home=home, config=impatient)
    provider = make_provider(home, config, provider_key, work)
    async with requester:
        async with provider:
            await requester.wait_for_providers("double", timeout=20)
            card = provider.node.card
            assert card is not None
            for n in range(3):
                assert await requester.call(card, "double", n=n) == 2 * n
        ch = requester.payer.channel_to(provider.address)
        assert ch is not None
        # The provider is gone: this call's voucher is signed and sent, never stored.
        with pytest.raises(PeerUnreachable):
            await requester.call(card, "double", n=3)
        assert ch.signed == 4 * PRICE and ch.unsure
        again = make_provider(home, config, provider_key, work)
        async with again:
            assert again.node.card is not None
            # The next call first asks the payee what it holds, and counts on from 3.
            assert await requester.call(again.node.card, "double", n=4) == 8
            assert ch.signed == 4 * PRICE and not ch.unsure
            assert await requester.close_channel(again.node.card) == "closed"
    state = await requester.payer.client.channel(ch.id)
    assert state.closed and state.claimed == len(work.inputs) * PRICE == 4 * PRICE


async def test_the_payer_takes_only_its_own_higher_voucher_within_the_deposit(pair: Pair) -> None:
    await pair.requester.call("provider", "double", n=1)
    payer = pair.requester.payer
    ch = payer.channel_to(pair.provider.address)
    assert ch is not None
    stranger = Account.from_key(new_key())

    def held(cumulative: int, signature: bytes) -> CallRefused:
        return CallRefused(
            code="stale_voucher", detail="", cumulative=cumulative, signature="0x" + signature.hex()
        )

    higher = ch.signed + 5 * PRICE
    good = payer.domain.sign(payer.signer, ch.id, higher)
    s = int.from_bytes(good[32:64], "big")
    malleable = good[:32] + (SECP256K1_N - s).to_bytes(32, "big") + bytes([55 - good[64]])
    for refused in (
        held(higher, payer.domain.sign(stranger, ch.id, higher)),  # not this payer's
        held(higher, malleable),  # not a signature the contract takes
        held(ch.deposit + PRICE, payer.domain.sign(payer.signer, ch.id, ch.deposit + PRICE)),
    ):
        payer._resync(ch, refused)
        assert ch.signed == PRICE
    payer._resync(ch, held(higher, good))
    assert ch.signed == higher
    # Exactly the deposit is a voucher the contract pays.
    full = payer.domain.sign(payer.signer, ch.id, ch.deposit)
    payer._resync(ch, held(ch.deposit, full))
    assert ch.signed == ch.deposit


async def test_no_recount_while_another_call_is_in_flight(pair: Pair) -> None:
    await pair.requester.call("provider", "double", n=1)
    payer = pair.requester.payer
    ch = payer.channel_to(pair.provider.address)
    assert ch is not None and pair.provider.node.card is not None
    ch.unsure, ch.in_flight, ch.signed = True, 1, 3 * PRICE
    await payer._recount(pair.provider.node.card, ch, "double")
    assert ch.unsure and ch.signed == 3 * PRICE  # that call's voucher may be on its way
    ch.in_flight = 0
    await payer._recount(pair.provider.node.card, ch, "double")
    assert not ch.unsure and ch.signed == PRICE == payee_channel(pair).latest


async def test_a_top_up_made_elsewhere_is_read_from_the_chain(pair: Pair) -> None:
    for n in range(100):  # the whole deposit
        await pair.requester.call("provider", "double", n=n)
    payer = pair.requester.payer
    ch = payer.channel_to(pair.provider.address)
    assert ch is not None and ch.signed == ch.deposit == 100 * PRICE
    await payer.client.top_up(ch.id, PRICE)  # as `agentmesh channel topup` would
    assert await pair.requester.call("provider", "double", n=100) == 200
    state = await payer.client.channel(ch.id)
    assert state.deposit == ch.deposit == 101 * PRICE  # no second top-up


async def test_a_close_after_a_claim_still_closes(pair: Pair) -> None:
    before = await pair.total()
    for n in range(3):
        await pair.requester.call("provider", "double", n=n)
    ch = payee_channel(pair)
    assert await pair.provider.payee.claim(ch) is not None
    assert await pair.provider.payee.claim(ch) is None  # nothing new to claim
    assert await pair.requester.close_channel("provider") == "closed"
    assert (await pair.provider.payee.client.channel(ch.id)).closed
    assert await pair.total() == before


async def test_a_claim_the_contract_refuses_is_answered_none_and_reread(
    pair: Pair, chain: Chain
) -> None:
    for n in range(2):
        await pair.requester.call("provider", "double", n=n)
    ch = payee_channel(pair)
    as_payer = pair.requester.payer.client
    desk = pair.provider.payee
    # Put the event watch to sleep (it would claim on the close request): after its
    # current short sleep it reads the new setting and sleeps for an hour.
    desk.settings = dataclasses.replace(desk.settings, poll_s=3600)
    await asyncio.sleep(0.5)
    await as_payer.request_close(ch.id)
    await advance_time(chain, await as_payer.challenge_delay() + 1)
    assert await desk.claim(ch) is None  # ChallengePeriodOver
    assert ch.phase is ChannelPhase.CLOSING and ch.claim_until > 0
    assert (await as_payer.channel(ch.id)).claimed == 0 == ch.claimed


async def test_claims_go_on_while_the_threshold_is_unclaimed(
    chain: Chain, home: Path, config: Config, deployer: Wallet, token: TokenClient
) -> None:
    config = with_agent_settings(config, channel_claim_threshold="0.005")  # 5 calls
    async with running_pair(chain, home, config, deployer, token) as p:
        provider, requester = p.provider, p.requester
        desk = provider.payee
        original = desk.client.claim
        sent: list[int] = []

        async def claim_while_calls_go_on(channel_id: bytes, cumulative: int, sig: bytes) -> Any:
            if not sent:  # five more calls arrive while the first claim is on its way
                for n in range(5, 10):
                    await requester.call(provider.address, "double", n=n)
            sent.append(cumulative)
            return await original(channel_id, cumulative, sig)

        desk.client.claim = claim_while_calls_go_on  # type: ignore[method-assign]
        for n in range(5):  # exactly the threshold: a claim
            await requester.call(provider.address, "double", n=n)
        (ch,) = desk.channels.values()
        await eventually(lambda: len(sent) == 2 and not ch.claiming)
        assert sent == [5 * PRICE, 10 * PRICE] and ch.claimed == 10 * PRICE
        assert provider.counters["channel.claims"] == 2  # `agentmesh mesh stats` shows it
