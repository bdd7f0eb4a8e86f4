"""Encrypted keystores: round trips, file permissions, corruption, names, leaks."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from eth_account import Account

from agentmesh.errors import (
    AgentMeshError,
    AgentMeshValueError,
    KeystoreError,
    WalletExistsError,
    WalletNotFoundError,
    WrongPasswordError,
)
from agentmesh.wallets.keystore import DEFAULT_SCRYPT_N, Keystore
from agentmesh.wallets.wallet import Wallet
from tests.helpers import TEST_SCRYPT_N

PASSWORD = "correct horse battery staple"
# A fixed, valid key so tests can look for its hex in files and messages.
KEY_HEX = "4c0883a69102937d6231471b5dbb6204fe5129617082792ae468d01a3f362318"
KEY_ADDRESS = Account.from_key(bytes.fromhex(KEY_HEX)).address
SECP256K1_ORDER = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141


@pytest.fixture
def keystore(home: Path) -> Keystore:
    return Keystore(home, scrypt_n=TEST_SCRYPT_N)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _overwrite(path: Path, content: bytes) -> None:
    """Replace a keystore's bytes, keeping the private 0600 mode."""
    path.write_bytes(content)
    os.chmod(path, 0o600)


# ---------------------------------------------------------------- round trips


def test_create_then_load_round_trip(keystore: Keystore) -> None:
    entry = keystore.create("alice", PASSWORD)

    account = keystore.load("alice", PASSWORD)

    assert entry.name == "alice"
    assert entry.path == keystore.directory / "alice.json"
    assert account.address == entry.address
    # The decrypted key really is the key of that address.
    assert Account.from_key(account.key).address == entry.address
    assert keystore.entry("alice") == entry


def test_two_created_wallets_have_different_keys(keystore: Keystore) -> None:
    first = keystore.create("one", PASSWORD)
    second = keystore.create("two", PASSWORD)

    assert first.address != second.address


def test_files_are_0600_in_a_0700_folder(keystore: Keystore) -> None:
    entry = keystore.create("alice", PASSWORD)

    assert _mode(entry.path) == 0o600
    assert _mode(keystore.directory) == 0o700


def test_existing_loose_folder_is_tightened_to_0700(keystore: Keystore) -> None:
    keystore.directory.mkdir(mode=0o755)
    os.chmod(keystore.directory, 0o755)

    keystore.create("alice", PASSWORD)

    assert _mode(keystore.directory) == 0o700


def test_file_is_scrypt_web3_secret_storage_without_plaintext_key(keystore: Keystore) -> None:
    entry = keystore.import_key("alice", KEY_HEX, PASSWORD)
    text = entry.path.read_text()
    data = json.loads(text)

    assert data["version"] == 3
    assert data["crypto"]["kdf"] == "scrypt"
    assert data["crypto"]["kdfparams"]["n"] == TEST_SCRYPT_N
    assert KEY_HEX not in text.lower()
    assert PASSWORD not in text
    assert entry.address == KEY_ADDRESS
    assert data["address"].lower().removeprefix("0x") == KEY_ADDRESS.lower()[2:]


def test_no_tmp_file_left_after_write(keystore: Keystore) -> None:
    keystore.create("alice", PASSWORD)
    keystore.import_key("bob", KEY_HEX, PASSWORD)

    names = sorted(p.name for p in keystore.directory.iterdir())

    assert names == ["alice.json", "bob.json"]


def test_production_scrypt_strength_is_two_to_the_18(tmp_path: Path) -> None:
    """Tests use a fast scrypt n; a keystore made without one gets the production 2**18."""
    assert DEFAULT_SCRYPT_N == 2**18
    assert Keystore(tmp_path).scrypt_n == 2**18


def test_create_makes_a_home_folder_that_does_not_exist_yet(tmp_path: Path) -> None:
    home = tmp_path / "not" / "yet" / "home"
    keystore = Keystore(home, scrypt_n=TEST_SCRYPT_N)

    entry = keystore.create("alice", PASSWORD)

    assert entry.path == home / "keystores" / "alice.json"
    assert _mode(keystore.directory) == 0o700
    assert keystore.load("alice", PASSWORD).address == entry.address


@pytest.mark.parametrize(
    ("where", "error"),
    [
        ("dump", OSError(28, "No space left on device")),
        ("fsync", KeyboardInterrupt()),
        ("replace", OSError(18, "Invalid cross-device link")),
    ],
    ids=["write", "interrupted-sync", "rename"],
)
def test_failed_write_leaves_no_temp_file(
    keystore: Keystore, monkeypatch: pytest.MonkeyPatch, where: str, error: BaseException
) -> None:
    def fail(*_args: object, **_kwargs: object) -> None:
        raise error

    with monkeypatch.context() as patch:
        patch.setattr(json if where == "dump" else os, where, fail)
        with pytest.raises(type(error)):
            keystore.import_key("alice", KEY_HEX, PASSWORD)

    assert list(keystore.directory.iterdir()) == []
    # Nothing half-written blocks the name: the next attempt succeeds.
    keystore.import_key("alice", KEY_HEX, PASSWORD)
    assert keystore.load("alice", PASSWORD).address == KEY_ADDRESS


# ---------------------------------------------------------------- import_key


@pytest.mark.parametrize(
    "key",
    [KEY_HEX, "0x" + KEY_HEX, KEY_HEX.upper(), f"  0x{KEY_HEX}\n", bytes.fromhex(KEY_HEX)],
    ids=["bare", "0x", "upper", "whitespace", "bytes"],
)
def test_import_key_accepts_hex_forms(keystore: Keystore, key: str | bytes) -> None:
    entry = keystore.import_key("imported", key, PASSWORD)

    assert entry.address == KEY_ADDRESS
    assert keystore.load("imported", PASSWORD).key.hex().removeprefix("0x") == KEY_HEX


@pytest.mark.parametrize(
    "key",
    [
        "zz" + KEY_HEX[2:],  # not hex
        KEY_HEX[:-2],  # 31 bytes
        KEY_HEX + "00",  # 33 bytes
        "",
        bytes(31),
        bytes(33),
        "00" * 32,  # zero key
        f"{SECP256K1_ORDER:064x}",  # == curve order
        "ff" * 32,  # > curve order
        bytes(32),
    ],
    ids=[
        "bad-hex",
        "short",
        "long",
        "empty",
        "bytes-31",
        "bytes-33",
        "zero",
        "order",
        "above-order",
        "zero-bytes",
    ],
)
def test_import_key_rejects_invalid_keys(keystore: Keystore, key: str | bytes) -> None:
    with pytest.raises(AgentMeshValueError) as info:
        keystore.import_key("bad", key, PASSWORD)

    assert "private key" in info.value.user_message
    assert not keystore.path_for("bad").exists()


def test_import_key_error_does_not_echo_the_key(keystore: Keystore) -> None:
    near_miss = KEY_HEX[:-1] + "g"  # one bad character, the rest a real key

    with pytest.raises(AgentMeshValueError) as info:
        keystore.import_key("bad", near_miss, PASSWORD)

    assert KEY_HEX[:-1] not in str(info.value)
    assert KEY_HEX[:-1] not in repr(info.value)


# ---------------------------------------------------------------- load errors


def test_wrong_password(keystore: Keystore) -> None:
    keystore.create("alice", PASSWORD)

    with pytest.raises(WrongPasswordError) as info:
        keystore.load("alice", "not the password")

    assert "alice" in info.value.user_message
    assert isinstance(info.value, KeystoreError)


def test_missing_wallet_names_the_fix(keystore: Keystore) -> None:
    with pytest.raises(WalletNotFoundError) as info:
        keystore.load("ghost", PASSWORD)

    assert "`agentmesh wallet new ghost`" in info.value.user_message
    with pytest.raises(WalletNotFoundError):
        keystore.entry("ghost")


@pytest.mark.parametrize(
    "content",
    [
        b"this is not json",
        b'{"address": "a9c0f4',  # truncated
        b"\xff\xfe\x00garbage",  # not even utf-8
        b"[1, 2, 3]",
        b"",
    ],
    ids=["garbage", "truncated", "binary", "json-list", "empty"],
)
def test_corrupt_file_is_keystore_error(keystore: Keystore, content: bytes) -> None:
    entry = keystore.create("alice", PASSWORD)
    _overwrite(entry.path, content)

    with pytest.raises(KeystoreError) as info:
        keystore.load("alice", PASSWORD)
    assert "corrupt" in info.value.user_message
    assert str(entry.path) in info.value.user_message
    with pytest.raises(KeystoreError, match="corrupt"):
        keystore.entry("alice")


def _mutated(keystore: Keystore, name: str, change: dict[str, object]) -> Path:
    entry = keystore.import_key(name, KEY_HEX, PASSWORD)
    data = json.loads(entry.path.read_text())
    for key, value in change.items():
        if value is None:
            data.pop(key)
        else:
            data[key] = value
    _overwrite(entry.path, json.dumps(data).encode())
    return entry.path


@pytest.mark.parametrize(
    "change",
    [
        {"crypto": None},
        {"address": None},
        {"address": "not-an-address"},
        {"address": "12345"},
        {"crypto": {}},
        {"crypto": "scrypt"},
        {"version": None},
    ],
    ids=[
        "no-crypto",
        "no-address",
        "bad-address",
        "short-address",
        "empty-crypto",
        "crypto-string",
        "no-version",
    ],
)
def test_structurally_corrupt_json_is_keystore_error(
    keystore: Keystore, change: dict[str, object]
) -> None:
    path = _mutated(keystore, "alice", change)

    with pytest.raises(KeystoreError) as info:
        keystore.load("alice", PASSWORD)

    assert not isinstance(info.value, WrongPasswordError)
    assert "corrupt" in info.value.user_message
    assert str(path) in info.value.user_message


def test_file_with_an_address_but_no_crypto_is_not_listed(keystore: Keystore) -> None:
    """An address alone is not a wallet: entry() and list() must not show it."""
    kept = keystore.create("bob", PASSWORD)
    path = _mutated(keystore, "alice", {"crypto": None})

    with pytest.raises(KeystoreError) as info:
        keystore.entry("alice")

    assert "corrupt" in info.value.user_message
    assert "'crypto'" in info.value.user_message
    assert str(path) in info.value.user_message
    assert keystore.list() == [kept]


def test_tampered_ciphertext_is_not_loaded(keystore: Keystore) -> None:
    entry = keystore.import_key("alice", KEY_HEX, PASSWORD)
    data = json.loads(entry.path.read_text())
    cipher = data["crypto"]["ciphertext"]
    data["crypto"]["ciphertext"] = ("0" if cipher[0] != "0" else "1") + cipher[1:]
    _overwrite(entry.path, json.dumps(data).encode())

    # The MAC covers the ciphertext: a flipped nibble must never yield a (wrong) key.
    with pytest.raises(KeystoreError):
        keystore.load("alice", PASSWORD)


def test_address_field_that_does_not_match_the_key_is_refused(keystore: Keystore) -> None:
    """The address in the file is what `entry`/`list` show; it must be the key's address.

    Otherwise a tampered (or mixed-up) file displays one address while the password
    unlocks another, and funds sent to the displayed address are not controlled.
    """
    other = Account.create().address
    _mutated(keystore, "alice", {"address": other.lower()[2:]})
    assert keystore.entry("alice").address == other  # what the user is shown

    with pytest.raises(KeystoreError, match="corrupt"):
        keystore.load("alice", PASSWORD)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660])
def test_file_readable_by_others_is_refused(keystore: Keystore, mode: int) -> None:
    entry = keystore.create("alice", PASSWORD)
    os.chmod(entry.path, mode)

    with pytest.raises(KeystoreError) as info:
        keystore.load("alice", PASSWORD)

    assert f"chmod 600 {entry.path}" in info.value.user_message
    assert f"{mode:04o}" in info.value.user_message
    # After the suggested fix, the same file loads.
    os.chmod(entry.path, 0o600)
    assert keystore.load("alice", PASSWORD).address == entry.address


# ---------------------------------------------------------------- names, passwords


def test_duplicate_name_is_refused_and_original_kept(keystore: Keystore) -> None:
    entry = keystore.import_key("alice", KEY_HEX, PASSWORD)
    before = entry.path.read_bytes()

    with pytest.raises(WalletExistsError) as info:
        keystore.create("alice", "another password")
    with pytest.raises(WalletExistsError):
        keystore.import_key("alice", "11" * 32, "another password")

    assert "alice" in info.value.user_message
    assert entry.path.read_bytes() == before
    assert keystore.load("alice", PASSWORD).address == KEY_ADDRESS


@pytest.mark.parametrize(
    "name",
    [
        "",
        "Alice",
        "-alice",
        "_alice",
        "al ice",
        "../escape",
        "a/b",
        "a.b",
        "a" * 65,
        "alice\n",
        "\nalice",
        "ålice",
    ],
    ids=[
        "empty",
        "upper",
        "leading-dash",
        "leading-underscore",
        "space",
        "traversal",
        "slash",
        "dot",
        "too-long",
        "trailing-newline",
        "leading-newline",
        "non-ascii",
    ],
)
def test_invalid_names_are_rejected(keystore: Keystore, name: str) -> None:
    with pytest.raises(AgentMeshValueError, match="invalid wallet name"):
        keystore.create(name, PASSWORD)
    with pytest.raises(AgentMeshValueError, match="invalid wallet name"):
        keystore.load(name, PASSWORD)

    # Nothing was written anywhere.
    written = list(keystore.directory.iterdir()) if keystore.directory.exists() else []
    assert written == []


@pytest.mark.parametrize("name", ["a", "0", "agent-1", "my_wallet", "a" * 64])
def test_valid_names_are_accepted(keystore: Keystore, name: str) -> None:
    entry = keystore.create(name, PASSWORD)

    assert entry.path.name == f"{name}.json"
    assert keystore.load(name, PASSWORD).address == entry.address


def test_empty_password_is_rejected(keystore: Keystore) -> None:
    with pytest.raises(AgentMeshValueError, match="password"):
        keystore.create("alice", "")
    with pytest.raises(AgentMeshValueError, match="password"):
        keystore.import_key("alice", KEY_HEX, "")

    assert not keystore.path_for("alice").exists()


# ---------------------------------------------------------------- list


def test_list_without_folder_is_empty(keystore: Keystore) -> None:
    assert not keystore.directory.exists()
    assert keystore.list() == []


def test_list_is_sorted_and_skips_corrupt_files(keystore: Keystore) -> None:
    zed = keystore.create("zed", PASSWORD)
    alpha = keystore.create("alpha", PASSWORD)
    mid = keystore.import_key("mid", KEY_HEX, PASSWORD)
    broken = keystore.create("broken", PASSWORD)
    _overwrite(broken.path, b"{not json")
    loose = keystore.create("loose", PASSWORD)
    os.chmod(loose.path, 0o644)
    # A file whose name is not a valid wallet name is skipped, not an error.
    (keystore.directory / "Not A Name.json").write_text("{}")

    listed = keystore.list()

    assert [e.name for e in listed] == ["alpha", "mid", "zed"]
    assert [e.address for e in listed] == [alpha.address, KEY_ADDRESS, zed.address]
    assert listed[1] == mid


# ---------------------------------------------------------------- no key leaks


def test_wallet_and_account_reprs_do_not_show_the_key(keystore: Keystore) -> None:
    keystore.import_key("alice", KEY_HEX, PASSWORD)
    account = keystore.load("alice", PASSWORD)
    wallet = Wallet(account, None, name="alice")  # type: ignore[arg-type]

    for text in (repr(wallet), str(wallet), f"{wallet}", repr(keystore.entry("alice"))):
        assert KEY_HEX not in text.lower()
    assert KEY_ADDRESS in repr(wallet)
    assert "alice" in repr(wallet)


def test_errors_do_not_show_the_key_or_password(keystore: Keystore) -> None:
    keystore.import_key("alice", KEY_HEX, PASSWORD)
    caught: list[AgentMeshError] = []
    for attempt in (
        lambda: keystore.load("alice", "wrong"),
        lambda: keystore.import_key("alice", KEY_HEX, PASSWORD),
        lambda: keystore.import_key("other", KEY_HEX + "0", PASSWORD),
    ):
        with pytest.raises(AgentMeshError) as info:
            attempt()
        caught.append(info.value)

    assert [type(e) for e in caught] == [WrongPasswordError, WalletExistsError, AgentMeshValueError]
    for error in caught:
        for text in (str(error), repr(error), error.user_message):
            assert KEY_HEX not in text.lower()
            assert PASSWORD not in text
