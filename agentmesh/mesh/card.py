"""Signed agent cards and CurveZMQ keys bound to a wallet.

An agent's CurveZMQ keypair is derived from its wallet key, so there is no second
secret to store; the public half is published in the agent card, and the card is
signed by the wallet (EIP-191 over canonical JSON). A peer that verifies the card
therefore knows that the curve key it encrypts to belongs to that wallet address.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import zmq
from eth_account import Account
from eth_account.messages import encode_defunct
from pydantic import BaseModel, ConfigDict, Field
from zmq.utils import z85

from agentmesh.canonical import canonical_bytes
from agentmesh.envelope import now_ms
from agentmesh.errors import SignatureError
from agentmesh.message import UInt

CURVE_KEY_LABEL = b"agentmesh/curve/v1"


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """A CurveZMQ keypair (Z85 text, as pyzmq expects)."""

    public: bytes
    secret: bytes

    def __repr__(self) -> str:
        return f"CurveKeys(public={self.public.decode()})"

    @classmethod
    def from_wallet_key(cls, private_key: bytes) -> CurveKeys:
        """Derive the agent's curve keypair from its wallet key (one-way, domain-separated)."""
        seed = hashlib.sha256(CURVE_KEY_LABEL + private_key).digest()
        secret = z85.encode(seed)
        return cls(zmq.curve_public(secret), secret)


class ServicePrice(BaseModel):
    """A service an agent offers and its unit price in token base units."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, max_length=64)
    price: UInt  # strict and bounded: a card travels in messages and is checkpointed


class AgentCard(BaseModel):
    """What an agent says about itself on the mesh; valid only with its wallet signature."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    address: str = Field(pattern=r"^0x[0-9a-fA-F]{40}$")
    name: str = Field(min_length=1, max_length=64)
    endpoint: str = Field(max_length=256)
    presence_endpoint: str = Field(max_length=256)
    curve_key: str = Field(min_length=40, max_length=40)
    services: tuple[ServicePrice, ...] = Field(default=(), max_length=32)
    model_sha256: str = Field(default="", max_length=64)
    issued_ms: UInt
    signature: str = ""

    def signing_bytes(self) -> bytes:
        body = self.model_dump(exclude={"signature"})
        return canonical_bytes(body)

    def signed(self, private_key: bytes) -> AgentCard:
        """This card with a fresh issue time and the wallet's signature."""
        unsigned = self.model_copy(update={"issued_ms": now_ms(), "signature": ""})
        signature = Account.sign_message(
            encode_defunct(primitive=unsigned.signing_bytes()), private_key
        ).signature
        return unsigned.model_copy(update={"signature": "0x" + bytes(signature).hex()})

    def verify(self) -> str:
        """The card's address if its wallet signed it; else ``SignatureError``."""
        try:
            signer: str = Account.recover_message(
                encode_defunct(primitive=self.signing_bytes()), signature=self.signature
            )
        except Exception as exc:  # noqa: BLE001 - eth_account raises several types
            raise SignatureError(f"agent card of {self.address} has a bad signature") from exc
        if signer.lower() != self.address.lower():
            raise SignatureError(f"agent card of {self.address} is signed by {signer}")
        return signer

    def offers(self, service: str) -> ServicePrice | None:
        return next((s for s in self.services if s.name == service), None)

    @property
    def bootstrap_address(self) -> str:
        """``<curve key>@<endpoint>``: what another agent needs to join through this one."""
        return f"{self.curve_key}@{self.endpoint}"
