"""The DeFi agent as its own process, killed with SIGKILL in the middle of a DCA and
started again: no period runs twice (the chain's Swapped events are counted), none is
skipped without a recorded reason, and every token is conserved."""

from __future__ import annotations

import asyncio
import os
import signal
from typing import Any

from agentmesh.cli.context import err_console
from agentmesh.cli.demo_defi import (
    AGENT,
    _cli,
    _holdings,
    _spawn,
    _store_rows,
    _wait_ready,
    stage,
)
from agentmesh.wallets.agent_wallet import AgentWalletClient
from tests.helpers import eventually

PERIOD = 3600
STEP = 300  # the oracle's period: observations every step keep the TWAP window covered


async def advance(st: Any, seconds: int) -> None:
    for _ in range(seconds // STEP):
        await st.tick(STEP)


def fills(path: Any, intent_id: str) -> list[Any]:
    return list(_store_rows(path)[1].get(intent_id, []))


async def test_a_dca_survives_kill_9_without_running_a_period_twice() -> None:
    async with stage(err_console, fund=200, cap=200) as st:
        before = await _holdings(st.market, st.holders)
        sent = await asyncio.to_thread(
            _cli, st.home, st.env, "defi", "dca", "10", "mUSD", "WETH", "--every", "1h",
            "--periods", "4",
        )  # fmt: skip
        intent_id = sent["state"]["intent_id"]
        await eventually(
            lambda: [f.status for f in fills(st.store_path, intent_id)],
            lambda s: s == ["filled"],
            timeout=60,
        )
        # Period 2 comes due; the agent is killed outright while it may be working on it.
        await advance(st, PERIOD)
        await asyncio.sleep(0.3)
        os.kill(st.agent_process.process.pid, signal.SIGKILL)
        st.agent_process.process.wait(10)
        # Period 3 passes entirely while the agent is down; period 4 comes due.
        await advance(st, 2 * PERIOD + STEP)
        st.agent_process = _spawn(st.home, AGENT, "agentmesh.agents.defi_agent", st.env)
        await _wait_ready(st.agent_process)
        rows = await eventually(
            lambda: fills(st.store_path, intent_id),
            lambda rows: len(rows) == 4 and all(r.status != "pending" for r in rows),
            timeout=90,
        )
        statuses = [(r.step, r.status) for r in rows]
        assert [s for _, s in statuses].count("filled") >= 2, statuses
        for row in rows:
            assert row.status == "filled" or row.reason, row  # every miss says why
        # The chain agrees: exactly one swap per filled step, none sent twice.
        wallet = AgentWalletClient(st.market.wallet, st.wallet)
        mined = await wallet.contract.events.Swapped().get_logs(from_block=0)
        assert len(mined) == sum(1 for r in rows if r.status == "filled")
        assert {r.tx for r in rows if r.status == "filled"} == {
            "0x" + bytes(log["transactionHash"]).hex() for log in mined
        }
        spent = 200 * 10**6 - await st.market.balance(st.market.address("mUSD"), st.wallet)
        assert spent == 10 * 10**6 * len(mined)
        after = await _holdings(st.market, st.holders)
        for symbol in before:
            assert sum(before[symbol].values()) == sum(after[symbol].values()), symbol
