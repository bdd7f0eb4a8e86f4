"""`agentmesh stake` as a person uses it: the real CLI (in this process) against the
session anvil's Staking contract, keystore wallets. Stake (with and without
``--validator``) and read it back; unbond, a withdrawal refused too early and while a
dispute holds the stake, then taken back; another account read without a password; a
clear error for every bad input, with nothing sent. Every test that moves money checks
it is conserved across the staker and the Staking contract."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import TokenClient
from agentmesh.wallets.deployer import (
    STAKING_MAX_VALIDATORS,
    STAKING_MIN_PROVIDER,
    STAKING_PERMITS,
    STAKING_UNBONDING_S,
)
from agentmesh.wallets.keystore import Keystore
from agentmesh.wallets.staking import StakingClient
from agentmesh.wallets.wallet import Wallet
from tests.helpers import (
    ONE_MUSD,
    TEST_SCRYPT_N,
    KeystoreCli,
    advance_time,
    bind_home,
    chain_now,
    conserved,
    fund,
    send_as,
)

PASSWORD = "stake cli password"
DELAY = STAKING_UNBONDING_S


@dataclass
class Stakers(KeystoreCli):
    """Keystore wallets requester (the default), alice and poor, and the chain."""

    chain: Chain
    token: TokenClient
    deployer: Wallet

    @property
    def staking(self) -> str:
        return self.chain.deployment.address("Staking")

    async def balances(self, *names: str) -> list[int]:
        """The stakers (default: requester), then the Staking contract."""
        holders = [self.address(n) for n in names or ("requester",)] + [self.staking]
        return [await self.token.balance_of(a) for a in holders]

    async def nonce(self, name: str) -> int:
        return int(await self.chain.w3.eth.get_transaction_count(self.address(name)))  # type: ignore[arg-type]


@pytest.fixture
async def s(home: Path, chain: Chain, deployer: Wallet, token: TokenClient) -> Stakers:
    bind_home(home, chain)
    keystore = Keystore(home, scrypt_n=TEST_SCRYPT_N)
    accounts = {}
    for name, musd in (("requester", 100), ("alice", 100), ("poor", 1)):
        entry = keystore.create(name, PASSWORD)
        await fund(deployer, token, entry.address, musd=musd)
        accounts[name] = keystore.load(name, PASSWORD)
    return Stakers(home, accounts, PASSWORD, chain, token, deployer)


def figures(address: str, active: int, **changes: Any) -> dict[str, Any]:
    """An account's figures as every command reports them."""
    return {
        "address": address,
        "active": active,
        "unbonding": 0,
        "unbonding_ends": None,
        "holds": 0,
        "validator": False,
        "ranked": active >= STAKING_MIN_PROVIDER,
        "permit": False,
        **changes,
    }


async def test_add_with_and_without_validator_then_show(s: Stakers) -> None:
    me = s.address("requester")
    before = await s.balances("requester", "alice")
    added = await s.json("stake", "add", "4")  # the default wallet: requester
    assert added["tx"].startswith("0x") and added["register_tx"] is None
    assert "not ranked as a provider (needs 10 mUSD active)" in added["message"]
    del added["tx"], added["register_tx"], added["message"]
    assert added == {
        "wallet": "requester",
        **figures(me, 4 * ONE_MUSD),
        "staked": 4 * ONE_MUSD,
        "registered": False,
        "min_provider_stake": STAKING_MIN_PROVIDER,
    }

    added = await s.json("stake", "add", "6 mUSD", "--validator", "--wallet", "requester")
    assert added["register_tx"].startswith("0x") and added["register_tx"] != added["tx"]
    assert added["registered"] and added["staked"] == 6 * ONE_MUSD
    assert {k: added[k] for k in figures(me, 0)} == figures(
        me, 10 * ONE_MUSD, validator=True, permit=True
    )  # exactly the minimum: ranked
    again = await s.run("stake", "add", "0.5", "--validator")  # registered already: not again
    assert again.exit_code == 0, again.output
    assert "staked 0.5 mUSD: active stake 10.5 mUSD; already a validator candidate" in again.stdout
    assert "ranked as a provider" in again.stdout and "holds a validator permit" in again.stdout

    await s.json("stake", "add", "2", "--validator", "--wallet", "alice")
    shown = await s.json("stake", "show")
    assert shown["chain_time"] >= await chain_now(s.chain)
    del shown["chain_time"]
    assert shown == {
        "wallet": "requester",
        **figures(me, 10_500_000, validator=True, permit=True),
        "staking": s.staking,
        "terms": {
            "token": s.chain.token_address,
            "unbonding_delay": DELAY,
            "min_provider_stake": STAKING_MIN_PROVIDER,
            "permits": STAKING_PERMITS,
            "max_validators": STAKING_MAX_VALIDATORS,
            "slasher": s.chain.deployment.address("Jury"),
        },
        "validators": [  # rank order: most active stake first
            {"address": me, "active": 10_500_000, "permit": True},
            {"address": s.address("alice"), "active": 2 * ONE_MUSD, "permit": True},
        ],
    }
    table = (await s.run("stake", "show")).stdout
    for words in ("10.5 mUSD", "min provider stake", "86400 s (24 h)", "top 8 validators"):
        assert words in table, table
    assert f"{me} (this account)" in table and "2 mUSD" in table
    after = await s.balances("requester", "alice")
    assert conserved(before, after) == [-10_500_000, -2 * ONE_MUSD, 12_500_000]


async def test_unbond_then_withdraw_after_the_delay_and_holds(s: Stakers) -> None:
    me = s.address("requester")
    before = await s.balances()
    await s.json("stake", "add", "10")
    unbonding = await s.json("stake", "withdraw", "3")
    ends = await chain_now(s.chain) + DELAY  # the unbond's block time + the delay
    assert unbonding["action"] == "unbonding" and unbonding["amount"] == 3 * ONE_MUSD
    assert "withdraw it with `agentmesh stake withdraw`" in unbonding["message"]
    assert {k: unbonding[k] for k in figures(me, 0)} == figures(
        me, 7 * ONE_MUSD, unbonding=3 * ONE_MUSD, unbonding_ends=ends
    )

    early = await s.refused("stake", "withdraw")
    assert "cannot withdraw the 3 mUSD unbonding of wallet requester yet" in early
    assert "its unbonding delay runs until" in early and " left)" in early
    assert re.search(r"\((24 h|23 h 59 min( \d+ s)?) left\)$", early), early  # ~the delay

    # A second unbond restarts the delay for everything unbonding.
    await advance_time(s.chain, DELAY - 100)
    again = await s.json("stake", "withdraw", "1")
    assert "the delay restarted for all 4 mUSD unbonding" in again["message"]
    ends = await chain_now(s.chain) + DELAY
    assert (again["unbonding"], again["unbonding_ends"]) == (4 * ONE_MUSD, ends)
    await advance_time(s.chain, 200)  # the first delay is over, not the second
    assert "unbonding delay runs until" in await s.refused("stake", "withdraw")

    # A dispute holds the stake: as the jury (the slasher) does when a case opens.
    staking = StakingClient(s.deployer, s.staking).contract
    jury = s.chain.deployment.address("Jury")
    await send_as(s.chain, jury, staking.functions.hold(me))
    await advance_time(s.chain, DELAY)
    held = await s.refused("stake", "withdraw")
    assert "1 open dispute holds it" in held and "delay" not in held
    assert (await s.json("stake", "show"))["holds"] == 1
    await send_as(s.chain, jury, staking.functions.release(me))

    withdrawn = await s.json("stake", "withdraw")
    assert withdrawn["action"] == "withdrawn" and withdrawn["amount"] == 4 * ONE_MUSD
    assert {k: withdrawn[k] for k in figures(me, 0)} == figures(me, 6 * ONE_MUSD)
    assert "withdrew 4 mUSD; active stake 6 mUSD" in withdrawn["message"]
    assert conserved(before, await s.balances()) == [-6 * ONE_MUSD, 6 * ONE_MUSD]
    assert await s.token.balance_of(me) == 94 * ONE_MUSD

    nothing = await s.refused("stake", "withdraw")
    assert "nothing to withdraw: wallet requester has no stake unbonding" in nothing
    assert "`agentmesh stake withdraw AMOUNT`" in nothing


async def test_show_another_account_needs_no_password(s: Stakers) -> None:
    alice = s.address("alice")
    await s.json("stake", "add", "12", "--wallet", "alice")
    for who in (alice, alice.lower(), "alice"):
        shown = await s.json("stake", "show", who, password=False)
        assert {k: shown[k] for k in figures(alice, 0)} == figures(alice, 12 * ONE_MUSD)
        assert shown["wallet"] == (None if who.startswith("0x") else "alice")
        assert shown["validators"] == []
    # The --wallet's own stake is read from its keystore's address: no key either.
    mine = await s.json("stake", "show", password=False)
    assert {k: mine[k] for k in figures(alice, 0)} == figures(s.address("requester"), 0)
    table = await s.run("stake", "show", alice, password=False)
    assert table.exit_code == 0 and "12 mUSD" in table.stdout
    assert "no validators registered yet" in table.stdout


async def test_bad_inputs_are_refused_and_send_nothing(s: Stakers) -> None:
    await s.json("stake", "add", "2")
    before = await s.balances("requester", "poor")
    nonces = [await s.nonce("requester"), await s.nonce("poor")]

    for amount, problem in (
        ("0", "must be above zero"),
        ("abc", "not a number"),
        ("1.0000001", "at most 6 decimal places"),
        ("5 ETH", "prices are in mUSD"),
        ("-1", "must be zero or positive"),
    ):
        for command in (("add",), ("withdraw",)):
            message = await s.refused("stake", *command, "--", amount)
            assert message.startswith("invalid amount") and problem in message, message
    assert "too large" in await s.refused("stake", "add", str(2**128))

    poor = await s.refused("stake", "add", "5", "--wallet", "poor")
    assert f"wallet poor ({s.address('poor')}) holds 1 mUSD: too little to stake 5 mUSD" == poor
    over = await s.refused("stake", "withdraw", "2.5")
    assert over == (
        f"cannot unbond 2.5 mUSD: wallet requester ({s.address('requester')}) has 2 mUSD "
        "active stake"
    )
    nothing = await s.refused("stake", "withdraw", "--wallet", "poor")
    assert nothing == "nothing to withdraw: wallet poor has no stake unbonding"
    assert "no wallet named 'ghost'" in await s.refused("stake", "add", "1", "--wallet", "ghost")

    for who, problem in (
        ("0x1234", "expected 0x and 40 hex digits"),
        ("0x" + "zz" * 20, "expected 0x and 40 hex digits"),
        ("0xAbCdEf0000000000000000000000000000000000", "checksum does not match"),
        ("nobody", "or the name of a wallet"),
        ("Not A Name!", "or the name of a wallet"),
    ):
        message = await s.refused("stake", "show", who)
        assert message.startswith("invalid address") and problem in message, message

    assert await s.balances("requester", "poor") == before
    assert [await s.nonce("requester"), await s.nonce("poor")] == nonces
