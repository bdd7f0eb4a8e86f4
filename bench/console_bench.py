"""Console benchmark: page load for a home with 1,000 tasks, against a static file
served by the same console in the same run.

    .venv/bin/python bench/console_bench.py [--tasks 1000] [--rounds 20]

Starts `agentmesh ui` (its own process) over a throw-away home whose agent records
hold N settled tasks, then prints, median of the rounds:
- time to first byte of /tasks (server-side: read every agent's records, render) vs
  of /static/console.css (the floor: the same server, token check and headers);
- time to a rendered task list in headless Chromium (navigation until the last row
  is in the DOM) vs loading the static file in the same browser;
and the ratio of each to its baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from agentmesh.agents.records import AgentRecords  # noqa: E402
from agentmesh.protocols.negotiation import Phase, Role, TaskStatus  # noqa: E402
from tests.console_support import CHROMIUM_ARGS, console_process, require_chromium  # noqa: E402

console = Console()


def fill(home: Path, tasks: int) -> None:
    """N tasks split over a buyer and two sellers, as a busy market leaves them."""
    agents = {"buyer": Role.REQUESTER, "seller-a": Role.PROVIDER, "seller-b": Role.PROVIDER}
    for number, (agent, role) in enumerate(agents.items()):
        records = AgentRecords(home / "agents" / agent / "agent.db")
        share = tasks // len(agents) + (1 if number < tasks % len(agents) else 0)
        for n in range(share):
            tid = role.task_id(f"{number:02x}{n:030x}")
            records.start_task(tid, role, "summarize", "0x" + "ab" * 20)
            records.update_task(
                tid, state=Phase.SETTLED, status=TaskStatus.DONE, price=50_000, job_id=n + 1
            )
        records.close()


def ttfb(http: httpx.Client, path: str) -> float:
    start = time.perf_counter()
    with http.stream("GET", path) as response:
        response.raise_for_status()
        next(response.iter_raw())
        return time.perf_counter() - start


async def browser_times(base: str, token: str, rounds: int, rows: int) -> tuple[float, float]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=require_chromium(), args=CHROMIUM_ARGS)
        page = await browser.new_page()
        await page.goto(f"{base}/?token={token}")
        pages, statics = [], []
        for _ in range(rounds):
            start = time.perf_counter()
            await page.goto(f"{base}/tasks?home=", wait_until="commit")
            # The last row in the DOM (a locator: the page's CSP forbids eval'd waits).
            last = page.locator("#tasks tbody tr").nth(rows - 1)
            await last.wait_for(state="attached")
            pages.append(time.perf_counter() - start)
            start = time.perf_counter()
            await page.goto(f"{base}/static/console.css", wait_until="load")
            statics.append(time.perf_counter() - start)
        await browser.close()
    return statistics.median(pages), statistics.median(statics)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--tasks", type=int, default=1_000)
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agentmesh-console-bench-") as tmp:
        home = Path(tmp)
        fill(home, args.tasks)
        with console_process(home) as running:
            headers = {"authorization": f"Bearer {running.token}"}
            with httpx.Client(base_url=running.base, headers=headers, timeout=30) as http:
                size = len(http.get("/tasks?home=").content)
                for _ in range(3):  # warm up (templates compile, imports load)
                    ttfb(http, "/tasks?home=")
                    ttfb(http, "/static/console.css")
                page_ttfb = statistics.median(
                    ttfb(http, "/tasks?home=") for _ in range(args.rounds)
                )
                static_ttfb = statistics.median(
                    ttfb(http, "/static/console.css") for _ in range(args.rounds)
                )
            page_load, static_load = asyncio.run(
                browser_times(running.base, running.token, args.rounds, args.tasks)
            )
    table = Table(
        title=f"console: /tasks with {args.tasks:,} tasks ({size / 1024:.0f} KiB), "
        f"median of {args.rounds}"
    )
    for column in ("measure", "task list", "static file (baseline)", "ratio"):
        table.add_column(column)
    table.add_row(
        "time to first byte",
        f"{page_ttfb * 1000:.1f} ms",
        f"{static_ttfb * 1000:.1f} ms",
        f"{page_ttfb / static_ttfb:.1f}x",
    )
    table.add_row(
        "rendered in Chromium",
        f"{page_load * 1000:.1f} ms",
        f"{static_load * 1000:.1f} ms",
        f"{page_load / static_load:.1f}x",
    )
    console.print(table)


if __name__ == "__main__":
    main()
