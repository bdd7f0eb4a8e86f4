"""Devnet process management: starting anvil, finding it, losing it, and resolving chains.

Every anvil started here is stopped by a context manager or fixture teardown; the one
started through ``agentmesh devnet up`` is stopped with ``agentmesh devnet down``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from agentmesh.chain.deployment import Deployment
from agentmesh.chain.devnet import AnvilProcess, start_anvil
from agentmesh.chain.home import DevnetPaths, DevnetRecord, running_devnet, stop_devnet
from agentmesh.chain.rpc import is_up, rpc_call
from agentmesh.config import ChainConfig, Config, DevnetConfig, load_config
from agentmesh.errors import (
    ChainUnavailableError,
    DevnetError,
    PortInUseError,
    ToolMissingError,
)
from agentmesh.tools import find_anvil, find_tools_dir
from agentmesh.wallets.chain import connect, open_chain
from agentmesh.wallets.clients import TokenClient
from agentmesh.wallets.deployer import deploy_suite, dev_deployer
from agentmesh.wallets.sending import TxPolicy, set_tx_policy
from agentmesh.wallets.wallet import Wallet
from tests.helpers import eventually, free_port, poll_blocking, process_gone, wait_gone

ONE_ETH = 10**18


# --------------------------------------------------------------------------- helpers


def anvils_on_port(port: int) -> list[int]:
    """Pids of anvil processes started with ``--port port``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if (
            args
            and args[0].endswith(b"anvil")
            and b"--port" in args
            and args[args.index(b"--port") + 1] == str(port).encode()
        ):
            found.append(int(entry.name))
    return found


def balance_of(url: str, address: str) -> int:
    return int(rpc_call(url, "eth_getBalance", [address, "latest"]), 16)


def wait_receipt(url: str, tx_hash: str, timeout: float = 20.0) -> dict[str, Any]:
    """Bounded poll for a transaction's receipt."""
    receipt = poll_blocking(
        lambda: rpc_call(url, "eth_getTransactionReceipt", [tx_hash]),
        lambda found: found is not None,
        timeout=timeout,
        interval=0.01,
    )
    assert receipt is not None, f"no receipt for {tx_hash}"
    assert int(receipt["status"], 16) == 1
    return dict(receipt)


def kill_hard(anvil: AnvilProcess) -> None:
    os.kill(anvil.pid, signal.SIGKILL)
    anvil.process.wait(timeout=20)
    assert not is_up(anvil.rpc_url)


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "anvil.log"


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A loopback port held by a listening socket for the whole test."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


@pytest.fixture
def no_tool_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTMESH_ANVIL", raising=False)
    monkeypatch.delenv("AGENTMESH_TOOLS", raising=False)


def fake_tool(path: Path, script: str, mode: int = 0o755) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(mode)
    return path


# --------------------------------------------------------------------------- start_anvil


def test_start_anvil_answers_on_a_free_port(log_path: Path) -> None:
    with start_anvil(DevnetConfig(chain_id=4242), log_path=log_path) as anvil:
        assert anvil.alive()
        assert anvil.rpc_url == f"http://127.0.0.1:{anvil.port}"
        assert int(rpc_call(anvil.rpc_url, "eth_chainId"), 16) == 4242
        assert len(rpc_call(anvil.rpc_url, "eth_accounts")) == 10
    assert not anvil.alive()
    assert not is_up(anvil.rpc_url)
    assert log_path.is_file()


def test_start_anvil_on_a_taken_port(taken_port: int, log_path: Path) -> None:
    with pytest.raises(PortInUseError) as info:
        start_anvil(port=taken_port, log_path=log_path)
    assert str(taken_port) in info.value.user_message
    assert "in use" in info.value.user_message
    with pytest.raises(PortInUseError):
        start_anvil(DevnetConfig(port=taken_port), log_path=log_path)
    assert anvils_on_port(taken_port) == []


def test_restart_on_the_same_port(log_path: Path) -> None:
    # A stopped anvil's port is free again at once, although its closed RPC
    # connections leave it in TIME_WAIT (which a listener may bind over).
    with start_anvil(log_path=log_path) as first:
        for _ in range(3):
            rpc_call(first.rpc_url, "eth_blockNumber")
    with start_anvil(port=first.port, log_path=log_path) as second:
        assert second.port == first.port
        assert is_up(second.rpc_url)


def test_state_file_survives_stop_and_start(tmp_path: Path, log_path: Path) -> None:
    state = tmp_path / "devnet" / "state.json"
    target = Account.create().address
    with start_anvil(state_file=state, log_path=log_path) as anvil:
        sender = rpc_call(anvil.rpc_url, "eth_accounts")[0]
        tx = rpc_call(
            anvil.rpc_url,
            "eth_sendTransaction",
            [{"from": sender, "to": target, "value": hex(3 * ONE_ETH)}],
        )
        wait_receipt(anvil.rpc_url, tx)  # anvil mines in the background, even on automine
        assert balance_of(anvil.rpc_url, target) == 3 * ONE_ETH
    assert state.is_file()

    with start_anvil(state_file=state, log_path=log_path) as again:
        assert again.port != 0
        assert balance_of(again.rpc_url, target) == 3 * ONE_ETH
    # Control: the balance really comes from the state file, not from the dev mnemonic.
    with start_anvil(log_path=log_path) as fresh:
        assert balance_of(fresh.rpc_url, target) == 0


# --------------------------------------------------------------------------- finding anvil


def test_find_anvil_finds_the_project_local_binary(
    repo_root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_tool_env: None
) -> None:
    monkeypatch.chdir(tmp_path)  # found next to the package, not only from the cwd
    found = find_anvil()
    assert found.is_relative_to(repo_root / ".tools" / "node_modules")
    assert os.access(found, os.X_OK)
    assert find_tools_dir() == repo_root / ".tools"
    version = subprocess.run(
        [str(found), "--version"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )
    assert "anvil" in version.stdout.lower()


def test_agentmesh_tools_folder_is_searched_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, no_tool_env: None
) -> None:
    tools = tmp_path / "tools"
    binary = fake_tool(
        tools / "node_modules" / "@foundry-rs" / "anvil-test" / "bin" / "anvil", "exit 0"
    )
    monkeypatch.setenv("AGENTMESH_TOOLS", str(tools))
    assert find_tools_dir() == tools
    assert find_anvil() == binary


@pytest.mark.parametrize("kind", ["not-executable", "missing", "directory"])
def test_agentmesh_anvil_that_cannot_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_path: Path, kind: str
) -> None:
    target = tmp_path / "bin" / "anvil"
    if kind == "not-executable":
        fake_tool(target, "exit 0", mode=0o644)
    elif kind == "directory":
        target.mkdir(parents=True)
    monkeypatch.setenv("AGENTMESH_ANVIL", str(target))
    with pytest.raises(ToolMissingError) as info:
        find_anvil()
    assert str(target) in info.value.user_message
    with pytest.raises(ToolMissingError):
        start_anvil(log_path=log_path)


def test_configured_anvil_path_wins_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_path: Path
) -> None:
    good = fake_tool(tmp_path / "good" / "anvil", "exit 0")
    missing = tmp_path / "missing" / "anvil"
    monkeypatch.setenv("AGENTMESH_ANVIL", str(good))
    assert find_anvil() == good
    assert find_anvil(good) == good
    with pytest.raises(ToolMissingError) as info:
        start_anvil(DevnetConfig(anvil_path=missing), log_path=log_path)
    assert str(missing) in info.value.user_message


def test_a_binary_that_exits_at_startup_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_path: Path
) -> None:
    fake = fake_tool(tmp_path / "anvil", 'echo "boom: cannot start" >&2\nexit 3')
    monkeypatch.setenv("AGENTMESH_ANVIL", str(fake))
    with pytest.raises(DevnetError) as info:
        start_anvil(log_path=log_path)
    assert not isinstance(info.value, PortInUseError)
    assert "exited with code 3" in info.value.user_message
    assert "boom: cannot start" in info.value.user_message


def test_a_port_race_at_startup_is_port_in_use(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_path: Path
) -> None:
    # The port was free when checked but taken by the time anvil bound it.
    fake = fake_tool(
        tmp_path / "anvil", 'echo "Error: Address already in use (os error 98)" >&2\nexit 1'
    )
    monkeypatch.setenv("AGENTMESH_ANVIL", str(fake))
    with pytest.raises(PortInUseError):
        start_anvil(log_path=log_path)


# --------------------------------------------------------------------------- lost chain


@pytest.fixture
async def dead_chain(log_path: Path) -> AsyncIterator[tuple[Wallet, TokenClient, str]]:
    """A deployed chain whose anvil was SIGKILLed: (deployer wallet, token client, url)."""
    with start_anvil(log_path=log_path) as anvil:
        w3 = connect(anvil.rpc_url)
        deployer = dev_deployer(w3)
        deployment = await deploy_suite(w3, anvil.rpc_url, deployer)
        token = TokenClient(deployer, deployment.address("MeshUSD"))
        assert await token.balance_of(deployer.address) == 0  # the chain works until...
        kill_hard(anvil)
        yield deployer, token, anvil.rpc_url
        await w3.provider.disconnect()


CALLS: dict[str, Callable[[Wallet, TokenClient, str], Awaitable[Any]]] = {
    "eth_balance": lambda wallet, token, to: wallet.eth_balance(),
    "send": lambda wallet, token, to: wallet.send({"to": to, "value": 1}),
    "token_transfer": lambda wallet, token, to: token.transfer(to, 1),
    "token_balance_of": lambda wallet, token, to: token.balance_of(to),
}


@pytest.mark.parametrize("call", list(CALLS))
async def test_killed_anvil_raises_chain_unavailable(
    dead_chain: tuple[Wallet, TokenClient, str], call: str
) -> None:
    wallet, token, url = dead_chain
    with pytest.raises(ChainUnavailableError) as info:
        await CALLS[call](wallet, token, Account.create().address)
    assert url in info.value.user_message
    assert "agentmesh devnet status" in info.value.user_message


async def test_anvil_killed_while_waiting_for_a_receipt(log_path: Path) -> None:
    import asyncio

    with start_anvil(log_path=log_path) as anvil:
        w3 = connect(anvil.rpc_url)
        # A sent transaction is waited for across an outage, for this long.
        set_tx_policy(w3, TxPolicy(timeout_s=2))
        wallet = dev_deployer(w3)
        # Without automine the transaction stays pending, so send() is stuck waiting.
        rpc_call(anvil.rpc_url, "evm_setAutomine", [False])
        sending = asyncio.create_task(
            wallet.send({"to": Account.create().address, "value": ONE_ETH})
        )
        pending = await eventually(
            lambda: int(
                rpc_call(anvil.rpc_url, "eth_getTransactionCount", [wallet.address, "pending"]), 16
            ),
            lambda count: count > 0 or sending.done(),
            timeout=20,
            interval=0.01,
        )
        assert pending > 0 or sending.done(), "the transaction never reached the pool"
        assert not sending.done(), sending  # submitted, now waiting for its receipt
        kill_hard(anvil)
        with pytest.raises(ChainUnavailableError) as info:
            await sending
        assert anvil.rpc_url in info.value.user_message
        assert "it was sent and may still be mined" in info.value.user_message
        await w3.provider.disconnect()


# --------------------------------------------------------------------------- open_chain


async def test_throwaway_chain_is_started_and_stopped(home: Path) -> None:
    async with open_chain(home, Config()) as chain:
        assert chain.source == "embedded"
        assert chain.anvil is not None and chain.anvil.alive()
        pid, log = chain.anvil.pid, chain.anvil.log_path
        assert len(await chain.w3.eth.get_code(chain.token_address)) > 0
        accounts = await chain.w3.eth.accounts
        token = TokenClient(dev_deployer(chain.w3), chain.token_address)
        assert await token.balance_of(accounts[1]) == 10_000 * 10**6  # dev accounts funded
    assert wait_gone(pid), "the throw-away anvil outlived open_chain"
    assert not is_up(chain.rpc_url)
    assert not log.exists()
    assert not DevnetPaths.of(home).record.exists()  # it never pretended to be `devnet up`


async def test_throwaway_chain_killed_inside_the_context(home: Path) -> None:
    async with open_chain(home, Config()) as chain:
        assert chain.anvil is not None
        kill_hard(chain.anvil)
        wallet = Wallet(Account.create(), chain.w3)
        with pytest.raises(ChainUnavailableError) as info:
            await wallet.eth_balance()
        assert chain.rpc_url in info.value.user_message
    assert not chain.anvil.alive()  # and leaving the context did not raise


async def test_no_chain_and_no_embedded_is_an_error(home: Path) -> None:
    with pytest.raises(DevnetError) as info:
        async with open_chain(home, Config(), allow_embedded=False):
            pytest.fail("no chain should have been opened")
    assert "agentmesh devnet up" in info.value.user_message


def _cli(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTMESH_")}
    env["AGENTMESH_HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "agentmesh.cli.app", *args],
        check=False,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=180,
    )


@pytest.fixture
def devnet_up(home: Path) -> Iterator[DevnetRecord]:
    """``agentmesh devnet up`` in ``home``; ``agentmesh devnet down`` afterwards."""
    try:
        result = _cli(home, "devnet", "up", "--json")
        assert result.returncode == 0, result.stdout + result.stderr
        record = DevnetRecord.load(DevnetPaths.of(home).record)
        assert record is not None
        yield record
    finally:
        seen = DevnetRecord.load(DevnetPaths.of(home).record)
        _cli(home, "devnet", "down")
        if seen is not None and not wait_gone(seen.pid):
            os.kill(seen.pid, signal.SIGKILL)
            pytest.fail(f"`devnet down` left anvil {seen.pid} running")


async def test_open_chain_uses_the_running_devnet(home: Path, devnet_up: DevnetRecord) -> None:
    recorded = Deployment.load(DevnetPaths.of(home).deployment)
    async with open_chain(home, load_config(home)) as chain:
        assert chain.source == "devnet"
        assert chain.anvil is None
        assert chain.rpc_url == devnet_up.rpc_url
        assert chain.deployment == recorded
        wallet = Wallet(Account.create(), chain.w3)
        await dev_deployer(chain.w3).send({"to": wallet.address, "value": ONE_ETH})
    # open_chain does not own that devnet: it still runs, with the effect kept.
    assert running_devnet(home) == devnet_up
    assert balance_of(devnet_up.rpc_url, wallet.address) == ONE_ETH


async def test_configured_rpc_url_gets_a_recorded_deployment(home: Path, log_path: Path) -> None:
    with start_anvil(log_path=log_path) as anvil:
        config = Config(
            chain=ChainConfig(rpc_url=anvil.rpc_url), devnet=DevnetConfig(dev_account_musd=7)
        )
        assert (
            rpc_call(
                anvil.rpc_url,
                "eth_getCode",
                ["0x5FbDB2315678afecb367f032d93F642f64180aa3", "latest"],
            )
            == "0x"
        )
        async with open_chain(home, config) as chain:
            assert chain.source == "configured" and chain.anvil is None
            first = chain.deployment
            assert len(await chain.w3.eth.get_code(chain.token_address)) > 0
            accounts = await chain.w3.eth.accounts
            token = TokenClient(dev_deployer(chain.w3), chain.token_address)
            assert await token.balance_of(accounts[0]) == 7 * 10**6
        path = home / "deployments" / "31337.json"
        assert path.is_file()
        assert Deployment.load(path) == first
        assert json.loads(path.read_text())["rpc_url"] == anvil.rpc_url

        blocks = int(rpc_call(anvil.rpc_url, "eth_blockNumber"), 16)
        async with open_chain(home, config) as again:
            assert again.deployment == first  # recorded and live: reused
        assert int(rpc_call(anvil.rpc_url, "eth_blockNumber"), 16) == blocks  # no redeploy
    assert not anvil.alive()


async def test_configured_rpc_url_that_does_not_answer(home: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(ChainUnavailableError) as info:
        async with open_chain(home, Config(chain=ChainConfig(rpc_url=url))):
            pytest.fail("a dead URL should not open")
    assert url in info.value.user_message
    assert not (home / "deployments").exists()


# --------------------------------------------------------------------------- home records


def test_running_devnet_drops_a_stale_record(home: Path) -> None:
    paths = DevnetPaths.of(home)
    port = free_port()
    DevnetRecord(999_999_999, port, f"http://127.0.0.1:{port}", time.time()).save(paths.record)
    assert running_devnet(home) is None
    assert not paths.record.exists()


def test_stop_devnet_does_not_kill_an_unrelated_process(home: Path) -> None:
    # A devnet that died leaves its record behind; its pid may since belong to
    # another program. `devnet down` must not signal a process that is not the devnet.
    paths = DevnetPaths.of(home)
    port = free_port()
    bystander = subprocess.Popen(["sleep", "120"], stdin=subprocess.DEVNULL)
    try:
        DevnetRecord(bystander.pid, port, f"http://127.0.0.1:{port}", time.time()).save(
            paths.record
        )
        stop_devnet(home, timeout=2)
        assert not paths.record.exists()
        assert not process_gone(bystander.pid), "stop_devnet killed a process that was not anvil"
    finally:
        bystander.kill()
        bystander.wait()
