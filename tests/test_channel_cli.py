"""`agentmesh channel` as a person uses it: the real CLI (in this process) against the
session anvil, keystore wallets, the agents' real channel stores. Open, list, show, top
up; a payee claiming and closing with the voucher its store holds; the payer's close
through the challenge delay; an agent paying its calls through a channel the CLI opened;
a clear error for every bad input. Every test that moves money checks it is conserved
across payer, payee and the channel contract."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from agentmesh.agents.agent import Agent
from agentmesh.agents.channel_store import ChannelStore, PayeeChannel
from agentmesh.agents.service import ServiceContext
from agentmesh.config import Config
from agentmesh.protocols.payment import ChannelPhase
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.channel import VoucherDomain
from agentmesh.wallets.clients import TokenClient
from agentmesh.wallets.deployer import CHANNEL_CHALLENGE_S
from agentmesh.wallets.keystore import Keystore
from agentmesh.wallets.wallet import Wallet
from tests.helpers import (
    ONE_MUSD,
    TEST_SCRYPT_N,
    KeystoreCli,
    advance_time,
    bind_home,
    chain_now,
    conserved,
    fee_of,
    fund,
    net,
    with_agent_settings,
)

PASSWORD = "channel cli password"
DELAY = CHANNEL_CHALLENGE_S
PRICE = 1_000  # 0.001 mUSD a call


@dataclass
class Parties(KeystoreCli):
    """Keystore wallets payer, payee and stranger, and the chain."""

    chain: Chain
    config: Config
    token: TokenClient

    async def open(self, deposit: str = "5") -> str:
        opened = await self.json(
            "channel", "open", self.address("payee"), "--deposit", deposit, "--wallet", "payer"
        )
        return str(opened["channel"])

    async def balances(self) -> list[int]:
        """payer, payee, the channel contract, the reward pool (the protocol fee)."""
        holders = (
            self.address("payer"),
            self.address("payee"),
            self.chain.deployment.address("PaymentChannel"),
            self.chain.deployment.address("Consensus"),
        )
        return [await self.token.balance_of(h) for h in holders]

    @contextlib.contextmanager
    def store(self, agent: str) -> Iterator[ChannelStore]:
        store = ChannelStore(self.home / "agents" / agent / "channels.db")
        try:
            yield store
        finally:
            store.close()

    def hold_voucher(
        self, channel: str, cumulative: int, calls: int, signer: str = "payer"
    ) -> None:
        """What the payee agent stores when it accepts paid calls: the payer's voucher."""
        domain = VoucherDomain.of(
            self.chain.deployment.address("PaymentChannel"), self.chain.deployment.chain_id
        )
        channel_id = bytes.fromhex(channel[2:])
        with self.store("payee") as store:
            store.save_payee(
                PayeeChannel(
                    id=channel_id,
                    payer=self.address("payer"),
                    token=self.chain.token_address,
                    deposit=5 * ONE_MUSD,
                    latest=cumulative,
                    signature=domain.sign(self.accounts[signer], channel_id, cumulative),
                    calls=calls,
                    prices={"double": ONE_MUSD},
                )
            )


@pytest.fixture
async def p(home: Path, chain: Chain, deployer: Wallet, token: TokenClient) -> Parties:
    config = bind_home(home, chain)
    keystore = Keystore(home, scrypt_n=TEST_SCRYPT_N)
    accounts = {}
    for name, musd in (("payer", 100), ("payee", 0), ("stranger", 0)):
        entry = keystore.create(name, PASSWORD)
        await fund(deployer, token, entry.address, musd=musd)
        accounts[name] = keystore.load(name, PASSWORD)
    return Parties(home, accounts, PASSWORD, chain, config, token)


async def test_open_records_the_channel_then_list_show_and_topup(p: Parties) -> None:
    before = await p.balances()
    opened = await p.json(
        "channel", "open", p.address("payee"), "--deposit", "5 mUSD", "--wallet", "payer"
    )
    channel = opened["channel"]
    assert opened["deposit"] == 5 * ONE_MUSD and opened["payee"] == p.address("payee")
    assert opened["payer"] == p.address("payer") and opened["agent"] == "payer"
    with p.store("payer") as store:  # the row the agent named "payer" pays through
        (row,) = store.payer_channels()
    assert "0x" + row.id.hex() == channel and row.payee == p.address("payee")
    assert (row.deposit, row.signed, row.phase, row.prices) == (
        5 * ONE_MUSD,
        0,
        ChannelPhase.OPEN,
        {},
    )
    assert row.open_tx == opened["tx"] and row.token == p.chain.token_address
    expected = {
        "channel": channel,
        "side": "payer",
        "peer": p.address("payee"),
        "payer": p.address("payer"),
        "payee": p.address("payee"),
        "token": p.chain.token_address,
        "deposit": 5 * ONE_MUSD,
        "paid": 0,
        "claimed": 0,
        "unclaimed": 0,
        "state": "open",
        "claim_until": None,
        "on_chain": True,
    }
    assert await p.json("channel", "list", "--wallet", "payer") == [expected]
    shown = await p.json("channel", "show", channel[:10], "--agent", "payer")  # a prefix
    assert shown == {
        **expected,
        "agent": "payer",
        "in_store": True,
        "prices": {},
        "calls": 0,
        "challenge_delay": DELAY,
        "close_requested_at": None,
        "chain_time": shown["chain_time"],
        "open_tx": opened["tx"],
    }
    assert shown["chain_time"] >= await chain_now(p.chain)

    topped = await p.json("channel", "topup", channel, "2.5", "--wallet", "payer")
    assert (topped["added"], topped["deposit"]) == (2_500_000, 7_500_000)
    with p.store("payer") as store:
        assert [r.deposit for r in store.payer_channels()] == [7_500_000]
    table = (await p.run("channel", "list", "--wallet", "payer")).stdout
    assert channel[:10] in table and "7.5 mUSD" in table and "open" in table
    assert conserved(before, await p.balances()) == [-7_500_000, 0, 7_500_000, 0]


async def test_the_payee_claims_and_closes_with_the_voucher_its_store_holds(p: Parties) -> None:
    channel = await p.open("5")
    before = await p.balances()
    p.hold_voucher(channel, 3 * ONE_MUSD, calls=3)
    claimed = await p.json("channel", "claim", channel, "--wallet", "payee")
    assert (claimed["claimed"], claimed["cumulative"]) == (3 * ONE_MUSD, 3 * ONE_MUSD)
    assert conserved(before, await p.balances()) == [
        0,
        net(3 * ONE_MUSD),
        -3 * ONE_MUSD,
        fee_of(3 * ONE_MUSD),
    ]
    (payee_row,) = await p.json("channel", "list", "--wallet", "payee")
    assert payee_row["side"] == "payee" and payee_row["peer"] == p.address("payer")
    assert [payee_row[k] for k in ("deposit", "paid", "claimed", "unclaimed")] == [
        5 * ONE_MUSD,
        3 * ONE_MUSD,
        3 * ONE_MUSD,
        0,
    ]
    shown = await p.json("channel", "show", channel, "--wallet", "payee")
    assert shown["prices"] == {"double": ONE_MUSD} and shown["calls"] == 3
    assert shown["open_tx"] and shown["open_tx"].startswith("0x")  # from the Opened event
    # The payer signed nothing from its own store: paid 0, and unclaimed is never negative.
    (payer_row,) = await p.json("channel", "list", "--wallet", "payer")
    assert (payer_row["paid"], payer_row["claimed"], payer_row["unclaimed"]) == (
        0,
        3 * ONE_MUSD,
        0,
    )
    again = await p.json("channel", "claim", channel, "--wallet", "payee")
    assert again["claimed"] == 0 and again["tx"] is None
    assert "nothing to claim" in again["message"]

    p.hold_voucher(channel, 4 * ONE_MUSD, calls=4)  # one more call, then the payee closes
    closed = await p.json("channel", "close", channel, "--wallet", "payee")
    assert (closed["action"], closed["paid"], closed["refunded"]) == (
        "closed",
        ONE_MUSD,
        ONE_MUSD,
    )
    assert conserved(before, await p.balances()) == [
        ONE_MUSD,
        net(3 * ONE_MUSD) + net(ONE_MUSD),
        -5 * ONE_MUSD,
        fee_of(3 * ONE_MUSD) + fee_of(ONE_MUSD),
    ]
    with p.store("payee") as store:
        (row,) = store.payee_channels()
    assert (row.phase, row.claimed, row.latest) == (ChannelPhase.CLOSED, 4 * ONE_MUSD, 4 * ONE_MUSD)
    (payer_row,) = await p.json("channel", "list", "--wallet", "payer")
    assert payer_row["state"] == "closed" and payer_row["claimed"] == 4 * ONE_MUSD
    nothing = await p.json("channel", "claim", channel, "--wallet", "payee")
    assert nothing["tx"] is None and "closed" in nothing["message"]


async def test_the_payer_closes_through_the_challenge_delay(p: Parties) -> None:
    channel = await p.open("5")
    before = await p.balances()
    p.hold_voucher(channel, ONE_MUSD, calls=1)  # a payee that never claims it in time
    requested = await p.json("channel", "close", channel, "--wallet", "payer")
    assert requested["action"] == "close_requested"
    assert requested["claim_until"] == await chain_now(p.chain) + DELAY
    with p.store("payer") as store:
        assert [r.phase for r in store.payer_channels()] == [ChannelPhase.CLOSING]
    (listed,) = await p.json("channel", "list", "--wallet", "payer")
    assert (listed["state"], listed["claim_until"]) == ("closing", requested["claim_until"])
    shown = await p.json("channel", "show", channel, "--wallet", "payer")
    assert shown["close_requested_at"] == requested["claim_until"] - DELAY
    table = (await p.run("channel", "list", "--wallet", "payer")).stdout
    assert "closing, claims until" in table

    early = await p.refused("channel", "close", channel, "--wallet", "payer")
    assert "challenge delay" in early and "s left" in early
    assert "closing" in await p.refused("channel", "topup", channel, "1", "--wallet", "payer")
    await advance_time(p.chain, DELAY + 1)
    assert "too late" in await p.refused("channel", "claim", channel, "--wallet", "payee")

    withdrawn = await p.json("channel", "close", channel, "--wallet", "payer")
    assert (withdrawn["action"], withdrawn["refunded"]) == ("withdrawn", 5 * ONE_MUSD)
    assert conserved(before, await p.balances()) == [5 * ONE_MUSD, 0, -5 * ONE_MUSD, 0]
    with p.store("payer") as store:
        assert [r.phase for r in store.payer_channels()] == [ChannelPhase.CLOSED]
    again = await p.json("channel", "close", channel, "--wallet", "payer")
    assert again["action"] == "none" and again["message"] == "already closed"


async def test_an_agent_pays_its_calls_through_the_channel_the_cli_opened(p: Parties) -> None:
    channel = await p.open("1")
    before = await p.balances()
    config = with_agent_settings(p.config, channel_poll_s=0.1, channel_claim_threshold="1000")
    provider = Agent("payee", wallet=p.accounts["payee"], home=p.home, config=config)

    @provider.service("double", price=PRICE)
    async def double(ctx: ServiceContext, n: int) -> int:
        return 2 * n

    requester = Agent("payer", wallet=p.accounts["payer"], home=p.home, config=config)
    async with provider, requester:
        await requester.wait_for_providers("double", timeout=20)
        assert [await requester.call("payee", "double", n=n) for n in (1, 2)] == [2, 4]
        assert ["0x" + ch.id.hex() for ch in requester.payer.channels.values()] == [channel]
    (row,) = await p.json("channel", "list", "--wallet", "payee")
    assert (row["channel"], row["paid"], row["unclaimed"]) == (channel, 2 * PRICE, 2 * PRICE)
    shown = await p.json("channel", "show", channel, "--wallet", "payer")
    assert (shown["paid"], shown["calls"], shown["prices"]) == (2 * PRICE, 2, {"double": PRICE})
    claimed = await p.json("channel", "claim", channel, "--wallet", "payee")
    assert claimed["claimed"] == 2 * PRICE
    assert conserved(before, await p.balances()) == [
        0,
        net(2 * PRICE),
        -2 * PRICE,
        fee_of(2 * PRICE),
    ]


async def test_every_bad_input_gets_a_clear_error_and_moves_nothing(p: Parties) -> None:
    channel = await p.open("5")
    before = await p.balances()
    unknown = "0x" + "ab" * 32
    payee = p.address("payee")
    cases: list[tuple[tuple[str, ...], str]] = [
        (("show", "0x1234"), "invalid channel id"),
        (("show", "nothex"), "invalid channel id"),
        (("claim", "0x" + "g" * 64, "--wallet", "payee"), "invalid channel id"),
        (("show", "0x12345678"), "no channel starting with 0x12345678"),
        (("show", unknown, "--wallet", "payer"), f"no channel {unknown} in agent payer's store"),
        (("close", unknown, "--wallet", "payer"), "or on chain"),
        (("show", channel, "--wallet", "stranger"), "neither the payer"),
        (("claim", channel, "--wallet", "stranger"), "neither the payer"),
        (("close", channel, "--wallet", "stranger"), "neither the payer"),
        (("claim", channel, "--wallet", "payer"), "only its payee claims"),
        (("topup", channel, "1", "--wallet", "payee"), "only its payer tops it up"),
        (("topup", channel, "0", "--wallet", "payer"), "must be above zero"),
        (("topup", channel, "abc", "--wallet", "payer"), "not a number"),
        (("topup", channel, "1000", "--wallet", "payer"), "cannot spend"),
        (("open", payee, "--deposit", "0", "--wallet", "payer"), "must be above zero"),
        (("open", payee, "--deposit", "-1", "--wallet", "payer"), "zero or positive"),
        (("open", payee, "--deposit", "5 ETH", "--wallet", "payer"), "prices are in mUSD"),
        (("open", payee, "--deposit", "0.0000001", "--wallet", "payer"), "decimal places"),
        (("open", "0x1234", "--deposit", "1", "--wallet", "payer"), "invalid address"),
        (("open", "0x" + "0" * 40, "--deposit", "1", "--wallet", "payer"), "zero address"),
        (("open", p.address("payer"), "--deposit", "1", "--wallet", "payer"), "itself"),
        (("open", payee, "--deposit", "1000", "--wallet", "payer"), "cannot spend"),
        (("open", payee, "--deposit", "1", "--wallet", "nobody"), "no wallet named 'nobody'"),
        (("list", "--agent", "../etc"), "invalid agent name"),
        (("list", "--wallet", "../etc"), "invalid wallet name"),
    ]
    for args, expected in cases:
        message = await p.refused("channel", *args)
        assert expected in message, (args, message)
    p.hold_voucher(channel, ONE_MUSD, calls=1, signer="stranger")  # not the payer's
    for command in ("claim", "close"):
        message = await p.refused("channel", command, channel, "--wallet", "payee")
        assert f"signed by {p.address('stranger')}, not by its payer" in message
    assert await p.balances() == before
    with p.store("payer") as store:
        assert ["0x" + r.id.hex() for r in store.payer_channels()] == [channel]
    assert not (p.home / "agents" / "stranger").exists()  # reading made no store
