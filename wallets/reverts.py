"""Turn revert data into errors that name the custom error and its arguments.

Every custom error of the shipped contracts (and OpenZeppelin's, which come in their
ABIs), plus Solidity's ``Error(string)`` and ``Panic(uint256)``, is indexed by its
4-byte selector. ``AgentWallet.CallFailed(target, reason)`` wraps the inner call's
revert data; it is decoded recursively so the message shows what really failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from eth_abi.abi import decode as abi_decode
from eth_utils.abi import function_signature_to_4byte_selector
from eth_utils.address import to_checksum_address

from agentmesh.contracts import all_artifacts
from agentmesh.errors import ContractRevertError

PANIC_CODES = {
    0x01: "assertion failed",
    0x11: "arithmetic overflow or underflow",
    0x12: "division by zero",
    0x21: "invalid enum value",
    0x31: "pop on empty array",
    0x32: "array index out of bounds",
    0x41: "out of memory",
    0x51: "call to uninitialized function",
}


@dataclass(frozen=True, slots=True)
class _ErrorSpec:
    contract: str | None
    name: str
    types: tuple[str, ...]


def _abi_type(entry: dict[str, Any]) -> str:
    kind = str(entry["type"])
    if kind.startswith("tuple"):
        inner = ",".join(_abi_type(c) for c in entry["components"])
        return f"({inner}){kind[5:]}"
    return kind


@cache
def _registry() -> dict[bytes, _ErrorSpec]:
    specs: dict[bytes, _ErrorSpec] = {
        bytes.fromhex("08c379a0"): _ErrorSpec(None, "Error", ("string",)),
        bytes.fromhex("4e487b71"): _ErrorSpec(None, "Panic", ("uint256",)),
    }
    for artifact in all_artifacts():
        for item in artifact.abi:
            if item.get("type") != "error":
                continue
            types = tuple(_abi_type(i) for i in item["inputs"])
            selector = function_signature_to_4byte_selector(f"{item['name']}({','.join(types)})")
            # The first contract to declare an error owns it (errors shared through
            # OpenZeppelin bases decode the same wherever they come from).
            specs.setdefault(selector, _ErrorSpec(artifact.name, item["name"], types))
    return specs


def _pretty(value: Any, abi_type: str) -> Any:
    if abi_type == "address":
        return to_checksum_address(value)
    if isinstance(value, tuple | list):
        return tuple(value)
    return value


def decode_revert(data: bytes | str | None, *, detail: str = "") -> ContractRevertError:
    """Build a :class:`ContractRevertError` from raw revert data (bytes or 0x-hex)."""
    if isinstance(data, str):
        text = data
        try:
            data = bytes.fromhex(text.removeprefix("0x"))
        except ValueError:
            return ContractRevertError(None, detail=detail or text)
    raw = data or b""
    if len(raw) < 4:
        return ContractRevertError(None, raw=raw, detail=detail)
    spec = _registry().get(raw[:4])
    if spec is None:
        return ContractRevertError(None, raw=raw, detail=detail)
    try:
        values = abi_decode(list(spec.types), raw[4:])
    except Exception:  # noqa: BLE001 - malformed data still yields a named error
        return ContractRevertError(spec.name, contract=spec.contract, raw=raw)
    args: list[Any] = [_pretty(v, t) for v, t in zip(values, spec.types, strict=True)]
    if spec.name == "Panic":
        code = int(args[0])
        args = [f"0x{code:02x} {PANIC_CODES.get(code, 'unknown panic')}"]
    if spec.name == "CallFailed" and isinstance(args[-1], bytes) and len(args[-1]) >= 4:
        inner = decode_revert(args[-1])
        args[-1] = inner.user_message.removeprefix("transaction reverted: ")
    return ContractRevertError(spec.name, args, contract=spec.contract, raw=raw)
