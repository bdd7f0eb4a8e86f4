"""The web console end to end, in a real browser (Debian's Chromium via Playwright):
`agentmesh ui` as its own process over a home whose agents trade on the session devnet
(in-process agents with deterministic services: the model is not what these test).

- the task list updates without a reload as a purchase settles, and the task page
  shows the result text and the transaction hashes (each with its gas);
- a pending approval is approved by clicking, and the purchase then settles;
- a wrong or missing token gets 401 and no data (pages, API, events, actions).
Screenshots of each main page go to test-artifacts/console/.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentmesh.agents.agent import Agent, TaskFailed
from agentmesh.agents.service import ServiceContext
from agentmesh.config import Config
from agentmesh.wallets.chain import Chain
from agentmesh.wallets.clients import TokenClient
from agentmesh.wallets.wallet import Wallet
from tests.console_support import browser_page, console_process, screenshot
from tests.helpers import (
    TEXT,
    Ledger,
    bind_home,
    fee_of,
    funded_key,
    net,
    with_agent_settings,
)

PRICE = 50_000
pytestmark = pytest.mark.timeout(240)


@pytest.fixture
def config(home: Path, chain: Chain) -> Config:
    return bind_home(home, chain)


@pytest.fixture
async def buyer_key(deployer: Wallet, token: TokenClient) -> bytes:
    return await funded_key(deployer, token, musd=10)


@pytest.fixture
async def seller_key(deployer: Wallet, token: TokenClient) -> bytes:
    return await funded_key(deployer, token, musd=0)


def summarizer(home: Path, config: Config, key: bytes) -> Agent:
    seller = Agent("seller", wallet=key, home=home, config=config)

    @seller.service("summarize", price="0.05 mUSD")
    async def summarize(ctx: ServiceContext, text: str) -> str:
        return "SUMMARY: " + text[:40]

    return seller


@contextlib.asynccontextmanager
async def trading(
    home: Path,
    config: Config,
    buyer_config: Config,
    token: TokenClient,
    keys: tuple[bytes, bytes],
) -> AsyncIterator[tuple[Agent, Ledger]]:
    """A summarizer and a buyer (with its own settings) that knows of it, running in
    ``home``; the ledger of buyer, escrow, seller and reward pool."""
    buyer_key, seller_key = keys
    async with (
        summarizer(home, config, seller_key) as seller,
        Agent("buyer", wallet=buyer_key, home=home, config=buyer_config) as buyer,
    ):
        ledger = await Ledger(token, buyer.escrow.address, seller.address, buyer.address).open()
        await buyer.wait_for_providers("summarize", timeout=30)
        yield buyer, ledger


async def test_tasks_settle_live_and_the_task_page_shows_result_and_transactions(
    home: Path, config: Config, token: TokenClient, buyer_key: bytes, seller_key: bytes
) -> None:
    with console_process(home) as console:
        async with browser_page(console) as page:
            await page.goto(f"{console.base}/tasks?home=")
            assert "No tasks yet" in await page.inner_text("main")
            await screenshot(page, "tasks-empty")
            # A marker that a reload would wipe: the list must change in place.
            await page.evaluate("window.__stayed = true")
            async with trading(home, config, config, token, (buyer_key, seller_key)) as (
                buyer,
                ledger,
            ):
                outcome = await buyer.buy("summarize", text=TEXT, budget="0.5")
                await page.wait_for_selector(
                    'tr[data-agent="buyer"][data-status="done"]', timeout=30_000
                )
                assert await page.evaluate("window.__stayed === true"), "the page reloaded"
                await page.wait_for_selector(
                    'tr[data-agent="seller"][data-status="done"]', timeout=30_000
                )
                await screenshot(page, "tasks")
                link = page.locator('tr[data-agent="buyer"] a').first
                await link.click()
                await page.wait_for_selector("#result")
                assert "SUMMARY: " + TEXT[:40] in await page.inner_text("#result")
                shown = await page.locator("#txs .tx").all_inner_texts()
                assert set(outcome.txs.values()) <= set(shown), (outcome.txs, shown)
                assert await page.locator("#txs tbody tr td:nth-child(3)").count() == len(shown)
                for gas in await page.locator("#txs tbody tr td:nth-child(3)").all_inner_texts():
                    assert int(gas.replace(",", "")) > 21_000
                check = await page.inner_text("#check")
                assert "matches the delivery" in check and "matches the hash on chain" in check
                assert "Award" in await page.inner_text("#messages")
                await screenshot(page, "task")
                for name, path in [
                    ("agents", "/"),
                    ("mesh", "/mesh"),
                    ("channels", "/channels"),
                    ("delegations", "/delegations"),
                    ("validators", "/validators"),
                ]:
                    await page.goto(f"{console.base}{path}?home=")
                    heading = await page.locator("main h1").first.inner_text()
                    assert not heading.startswith("Error"), (path, await page.inner_text("main"))
                    await screenshot(page, name)
                await page.goto(f"{console.base}/?home=")
                rows = await page.locator("#agents tbody tr").all_inner_texts()
                assert any("buyer" in r and "running" in r for r in rows), rows
                assert await ledger.conserved() == [net(PRICE), -PRICE, 0, fee_of(PRICE)]


@contextlib.asynccontextmanager
async def a_spend_waiting(
    home: Path, config: Config, token: TokenClient, buyer_key: bytes, seller_key: bytes
) -> AsyncIterator[tuple[Any, asyncio.Task[Any], Ledger]]:
    """The console's approvals page open in Chromium while a buyer whose spends need a
    person's approval starts a purchase: (page, the purchase, the ledger), once the
    pending approval has appeared on the page without a reload."""
    buyer_config = with_agent_settings(config, approval_threshold="0.01")
    with console_process(home) as console:
        async with browser_page(console) as page:
            await page.goto(f"{console.base}/approvals?home=")
            assert "No spend waits" in await page.inner_text("main")
            keys = (buyer_key, seller_key)
            async with trading(home, config, buyer_config, token, keys) as (buyer, ledger):
                buying = asyncio.create_task(buyer.buy("summarize", text=TEXT, budget="0.5"))
                try:
                    row = page.locator("#pending tr[data-approval]")
                    await row.first.wait_for(timeout=30_000)
                    assert "0.05 mUSD" in await row.first.inner_text()
                    assert not buying.done()  # the purchase waits for the person
                    yield page, buying, ledger
                finally:
                    buying.cancel()


async def test_a_pending_approval_is_approved_by_clicking_and_the_purchase_settles(
    home: Path, config: Config, token: TokenClient, buyer_key: bytes, seller_key: bytes
) -> None:
    async with a_spend_waiting(home, config, token, buyer_key, seller_key) as (
        page,
        buying,
        ledger,
    ):
        await screenshot(page, "approvals")
        await page.click("#pending button.approve")
        assert "approved" in await (await page.wait_for_selector("#notice")).inner_text()
        outcome = await asyncio.wait_for(asyncio.shield(buying), 60)
        assert outcome.phase == "settled"
        assert await ledger.conserved() == [net(PRICE), -PRICE, 0, fee_of(PRICE)]
        await page.goto(page.url.split("?")[0] + "?home=")
        decided = await page.locator("#decided tr[data-approval]").first.inner_text()
        assert "approved" in decided


async def test_a_rejection_by_clicking_cancels_the_purchase_and_spends_nothing(
    home: Path, config: Config, token: TokenClient, buyer_key: bytes, seller_key: bytes
) -> None:
    async with a_spend_waiting(home, config, token, buyer_key, seller_key) as (
        page,
        buying,
        ledger,
    ):
        await page.click("#pending button.reject")
        assert "rejected" in await (await page.wait_for_selector("#notice")).inner_text()
        with pytest.raises(TaskFailed, match="reject"):
            await asyncio.wait_for(asyncio.shield(buying), 60)
        assert await ledger.conserved() == [0, 0, 0, 0]


async def test_without_the_token_nothing_is_served(
    home: Path, config: Config, buyer_key: bytes
) -> None:
    async with Agent("buyer", wallet=buyer_key, home=home, config=config) as buyer:
        buyer.records.request_approval("r:" + "ab" * 16, 70_000, "buy summarize for 0.07 mUSD")
        (pending,) = buyer.records.approvals("pending")
        with console_process(home) as console:
            async with httpx.AsyncClient(base_url=console.base) as http:
                for path in (
                    "/",
                    "/tasks",
                    "/api/agents",
                    "/api/approvals",
                    "/events",
                    "/static/console.js",
                    "/mesh?home=",
                ):
                    for headers in ({}, {"authorization": "Bearer wrong-token"}):
                        refused = await http.get(path, headers=headers)
                        assert refused.status_code == 401, (path, headers)
                        assert buyer.address not in refused.text and "buyer" not in refused.text
                wrong = await http.get("/?token=not-the-token")
                assert wrong.status_code == 401 and "buyer" not in wrong.text
                # A page of another site that resolved its own name to this address.
                rebound = await http.get(
                    "/api/agents",
                    headers={"host": "evil.example:80", "authorization": f"Bearer {console.token}"},
                )
                assert rebound.status_code == 421 and "buyer" not in rebound.text
                # Actions: no token, no CSRF value, or another origin are all refused.
                act = f"/approvals/{pending.id}/approve"
                assert (await http.post(act, data={"csrf": "x"})).status_code == 401
                http.cookies.set(f"agentmesh_console_{console.port}", console.token)
                assert (await http.post(act, data={"csrf": "forged"})).status_code == 403
                from agentmesh.cli.console.security import csrf_value

                good = {"csrf": csrf_value(console.token)}
                cross = await http.post(act, data=good, headers={"origin": "http://evil.example"})
                assert cross.status_code == 403
                site = await http.post(act, data=good, headers={"sec-fetch-site": "cross-site"})
                assert site.status_code == 403
                assert buyer.records.approvals("pending"), "a refused request decided it"
                # The event stream: a version at once, a new one after a write.
                bearer = {"authorization": f"Bearer {console.token}"}
                async with http.stream(
                    "GET", "/events?home=&scope=tasks", headers=bearer, timeout=30
                ) as events:
                    lines = events.aiter_lines()

                    async def next_version() -> str:
                        async for line in lines:
                            if line.startswith("data: "):
                                return line[6:]
                        raise AssertionError("the event stream ended")

                    first = await asyncio.wait_for(next_version(), 10)
                    buyer.records.request_approval("r:" + "cd" * 16, 80_000, "another spend")
                    assert await asyncio.wait_for(next_version(), 10) != first
                # With the token the same data is there.
                ok = await http.get("/api/agents?home=")
                assert ok.status_code == 200 and buyer.address in ok.text
                assert ok.headers["content-security-policy"].startswith("default-src 'self'")
                done = await http.post(act + "?home=", data=good, follow_redirects=False)
                assert done.status_code == 303
                assert buyer.records.approvals("rejected") == []
                assert [a.id for a in buyer.records.approvals("approved")] == [pending.id]
                again = await http.post(act + "?home=", data=good)
                assert again.status_code == 409 and "already approved" in again.text
