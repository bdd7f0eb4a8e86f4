"""agentmesh: autonomous agents with their own wallets.

They think with local quantized models, find each other on a ZeroMQ mesh, negotiate
tasks with signed messages and settle payments through smart contracts::

    from agentmesh import Agent, LocalModel, ServiceContext

    agent = Agent("summarizer", model=LocalModel.default())

    @agent.service("summarize", price="0.05 mUSD")
    async def summarize(ctx: ServiceContext, text: str) -> str:
        return await ctx.model.chat([{"role": "user", "content": f"Summarize: {text}"}])

Every name in ``__all__`` is imported on first use (PEP 562), so ``import agentmesh``
(and ``agentmesh --help``) does not pay for llama-cpp, web3, LangGraph or ZeroMQ.
"""

from __future__ import annotations

import importlib

# Not `from typing import TYPE_CHECKING`: that would import typing (~4 ms) into every
# `import agentmesh`. Type checkers treat this name as true.
TYPE_CHECKING = False
if TYPE_CHECKING:  # the real imports, for type checkers and IDEs
    from typing import Any

    from agentmesh.agents.agent import Agent as Agent
    from agentmesh.agents.channel_payer import PaidCallRefused as PaidCallRefused
    from agentmesh.agents.defi_client import DefiClient as DefiClient
    from agentmesh.agents.defi_client import sign_intent as sign_intent
    from agentmesh.agents.defi_desk import DefiDesk as DefiDesk
    from agentmesh.agents.jury_duty import Judge as Judge
    from agentmesh.agents.outcome import TaskFailed as TaskFailed
    from agentmesh.agents.outcome import TaskOutcome as TaskOutcome
    from agentmesh.agents.project import Project as Project
    from agentmesh.agents.project import load_project as load_project
    from agentmesh.agents.service import Service as Service
    from agentmesh.agents.service import ServiceContext as ServiceContext
    from agentmesh.agents.testing import LocalMarket as LocalMarket
    from agentmesh.agents.testing import local_market as local_market
    from agentmesh.agents.validator import Validator as Validator
    from agentmesh.agents.validator import ValidatorSettings as ValidatorSettings
    from agentmesh.chat_model import ChatMessage as ChatMessage
    from agentmesh.chat_model import ChatModel as ChatModel
    from agentmesh.config import Config as Config
    from agentmesh.config import load_config as load_config
    from agentmesh.errors import AgentMeshError as AgentMeshError
    from agentmesh.errors import AgentMeshValueError as AgentMeshValueError
    from agentmesh.errors import ChainUnavailableError as ChainUnavailableError
    from agentmesh.errors import ConfigError as ConfigError
    from agentmesh.errors import ContextOverflowError as ContextOverflowError
    from agentmesh.errors import ContractRevertError as ContractRevertError
    from agentmesh.errors import DevnetError as DevnetError
    from agentmesh.errors import FeeCapError as FeeCapError
    from agentmesh.errors import InsufficientFundsError as InsufficientFundsError
    from agentmesh.errors import InvalidAddressError as InvalidAddressError
    from agentmesh.errors import KeystoreError as KeystoreError
    from agentmesh.errors import ModelError as ModelError
    from agentmesh.errors import ModelNotFoundError as ModelNotFoundError
    from agentmesh.errors import ModelOutputError as ModelOutputError
    from agentmesh.errors import PaymentError as PaymentError
    from agentmesh.errors import PeerUnreachable as PeerUnreachable
    from agentmesh.errors import PolicyViolation as PolicyViolation
    from agentmesh.errors import PortInUseError as PortInUseError
    from agentmesh.errors import ProtocolError as ProtocolError
    from agentmesh.errors import ReplayError as ReplayError
    from agentmesh.errors import SignatureError as SignatureError
    from agentmesh.errors import ToolMissingError as ToolMissingError
    from agentmesh.errors import TransactionError as TransactionError
    from agentmesh.errors import WalletExistsError as WalletExistsError
    from agentmesh.errors import WalletNotFoundError as WalletNotFoundError
    from agentmesh.errors import WrongPasswordError as WrongPasswordError
    from agentmesh.llm import LocalModel as LocalModel
    from agentmesh.mesh.node import RemoteError as RemoteError
    from agentmesh.mesh.routes import ErrorReply as ErrorReply
    from agentmesh.mesh.routes import HandlerContext as HandlerContext
    from agentmesh.message import Message as Message
    from agentmesh.protocols.defi import DcaIntent as DcaIntent
    from agentmesh.protocols.defi import RebalanceIntent as RebalanceIntent
    from agentmesh.protocols.defi import SwapIntent as SwapIntent
    from agentmesh.protocols.defi import TriggerIntent as TriggerIntent
    from agentmesh.protocols.payment import ChannelPhase as ChannelPhase
    from agentmesh.protocols.payment import Refusal as Refusal
    from agentmesh.wallets.agent_wallet import AgentWalletClient as AgentWalletClient
    from agentmesh.wallets.agent_wallet import CapMode as CapMode
    from agentmesh.wallets.agent_wallet import SwapPolicy as SwapPolicy
    from agentmesh.wallets.consensus import ConsensusClient as ConsensusClient
    from agentmesh.wallets.delegation import DelegationTerms as DelegationTerms
    from agentmesh.wallets.delegation import create_delegation as create_delegation
    from agentmesh.wallets.jury import JuryClient as JuryClient
    from agentmesh.wallets.jury import Verdict as Verdict
    from agentmesh.wallets.jury import Vote as Vote
    from agentmesh.wallets.staking import StakingClient as StakingClient
    from agentmesh.wallets.wallet import Wallet as Wallet

    __version__: str

# Public name -> the module that defines it. Those modules import their dependencies
# from each other, never through this file, so there is no import cycle.
_EXPORTS: dict[str, str] = {
    # agents
    "Agent": "agentmesh.agents.agent",
    "Service": "agentmesh.agents.service",
    "ServiceContext": "agentmesh.agents.service",
    "TaskOutcome": "agentmesh.agents.outcome",
    "TaskFailed": "agentmesh.agents.outcome",
    "Project": "agentmesh.agents.project",
    "load_project": "agentmesh.agents.project",
    "LocalMarket": "agentmesh.agents.testing",
    "local_market": "agentmesh.agents.testing",
    # payment channels: `Agent.call` pays per call; what a payee may refuse
    "PaidCallRefused": "agentmesh.agents.channel_payer",
    "ChannelPhase": "agentmesh.protocols.payment",
    "Refusal": "agentmesh.protocols.payment",
    # validation: the validator role, what jurors judge with, the on-chain clients
    "Validator": "agentmesh.agents.validator",
    "ValidatorSettings": "agentmesh.agents.validator",
    "Judge": "agentmesh.agents.jury_duty",
    "StakingClient": "agentmesh.wallets.staking",
    "ConsensusClient": "agentmesh.wallets.consensus",
    "JuryClient": "agentmesh.wallets.jury",
    "Verdict": "agentmesh.wallets.jury",
    "Vote": "agentmesh.wallets.jury",
    # models
    "ChatModel": "agentmesh.chat_model",
    "ChatMessage": "agentmesh.chat_model",
    "LocalModel": "agentmesh.llm",
    # messages and handlers of your own protocols
    "Message": "agentmesh.message",
    "HandlerContext": "agentmesh.mesh.routes",
    "ErrorReply": "agentmesh.mesh.routes",
    "RemoteError": "agentmesh.mesh.node",
    # wallets: an agent's own, and the policy-bound AgentWallet a user delegates through
    "Wallet": "agentmesh.wallets.wallet",
    "AgentWalletClient": "agentmesh.wallets.agent_wallet",
    "CapMode": "agentmesh.wallets.agent_wallet",
    # delegated DeFi: the owner's terms and intents, the agent's desk
    "DefiDesk": "agentmesh.agents.defi_desk",
    "DefiClient": "agentmesh.agents.defi_client",
    "sign_intent": "agentmesh.agents.defi_client",
    "SwapIntent": "agentmesh.protocols.defi",
    "DcaIntent": "agentmesh.protocols.defi",
    "TriggerIntent": "agentmesh.protocols.defi",
    "RebalanceIntent": "agentmesh.protocols.defi",
    "SwapPolicy": "agentmesh.wallets.agent_wallet",
    "DelegationTerms": "agentmesh.wallets.delegation",
    "create_delegation": "agentmesh.wallets.delegation",
    # configuration
    "Config": "agentmesh.config",
    "load_config": "agentmesh.config",
    # errors (all of agentmesh.errors)
    "AgentMeshError": "agentmesh.errors",
    "AgentMeshValueError": "agentmesh.errors",
    "ConfigError": "agentmesh.errors",
    "ToolMissingError": "agentmesh.errors",
    "DevnetError": "agentmesh.errors",
    "PortInUseError": "agentmesh.errors",
    "ChainUnavailableError": "agentmesh.errors",
    "KeystoreError": "agentmesh.errors",
    "WalletNotFoundError": "agentmesh.errors",
    "WalletExistsError": "agentmesh.errors",
    "WrongPasswordError": "agentmesh.errors",
    "InvalidAddressError": "agentmesh.errors",
    "PaymentError": "agentmesh.errors",
    "InsufficientFundsError": "agentmesh.errors",
    "TransactionError": "agentmesh.errors",
    "FeeCapError": "agentmesh.errors",
    "ContractRevertError": "agentmesh.errors",
    "PolicyViolation": "agentmesh.errors",
    "ModelError": "agentmesh.errors",
    "ModelNotFoundError": "agentmesh.errors",
    "ModelOutputError": "agentmesh.errors",
    "ContextOverflowError": "agentmesh.errors",
    "SignatureError": "agentmesh.errors",
    "ReplayError": "agentmesh.errors",
    "ProtocolError": "agentmesh.errors",
    "PeerUnreachable": "agentmesh.errors",
}

__all__ = [
    "Agent",
    "PaidCallRefused",
    "ChannelPhase",
    "Refusal",
    "Validator",
    "ValidatorSettings",
    "Judge",
    "StakingClient",
    "ConsensusClient",
    "JuryClient",
    "Verdict",
    "Vote",
    "AgentMeshError",
    "AgentMeshValueError",
    "AgentWalletClient",
    "CapMode",
    "DefiDesk",
    "DefiClient",
    "sign_intent",
    "SwapIntent",
    "DcaIntent",
    "TriggerIntent",
    "RebalanceIntent",
    "SwapPolicy",
    "DelegationTerms",
    "create_delegation",
    "ChainUnavailableError",
    "ChatMessage",
    "ChatModel",
    "Config",
    "ConfigError",
    "ContextOverflowError",
    "ContractRevertError",
    "DevnetError",
    "ErrorReply",
    "HandlerContext",
    "InsufficientFundsError",
    "InvalidAddressError",
    "KeystoreError",
    "LocalMarket",
    "LocalModel",
    "Message",
    "ModelError",
    "ModelNotFoundError",
    "ModelOutputError",
    "PaymentError",
    "PeerUnreachable",
    "PolicyViolation",
    "PortInUseError",
    "Project",
    "ProtocolError",
    "RemoteError",
    "ReplayError",
    "Service",
    "ServiceContext",
    "SignatureError",
    "TaskFailed",
    "TaskOutcome",
    "ToolMissingError",
    "TransactionError",
    "FeeCapError",
    "Wallet",
    "WalletExistsError",
    "WalletNotFoundError",
    "WrongPasswordError",
    "__version__",
    "load_config",
    "load_project",
    "local_market",
]


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("agentmesh")
    except PackageNotFoundError:  # a source checkout that was never installed
        return "0+unknown"


# Hidden from type checkers: they see the imports above, and with a module __getattr__
# they would accept any name (`from agentmesh import Agnet` would type-check).
if not TYPE_CHECKING:

    def __getattr__(name: str) -> Any:
        """Import a public name on first use and keep it in the module's namespace."""
        if name == "__version__":
            value = _version()
        elif name in _EXPORTS:
            value = getattr(importlib.import_module(_EXPORTS[name]), name)
        else:
            raise AttributeError(
                f"module 'agentmesh' has no attribute {name!r} (public names: agentmesh.__all__)"
            )
        globals()[name] = value
        return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
