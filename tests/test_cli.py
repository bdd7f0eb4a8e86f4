"""The ``agentmesh`` command line, run as a real subprocess against real anvil devnets.

Every test that starts a devnet stops it again (``agentmesh devnet down`` in fixture
teardown, then a check that the anvil process is gone), so no anvil outlives the run.
Error tests check the whole contract of a failure: a non-zero exit, ``error: ...`` on
stderr, no traceback, and files and funds left exactly as they were.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from agentmesh.chain.rpc import rpc_call
from agentmesh.wallets.keystore import Keystore
from tests.console_support import demo_in_browser
from tests.helpers import TEST_SCRYPT_N, fee_of, wait_gone

PASSWORD = "correct horse battery staple"
CLI = [sys.executable, "-m", "agentmesh.cli.app"]
# Environment that would change what the CLI does or how rich renders its output.
_SCRUBBED_ENV = ("COLUMNS", "LINES", "FORCE_COLOR", "NO_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE")
# A valid checksummed address with the case of one letter flipped: a bad checksum.
GOOD_CHECKSUM = "0x5FbDB2315678afecb367f032d93F642f64180aa3"
BAD_CHECKSUM = "0x5fbDB2315678afecb367f032d93F642f64180aa3"
BALANCE_OF = "0x70a08231"  # ERC-20 balanceOf(address)


# --------------------------------------------------------------------------- helpers


def _is_anvil(pid: int) -> bool:
    try:
        return b"anvil" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def clean_error(result: subprocess.CompletedProcess[str]) -> str:
    """Assert ``result`` is a clean CLI failure; return its message with whitespace folded.

    Runs use a very wide ``COLUMNS`` unless a test asks otherwise, so content checks do
    not depend on line wrapping, which has its own test
    (``test_errors_print_on_a_single_line``).
    """
    output = result.stdout + result.stderr
    assert result.returncode != 0, f"expected a failure, got:\n{output}"
    assert "Traceback" not in output, output
    assert result.stderr.startswith("error:"), f"stderr does not start with 'error:':\n{output}"
    return " ".join(result.stderr.split())


@dataclass
class Cli:
    """Runs ``agentmesh`` in a subprocess with one home; remembers the devnets it saw."""

    home: Path
    devnet_pids: set[int] = field(default_factory=set)

    @property
    def record_path(self) -> Path:
        return self.home / "devnet" / "devnet.json"

    def env(self, **extra: str | None) -> dict[str, str]:
        env = {
            k: v
            for k, v in os.environ.items()
            if not k.startswith("AGENTMESH_") and k not in _SCRUBBED_ENV
        }
        env["AGENTMESH_HOME"] = str(self.home)
        env["AGENTMESH_PASSWORD"] = PASSWORD
        env["COLUMNS"] = "10000"  # COLUMNS=None: rich's default of 80 for a pipe
        for key, value in extra.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def __call__(self, *args: str, **env: str | None) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [*CLI, *args],
            check=False,
            env=self.env(**env),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=180,
            cwd=self.home.parent,
        )
        self._note_devnet()
        return result

    def _note_devnet(self) -> None:
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            self.devnet_pids.add(int(json.loads(self.record_path.read_text())["pid"]))

    def ok(self, *args: str, **env: str | None) -> str:
        result = self(*args, **env)
        assert result.returncode == 0, (
            f"agentmesh {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout}{result.stderr}"
        )
        assert "Traceback" not in result.stderr
        return result.stdout

    def json(self, *args: str, **env: str | None) -> Any:
        return json.loads(self.ok(*args, "--json", **env))

    def fail(self, *args: str, **env: str | None) -> str:
        return clean_error(self(*args, **env))

    def address(self, name: str) -> str:
        data = json.loads((self.home / "keystores" / f"{name}.json").read_text())
        return "0x" + str(data["address"]).removeprefix("0x")

    def balance(self, who: str) -> tuple[int, int]:
        """(wei, mUSD base units) of a wallet name or address, read over JSON-RPC.

        Read directly from the running devnet (not through the CLI under test), so a
        "funds unchanged" check cannot be fooled by the CLI's own output.
        """
        address = who if who.startswith("0x") else self.address(who)
        url = json.loads(self.record_path.read_text())["rpc_url"]
        deployment = json.loads((self.home / "devnet" / "deployment.json").read_text())
        token = deployment["contracts"]["MeshUSD"]["address"]
        wei = int(rpc_call(url, "eth_getBalance", [address, "latest"]), 16)
        call = {"to": token, "data": BALANCE_OF + address[2:].lower().rjust(64, "0")}
        units = int(rpc_call(url, "eth_call", [call, "latest"]), 16)
        return wei, units

    def shutdown(self) -> None:
        """``devnet down``, then make sure every anvil this home ran is gone."""
        self._note_devnet()
        if not self.devnet_pids and not self.record_path.exists():
            return  # this home never ran a devnet
        self("devnet", "down")
        leftovers = [pid for pid in self.devnet_pids if not wait_gone(pid)]
        for pid in leftovers:  # our own devnet: never leave it running
            if _is_anvil(pid):
                os.kill(pid, signal.SIGKILL)
        assert not leftovers, f"`devnet down` left anvil running: {leftovers}"


def make_home(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True)
    (path / "config.toml").write_text(f"[wallet]\nscrypt_n = {TEST_SCRYPT_N}\n")
    return path


def keystore_dir_snapshot(home: Path) -> dict[str, bytes]:
    folder = home / "keystores"
    if not folder.is_dir():
        return {}
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


@pytest.fixture
def cli(home: Path) -> Iterator[Cli]:
    """A CLI on a fresh home; any devnet it started is stopped afterwards."""
    runner = Cli(home)
    try:
        yield runner
    finally:
        runner.shutdown()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cli]:
    """One running devnet for the error tests: alice holds 100 mUSD and ETH, bob nothing."""
    runner = Cli(make_home(tmp_path_factory.mktemp("shared") / "home"))
    try:
        runner.ok("devnet", "up")
        runner.ok("wallet", "new", "alice")
        runner.ok("wallet", "new", "bob")
        runner.ok("wallet", "fund", "alice", "--musd", "100")
        yield runner
    finally:
        runner.shutdown()


@pytest.fixture
def offline(tmp_path: Path) -> Cli:
    """A home with alice and bob and no devnet (errors that need no chain)."""
    runner = Cli(make_home(tmp_path / "offline"))
    keystore = Keystore(runner.home, scrypt_n=TEST_SCRYPT_N)  # setup, not under test
    keystore.create("alice", PASSWORD)
    keystore.create("bob", PASSWORD)
    return runner


# --------------------------------------------------------------------------- devnet


def test_acceptance_send_and_state_survives_down_up(cli: Cli) -> None:
    first = cli.json("devnet", "up")
    assert first["running"] is True
    assert set(first["contracts"]) >= {"MeshUSD", "TaskEscrow", "AgentRegistry"}

    alice = cli.ok("wallet", "new", "alice")
    bob = cli.ok("wallet", "new", "bob")
    assert "alice" in alice and "bob" in bob
    assert "mUSD  100" in cli.ok("wallet", "fund", "alice", "--musd", "100")
    sent = cli.ok("wallet", "send", "alice", "bob", "12.5")
    assert "sent 12.5 mUSD" in sent

    bob_info = cli.json("wallet", "balance", "bob")
    assert bob_info["musd"] == "12.5"
    assert bob_info["musd_units"] == 12_500_000
    alice_info = cli.json("wallet", "balance", "alice")
    assert alice_info["musd"] == "87.5"

    status = cli.json("devnet", "status")
    assert status["running"] is True and status["pid"] == first["pid"]
    block_before = status["block"]
    # Uniswap V2 is deployed next to the suite, with its seeded pools' prices.
    pools = status["exchange"]["pools"]
    assert {name: pool["price"] for name, pool in pools.items()} == {
        "WETH/mUSD": "2000",
        "MGLD/WETH": "0.01",
    }
    assert pools["WETH/mUSD"]["reserves"] == {"WETH": "100", "mUSD": "200000"}
    assert set(status["exchange"]["tokens"]) == {"mUSD", "WETH", "MGLD"}
    assert "1 WETH = 2000 mUSD" in cli.ok("devnet", "status")

    down = cli.ok("devnet", "down")
    assert "stopped devnet" in down
    assert wait_gone(first["pid"]), "anvil still runs after `devnet down`"
    stopped = cli.json("devnet", "status")
    assert stopped["running"] is False
    assert "pid" not in stopped and "rpc_url" not in stopped
    assert Path(stopped["state_file"]).is_file()

    second = cli.json("devnet", "up")
    assert second["running"] is True
    assert second["pid"] != first["pid"]
    assert second["contracts"] == first["contracts"]
    assert second["exchange"]["router"] == status["exchange"]["router"]  # not redeployed
    # A fresh chain would be back at the deployment's first blocks.
    assert second["block"] >= block_before
    assert cli.json("wallet", "balance", "bob")["musd"] == "12.5"
    after = cli.json("wallet", "balance", "alice")
    assert after["musd"] == "87.5"
    assert after["eth_wei"] == alice_info["eth_wei"]


def test_status_and_down_with_no_devnet(cli: Cli) -> None:
    status = cli.json("devnet", "status")
    assert status["running"] is False
    assert status["home"] == str(cli.home.resolve())
    assert "rpc_url" not in status and "contracts" not in status
    assert "no devnet running" in cli.ok("devnet", "down")
    assert not cli.record_path.exists()


def test_up_twice_reuses_the_running_devnet(cli: Cli) -> None:
    first = cli.json("devnet", "up")
    again = cli.json("devnet", "up")
    assert again["pid"] == first["pid"]
    assert again["rpc_url"] == first["rpc_url"]
    assert again["contracts"] == first["contracts"]


def test_down_then_up_on_a_configured_port(cli: Cli) -> None:
    # A fixed port (devnet.port) must be usable again right after `devnet down`, even
    # though the closed RPC connections leave the port in TIME_WAIT for a minute.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    config = cli.home / "config.toml"
    config.write_text(config.read_text() + f"[devnet]\nport = {port}\n")
    first = cli.json("devnet", "up")
    assert first["rpc_url"] == f"http://127.0.0.1:{port}"
    cli.ok("devnet", "down")
    assert wait_gone(first["pid"])
    again = cli.json("devnet", "up")
    assert again["rpc_url"] == f"http://127.0.0.1:{port}"
    assert again["contracts"] == first["contracts"]


def test_devnet_killed_behind_our_back(cli: Cli) -> None:
    pid = cli.json("devnet", "up")["pid"]
    cli.ok("wallet", "new", "alice")
    os.kill(pid, signal.SIGKILL)  # the anvil this test started
    assert wait_gone(pid)
    message = cli.fail("wallet", "balance", "alice")
    assert "agentmesh devnet up" in message
    assert cli.json("devnet", "status")["running"] is False
    assert not cli.record_path.exists()  # the stale record is cleaned up


def test_reset_while_running_wipes_balances(cli: Cli) -> None:
    fresh_block = cli.json("devnet", "up")["block"]
    cli.ok("wallet", "new", "alice")
    cli.ok("wallet", "fund", "alice", "--musd", "5")
    assert cli.balance("alice")[1] == 5_000_000

    assert "devnet state wiped" in cli.ok("devnet", "reset")
    status = cli.json("devnet", "status")
    assert status["running"] is True  # it was running, so reset brings it back
    assert status["block"] == fresh_block
    assert cli.balance("alice") == (0, 0)
    assert (cli.home / "keystores" / "alice.json").is_file()  # keys are not chain state


def test_reset_while_stopped_wipes_state_files(cli: Cli) -> None:
    cli.ok("devnet", "up")
    cli.ok("wallet", "new", "alice")
    cli.ok("wallet", "fund", "alice", "--musd", "5")
    cli.ok("devnet", "down")
    devnet_dir = cli.home / "devnet"
    assert (devnet_dir / "state.json").is_file()

    cli.ok("devnet", "reset")
    assert not (devnet_dir / "state.json").exists()
    assert not (devnet_dir / "deployment.json").exists()
    assert cli.json("devnet", "status")["running"] is False

    cli.ok("devnet", "up")
    assert cli.balance("alice") == (0, 0)


# --------------------------------------------------------------------------- bad input


def test_wrong_password_on_send_keeps_funds(shared: Cli) -> None:
    alice, bob = shared.balance("alice"), shared.balance("bob")
    message = shared.fail("wallet", "send", "alice", "bob", "1", AGENTMESH_PASSWORD="wrong")
    assert "wrong password" in message and "alice" in message
    assert shared.balance("alice") == alice
    assert shared.balance("bob") == bob


def test_empty_or_missing_password_is_refused(shared: Cli) -> None:
    alice = shared.balance("alice")
    assert "empty" in shared.fail("wallet", "send", "alice", "bob", "1", AGENTMESH_PASSWORD="")
    message = shared.fail("wallet", "send", "alice", "bob", "1", AGENTMESH_PASSWORD=None)
    assert "AGENTMESH_PASSWORD" in message
    assert shared.balance("alice") == alice


@pytest.mark.parametrize("token", ["musd", "eth"])
def test_sending_more_than_the_balance_keeps_funds(shared: Cli, token: str) -> None:
    alice, bob = shared.balance("alice"), shared.balance("bob")
    message = shared.fail("wallet", "send", "alice", "bob", "1000000", "--token", token)
    assert "holds" in message
    if token == "musd":
        assert "cannot" in message
    assert shared.balance("alice") == alice
    assert shared.balance("bob") == bob


@pytest.mark.parametrize(
    "recipient",
    ["0x123", BAD_CHECKSUM, "0x" + "zz" * 20, "0x" + "ab" * 21],
    ids=["short", "bad-checksum", "not-hex", "too-long"],
)
def test_malformed_recipient_is_refused(shared: Cli, recipient: str) -> None:
    alice = shared.balance("alice")
    message = shared.fail("wallet", "send", "alice", recipient, "1")
    assert "invalid address" in message and recipient in message
    if recipient == BAD_CHECKSUM:
        assert "checksum" in message
    assert shared.balance("alice") == alice


def test_correct_checksum_and_lowercase_addresses_are_accepted(shared: Cli) -> None:
    # The counterpart of the bad-checksum case: the check must not refuse good input.
    for address in (GOOD_CHECKSUM, GOOD_CHECKSUM.lower()):
        assert shared.json("wallet", "balance", address)["address"] == GOOD_CHECKSUM


@pytest.mark.parametrize(
    "args",
    [
        ("wallet", "send", "carol", "bob", "1"),
        ("wallet", "send", "alice", "carol", "1"),
        ("wallet", "show", "carol"),
        ("wallet", "balance", "carol"),
        ("wallet", "fund", "carol"),
    ],
    ids=["send-from", "send-to", "show", "balance", "fund"],
)
def test_unknown_wallet_name(shared: Cli, args: tuple[str, ...]) -> None:
    alice = shared.balance("alice")
    message = shared.fail(*args)
    assert "no wallet named 'carol'" in message
    assert "agentmesh wallet new carol" in message
    assert not (shared.home / "keystores" / "carol.json").exists()
    assert shared.balance("alice") == alice


@pytest.mark.parametrize(
    "args",
    [
        ("wallet", "new", "Bad Name!"),
        ("wallet", "show", "Bad Name!"),
        ("wallet", "send", "Bad Name!", "bob", "1"),
        ("wallet", "new", "../escape"),
        ("wallet", "new", "UPPER"),
    ],
    ids=["new", "show", "send", "path-traversal", "uppercase"],
)
def test_invalid_wallet_name(offline: Cli, args: tuple[str, ...]) -> None:
    before = keystore_dir_snapshot(offline.home)
    message = offline.fail(*args)
    assert "invalid wallet name" in message
    assert keystore_dir_snapshot(offline.home) == before
    assert not (offline.home / "escape.json").exists()


def test_new_wallet_over_an_existing_one_keeps_the_original(offline: Cli) -> None:
    path = offline.home / "keystores" / "alice.json"
    original = path.read_bytes()
    address = offline.json("wallet", "show", "alice")["address"]
    message = offline.fail("wallet", "new", "alice")
    assert "already exists" in message and "alice" in message
    assert path.read_bytes() == original
    assert offline.json("wallet", "show", "alice")["address"] == address
    # Importing over it is refused the same way.
    key_file = offline.home.parent / "key.txt"
    key_file.write_text(Account.create().key.hex())
    assert "already exists" in offline.fail(
        "wallet", "import", "alice", "--key-file", str(key_file)
    )
    assert path.read_bytes() == original


@pytest.mark.parametrize(
    "garbage",
    [b"this is not json{", b"\x00\xff\xfe garbage", b'{"address": "0x12"}'],
    ids=["text", "binary", "no-crypto"],
)
def test_corrupted_keystore(offline: Cli, garbage: bytes) -> None:
    path = offline.home / "keystores" / "alice.json"
    path.write_bytes(garbage)
    for args in (("wallet", "show", "alice"), ("wallet", "send", "alice", "bob", "1")):
        message = offline.fail(*args)
        assert "corrupt" in message and str(path) in message
    assert path.read_bytes() == garbage  # reported, never "repaired" or overwritten
    # The other wallets still work, and list skips the broken one.
    names = [w["name"] for w in offline.json("wallet", "list")]
    assert names == ["bob"]


def test_keystore_with_broken_crypto_section_is_corrupt_not_wrong_password(
    offline: Cli,
) -> None:
    path = offline.home / "keystores" / "alice.json"
    data = json.loads(path.read_text())
    data["crypto"]["ciphertext"] = "zz"
    path.write_text(json.dumps(data))
    message = offline.fail("wallet", "send", "alice", "bob", "1")
    assert "corrupt" in message


def test_keystore_readable_by_others_is_refused(offline: Cli) -> None:
    path = offline.home / "keystores" / "alice.json"
    original = path.read_bytes()
    path.chmod(0o644)
    for args in (("wallet", "show", "alice"), ("wallet", "send", "alice", "bob", "1")):
        message = offline.fail(*args)
        assert "readable by others" in message and "chmod 600" in message
    assert path.read_bytes() == original
    assert stat.S_IMODE(path.stat().st_mode) == 0o644  # the user decides, not us
    path.chmod(0o600)
    assert offline.json("wallet", "show", "alice")["name"] == "alice"


@pytest.mark.parametrize(
    "command",
    [("wallet", "list"), ("wallet", "new", "carol"), ("devnet", "up")],
    ids=["list", "new", "up"],
)
def test_misspelled_config_key_is_named(cli: Cli, command: tuple[str, ...]) -> None:
    config = cli.home / "config.toml"
    config.write_text('[chain]\nrpc_ur = "x"\n')
    message = cli.fail(*command)
    assert "'chain.rpc_ur'" in message and "unknown key" in message
    assert str(config) in message
    assert config.read_text() == '[chain]\nrpc_ur = "x"\n'
    assert keystore_dir_snapshot(cli.home) == {}
    assert not cli.record_path.exists()


def test_invalid_config_value_is_named(cli: Cli) -> None:
    (cli.home / "config.toml").write_text('[devnet]\nport = "abc"\n')
    message = cli.fail("devnet", "up")
    assert "'devnet.port'" in message
    assert not cli.record_path.exists()


def test_invalid_toml(cli: Cli) -> None:
    config = cli.home / "config.toml"
    config.write_text("[chain\nrpc_url = \n")
    message = cli.fail("wallet", "list")
    assert "not valid TOML" in message and str(config) in message
    assert "not valid TOML" in cli.fail("devnet", "up")
    assert not cli.record_path.exists()


def test_anvil_missing_from_env(cli: Cli) -> None:
    missing = str(cli.home.parent / "no-such-dir" / "anvil")
    message = cli.fail("devnet", "up", AGENTMESH_ANVIL=missing)
    assert missing in message or "make setup" in message
    assert not cli.record_path.exists()
    assert cli.json("devnet", "status")["running"] is False


def test_anvil_missing_from_config(cli: Cli) -> None:
    missing = str(cli.home.parent / "nowhere" / "anvil")
    config = cli.home / "config.toml"
    config.write_text(config.read_text() + f'[devnet]\nanvil_path = "{missing}"\n')
    message = cli.fail("devnet", "up")
    assert missing in message or "make setup" in message
    assert not cli.record_path.exists()


@pytest.fixture
def taken_port() -> Iterator[int]:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def test_port_in_use_option(cli: Cli, taken_port: int) -> None:
    message = cli.fail("devnet", "up", "--port", str(taken_port))
    assert "in use" in message and str(taken_port) in message
    assert not cli.record_path.exists()
    assert cli.json("devnet", "status")["running"] is False


def test_port_in_use_config(cli: Cli, taken_port: int) -> None:
    config = cli.home / "config.toml"
    config.write_text(config.read_text() + f"[devnet]\nport = {taken_port}\n")
    message = cli.fail("devnet", "up")
    assert "in use" in message and str(taken_port) in message
    assert not cli.record_path.exists()


@pytest.mark.parametrize(
    "args",
    [
        ("wallet", "balance", "alice"),
        ("wallet", "send", "alice", "bob", "1"),
        ("wallet", "fund", "alice"),
    ],
    ids=["balance", "send", "fund"],
)
def test_no_devnet_and_no_rpc_url(offline: Cli, args: tuple[str, ...]) -> None:
    message = offline.fail(*args)
    assert "agentmesh devnet up" in message
    # No throw-away anvil was left behind for a command whose effect must persist.
    assert not offline.record_path.exists()


def test_configured_rpc_url_that_does_not_answer(offline: Cli) -> None:
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    config = offline.home / "config.toml"
    config.write_text(config.read_text() + f'[chain]\nrpc_url = "{url}"\n')
    message = offline.fail("wallet", "balance", "alice")
    assert url in message


@pytest.mark.parametrize(
    ("option", "value", "expected"),
    [
        ("--musd", "-1", "zero or positive"),
        ("--musd", "abc", "not a number"),
        ("--musd", "1.0000001", "6 decimal places"),
        ("--eth", "-1", "zero or positive"),
        ("--eth", "nan", "zero or positive"),
        ("--eth", "0.0000000000000000001", "18 decimal"),
    ],
)
def test_fund_with_invalid_amount(shared: Cli, option: str, value: str, expected: str) -> None:
    alice = shared.balance("alice")
    message = shared.fail("wallet", "fund", "alice", option, value)
    assert "invalid amount" in message and expected in message
    assert shared.balance("alice") == alice


@pytest.mark.parametrize(
    ("amount", "expected"),
    [("0", "greater than zero"), ("abc", "not a number"), ("1.0000001", "decimal places")],
)
def test_send_with_invalid_amount(shared: Cli, amount: str, expected: str) -> None:
    alice = shared.balance("alice")
    assert expected in shared.fail("wallet", "send", "alice", "bob", amount)
    assert shared.balance("alice") == alice


def test_unknown_token(shared: Cli) -> None:
    alice = shared.balance("alice")
    assert "unknown token" in shared.fail("wallet", "send", "alice", "bob", "1", "--token", "dai")
    assert shared.balance("alice") == alice


def test_errors_print_on_a_single_line(offline: Cli) -> None:
    # Long messages (with the home's path in them) must not be wrapped at the
    # terminal width of 80 columns rich assumes when stderr is not a terminal.
    cases = [
        ("wallet", "show", "carol"),
        ("wallet", "balance", "alice"),
        ("wallet", "new", "Bad Name!"),
    ]
    wrapped = {}
    for args in cases:
        result = offline(*args, COLUMNS=None)
        clean_error(result)
        lines = result.stderr.strip().splitlines()
        if len(lines) != 1:
            wrapped[" ".join(args)] = lines
    assert not wrapped, f"errors split over several lines: {wrapped}"


@pytest.mark.parametrize("name", ["[/x]", "[bold]"])
def test_error_messages_show_user_input_verbatim(offline: Cli, name: str) -> None:
    # User input inside an error is text, not rich markup: no crash, nothing swallowed.
    message = offline.fail("wallet", "show", name)
    assert "invalid wallet name" in message
    assert repr(name) in message


# --------------------------------------------------------------------------- keys


def _assert_no_key(outputs: list[str], key: bytes) -> None:
    forms = {key.hex(), key.hex().upper(), "0x" + key.hex()}
    for text in outputs:
        for form in forms:
            assert form not in text


def _assert_private_modes(home: Path, name: str) -> None:
    folder = home / "keystores"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE((folder / f"{name}.json").stat().st_mode) == 0o600


def _outputs(cli: Cli, *commands: tuple[str, ...]) -> list[str]:
    texts = []
    for args in commands:
        result = cli(*args)
        assert result.returncode == 0, result.stderr
        texts += [result.stdout, result.stderr]
    return texts


def test_new_wallet_never_shows_its_key(cli: Cli) -> None:
    outputs = _outputs(
        cli,
        ("wallet", "new", "alice"),
        ("wallet", "show", "alice"),
        ("wallet", "show", "alice", "--json"),
        ("wallet", "list"),
        ("wallet", "list", "--json"),
    )
    key = bytes(Keystore(cli.home, scrypt_n=TEST_SCRYPT_N).load("alice", PASSWORD).key)
    _assert_no_key(outputs, key)
    _assert_no_key([(cli.home / "keystores" / "alice.json").read_text()], key)
    _assert_private_modes(cli.home, "alice")


def test_imported_wallet_never_shows_its_key(cli: Cli) -> None:
    account = Account.create()
    key = bytes(account.key)
    key_file = cli.home.parent / "alice.key"
    key_file.write_text("0x" + key.hex() + "\n")
    outputs = _outputs(
        cli,
        ("wallet", "import", "alice", "--key-file", str(key_file)),
        ("wallet", "show", "alice"),
        ("wallet", "list"),
        ("wallet", "list", "--json"),
    )
    _assert_no_key(outputs, key)
    _assert_no_key([(cli.home / "keystores" / "alice.json").read_text()], key)
    assert cli.json("wallet", "show", "alice")["address"] == account.address
    assert account.address in outputs[0]
    _assert_private_modes(cli.home, "alice")
    # The imported key decrypts back with the password.
    loaded = Keystore(cli.home, scrypt_n=TEST_SCRYPT_N).load("alice", PASSWORD)
    assert loaded.address == account.address


@pytest.mark.parametrize(
    "content",
    ["0x12345abcde", "zz" * 32, "0x" + "ff" * 32],
    ids=["short", "not-hex", "out-of-range"],
)
def test_import_of_an_invalid_key_does_not_echo_it(cli: Cli, content: str) -> None:
    key_file = cli.home.parent / "bad.key"
    key_file.write_text(content)
    result = cli("wallet", "import", "alice", "--key-file", str(key_file))
    message = clean_error(result)
    assert "private key" in message
    assert content.removeprefix("0x") not in result.stdout + result.stderr
    assert not (cli.home / "keystores" / "alice.json").exists()


def test_import_from_a_missing_key_file(cli: Cli) -> None:
    missing = cli.home.parent / "missing.key"
    message = cli.fail("wallet", "import", "alice", "--key-file", str(missing))
    assert "cannot read key file" in message and str(missing) in message


def test_wallet_list_shows_full_addresses(offline: Cli) -> None:
    listing = offline.ok("wallet", "list", COLUMNS=None)  # output to a pipe
    for entry in offline.json("wallet", "list"):
        assert entry["address"] in listing, f"{entry['address']} cut short in:\n{listing}"


async def test_demo_settles_every_task_and_conserves_funds(tmp_path: Path) -> None:
    # `make demo` runs this; CI runs `make test`, so the demo is checked here, with --json
    # (the tables are the same data; one slow run checks both the demo and its JSON).
    # As the README says to, `agentmesh ui` watches it: the purchases settle on the task
    # list without a reload, and a task's page shows what was bought.
    async def a_result(page: Any) -> None:
        await page.locator('tr[data-agent="buyer"] a').first.click()
        text = await (await page.wait_for_selector("#result")).inner_text()
        assert len(text.strip()) > 10, text
        steps = await page.locator("#txs tbody tr td:first-child").all_inner_texts()
        assert {"open", "release", "feedback"} <= set(steps), steps  # the buyer's own
        for tx in await page.locator("#txs .tx").all_inner_texts():
            assert tx.startswith("0x") and len(tx) == 66

    result = await demo_in_browser(
        tmp_path / "home",
        ["demo", "--tasks", "3", "--json"],
        "/tasks",
        ['#homes a[data-home="market"]']
        + [f'#tasks tr[data-agent="buyer"][data-status="done"] >> nth={n}' for n in range(3)],
        "demo-tasks",
        then=a_result,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout)  # stdout is one JSON object and nothing else
    # The progress display went to stderr.
    assert "contracts deployed" in result.stderr
    assert "3 of 3 tasks settled" in result.stderr
    assert report["requested"] == 3 and report["settled"] == 3
    tasks = report["tasks"]
    assert [t["status"] for t in tasks] == ["done"] * 3
    providers = {"summarizer-a", "summarizer-b"}
    for task in tasks:
        assert task["winner"] in providers and task["price"] > 0 and task["job"]
        # Every settled task went through the whole escrow path on chain.
        steps = [step for step in task["transactions"] if step != "approve"]
        assert steps == ["open", "accept", "submit", "release", "feedback"]
        assert all(tx.startswith("0x") for tx in task["transactions"].values())
        assert task["gas"] > 300_000
    check = report["conservation"]
    ten_musd, pooled = 10 * 10**6, 200_000 * 10**6  # the buyer's, the exchange's seed
    assert report["pools"] == {"WETH/mUSD": pooled}  # untouched by the market
    # The protocol fee on each release went to the validators' reward pool.
    fees = sum(fee_of(t["price"]) for t in tasks)
    assert fees > 0
    assert check == {
        "agents": ten_musd - fees,
        "escrow": 0,
        "reward_pool": fees,
        "pools": pooled,
        "total": ten_musd + pooled,
        "minted": ten_musd + pooled,
        "ok": True,
    }
    assert report["escrow"]["balance"] == 0 and report["reward_pool"]["balance"] == fees
    # The buyer paid the prices of the tasks: the providers earned them less the fees.
    changes = {row["agent"]: row["change"] for row in report["balances"]}
    assert set(changes) == {"buyer", *providers}
    assert changes["buyer"] == -sum(t["price"] for t in tasks) < 0
    assert sum(changes.values()) == -fees
    for row in report["balances"]:
        assert row["after"] - row["before"] == row["change"]


def test_demo_rejects_a_bad_task_count() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "agentmesh.cli.app", "demo", "--tasks", "0"],
        check=False,
        capture_output=True,
        text=True,
        stdin=subprocess.DEVNULL,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--tasks" in result.stderr


async def test_demo_defi_fills_the_dca_and_the_stop_names_refusals_and_conserves(
    tmp_path: Path,
) -> None:
    # `make demo` runs it too; checked here with --json (the tables show the same data).
    # The console watches it: the cap's gauge and the fills charted against the TWAP.
    result = await demo_in_browser(
        tmp_path / "home",
        ["demo", "defi", "--json"],
        "/delegations",
        [".caps svg.gauge", ".intent svg.chart"],
        "delegations-live",
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = json.loads(result.stdout)
    assert "delegated 100 mUSD" in result.stderr and "the trader sells" in result.stderr
    filled = [f for f in report["fills"] if f["status"] == "filled"]
    assert [f["kind"] for f in filled].count("dca") == 3
    assert [f["kind"] for f in filled].count("stop") == 1
    for fill in filled:
        assert fill["tx"].startswith("0x") and fill["gas"] > 100_000
        # Each fill within 1% of what the TWAP said (the delegation's slippage).
        price, twap = (float(fill[k].replace(",", "")) for k in ("price", "twap_price"))
        worse = price > twap if fill["kind"] == "dca" else price < twap
        assert not worse or abs(price - twap) / twap <= 0.01, fill
    rules = {row["error"]: row["rule"] for row in report["refused"]}
    assert rules["SwapRecipientNotWallet"] == "the swap's recipient must be the wallet itself"
    assert "TokenNotAllowed" in rules and "DeadlineTooFar" in rules
    assert report["policy"]["spent"] == str(60 * 10**6)  # three DCA periods of 20 mUSD
    assert report["conservation"]["ok"] is True
    assert set(report["conservation"]["tokens"]) == {"mUSD", "WETH", "MGLD"}
    for sums in report["conservation"]["tokens"].values():
        assert sums["before"] == sums["after"] > 0
