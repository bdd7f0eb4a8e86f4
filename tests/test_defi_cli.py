"""`agentmesh delegate` and `agentmesh defi` as a person uses them: real CLI, real devnet
with Uniswap V2, the owner's wallet agent (a process the CLI starts) signing intents and
sending them over the mesh to a DeFi agent (in this test's process)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account
from typer.testing import CliRunner, Result

from agentmesh.agents.agent import Agent
from agentmesh.agents.defi_desk import DefiDesk
from agentmesh.cli.app import app
from agentmesh.protocols.defi import IntentPhase
from agentmesh.wallets import exchange as ex
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import TokenClient
from agentmesh.wallets.keystore import Keystore
from agentmesh.wallets.oracle import TwapOracleClient
from agentmesh.wallets.wallet import Wallet
from tests.helpers import TEST_SCRYPT_N, bind_home, eventually, fund, new_key, observe_pools

PASSWORD = "defi cli password"
MUSD = 10**6


def cli(home: Path, *args: str, answer: str | None = None) -> Result:
    return CliRunner().invoke(
        app, ["--home", str(home), *args], env={"AGENTMESH_PASSWORD": PASSWORD}, input=answer
    )


@dataclass
class Person:
    home: Path
    chain: Chain
    owner: str  # address
    desk: DefiDesk
    agent: Agent
    wallet: str  # the delegated AgentWallet
    oracle: TwapOracleClient

    async def run(self, *args: str, answer: str | None = None) -> Result:
        return await asyncio.to_thread(cli, self.home, *args, answer=answer)

    async def json(self, *args: str) -> Any:
        done = await self.run(*args, "--json")
        assert done.exit_code == 0, done.output
        return json.loads(done.stdout)

    async def refused(self, *args: str) -> str:
        done = await self.run(*args)
        assert done.exit_code == 1, done.output
        return str(done.exception) if done.exception else done.output

    def intents(self) -> list[Any]:
        assert self.desk.store is not None
        return self.desk.store.intents()


@pytest.fixture
async def person(
    home: Path, chain: Chain, deployer: Wallet, token: TokenClient
) -> AsyncIterator[Person]:
    exchange = chain.deployment.exchange
    assert exchange is not None and exchange.oracle is not None
    config = bind_home(home, chain)
    alice = Keystore(home, scrypt_n=TEST_SCRYPT_N).create("alice", PASSWORD)
    await fund(deployer, token, alice.address, musd=1_000)
    key = new_key()
    await fund(deployer, token, Account.from_key(key).address, musd=0)
    oracle = TwapOracleClient(deployer, exchange.oracle)
    await observe_pools(chain, oracle, 3)
    created = await asyncio.to_thread(
        cli,
        home,
        "delegate",
        "create",
        "--owner",
        "alice",
        "--agent",
        Account.from_key(key).address,
        "--fund",
        "300",
        "--cap",
        "mUSD=200",
        "--cap",
        "WETH=1",
        "--window",
        "10m",
        "--json",
    )
    assert created.exit_code == 0, created.output
    wallet = json.loads(created.stdout)["wallet"]
    agent = Agent("defi", wallet=key, home=home, config=config)
    desk = DefiDesk(agent, retry_s=ex.ORACLE_PERIOD)
    async with agent:
        yield Person(home, chain, alice.address, desk, agent, wallet, oracle)


async def test_delegate_create_sets_every_rule_and_show_reads_them_back(person: Person) -> None:
    shown = await person.json("delegate", "show")
    assert shown["wallet"] == person.wallet and shown["agent"] == person.agent.address
    assert shown["owner_address"] == person.owner and shown["paused"] is False
    policy = shown["policy"]
    assert policy["twap_window_s"] == 600 and policy["max_slippage_bps"] == 100
    assert policy["router_registered"] is True and policy["max_path_length"] == 3
    tokens = {row["token"]: row for row in shown["tokens"]}
    assert tokens["mUSD"]["balance"] == str(300 * MUSD)
    assert tokens["mUSD"]["cap"] == str(200 * MUSD) and tokens["mUSD"]["spent"] == "0"
    assert tokens["WETH"]["allowed"] and tokens["WETH"]["cap"] == str(10**18)
    assert not tokens["MGLD"]["allowed"]  # not on the list given
    assert shown["value_musd"] == str(300 * MUSD)
    table = await person.run("delegate", "show")
    assert table.exit_code == 0 and "1%" in table.output and "10-minute TWAP" in table.output


async def test_a_swap_command_fills_and_intents_report_it(person: Person) -> None:
    sent = await person.json("defi", "swap", "20", "mUSD", "WETH")
    assert sent["sent"] is True and sent["intent"]["amount_in"] == str(20 * MUSD)
    intent_id = sent["state"]["intent_id"]
    row = await eventually(
        lambda: person.desk.store.intent(intent_id),  # type: ignore[union-attr]
        lambda r: r is not None and r.phase == IntentPhase.DONE,
        timeout=30,
    )
    assert row is not None and row.phase == IntentPhase.DONE
    report = await person.json("defi", "intents")
    (listed,) = report["intents"]
    assert listed["id"] == intent_id and listed["filled"] == 1
    assert listed["sold"] == "20 mUSD" and listed["average_price"].endswith("mUSD/WETH")
    assert listed["pnl_vs_holding_musd"] is not None  # valued at the TWAP now
    shown = await person.json("delegate", "show")
    musd = {row["token"]: row for row in shown["tokens"]}["mUSD"]
    assert (musd["spent"], musd["remaining"]) == (str(20 * MUSD), str(180 * MUSD))


async def test_ask_shows_the_intent_and_signs_nothing_without_a_yes(person: Person) -> None:
    declined = await person.run("defi", "ask", "swap 10 mUSD for WETH", answer="n\n")
    assert declined.exit_code == 1
    assert "not sent: nothing was signed" in declined.output
    assert "sell" in declined.output and "10 mUSD" in declined.output
    assert person.intents() == []
    accepted = await person.json("defi", "ask", "buy 10 mUSD of WETH every hour, 3 times", "--yes")
    assert accepted["sent"] is True and accepted["intent"]["kind"] == "dca"
    assert accepted["intent"]["periods"] == 3 and accepted["intent"]["period_s"] == 3600
    assert [row.kind for row in person.intents()] == ["dca"]


async def test_bad_input_is_refused_in_one_line_naming_the_problem(person: Person) -> None:
    assert "unknown token 'DOGE'" in await person.refused("defi", "swap", "5", "DOGE", "WETH")
    assert "over the wallet's cap" in await person.refused("defi", "swap", "250", "mUSD", "WETH")
    assert "invalid --slippage" in await person.refused(
        "defi", "swap", "5", "mUSD", "WETH", "--slippage", "lots"
    )
    assert "invalid side 'long'" in await person.refused(
        "defi", "stop", "long", "1", "WETH", "1800"
    )
    assert "weights sum to 90%" in await person.refused("defi", "rebalance", "WETH=50,mUSD=40")
    assert "invalid --window" in await person.refused(
        "delegate", "create", "--owner", "alice", "--agent", person.owner, "--window", "1m"
    )
    assert "needs a daily cap: add --cap MGLD=AMOUNT" in await person.refused(
        "delegate", "create", "--owner", "alice", "--agent", person.owner,
        "--tokens", "mUSD,WETH,MGLD",
    )  # fmt: skip
    assert "at most" in await person.refused(
        "delegate", "create", "--owner", "alice", "--agent", person.owner,
        "--max-delay", "50000d",
    )  # fmt: skip
    assert person.intents() == []


async def test_the_owners_levers_pause_revoke_and_withdraw(person: Person) -> None:
    paused = await person.json("delegate", "pause")
    assert paused["action"] == "pause"
    assert "paused" in await person.refused("defi", "swap", "5", "mUSD", "WETH")
    await person.json("delegate", "resume")
    await person.json("delegate", "revoke")
    assert "not by this agent" in await person.refused("defi", "swap", "5", "mUSD", "WETH")
    before = await TokenClient(person.desk.agent.wallet, person.chain.token_address).balance_of(
        person.owner
    )
    out = await person.json("delegate", "withdraw")
    assert out["amount"] == str(300 * MUSD) and out["to"] == person.owner
    after = await TokenClient(person.desk.agent.wallet, person.chain.token_address).balance_of(
        person.owner
    )
    assert after - before == 300 * MUSD


async def test_cancel_stops_a_dca(person: Person) -> None:
    sent = await person.json("defi", "dca", "10", "mUSD", "WETH", "--every", "1h", "--periods", "4")
    intent_id = sent["state"]["intent_id"]
    await eventually(
        lambda: person.desk.store.fills(intent_id),  # type: ignore[union-attr]
        lambda fills: len(fills) == 1,
        timeout=30,
    )
    cancelled = await person.json("defi", "cancel", intent_id[:12])
    assert cancelled["phase"] == IntentPhase.CANCELLED
    assert "no single intent" in await person.refused("defi", "cancel", "0xdeadbeef")
