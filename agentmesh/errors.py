"""The agentmesh error hierarchy.

Every error the framework raises on purpose derives from :class:`AgentMeshError` and
carries a one-line ``user_message`` that the CLI prints as is (with the fix, where
there is one). Twins such as :class:`AgentMeshValueError` also derive from the
matching builtin so callers can catch either.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class AgentMeshError(Exception):
    """Root of all agentmesh errors."""

    def __init__(self, user_message: str) -> None:
        super().__init__(user_message)
        self.user_message = user_message


class AgentMeshValueError(AgentMeshError, ValueError):
    """A value given to agentmesh (argument, config, input) is not acceptable."""


class ConfigError(AgentMeshValueError):
    """The configuration file or an option is invalid."""


class ToolMissingError(AgentMeshError):
    """An external tool (anvil, solc-js, node) is not installed."""

    def __init__(self, tool: str, fix: str) -> None:
        super().__init__(f"{tool} not found: {fix}")
        self.tool = tool


class DevnetError(AgentMeshError):
    """The local chain could not be started, reached or used."""


class PortInUseError(DevnetError):
    """The port asked for is taken by another process."""


class ChainUnavailableError(DevnetError):
    """The chain's JSON-RPC endpoint stopped answering."""


class KeystoreError(AgentMeshError):
    """A keystore file is missing, unreadable or corrupt."""


class WalletNotFoundError(KeystoreError):
    """No keystore with that name exists."""


class WalletExistsError(KeystoreError):
    """A keystore with that name already exists."""


class WrongPasswordError(KeystoreError):
    """The password does not decrypt the keystore."""


class InvalidAddressError(AgentMeshValueError):
    """A string is not a valid (checksummed) Ethereum address."""


class PaymentError(AgentMeshError):
    """A payment could not be made or verified."""


class InsufficientFundsError(AgentMeshValueError, PaymentError):
    """A wallet does not hold enough to cover a transfer: a payment that cannot be made."""


class TransactionError(AgentMeshError):
    """A transaction was rejected or failed on chain."""


class FeeCapError(TransactionError):
    """The chain's fees are above the cap this agent may pay (``[chain] max_fee_gwei``)."""


class ContractRevertError(TransactionError):
    """A contract call reverted; names the custom error and its arguments when known."""

    def __init__(
        self,
        error_name: str | None,
        args: Sequence[Any] = (),
        *,
        contract: str | None = None,
        raw: bytes = b"",
        detail: str = "",
    ) -> None:
        self.error_name = error_name
        self.error_args = tuple(args)
        self.contract = contract
        self.raw = raw
        if error_name is None:
            what = detail or (f"unknown error data 0x{raw.hex()}" if raw else "no reason given")
            message = f"transaction reverted: {what}"
        else:
            rendered = ", ".join(_render_arg(a) for a in self.error_args)
            where = f"{contract}." if contract else ""
            message = f"transaction reverted: {where}{error_name}({rendered})"
        super().__init__(message)


class PolicyViolation(ContractRevertError):
    """An AgentWallet refused the agent's call: it is outside the owner's policy.

    A revert like any other, so ``error_name`` and ``error_args`` name the custom error;
    ``rule`` says the rule it enforces in words (``agentmesh.wallets.clients.POLICY_RULES``
    holds them), and the message leads with it.
    """

    def __init__(
        self,
        error_name: str | None,
        args: Sequence[Any] = (),
        *,
        rule: str = "",
        contract: str | None = None,
        raw: bytes = b"",
    ) -> None:
        super().__init__(error_name, args, contract=contract, raw=raw)
        self.rule = rule
        if rule:
            call = self.user_message.removeprefix("transaction reverted: ")
            self.user_message = f"refused by the wallet's policy: {rule} ({call})"
            self.args = (self.user_message,)


def _render_arg(value: Any) -> str:
    if isinstance(value, bytes):
        return "0x" + value.hex()
    if isinstance(value, tuple | list):
        return "(" + ", ".join(_render_arg(v) for v in value) + ")"
    return str(value)


class ModelError(AgentMeshError):
    """A local model could not be loaded or used."""


class ModelNotFoundError(ModelError):
    """The model file does not exist (or the default model package is not installed)."""


class ModelOutputError(ModelError):
    """The model's output could not be turned into what was asked for."""


class ContextOverflowError(ModelError):
    """A prompt does not fit the model's context window."""


# Errors of later layers, declared here so every layer shares one root.
class SignatureError(AgentMeshError):
    """A signature is missing, malformed, or not by the claimed signer."""


class ReplayError(AgentMeshError):
    """A message was already seen or has expired."""


class ProtocolError(AgentMeshError):
    """A message breaks its protocol: unknown, out of order, or malformed."""


class PeerUnreachable(AgentMeshError):
    """A mesh peer did not answer."""
