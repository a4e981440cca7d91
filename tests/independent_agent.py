"""The agent side of PROTOCOL.md v1, written from the spec alone.

A second implementation, independent of ``sparklem_core.wire``: it uses the
``cryptography`` package (OpenSSL) where the project uses pycryptodome, so a test that
passes messages between the two checks the wire contract, not one library against
itself. Nothing here imports ``sparklem_core``.

- :func:`key_id`: the ``kid`` of a server public key.
- :class:`Session`: one AES-256 key wrapped once (RSA-OAEP) for a server key, reusable
  for many messages, each with a fresh IV.
- :func:`seal`: plaintext dict -> envelope JSON bytes (encrypt, then sign).
- :func:`open_envelope`: the processor's checks, for the other direction of the tests.

Keys are ``cryptography`` key objects; PEM or DER bytes, and objects with an
``export_key()`` method (pycryptodome keys), are converted first.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
from typing import Any

from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

VERSION = 1
PREFIX = "sparklem/1"
AES_KEY_BYTES = 32
IV_BYTES = 12
TAG_BYTES = 16
PSS_SALT_BYTES = 32
MEMBERS = ("agent", "plugin", "kid", "ek", "iv", "ct", "tag", "sig")

OAEP = padding.OAEP(
    mgf=padding.MGF1(algorithm=hashes.SHA256()), algorithm=hashes.SHA256(), label=None
)
PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=PSS_SALT_BYTES)


class ProtocolError(ValueError):
    """A message the independent processor-side checks refuse; ``reason`` as in PROTOCOL.md."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


# --- keys ----------------------------------------------------------------------------


def generate_key(bits: int = 2048) -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def as_public(key: Any) -> rsa.RSAPublicKey:
    """A ``cryptography`` RSA public key from a key object, PEM/DER bytes or a pycryptodome key."""
    if isinstance(key, rsa.RSAPrivateKey):
        return key.public_key()
    if isinstance(key, rsa.RSAPublicKey):
        return key
    if hasattr(key, "export_key"):  # pycryptodome RsaKey: go through PEM, not its API
        key = key.public_key().export_key(format="PEM")
    if isinstance(key, str):
        key = key.encode("ascii")
    if isinstance(key, bytes):
        if key.lstrip().startswith(b"-----BEGIN"):
            if b"PRIVATE KEY" in key:
                return as_public(serialization.load_pem_private_key(key, password=None))
            return serialization.load_pem_public_key(key)  # type: ignore[return-value]
        return serialization.load_der_public_key(key)  # type: ignore[return-value]
    raise TypeError(f"not an RSA key: {type(key).__name__}")


def as_private(key: Any) -> rsa.RSAPrivateKey:
    """A ``cryptography`` RSA private key from a key object, PEM bytes or a pycryptodome key."""
    if isinstance(key, rsa.RSAPrivateKey):
        return key
    if hasattr(key, "export_key"):
        key = key.export_key(format="PEM", pkcs=8)
    if isinstance(key, str):
        key = key.encode("ascii")
    if isinstance(key, bytes):
        return serialization.load_pem_private_key(key, password=None)  # type: ignore[return-value]
    raise TypeError(f"not an RSA private key: {type(key).__name__}")


def public_pem(key: Any) -> bytes:
    """SubjectPublicKeyInfo PEM, as enrolled in ``certificates/agents/<id>.pem``."""
    return as_public(key).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def private_pem(key: Any) -> bytes:
    """PKCS#8 PEM, unencrypted, as ``certificates/server_private.pem`` holds it."""
    return as_private(key).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def key_id(pub: Any) -> str:
    """First 16 lowercase hex characters of SHA-256 over the DER SubjectPublicKeyInfo."""
    der = as_public(pub).public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(der).hexdigest()[:16]


# --- wire pieces -----------------------------------------------------------------------


def b64(data: bytes) -> str:
    """RFC 4648 standard alphabet, with padding."""
    return base64.b64encode(data).decode("ascii")


def unb64(text: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("malformed", "bad base64") from None


def aad(agent: str, plugin: str, kid: str) -> bytes:
    return f"{PREFIX}\n{agent}\n{plugin}\n{kid}".encode("ascii")


def signed_bytes(doc: dict[str, Any]) -> bytes:
    """What ``sig`` covers: the members exactly as they stand in the envelope."""
    parts = (PREFIX, *(doc[m] for m in ("agent", "plugin", "kid", "ek", "iv", "ct", "tag")))
    return "\n".join(parts).encode("utf-8")


def sign(doc: dict[str, Any], agent_private_key: Any) -> dict[str, Any]:
    """``doc`` with a fresh ``sig`` over its current members (for crafting test envelopes)."""
    signature = as_private(agent_private_key).sign(signed_bytes(doc), PSS, hashes.SHA256())
    return {**doc, "sig": b64(signature)}


def dumps(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":")).encode("utf-8")


# --- agent side ------------------------------------------------------------------------


class Session:
    """An AES-256 key wrapped once with RSA-OAEP for a server key; ``ek`` is reused.

    PROTOCOL.md allows at most 2^24 messages and 24 hours per session; ``used`` counts.
    """

    MAX_MESSAGES = 2**24

    def __init__(self, server_public_key: Any, key: bytes | None = None) -> None:
        self.server_public_key = as_public(server_public_key)
        self.kid = key_id(self.server_public_key)
        self.key = os.urandom(AES_KEY_BYTES) if key is None else key
        if len(self.key) != AES_KEY_BYTES:
            raise ValueError(f"an AES-256 key is {AES_KEY_BYTES} bytes")
        self.ek = b64(self.server_public_key.encrypt(self.key, OAEP))
        self.used = 0


def seal(
    plaintext_dict: dict[str, Any] | bytes,
    agent_id: str,
    plugin: str,
    server_public_key: Any,
    agent_private_key: Any,
    session: Session | None = None,
    *,
    iv: bytes | None = None,
) -> bytes:
    """Encrypt ``plaintext_dict`` (``{"seq", "ts", "data"}``, or raw bytes) and sign it.

    With ``session`` the session's AES key and ``ek`` are reused; it must belong to
    ``server_public_key``. Returns the envelope as UTF-8 JSON bytes (a Kafka value).
    """
    if session is None:
        session = Session(server_public_key)
    elif session.kid != key_id(server_public_key):
        raise ValueError("the session was made for another server key")
    if session.used >= Session.MAX_MESSAGES:
        raise ValueError("session exhausted: start a new one")
    raw = (
        plaintext_dict
        if isinstance(plaintext_dict, bytes)
        else json.dumps(plaintext_dict, separators=(",", ":")).encode("utf-8")
    )
    iv = os.urandom(IV_BYTES) if iv is None else iv
    sealed = AESGCM(session.key).encrypt(iv, raw, aad(agent_id, plugin, session.kid))
    ct, tag = sealed[:-TAG_BYTES], sealed[-TAG_BYTES:]  # cryptography appends the tag
    session.used += 1
    doc = {
        "v": VERSION,
        "agent": agent_id,
        "plugin": plugin,
        "kid": session.kid,
        "ek": session.ek,
        "iv": b64(iv),
        "ct": b64(ct),
        "tag": b64(tag),
    }
    return dumps(sign(doc, agent_private_key))


# --- processor side (the checks, for messages sealed by the other implementation) -------


def open_envelope(
    value: bytes, agent_public_key: Any, server_private_key: Any
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Verify, unwrap and decrypt; returns (envelope members, plaintext object).

    Raises :class:`ProtocolError` with ``malformed``, ``unknown_key``, ``bad_signature``
    or ``decrypt_failed``.
    """
    try:
        doc = json.loads(value.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ProtocolError("malformed", "not UTF-8 JSON") from None
    if not isinstance(doc, dict) or type(doc.get("v")) is not int or doc["v"] != VERSION:
        raise ProtocolError("malformed", "not a version 1 envelope")
    if not all(isinstance(doc.get(m), str) for m in MEMBERS):
        raise ProtocolError("malformed", "a member is missing or not a string")
    iv, ct, tag, ek, sig = (unb64(doc[m]) for m in ("iv", "ct", "tag", "ek", "sig"))
    if len(iv) != IV_BYTES or len(tag) != TAG_BYTES:
        raise ProtocolError("malformed", "iv or tag has the wrong length")
    try:
        as_public(agent_public_key).verify(sig, signed_bytes(doc), PSS, hashes.SHA256())
    except InvalidSignature:
        raise ProtocolError("bad_signature") from None
    server = as_private(server_private_key)
    if doc["kid"] != key_id(server):
        raise ProtocolError("unknown_key", doc["kid"])
    try:
        key = server.decrypt(ek, OAEP)
        if len(key) != AES_KEY_BYTES:
            raise ValueError("session key length")
        raw = AESGCM(key).decrypt(iv, ct + tag, aad(doc["agent"], doc["plugin"], doc["kid"]))
    except (ValueError, InvalidTag):
        raise ProtocolError("decrypt_failed") from None
    plaintext = json.loads(raw.decode("utf-8"))
    if not isinstance(plaintext, dict):
        raise ProtocolError("malformed", "plaintext is not an object")
    return doc, plaintext
