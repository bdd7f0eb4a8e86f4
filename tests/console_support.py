"""The console under test: `agentmesh ui` as its own process on a free port, and
Debian's Chromium driven by Playwright (its own browser download is not used)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = os.environ.get("AGENTMESH_CHROMIUM", "/usr/bin/chromium")
# Without the background-networking flags Chromium keeps dialling Google's hosts, which
# this machine's closed network refuses; --no-sandbox because tests may run as root.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(
    os.environ.get(
        "AGENTMESH_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"
    )
)


@dataclass
class RunningConsole:
    process: subprocess.Popen[str]
    base: str  # http://127.0.0.1:PORT
    token: str
    port: int

    @property
    def login_url(self) -> str:
        return f"{self.base}/?token={self.token}"


@contextlib.contextmanager
def console_process(home: Path, *extra: str, timeout: float = 60) -> Iterator[RunningConsole]:
    """``agentmesh --home HOME ui --port 0`` until the block ends; its printed URL."""
    command = [sys.executable, "-m", "agentmesh.cli.app", "--home", str(home), "ui", "--port", "0"]
    process = subprocess.Popen(
        [*command, *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "COLUMNS": "300"},
    )
    try:
        deadline = time.monotonic() + timeout
        seen = []
        assert process.stdout is not None
        while True:
            line = process.stdout.readline()
            seen.append(line)
            found = re.search(r"open: (http://[^/]+):(\d+)/\?token=(\S+)", line)
            if found:
                break
            if not line and process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"the console did not start: {''.join(seen)}")
        running = RunningConsole(process, f"{found[1]}:{found[2]}", found[3], int(found[2]))
        _wait_listening(running)
        yield running
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _wait_listening(running: RunningConsole) -> None:
    import httpx

    for _ in range(100):
        with contextlib.suppress(httpx.TransportError):
            httpx.get(running.base + "/", timeout=1)
            return
        time.sleep(0.1)
    raise AssertionError(f"the console printed {running.base} but does not answer there")


def require_chromium() -> str:
    """Debian's Chromium, which `make setup` installs; a clear failure where it is not."""
    if not (Path(CHROMIUM).exists() or shutil.which("chromium")):
        pytest.fail(
            f"no Chromium at {CHROMIUM}: the console's browser tests need Debian's chromium "
            "(`make setup` installs it as root; else `sudo apt-get install chromium`, or "
            "set AGENTMESH_CHROMIUM to another Chromium)"
        )
    return CHROMIUM if Path(CHROMIUM).exists() else str(shutil.which("chromium"))


@contextlib.asynccontextmanager
async def browser_page(console: RunningConsole) -> AsyncIterator[Any]:
    """A fresh headless Chromium page, signed in to ``console`` with its token."""
    from playwright.async_api import async_playwright

    executable = require_chromium()
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 860})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(console.login_url)
            yield page
            assert not errors, f"script errors on the page: {errors}"
        finally:
            await browser.close()


async def screenshot(page: Any, name: str) -> Path:
    """Save the whole page as ``test-artifacts/console/NAME.png`` (kept for people to
    look at; the folder is ignored by git)."""
    folder = ARTIFACTS / "console"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


async def demo_in_browser(
    home: Path,
    args: Sequence[str],
    path: str,
    waits: Sequence[str],
    shot: str,
    *,
    timeout: float = 300,
    then: Callable[[Any], Awaitable[None]] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``agentmesh demo ARGS`` (its own process, home ``home``) while the console
    over that home is open on ``path`` in Chromium, as a person would watch it: no
    ``?home=``, so the console follows the demo's home once it appears. Each selector
    in ``waits`` must appear without a reload; ``then`` looks further; a screenshot
    ``shot`` is saved. Returns the demo's result (stdout is its --json report)."""
    home.mkdir(parents=True, exist_ok=True)
    with console_process(home) as console:
        async with browser_page(console) as page:
            await page.goto(f"{console.base}{path}")
            await page.evaluate("window.__stayed = true")
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "agentmesh.cli.app",
                *args,
                env={**os.environ, "AGENTMESH_HOME": str(home)},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
            )
            finished = asyncio.ensure_future(process.communicate())
            try:
                for selector in waits:
                    await page.wait_for_selector(selector, timeout=timeout * 1000)
                assert await page.evaluate("window.__stayed === true"), "the page reloaded"
                await screenshot(page, shot)
                if then is not None:
                    await then(page)
                out, err = await asyncio.wait_for(finished, timeout)
            finally:
                if process.returncode is None:
                    process.kill()
                    await process.wait()
            result = subprocess.CompletedProcess(
                list(args),
                -1 if process.returncode is None else process.returncode,
                out.decode(),
                err.decode(),
            )
    return result
