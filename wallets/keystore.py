"""Encrypted keystores: one scrypt-encrypted JSON file (Web3 Secret Storage) per wallet.

Files live in ``<home>/keystores/<name>.json`` with mode 0600 in a 0700 folder, are
written atomically (temp file + rename, so a crash never leaves half a keystore), and
a file that others can read is refused rather than used. Private keys never appear in
messages, logs or reprs.
"""

from __future__ import annotations

import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount
from eth_utils.address import to_checksum_address

from agentmesh.errors import (
    AgentMeshValueError,
    KeystoreError,
    WalletExistsError,
    WalletNotFoundError,
    WrongPasswordError,
)

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")
DEFAULT_SCRYPT_N = 2**18


@dataclass(frozen=True, slots=True)
class KeystoreEntry:
    """What can be known about a keystore without its password."""

    name: str
    address: str
    path: Path


def validate_name(name: str) -> str:
    """Return ``name`` if it is a valid wallet name, else raise ``AgentMeshValueError``."""
    if not NAME_PATTERN.fullmatch(name):
        raise AgentMeshValueError(
            f"invalid wallet name {name!r}: use 1-64 lowercase letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return name


def _normalize_key(private_key: str | bytes) -> bytes:
    if isinstance(private_key, str):
        text = private_key.strip().removeprefix("0x")
        if not re.fullmatch(r"[0-9a-fA-F]{64}", text):
            raise AgentMeshValueError("private key must be 32 bytes as 64 hex characters")
        return bytes.fromhex(text)
    if len(private_key) != 32:
        raise AgentMeshValueError("private key must be 32 bytes")
    return private_key


class Keystore:
    """The encrypted keystores of one agentmesh home."""

    def __init__(self, home: Path, *, scrypt_n: int = DEFAULT_SCRYPT_N) -> None:
        self.directory = home / "keystores"
        self.scrypt_n = scrypt_n

    def path_for(self, name: str) -> Path:
        return self.directory / f"{validate_name(name)}.json"

    def create(self, name: str, password: str) -> KeystoreEntry:
        """Generate a new key and store it encrypted under ``name``."""
        account: LocalAccount = Account.create()
        return self._write(name, bytes(account.key), password)

    def import_key(self, name: str, private_key: str | bytes, password: str) -> KeystoreEntry:
        """Store an existing private key encrypted under ``name``."""
        key = _normalize_key(private_key)
        try:
            Account.from_key(key)
        except ValueError as exc:  # out of the curve's range
            raise AgentMeshValueError("private key is not a valid secp256k1 key") from exc
        return self._write(name, key, password)

    def _write(self, name: str, key: bytes, password: str) -> KeystoreEntry:
        if not password:
            raise AgentMeshValueError("password must not be empty")
        path = self.path_for(name)
        if path.exists():
            raise WalletExistsError(f"wallet {name!r} already exists at {path}")
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(self.directory, 0o700)
        encrypted = Account.encrypt(key, password, kdf="scrypt", iterations=self.scrypt_n)
        encrypted["name"] = name
        tmp = path.with_suffix(".json.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(encrypted, handle)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return KeystoreEntry(name, to_checksum_address("0x" + encrypted["address"]), path)

    def _read(self, name: str) -> dict[str, Any]:
        path = self.path_for(name)
        if not path.exists():
            raise WalletNotFoundError(
                f"no wallet named {name!r} in {self.directory}; create one with "
                f"`agentmesh wallet new {name}`"
            )
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise KeystoreError(
                f"keystore {path} is readable by others (mode {mode:04o}); run `chmod 600 {path}`"
            )
        try:
            data = json.loads(path.read_text())
            if not isinstance(data, dict) or "crypto" not in data or "address" not in data:
                raise ValueError("missing 'crypto' or 'address'")
            to_checksum_address("0x" + str(data["address"]).removeprefix("0x"))
        except (ValueError, OSError) as exc:
            raise KeystoreError(f"keystore {path} is corrupt: {exc}") from exc
        return data

    def entry(self, name: str) -> KeystoreEntry:
        """Name, address and path of a keystore (no password needed)."""
        data = self._read(name)
        address = to_checksum_address("0x" + str(data["address"]).removeprefix("0x"))
        return KeystoreEntry(name, address, self.path_for(name))

    def list(self) -> list[KeystoreEntry]:
        """Every readable keystore, sorted by name. Corrupt files are skipped."""
        if not self.directory.is_dir():
            return []
        entries = []
        for path in sorted(self.directory.glob("*.json")):
            try:
                entries.append(self.entry(path.stem))
            except (KeystoreError, AgentMeshValueError):
                continue
        return entries

    def load(self, name: str, password: str) -> LocalAccount:
        """Decrypt the keystore ``name``; raises ``WrongPasswordError`` on a bad password."""
        data = self._read(name)
        try:
            key = Account.decrypt(data, password)
        except ValueError as exc:
            if "MAC mismatch" in str(exc):
                raise WrongPasswordError(f"wrong password for wallet {name!r}") from None
            raise KeystoreError(f"keystore {self.path_for(name)} is corrupt: {exc}") from None
        except KeyError as exc:
            raise KeystoreError(
                f"keystore {self.path_for(name)} is corrupt: missing field {exc}"
            ) from None
        except TypeError as exc:
            raise KeystoreError(f"keystore {self.path_for(name)} is corrupt: {exc}") from None
        account: LocalAccount = Account.from_key(key)
        # The address field is what `list`/`show` display; a key that does not match it
        # would make funds sent to the displayed address unreachable.
        recorded = str(data["address"]).lower().removeprefix("0x")
        if account.address.lower().removeprefix("0x") != recorded:
            raise KeystoreError(
                f"keystore {self.path_for(name)} is corrupt: address field does not match the key"
            )
        return account
