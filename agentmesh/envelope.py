"""Signed envelopes: every field under one EIP-712 signature, compact binary framing.

Typed data (domain ``{name: "agentmesh", version: "1"}``)::

    Envelope(address sender,address recipient,bytes16 id,bytes16 conversation,
             bytes16 replyTo,string protocol,string protocolVersion,bytes32 schemaDigest,
             uint64 created,uint64 expires,uint64 nonce,bytes payload)

Nothing is left unsigned (uAgents leaves protocol and version out; we do not). The
digest is computed directly with keccak, which is ~4x faster than building the
typed-data structure per message; a test pins it to eth_account's
``encode_typed_data`` for the same values. Signing and recovery use coincurve.

Frame: one version byte, then a msgpack array of the fields in the order above plus
the 65-byte signature. Addresses travel as 20 raw bytes.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import coincurve
import msgpack
from eth_utils.address import to_canonical_address, to_checksum_address

from agentmesh.errors import ProtocolError, SignatureError

try:  # safe-pysha3's C keccak is ~3x faster than pycryptodome's ctypes wrapper
    from sha3 import keccak_256 as _keccak_256

    def keccak(data: bytes) -> bytes:
        return bytes(_keccak_256(data).digest())

except ImportError:  # pragma: no cover - the dependency is declared; stay correct without it
    from eth_hash.auto import keccak as _eth_keccak

    def keccak(data: bytes) -> bytes:
        return _eth_keccak(data)


FRAME_VERSION = 1
DOMAIN_NAME = "agentmesh"
DOMAIN_VERSION = "1"
ENVELOPE_TYPE = (
    "Envelope(address sender,address recipient,bytes16 id,bytes16 conversation,"
    "bytes16 replyTo,string protocol,string protocolVersion,bytes32 schemaDigest,"
    "uint64 created,uint64 expires,uint64 nonce,bytes payload)"
)
EIP712_TYPES: dict[str, list[dict[str, str]]] = {
    "EIP712Domain": [{"name": "name", "type": "string"}, {"name": "version", "type": "string"}],
    "Envelope": [
        {"name": "sender", "type": "address"},
        {"name": "recipient", "type": "address"},
        {"name": "id", "type": "bytes16"},
        {"name": "conversation", "type": "bytes16"},
        {"name": "replyTo", "type": "bytes16"},
        {"name": "protocol", "type": "string"},
        {"name": "protocolVersion", "type": "string"},
        {"name": "schemaDigest", "type": "bytes32"},
        {"name": "created", "type": "uint64"},
        {"name": "expires", "type": "uint64"},
        {"name": "nonce", "type": "uint64"},
        {"name": "payload", "type": "bytes"},
    ],
}
_TYPE_HASH = keccak(ENVELOPE_TYPE.encode())
_DOMAIN_SEPARATOR = keccak(
    keccak(b"EIP712Domain(string name,string version)")
    + keccak(DOMAIN_NAME.encode())
    + keccak(DOMAIN_VERSION.encode())
)
_SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_HALF_N = _SECP256K1_N // 2
NO_REPLY = bytes(16)
MAX_U64 = 2**64 - 1
_FIELD_COUNT = 13


# Peers, protocol names and versions repeat on every message; checksumming an address
# alone costs ~40 us, so these conversions are memoized (bounded).
@functools.lru_cache(maxsize=4096)
def _canonical(address: str) -> bytes:
    return to_canonical_address(address)


@functools.lru_cache(maxsize=4096)
def _checksum(raw: bytes) -> str:
    return to_checksum_address(raw)


@functools.lru_cache(maxsize=256)
def _keccak_text(text: str) -> bytes:
    return keccak(text.encode())


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def _word(value: int) -> bytes:
    return value.to_bytes(32, "big")


@dataclass(frozen=True, slots=True)
class Envelope:
    """A signed message. Build one with :meth:`seal`; check one with :meth:`verify`."""

    sender: str
    recipient: str
    id: bytes
    conversation: bytes
    reply_to: bytes
    protocol: str
    protocol_version: str
    schema_digest: bytes
    created: int
    expires: int
    nonce: int
    payload: bytes
    signature: bytes = field(default=b"", repr=False)
    # The encoded frame, kept once known (parsed or sent) so storing it costs nothing.
    raw: bytes = field(default=b"", repr=False, compare=False)

    # ------------------------------------------------------------------ signing

    def digest(self) -> bytes:
        """The EIP-712 digest the signature is over."""
        struct = keccak(
            _TYPE_HASH
            + bytes(12)
            + _canonical(self.sender)
            + bytes(12)
            + _canonical(self.recipient)
            + self.id.ljust(32, b"\0")
            + self.conversation.ljust(32, b"\0")
            + self.reply_to.ljust(32, b"\0")
            + _keccak_text(self.protocol)
            + _keccak_text(self.protocol_version)
            + self.schema_digest
            + _word(self.created)
            + _word(self.expires)
            + _word(self.nonce)
            + keccak(self.payload)
        )
        return keccak(b"\x19\x01" + _DOMAIN_SEPARATOR + struct)

    def typed_data(self) -> dict[str, Any]:
        """The same content as an EIP-712 ``full_message`` (for wallets and tests)."""
        return {
            "types": EIP712_TYPES,
            "primaryType": "Envelope",
            "domain": {"name": DOMAIN_NAME, "version": DOMAIN_VERSION},
            "message": {
                "sender": self.sender,
                "recipient": self.recipient,
                "id": self.id,
                "conversation": self.conversation,
                "replyTo": self.reply_to,
                "protocol": self.protocol,
                "protocolVersion": self.protocol_version,
                "schemaDigest": self.schema_digest,
                "created": self.created,
                "expires": self.expires,
                "nonce": self.nonce,
                "payload": self.payload,
            },
        }

    @classmethod
    def seal(
        cls,
        signer: EnvelopeSigner,
        *,
        recipient: str,
        protocol: str,
        protocol_version: str,
        schema_digest: bytes,
        payload: bytes,
        conversation: bytes | None = None,
        reply_to: bytes = NO_REPLY,
        ttl_ms: int = 30_000,
        message_id: bytes | None = None,
        created: int | None = None,
    ) -> Envelope:
        """Build and sign an envelope from ``signer`` to ``recipient``."""
        created = now_ms() if created is None else created
        unsigned = cls(
            sender=signer.address,
            recipient=recipient,
            id=message_id or uuid.uuid4().bytes,
            conversation=conversation or uuid.uuid4().bytes,
            reply_to=reply_to,
            protocol=protocol,
            protocol_version=protocol_version,
            schema_digest=schema_digest,
            created=created,
            expires=created + ttl_ms,
            nonce=int.from_bytes(os.urandom(8), "big"),
            payload=payload,
        )
        return unsigned.with_signature(signer.sign_digest(unsigned.digest()))

    def with_signature(self, signature: bytes) -> Envelope:
        return dataclasses.replace(self, signature=signature, raw=b"")

    def verify(self) -> str:
        """Return the checksummed signer if it is the sender; else raise ``SignatureError``."""
        signer = recover_address(self.digest(), self.signature)
        if signer != self.sender:
            raise SignatureError(
                f"envelope {self.id.hex()} is signed by {signer}, not {self.sender}"
            )
        return signer

    # ------------------------------------------------------------------ framing

    def to_frame(self) -> bytes:
        """Version byte + msgpack array."""
        if self.raw:
            return self.raw
        frame = bytes((FRAME_VERSION,)) + msgpack.packb(
            [
                _canonical(self.sender),
                _canonical(self.recipient),
                self.id,
                self.conversation,
                self.reply_to,
                self.protocol,
                self.protocol_version,
                self.schema_digest,
                self.created,
                self.expires,
                self.nonce,
                self.payload,
                self.signature,
            ],
            use_bin_type=True,
        )
        if self.signature:
            object.__setattr__(self, "raw", frame)  # frozen: cache, not a field change
        return frame

    @classmethod
    def from_frame(cls, frame: bytes, *, max_size: int = 1 << 20) -> Envelope:
        """Parse a frame; any malformation is a ``ProtocolError`` that says what is wrong."""
        if len(frame) > max_size:
            raise ProtocolError(f"frame of {len(frame)} bytes exceeds the {max_size}-byte limit")
        if not frame:
            raise ProtocolError("empty frame")
        if frame[0] != FRAME_VERSION:
            raise ProtocolError(f"unsupported frame version {frame[0]} (expected {FRAME_VERSION})")
        try:
            fields = msgpack.unpackb(
                frame[1:],
                raw=False,
                use_list=True,
                strict_map_key=True,
                max_bin_len=max_size,
                max_str_len=1024,
                max_array_len=_FIELD_COUNT,
                max_map_len=0,
                max_ext_len=0,
            )
        except Exception as exc:  # msgpack raises several unrelated types
            raise ProtocolError(f"malformed frame: {exc.__class__.__name__}") from None
        if not isinstance(fields, list) or len(fields) != _FIELD_COUNT:
            raise ProtocolError(f"malformed frame: expected {_FIELD_COUNT} fields")
        (
            sender,
            recipient,
            mid,
            conv,
            reply,
            proto,
            pver,
            sdig,
            created,
            expires,
            nonce,
            payload,
            sig,
        ) = fields
        _check(sender, bytes, 20, "sender")
        _check(recipient, bytes, 20, "recipient")
        _check(mid, bytes, 16, "id")
        _check(conv, bytes, 16, "conversation")
        _check(reply, bytes, 16, "replyTo")
        _check(sdig, bytes, 32, "schemaDigest")
        _check(sig, bytes, 65, "signature")
        _check(payload, bytes, None, "payload")
        for name, value in (("protocol", proto), ("protocolVersion", pver)):
            if not isinstance(value, str) or not value or len(value) > 64:
                raise ProtocolError(f"malformed frame: bad {name}")
        for name, value in (("created", created), ("expires", expires), ("nonce", nonce)):
            if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= MAX_U64:
                raise ProtocolError(f"malformed frame: bad {name}")
        # The other fields are already the right Python values; only the addresses change.
        return cls(
            _checksum(sender),
            _checksum(recipient),
            mid,
            conv,
            reply,
            proto,
            pver,
            sdig,
            created,
            expires,
            nonce,
            payload,
            sig,
            frame,
        )


def _check(value: object, kind: type[bytes], size: int | None, name: str) -> None:
    if not isinstance(value, kind) or (size is not None and len(value) != size):
        raise ProtocolError(f"malformed frame: bad {name}")


class EnvelopeSigner:
    """Signs envelope digests with a wallet's key (kept as a coincurve key, never exposed)."""

    __slots__ = ("_key", "address")

    def __init__(self, private_key: bytes) -> None:
        self._key = coincurve.PrivateKey(private_key)
        public = self._key.public_key.format(compressed=False)[1:]
        self.address = to_checksum_address(keccak(public)[-20:])

    def __repr__(self) -> str:
        return f"EnvelopeSigner({self.address})"

    def sign_digest(self, digest: bytes) -> bytes:
        """65-byte r||s||v signature (v = 27 or 28), as Ethereum wallets produce."""
        sig = self._key.sign_recoverable(digest, hasher=None)
        return sig[:64] + bytes((sig[64] + 27,))


def recover_address(digest: bytes, signature: bytes) -> str:
    """The address that produced ``signature`` over ``digest``; ``SignatureError`` if none."""
    if len(signature) != 65:
        raise SignatureError("signature must be 65 bytes")
    v = signature[64]
    if v not in (27, 28):
        raise SignatureError(f"signature has invalid recovery id {v}")
    if int.from_bytes(signature[32:64], "big") > _HALF_N:
        raise SignatureError("signature is malleable (high s)")
    try:
        public = coincurve.PublicKey.from_signature_and_message(
            signature[:64] + bytes((v - 27,)), digest, hasher=None
        )
    except Exception as exc:  # noqa: BLE001 - coincurve raises plain Exception
        raise SignatureError(f"signature does not recover: {exc}") from None
    return _checksum(keccak(public.format(compressed=False)[1:])[-20:])
