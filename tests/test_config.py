"""config.toml loading and the agentmesh home folder."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from agentmesh.config import (
    CONFIG_FILE_NAME,
    ChainConfig,
    Config,
    DevnetConfig,
    WalletConfig,
    load_config,
    resolve_home,
)
from agentmesh.errors import AgentMeshValueError, ConfigError


def _write(home: Path, text: str) -> Path:
    path = home / CONFIG_FILE_NAME
    path.write_text(text)
    return path


# ---------------------------------------------------------------- load_config


def test_defaults_when_no_file(tmp_path: Path) -> None:
    config = load_config(tmp_path)

    assert config == Config()
    assert config.chain.rpc_url is None
    assert config.chain.confirmations_timeout == 120.0
    assert config.devnet.host == "127.0.0.1"
    assert config.devnet.port == 0
    assert config.devnet.chain_id == 31337
    assert config.wallet.scrypt_n == 2**18
    assert config.wallet.default is None


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    _write(tmp_path, "")

    assert load_config(tmp_path) == Config()


def test_valid_file_is_parsed(tmp_path: Path) -> None:
    _write(
        tmp_path,
        """
[chain]
rpc_url = "http://127.0.0.1:8545"
confirmations_timeout = 12.5

[devnet]
anvil_path = "/opt/anvil"
port = 8545
chain_id = 1337
accounts = 4
block_time = 2

[wallet]
default = "alice"
scrypt_n = 16384
""",
    )

    config = load_config(tmp_path)

    assert config.chain == ChainConfig(rpc_url="http://127.0.0.1:8545", confirmations_timeout=12.5)
    assert config.devnet.anvil_path == Path("/opt/anvil")
    assert config.devnet.port == 8545
    assert config.devnet.chain_id == 1337
    assert config.devnet.accounts == 4
    assert config.devnet.block_time == 2
    assert config.devnet.host == DevnetConfig().host  # untouched keys keep defaults
    assert config.wallet == WalletConfig(default="alice", scrypt_n=16384)


def test_home_fixture_config_is_loaded(home: Path) -> None:
    from tests.helpers import TEST_SCRYPT_N

    assert load_config(home).wallet.scrypt_n == TEST_SCRYPT_N


def test_config_is_frozen(tmp_path: Path) -> None:
    config = load_config(tmp_path)

    with pytest.raises(ValueError):
        config.devnet.port = 1  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("colour = 'blue'\n", "colour"),
        ("[network]\nport = 1\n", "network"),
        ("[chain]\nrpc_urll = 'http://x'\n", "chain.rpc_urll"),
        ("[devnet]\nhots = '0.0.0.0'\n", "devnet.hots"),
        ("[wallet]\nscrypt = 16384\n", "wallet.scrypt"),
    ],
)
def test_unknown_key_names_dotted_key_and_file(tmp_path: Path, text: str, key: str) -> None:
    path = _write(tmp_path, text)

    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)

    message = info.value.user_message
    assert f"unknown key '{key}'" in message
    assert str(path) in message


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[devnet]\nport = 'abc'\n", "devnet.port"),
        ("[devnet]\nport = 70000\n", "devnet.port"),
        ("[devnet]\naccounts = 1\n", "devnet.accounts"),
        ("[chain]\nrpc_url = 5\n", "chain.rpc_url"),
        ("[chain]\nconfirmations_timeout = 0\n", "chain.confirmations_timeout"),
        ("[wallet]\nscrypt_n = 1024\n", "wallet.scrypt_n"),
        ("[wallet]\nscrypt_n = 'big'\n", "wallet.scrypt_n"),
        ("chain = 5\n", "chain"),
    ],
)
def test_wrong_type_or_range_names_the_key(tmp_path: Path, text: str, key: str) -> None:
    path = _write(tmp_path, text)

    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)

    message = info.value.user_message
    assert f"invalid value for '{key}'" in message
    assert str(path) in message
    assert isinstance(info.value, AgentMeshValueError)


def test_scrypt_n_that_is_not_a_power_of_two_is_a_config_error(tmp_path: Path) -> None:
    """scrypt needs N = 2**k; 20000 passes the range check but every keystore write
    then dies with eth-keyfile's bare ``ValueError: N must be a power of 2``."""
    _write(tmp_path, "[wallet]\nscrypt_n = 20000\n")

    with pytest.raises(ConfigError, match="wallet.scrypt_n"):
        load_config(tmp_path)


@pytest.mark.parametrize(
    "text",
    [
        "[chain\nrpc_url = 'x'\n",
        "port = \n",
        "[devnet]\nport = 1\nport = 2\n",
        "a = 'unterminated\n",
    ],
    ids=["bad-header", "no-value", "duplicate-key", "unterminated-string"],
)
def test_invalid_toml_is_config_error(tmp_path: Path, text: str) -> None:
    path = _write(tmp_path, text)

    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)

    assert "not valid TOML" in info.value.user_message
    assert str(path) in info.value.user_message


def test_non_utf8_file_is_config_error(tmp_path: Path) -> None:
    path = tmp_path / CONFIG_FILE_NAME
    path.write_bytes(b"\xff\xfe[chain]\n")

    with pytest.raises(ConfigError) as info:
        load_config(tmp_path)

    assert str(path) in info.value.user_message


def test_unreadable_config_path_is_config_error(tmp_path: Path) -> None:
    (tmp_path / CONFIG_FILE_NAME).mkdir()  # exists, but cannot be read as a file

    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)


# ---------------------------------------------------------------- resolve_home


@pytest.fixture
def no_home_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTMESH_HOME", raising=False)


def test_explicit_path_is_created_with_mode_0700(tmp_path: Path, no_home_env: None) -> None:
    target = tmp_path / "new-home"

    resolved = resolve_home(target)

    assert resolved == target.resolve()
    assert resolved.is_dir()
    assert stat.S_IMODE(resolved.stat().st_mode) == 0o700


def test_explicit_string_path_with_missing_parents(tmp_path: Path, no_home_env: None) -> None:
    target = tmp_path / "a" / "b" / "home"

    resolved = resolve_home(str(target))

    assert resolved == target.resolve()
    assert stat.S_IMODE(resolved.stat().st_mode) == 0o700


def test_explicit_path_wins_over_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env_home = tmp_path / "env-home"
    monkeypatch.setenv("AGENTMESH_HOME", str(env_home))

    resolved = resolve_home(tmp_path / "explicit")

    assert resolved == (tmp_path / "explicit").resolve()
    assert not env_home.exists()


def test_environment_variable_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env_home = tmp_path / "env-home"
    monkeypatch.setenv("AGENTMESH_HOME", str(env_home))

    resolved = resolve_home()

    assert resolved == env_home.resolve()
    assert stat.S_IMODE(resolved.stat().st_mode) == 0o700


def test_relative_and_tilde_paths_are_made_absolute(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.chdir(tmp_path)

    assert resolve_home("~/mesh") == (tmp_path / "user" / "mesh").resolve()
    assert resolve_home("rel") == (tmp_path / "rel").resolve()
    assert resolve_home("rel").is_absolute()


def test_existing_folder_is_kept(tmp_path: Path, no_home_env: None) -> None:
    target = tmp_path / "home"
    target.mkdir(mode=0o700)
    (target / "keep.txt").write_text("data")

    resolved = resolve_home(target)

    assert (resolved / "keep.txt").read_text() == "data"


def test_path_that_is_a_file_is_refused(tmp_path: Path, no_home_env: None) -> None:
    target = tmp_path / "not-a-folder"
    target.write_text("x")

    with pytest.raises(ConfigError) as info:
        resolve_home(target)

    assert str(target.resolve()) in info.value.user_message
    assert "not a folder" in info.value.user_message
    assert target.read_text() == "x"  # left alone


def test_env_path_that_is_a_file_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "file-home"
    target.write_text("x")
    monkeypatch.setenv("AGENTMESH_HOME", str(target))

    with pytest.raises(ConfigError, match="not a folder"):
        resolve_home()


@pytest.mark.parametrize(
    ("written", "kept"), [("1.0", "1.0"), ("2", "2"), ('"0.25"', "0.25"), ("0.000001", "0.000001")]
)
@pytest.mark.parametrize("field", ["approval_threshold", "escrow_allowance"])
def test_a_price_in_config_may_be_a_number(
    tmp_path: Path, written: str, kept: str, field: str
) -> None:
    (tmp_path / "config.toml").write_text(f"[agent]\n{field} = {written}\n")
    assert getattr(load_config(tmp_path).agent, field) == kept


@pytest.mark.parametrize("field", ["approval_threshold", "escrow_allowance"])
@pytest.mark.parametrize("written", ["true", "-1", '"lots"', "0.0000001"])
def test_a_price_in_config_that_is_not_one_is_refused(
    tmp_path: Path, written: str, field: str
) -> None:
    (tmp_path / "config.toml").write_text(f"[agent]\n{field} = {written}\n")
    with pytest.raises(ConfigError, match=field):
        load_config(tmp_path)
