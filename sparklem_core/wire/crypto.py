"""The protocol's crypto, for both sides (docs/protocol.md, version 1).

The processor side parses and checks (``parse_envelope``, ``verify``, ``unwrap_key``,
``decrypt``, ``parse_plaintext``); the agent side builds (``SessionKey``, ``seal``).
Every check failure raises :class:`Rejected` with a reason code from the protocol.

Crypto libraries: the processor's per-message checks (``verify``, ``unwrap_key``,
``decrypt``) run on ``cryptography`` (OpenSSL), several times faster than pycryptodome
with the same parameters (``python3 -m benchmarks.crypto``). Keys stay pycryptodome
``RSA.RsaKey`` objects everywhere else (generation, PEM files, ``key_id``, the agent's
``seal``); each one is converted once, on first use, and the conversion is cached for as
long as that key object lives (see :func:`openssl_public_key`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
import weakref
from collections.abc import Callable
from typing import Any, TypeVar

from Crypto.Cipher import AES, PKCS1_OAEP
from Crypto.Hash import SHA256
from Crypto.PublicKey import RSA
from Crypto.Signature import pss
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sparklem_core.wire.envelope import IV_BYTES, Envelope, aad, key_id
from sparklem_core.wire.reasons import BAD_SIGNATURE, DECRYPT_FAILED, Rejected

AES_KEY_BYTES = 32
PSS_SALT_BYTES = 32

# --- processor side: cryptography (OpenSSL) ----------------------------------------------

# The protocol's exact parameters. PSS verification with salt_length=32 refuses any other
# salt length (OpenSSL compares it exactly), and a PKCS#1 v1.5 signature.
_SHA256 = hashes.SHA256()
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=PSS_SALT_BYTES)
_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)

AgentPublicKey = RSA.RsaKey | rsa.RSAPublicKey | rsa.RSAPrivateKey
ServerPrivateKey = RSA.RsaKey | rsa.RSAPrivateKey
SessionCipher = AESGCM  # what ``session_cipher`` makes from a session key, reusable

_T = TypeVar("_T")
# id(RsaKey) -> (weak reference to that RsaKey, its cryptography counterpart). An entry is
# only used when its weak reference still points at the very object asked about, and it
# is dropped when that object is collected, before its id can be given to another object.
_PUBLIC_CACHE: dict[int, tuple[weakref.ref[RSA.RsaKey], rsa.RSAPublicKey]] = {}
_PRIVATE_CACHE: dict[int, tuple[weakref.ref[RSA.RsaKey], rsa.RSAPrivateKey]] = {}


def _converted(
    cache: dict[int, tuple[weakref.ref[RSA.RsaKey], _T]],
    key: RSA.RsaKey,
    convert: Callable[[RSA.RsaKey], _T],
) -> _T:
    ident = id(key)
    entry = cache.get(ident)
    if entry is not None and entry[0]() is key:
        return entry[1]
    converted = convert(key)

    def forget(ref: weakref.ref[RSA.RsaKey]) -> None:
        current = cache.get(ident)
        if current is not None and current[0] is ref:
            del cache[ident]

    with contextlib.suppress(TypeError):  # not weak-referenceable: convert again next time
        cache[ident] = (weakref.ref(key, forget), converted)
    return converted


def _to_openssl_public(key: RSA.RsaKey) -> rsa.RSAPublicKey:
    public = serialization.load_der_public_key(key.public_key().export_key(format="DER"))
    if not isinstance(public, rsa.RSAPublicKey):  # pragma: no cover - DER of an RsaKey
        raise TypeError("not an RSA public key")
    return public


def _to_openssl_private(key: RSA.RsaKey) -> rsa.RSAPrivateKey:
    if not key.has_private():
        raise TypeError("This is not a private key")
    private = serialization.load_der_private_key(
        key.export_key(format="DER", pkcs=8), password=None
    )
    if not isinstance(private, rsa.RSAPrivateKey):  # pragma: no cover - DER of an RsaKey
        raise TypeError("not an RSA private key")
    return private


def openssl_public_key(key: AgentPublicKey) -> rsa.RSAPublicKey:
    """The ``cryptography`` public key for ``key`` (the public half of a private one).

    A pycryptodome key is converted through its DER encoding once; the result is cached
    for as long as that very key object lives, so a registry that keeps its keys pays
    the conversion once per key, not per message.
    """
    if isinstance(key, rsa.RSAPublicKey):
        return key
    if isinstance(key, rsa.RSAPrivateKey):
        return key.public_key()
    return _converted(_PUBLIC_CACHE, key, _to_openssl_public)


def openssl_private_key(key: ServerPrivateKey) -> rsa.RSAPrivateKey:
    """The ``cryptography`` private key for ``key``; converted and cached like
    :func:`openssl_public_key`. ``TypeError`` for a key without its private half."""
    if isinstance(key, rsa.RSAPrivateKey):
        return key
    return _converted(_PRIVATE_CACHE, key, _to_openssl_private)


def verify(envelope: Envelope, agent_key: AgentPublicKey) -> None:
    """RSA-PSS (SHA-256, MGF1-SHA-256, salt 32) over the signed bytes; ``bad_signature``."""
    entry = _PUBLIC_CACHE.get(id(agent_key))  # the common case: a registry's key, seen before
    if entry is not None and entry[0]() is agent_key:
        public = entry[1]
    else:
        public = openssl_public_key(agent_key)
    try:
        public.verify(envelope.sig_bytes, envelope.signed_bytes(), _PSS, _SHA256)
    except (InvalidSignature, ValueError, TypeError, Rejected):
        raise Rejected(BAD_SIGNATURE, "signature does not verify with the agent's key") from None


_DECRYPT_FAILED = Rejected(DECRYPT_FAILED, "message could not be decrypted")


def unwrap_key(ek: str, server_key: ServerPrivateKey) -> bytes:
    """RSA-OAEP (SHA-256, MGF1-SHA-256, empty label) unwrap of the 32-byte session key."""
    try:
        key = openssl_private_key(server_key).decrypt(base64.b64decode(ek), _OAEP)
    except (ValueError, TypeError):
        key = b""
    if len(key) != AES_KEY_BYTES:
        # One reason and one detail for every decryption failure: no oracle.
        raise Rejected(_DECRYPT_FAILED.reason, _DECRYPT_FAILED.detail)
    return key


def session_cipher(session_key: bytes) -> SessionCipher:
    """An AES-256-GCM object for a session key, to cache next to it and pass to ``decrypt``."""
    return AESGCM(session_key)


def decrypt(envelope: Envelope, session_key: bytes | SessionCipher) -> bytes:
    """AES-256-GCM with the protocol's AAD and a 16-byte tag; ``decrypt_failed`` on any failure.

    ``session_key`` is the unwrapped key or, cheaper per message, ``session_cipher(key)``.
    """
    cipher = (
        AESGCM(session_key)
        if isinstance(session_key, bytes | bytearray | memoryview)
        else session_key
    )
    try:
        # AESGCM takes ct + tag; the tag's length (16) was checked when it was decoded
        return cipher.decrypt(
            envelope.iv_bytes,
            envelope.ct_bytes + envelope.tag_bytes,
            aad(envelope.agent, envelope.plugin, envelope.kid),
        )
    except (InvalidTag, ValueError, OverflowError, Rejected):
        raise Rejected(_DECRYPT_FAILED.reason, _DECRYPT_FAILED.detail) from None


# --- agent side: pycryptodome --------------------------------------------------------


class SessionKey:
    """An AES key wrapped once for the server key, reused while the protocol allows."""

    MAX_MESSAGES = 2**24
    MAX_AGE_S = 24 * 3600

    def __init__(self, server_key: RSA.RsaKey, max_age_s: float = MAX_AGE_S) -> None:
        self.kid = key_id(server_key)
        self.key = os.urandom(AES_KEY_BYTES)
        self.ek = base64.b64encode(
            PKCS1_OAEP.new(server_key.public_key(), hashAlgo=SHA256).encrypt(self.key)
        ).decode("ascii")
        self.created = time.monotonic()
        self.max_age_s = max_age_s
        self.used = 0

    def expired(self) -> bool:
        return self.used >= self.MAX_MESSAGES or time.monotonic() - self.created > self.max_age_s


def seal(
    plaintext: dict[str, Any] | bytes,
    *,
    agent: str,
    plugin: str,
    session: SessionKey,
    agent_key: RSA.RsaKey,
) -> Envelope:
    """Encrypt under the session key, then sign with the agent's key."""
    raw = (
        plaintext
        if isinstance(plaintext, bytes)
        else json.dumps(plaintext, separators=(",", ":")).encode("utf-8")
    )
    iv = os.urandom(IV_BYTES)
    cipher = AES.new(session.key, AES.MODE_GCM, nonce=iv)
    cipher.update(aad(agent, plugin, session.kid))
    ct, tag = cipher.encrypt_and_digest(raw)
    session.used += 1
    b64 = lambda b: base64.b64encode(b).decode("ascii")  # noqa: E731
    unsigned = Envelope(agent, plugin, session.kid, session.ek, b64(iv), b64(ct), b64(tag), "")
    signature = pss.new(agent_key, salt_bytes=PSS_SALT_BYTES).sign(
        SHA256.new(unsigned.signed_bytes())
    )
    return Envelope(**{**unsigned.members(), "sig": b64(signature)})
