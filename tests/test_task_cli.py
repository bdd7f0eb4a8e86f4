"""`agentmesh task request | list | show` against a real provider agent and devnet."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from eth_account import Account
from typer.testing import CliRunner, Result

from agentmesh.agents.agent import Agent
from agentmesh.agents.service import ServiceContext
from agentmesh.cli.app import app
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import TokenClient
from agentmesh.wallets.keystore import Keystore
from agentmesh.wallets.wallet import Wallet
from tests.helpers import TEST_SCRYPT_N, bind_home, eventually, fund, net, new_key

PASSWORD = "task cli password"


def cli(home: Path, *args: str) -> Result:
    return CliRunner().invoke(
        app, ["--home", str(home), *args], env={"AGENTMESH_PASSWORD": PASSWORD}
    )


async def test_request_list_and_show_a_task(
    home: Path, chain: Chain, deployer: Wallet, token: TokenClient
) -> None:
    config = bind_home(home, chain)
    buyer = Keystore(home, scrypt_n=TEST_SCRYPT_N).create("requester", PASSWORD)
    await fund(deployer, token, buyer.address, musd=5)
    key = new_key()
    await fund(deployer, token, Account.from_key(key).address, musd=0)
    seller = Agent("seller", wallet=key, home=home, config=config)

    @seller.service("shout", price="0.03 mUSD")
    async def shout(ctx: ServiceContext, text: str) -> str:
        return text.upper()

    async with seller:
        done = await asyncio.to_thread(
            cli, home, "task", "request", "shout", "--text", "hello", "--budget", "0.1", "--json"
        )
        assert done.exit_code == 0, done.output
        bought = json.loads(done.output)
        assert bought["phase"] == "settled" and bought["result"] == "HELLO"
        assert bought["price"] == 30_000 and bought["provider"] == seller.address
        assert await token.balance_of(seller.address) == net(30_000)  # less the protocol fee
        # The seller records the release once Settled arrives.
        await eventually(lambda: seller.records.tasks()[0], lambda t: t.status == "done")

        listing = await asyncio.to_thread(cli, home, "task", "list", "--json")
        assert listing.exit_code == 0, listing.output
        rows = {row["agent"]: row for row in json.loads(listing.output)}
        assert rows["cli-requester"]["role"] == "requester"
        assert rows["seller"]["role"] == "provider"
        for row in rows.values():
            assert row["task"] == bought["task"] and row["job_id"] == bought["job_id"]
            assert row["onchain"] == "released" and row["status"] == "done"
        table = await asyncio.to_thread(cli, home, "task", "list")
        assert bought["task"][:12] in table.output and "released" in table.output

        both = await asyncio.to_thread(cli, home, "task", "show", bought["task"][:8])
        assert both.exit_code == 1  # the same task seen by both agents in this home
        assert "agents: cli-requester, seller" in str(both.exception)
        shown = await asyncio.to_thread(
            cli, home, "task", "show", bought["task"][:8], "--agent", "cli-requester", "--json"
        )
        assert shown.exit_code == 0, shown.output
        details = json.loads(shown.output)
        assert details["result"] is not None and details["job"]["status"] == "released"
        assert details["job"]["provider"] == seller.address
        # For a person: the delivered result as text, on both sides of the trade.
        for agent in ("cli-requester", "seller"):
            text = await asyncio.to_thread(
                cli, home, "task", "show", bought["task"][:8], "--agent", agent
            )
            (line,) = [x for x in text.output.splitlines() if "delivered result" in x]
            assert line.split("delivered result", 1)[1].strip() == "HELLO", text.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--text", "a", "--input", "{}"), "exactly one of --input JSON or --text"),
        ((), "exactly one of --input JSON or --text"),
        (("--input", "{not json"), "--input is not valid JSON"),
        (("--input", "[1, 2]"), "--input must be a JSON object"),
    ],
)
def test_request_rejects_bad_input(home: Path, args: tuple[str, ...], message: str) -> None:
    result = cli(home, "task", "request", "shout", "--budget", "0.1", *args)
    assert result.exit_code == 1
    assert message in str(result.exception)


def test_request_rejects_a_bad_budget(home: Path) -> None:
    result = cli(home, "task", "request", "shout", "--text", "a", "--budget", "lots")
    assert result.exit_code == 1
    assert "invalid amount 'lots'" in str(result.exception)


def test_show_unknown_task_is_a_clear_error(home: Path) -> None:
    result = cli(home, "task", "show", "abc123")
    assert result.exit_code == 1
    assert "no task 'abc123' in this home" in str(result.exception)


def test_list_without_tasks_or_chain(home: Path) -> None:
    assert json.loads(cli(home, "task", "list", "--json").output) == []
    assert "no tasks in this home yet" in cli(home, "task", "list").output
