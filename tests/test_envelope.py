"""Envelope signing, verification and framing, including every tampering path."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from typing import Any

import coincurve
import msgpack
import pytest
from eth_account import Account
from eth_account.messages import _hash_eip191_message, encode_typed_data
from eth_utils.address import to_checksum_address
from eth_utils.crypto import keccak
from hypothesis import given, settings
from hypothesis import strategies as st

from agentmesh.envelope import FRAME_VERSION, Envelope, EnvelopeSigner, now_ms, recover_address
from agentmesh.errors import ProtocolError, SignatureError
from agentmesh.message import Message

SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
MAX_U64 = 2**64 - 1


class Ping(Message):
    text: str
    count: int = 0


@pytest.fixture(scope="module")
def alice() -> EnvelopeSigner:
    return EnvelopeSigner(bytes(Account.create().key))


@pytest.fixture(scope="module")
def bob_address() -> str:
    return str(Account.create().address)


def _seal(signer: EnvelopeSigner, recipient: str, **overrides: object) -> Envelope:
    kwargs: dict[str, object] = {
        "recipient": recipient,
        "protocol": "ping",
        "protocol_version": "1.0",
        "schema_digest": Ping.schema_digest(),
        "payload": Ping(text="hello", count=3).encode(),
    }
    kwargs.update(overrides)
    return Envelope.seal(signer, **kwargs)  # type: ignore[arg-type]


def test_digest_and_signature_match_eth_account_typed_data() -> None:
    account = Account.create()
    envelope = _seal(EnvelopeSigner(bytes(account.key)), str(Account.create().address))
    signable = encode_typed_data(full_message=envelope.typed_data())
    assert _hash_eip191_message(signable) == envelope.digest()
    assert account.sign_message(signable).signature == envelope.signature
    assert Account.recover_message(signable, signature=envelope.signature) == account.address


def test_verify_returns_the_sender(alice: EnvelopeSigner, bob_address: str) -> None:
    envelope = _seal(alice, bob_address)
    assert envelope.verify() == alice.address
    assert envelope.sender == alice.address


SIGNED_FIELDS = {
    "recipient": lambda e: str(Account.create().address),
    "id": lambda e: bytes(16),
    "conversation": lambda e: b"\x01" * 16,
    "reply_to": lambda e: b"\x02" * 16,
    "protocol": lambda e: "pong",
    "protocol_version": lambda e: "2.0",
    "schema_digest": lambda e: b"\x03" * 32,
    "created": lambda e: e.created + 1,
    "expires": lambda e: e.expires + 1,
    "nonce": lambda e: e.nonce ^ 1,
    "payload": lambda e: e.payload + b" ",
}


@pytest.mark.parametrize("field", sorted(SIGNED_FIELDS))
def test_every_field_is_signed(alice: EnvelopeSigner, bob_address: str, field: str) -> None:
    envelope = _seal(alice, bob_address)
    tampered = dataclasses.replace(envelope, **{field: SIGNED_FIELDS[field](envelope)})
    with pytest.raises(SignatureError, match="not " + alice.address):
        tampered.verify()


def test_claimed_sender_must_be_the_signer(alice: EnvelopeSigner, bob_address: str) -> None:
    forged = dataclasses.replace(_seal(alice, bob_address), sender=bob_address)
    # The sender is signed too, so the forged envelope recovers to some third address.
    with pytest.raises(SignatureError, match=f"not {bob_address}"):
        forged.verify()


def test_bad_signatures_are_errors_not_false(alice: EnvelopeSigner, bob_address: str) -> None:
    envelope = _seal(alice, bob_address)
    sig = envelope.signature
    high_s = (SECP256K1_N - int.from_bytes(sig[32:64], "big")).to_bytes(32, "big")
    cases = {
        b"": "65 bytes",
        sig[:64] + b"\x05": "recovery id",
        sig[:32] + high_s + bytes((55 - sig[64],)): "malleable",
        bytes(64) + b"\x1b": "does not recover",
    }
    for bad, reason in cases.items():
        with pytest.raises(SignatureError, match=reason):
            dataclasses.replace(envelope, signature=bad).verify()
    # The other recovery id yields a valid but different key: verify must refuse it.
    flipped = sig[:64] + bytes((55 - sig[64],))
    assert recover_address(envelope.digest(), flipped) != alice.address
    with pytest.raises(SignatureError):
        dataclasses.replace(envelope, signature=flipped).verify()


def test_low_s_rule_is_exactly_s_above_half_n(alice: EnvelopeSigner, bob_address: str) -> None:
    """s == N // 2 is the largest low s; its twin s' = N - s == N // 2 + 1 is refused."""
    digest = _seal(alice, bob_address).digest()
    sig = alice.sign_digest(digest)
    r, v = sig[:32], sig[64]
    half = SECP256K1_N // 2
    low = r + half.to_bytes(32, "big") + bytes((v,))
    high = r + (SECP256K1_N - half).to_bytes(32, "big") + bytes((55 - v,))
    assert SECP256K1_N - half == half + 1
    signer = recover_address(digest, low)  # accepted: recovers some key
    # The high twin (other recovery id) is a valid signature by that same key...
    twin = coincurve.PublicKey.from_signature_and_message(
        high[:64] + bytes((high[64] - 27,)), digest, hasher=None
    )
    assert to_checksum_address(keccak(twin.format(compressed=False)[1:])[-20:]) == signer
    # ... and exactly the malleable copy the low-s rule exists to refuse.
    with pytest.raises(SignatureError, match="malleable"):
        recover_address(digest, high)


def test_now_ms_is_the_wall_clock_in_milliseconds() -> None:
    before = time.time() * 1000
    now = now_ms()
    after = time.time() * 1000
    assert before - 1 <= now <= after + 1


def test_seal_sets_expires_to_created_plus_ttl(alice: EnvelopeSigner, bob_address: str) -> None:
    default = _seal(alice, bob_address)
    assert default.expires == default.created + 30_000  # the default TTL
    assert abs(default.created - now_ms()) < 5_000  # created defaults to now
    given = _seal(alice, bob_address, ttl_ms=1_234, created=1_800_000_000_000)
    assert (given.created, given.expires) == (1_800_000_000_000, 1_800_000_001_234)


def test_frame_round_trip(alice: EnvelopeSigner, bob_address: str) -> None:
    envelope = _seal(alice, bob_address)
    frame = envelope.to_frame()
    assert frame[0] == FRAME_VERSION
    decoded = Envelope.from_frame(frame)
    assert decoded == envelope
    assert decoded.verify() == alice.address
    assert Ping.decode(decoded.payload) == Ping(text="hello", count=3)


def _fields(envelope: Envelope) -> list[object]:
    return msgpack.unpackb(envelope.to_frame()[1:])  # type: ignore[no-any-return]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda f: b"", "empty frame"),
        (lambda f: b"\x09" + f[1:], "unsupported frame version 9"),
        (lambda f: f[: len(f) // 2], "malformed frame"),
        (lambda f: f + b"\x00", "malformed frame"),
        (lambda f: b"\x01" + msgpack.packb({"a": 1}), "malformed frame"),
        (lambda f: b"\x01" + msgpack.packb([1, 2, 3]), "expected 13 fields"),
        (lambda f: b"x" * (2 << 20), "exceeds"),
    ],
)
def test_malformed_frames_are_protocol_errors(
    alice: EnvelopeSigner, bob_address: str, mutate: object, reason: str
) -> None:
    frame = _seal(alice, bob_address).to_frame()
    with pytest.raises(ProtocolError, match=reason):
        Envelope.from_frame(mutate(frame))  # type: ignore[operator]


@pytest.mark.parametrize(
    ("index", "value", "name"),
    [
        (0, b"short", "sender"),
        (1, "not-bytes", "recipient"),
        (2, b"x" * 15, "id"),
        (5, "", "protocol"),
        (6, "v" * 65, "protocolVersion"),
        (7, b"x" * 31, "schemaDigest"),
        (8, -1, "created"),
        (9, 1.5, "expires"),
        (10, True, "nonce"),
        (11, "text", "payload"),
        (12, b"x" * 64, "signature"),
    ],
)
def test_each_bad_field_is_named(
    alice: EnvelopeSigner, bob_address: str, index: int, value: object, name: str
) -> None:
    fields = _fields(_seal(alice, bob_address))
    fields[index] = value
    frame = bytes((FRAME_VERSION,)) + msgpack.packb(fields, use_bin_type=True)
    with pytest.raises(ProtocolError, match=f"bad {name}"):
        Envelope.from_frame(frame)


@pytest.mark.parametrize("field", ["created", "expires", "nonce"])
@pytest.mark.parametrize("value", [0, MAX_U64], ids=["zero", "max-u64"])
def test_uint64_fields_take_their_whole_range(
    alice: EnvelopeSigner, bob_address: str, field: str, value: int
) -> None:
    changes: dict[str, Any] = {field: value}
    unsigned = dataclasses.replace(_seal(alice, bob_address), **changes)
    envelope = unsigned.with_signature(alice.sign_digest(unsigned.digest()))
    decoded = Envelope.from_frame(envelope.to_frame())
    assert getattr(decoded, field) == value
    assert decoded.verify() == alice.address
    # msgpack has no integer above 2**64 - 1: a larger value cannot even be framed.
    beyond: dict[str, Any] = {field: MAX_U64 + 1, "raw": b""}
    with pytest.raises(OverflowError):
        dataclasses.replace(envelope, **beyond).to_frame()


@pytest.mark.parametrize("field", ["protocol", "protocol_version"])
def test_names_of_64_characters_are_the_longest_accepted(
    alice: EnvelopeSigner, bob_address: str, field: str
) -> None:
    longest = _seal(alice, bob_address, **{field: "p" * 64})
    decoded = Envelope.from_frame(longest.to_frame())
    assert decoded == longest
    assert decoded.verify() == alice.address
    too_long = _seal(alice, bob_address, **{field: "p" * 65})
    wire_name = {"protocol": "protocol", "protocol_version": "protocolVersion"}[field]
    with pytest.raises(ProtocolError, match=f"bad {wire_name}$"):
        Envelope.from_frame(too_long.to_frame())


def test_a_frame_of_exactly_max_size_is_parsed(alice: EnvelopeSigner, bob_address: str) -> None:
    envelope = _seal(alice, bob_address)
    frame = envelope.to_frame()
    assert Envelope.from_frame(frame, max_size=len(frame)) == envelope
    with pytest.raises(ProtocolError, match=f"{len(frame)} bytes exceeds the {len(frame) - 1}-"):
        Envelope.from_frame(frame, max_size=len(frame) - 1)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=400))
def test_random_bytes_never_crash_the_parser(data: bytes) -> None:
    with contextlib.suppress(ProtocolError, SignatureError):
        Envelope.from_frame(data).verify()


def test_schema_digest_is_stable_and_distinguishes_types() -> None:
    class Pong(Message):
        text: str
        count: int = 0

    assert Ping.schema_digest() == Ping.schema_digest()
    assert len(Ping.schema_digest()) == 32
    assert Ping.schema_digest() != Pong.schema_digest()


def test_message_forbids_unknown_fields_and_is_frozen() -> None:
    with pytest.raises(ValueError, match="extra"):
        Ping.decode(b'{"text": "x", "evil": 1}')
    with pytest.raises(ValueError):
        Ping(text="x").text = "y"  # type: ignore[misc]
