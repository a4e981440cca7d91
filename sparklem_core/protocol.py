"""PROTOCOL.md version 1: envelope, crypto and plaintext, for both sides.

The processor side parses and checks (``parse_envelope``, ``verify``, ``unwrap_key``,
``decrypt``, ``parse_plaintext``); the agent side builds (``SessionKey``, ``seal``).
Every check failure raises :class:`Rejected` with a reason code from PROTOCOL.md.

Crypto libraries: the processor's per-message checks (``verify``, ``unwrap_key``,
``decrypt``) run on ``cryptography`` (OpenSSL), several times faster than pycryptodome
with the same parameters (``python3 -m benchmarks.crypto``). Keys stay pycryptodome
``RSA.RsaKey`` objects everywhere else (generation, PEM files, ``key_id``, the agent's
``seal``); each one is converted once, on first use, and the conversion is cached for as
long as that key object lives (see :func:`openssl_public_key`).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import re
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import cached_property
from typing import Any, TypeVar

from Crypto.Cipher import AES, PKCS1_OAEP
from Crypto.Hash import SHA256
from Crypto.PublicKey import RSA
from Crypto.Signature import pss
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from sparklem_core.plugin_api import MAX_TS_MS

VERSION = 1
MIN_RSA_BITS = 2048
AES_KEY_BYTES = 32
IV_BYTES = 12
TAG_BYTES = 16
PSS_SALT_BYTES = 32
MAX_SEQ = 2**63
MAX_JSON_DEPTH = 32
# What one JSON document (envelope or plaintext) may hold, counted on its text before
# parsing, strings included: each bounds the objects a parse makes, and so its time.
MAX_JSON_CONTAINERS = 10_000  # "[" and "{" characters: arrays and objects
MAX_JSON_COMMAS = 20_000  # "," characters: array items and object members
MAX_INT_DIGITS = 20  # any 64-bit integer; a longer one costs quadratic time to convert

AGENT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
PLUGIN_NAME_RE = re.compile(r"[a-z][a-z0-9_]{0,63}")
KID_RE = re.compile(r"[0-9a-f]{16}")

# Reason codes, exactly as PROTOCOL.md spells them.
MALFORMED = "malformed"
TOO_LARGE = "too_large"
UNKNOWN_AGENT = "unknown_agent"
REVOKED_AGENT = "revoked_agent"
UNKNOWN_KEY = "unknown_key"
BAD_SIGNATURE = "bad_signature"
DECRYPT_FAILED = "decrypt_failed"
UNKNOWN_PLUGIN = "unknown_plugin"
CLOCK_SKEW = "clock_skew"
INVALID_PAYLOAD = "invalid_payload"
INVALID_READING = "invalid_reading"
PROCESSING_ERROR = "processing_error"  # ours, not the agent's: a bug met while handling it
REASONS = (
    MALFORMED,
    TOO_LARGE,
    UNKNOWN_AGENT,
    REVOKED_AGENT,
    UNKNOWN_KEY,
    BAD_SIGNATURE,
    DECRYPT_FAILED,
    UNKNOWN_PLUGIN,
    CLOCK_SKEW,
    INVALID_PAYLOAD,
    INVALID_READING,
    PROCESSING_ERROR,
)


class Rejected(Exception):
    """A message fails the protocol: ``reason`` is a PROTOCOL.md code, ``detail`` for humans."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def key_id(public_key: RSA.RsaKey) -> str:
    """The ``kid`` of a server key: 16 hex chars of SHA-256 over its DER SubjectPublicKeyInfo."""
    der = public_key.public_key().export_key(format="DER")
    return hashlib.sha256(der).hexdigest()[:16]


def aad(agent: str, plugin: str, kid: str) -> bytes:
    """GCM additional authenticated data."""
    return f"sparklem/1\n{agent}\n{plugin}\n{kid}".encode("ascii")


@dataclass(frozen=True)
class Envelope:
    agent: str
    plugin: str
    kid: str
    ek: str  # base64 members stay as sent: the signature covers these exact strings
    iv: str
    ct: str
    tag: str
    sig: str

    # Each base64 member decoded once (``malformed`` if it is not strict base64): parsing
    # checks them, verify and decrypt reuse them. A copy made with dataclasses.replace
    # starts without them, so a changed member is never paired with old bytes.
    @cached_property
    def iv_bytes(self) -> bytes:
        return b64decode(self.iv, "iv", IV_BYTES)

    @cached_property
    def ct_bytes(self) -> bytes:
        return b64decode(self.ct, "ct")

    @cached_property
    def tag_bytes(self) -> bytes:
        return b64decode(self.tag, "tag", TAG_BYTES)

    @cached_property
    def sig_bytes(self) -> bytes:
        return b64decode(self.sig, "sig")

    def signed_bytes(self) -> bytes:
        return "\n".join(
            ("sparklem/1", self.agent, self.plugin, self.kid, self.ek, self.iv, self.ct, self.tag)
        ).encode("utf-8")

    def members(self) -> dict[str, str]:
        """The envelope's JSON members, ``v`` apart."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def to_json(self) -> bytes:
        return json.dumps(
            {"v": VERSION, **self.members()}, separators=(",", ":"), ensure_ascii=False
        ).encode("utf-8")


def b64decode(value: str, member: str, length: int | None = None) -> bytes:
    """Strict RFC 4648 base64 (standard alphabet, padding); ``malformed`` otherwise."""
    try:
        raw = binascii.a2b_base64(value, strict_mode=True)
    except (binascii.Error, ValueError):
        raise Rejected(MALFORMED, f"'{member}' is not valid base64") from None
    # strict_mode still accepts nonzero bits in the last character ("YWI=" vs "YWJ="), and
    # the same bytes must have one spelling: the signature covers the text.
    if binascii.b2a_base64(raw, newline=False) != value.encode("ascii"):
        raise Rejected(MALFORMED, f"'{member}' is not canonical base64")
    if length is not None and len(raw) != length:
        raise Rejected(MALFORMED, f"'{member}' must be {length} bytes, got {len(raw)}")
    return raw


def loads_json(raw: bytes, what: str) -> Any:
    """Strict JSON (RFC 8259) in time linear in its size, ``malformed`` otherwise.

    Refuses invalid UTF-8, ``NaN``/``Infinity`` (not JSON), integers of more than
    MAX_INT_DIGITS digits, more than MAX_JSON_CONTAINERS ``[``/``{`` or MAX_JSON_COMMAS
    ``,`` characters (counted before parsing: the objects a parse makes are bounded), and
    nesting deeper than MAX_JSON_DEPTH. The C parser itself stops at Python's recursion
    limit; the depth is then measured on the parsed value, iteratively, only when the
    text holds enough brackets to exceed it.
    """
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise Rejected(MALFORMED, f"{what} is not UTF-8") from None
    containers = text.count("[") + text.count("{")
    if containers > MAX_JSON_CONTAINERS:
        raise Rejected(
            MALFORMED, f"{what} holds more than {MAX_JSON_CONTAINERS} '[' and '{{' characters"
        )
    if text.count(",") > MAX_JSON_COMMAS:
        raise Rejected(MALFORMED, f"{what} holds more than {MAX_JSON_COMMAS} ',' characters")
    try:
        doc = json.loads(text, parse_constant=_refuse_constant, parse_int=_bounded_int)
    except RecursionError:
        raise Rejected(MALFORMED, f"{what} nests deeper than {MAX_JSON_DEPTH} levels") from None
    except ValueError as exc:
        raise Rejected(MALFORMED, f"{what} is not JSON ({str(exc)[:80]})") from None
    if containers > MAX_JSON_DEPTH and _too_deep(doc):
        raise Rejected(MALFORMED, f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    return doc


def _bounded_int(digits: str) -> int:
    if len(digits.lstrip("-")) > MAX_INT_DIGITS:
        raise ValueError(f"an integer of more than {MAX_INT_DIGITS} digits")
    return int(digits)


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


_CONTAINERS = (dict, list)  # json.loads makes exactly these, never subclasses


def _too_deep(doc: Any) -> bool:
    """Whether a parsed JSON value nests deeper than MAX_JSON_DEPTH (one pass, no recursion).

    A plain loop over each container's values: no generator per container, which cost
    several times json.loads itself on a megabyte of small lists (benchmarks.parse).
    """
    level: list[Any] = [doc] if type(doc) in _CONTAINERS else []
    for _ in range(MAX_JSON_DEPTH):
        below: list[Any] = []
        keep = below.append
        for item in level:
            for value in item.values() if type(item) is dict else item:
                if type(value) in _CONTAINERS:
                    keep(value)
        if not below:
            return False
        level = below
    return True


def parse_envelope(value: bytes) -> Envelope:
    """Check the envelope's shape: members, types, patterns, base64."""
    doc = loads_json(value, "envelope")
    if not isinstance(doc, dict):
        raise Rejected(MALFORMED, "envelope is not a JSON object")
    version = doc.get("v")
    if type(version) is not int or version != VERSION:
        raise Rejected(MALFORMED, f"'v' must be {VERSION}")
    fields = {}
    for member in ("agent", "plugin", "kid", "ek", "iv", "ct", "tag", "sig"):
        item = doc.get(member)
        if not isinstance(item, str):
            raise Rejected(MALFORMED, f"'{member}' is missing or not a string")
        fields[member] = item
    if not AGENT_ID_RE.fullmatch(fields["agent"]):
        raise Rejected(MALFORMED, "'agent' is not a valid agent id")
    if not PLUGIN_NAME_RE.fullmatch(fields["plugin"]):
        raise Rejected(MALFORMED, "'plugin' is not a valid plugin name")
    if not KID_RE.fullmatch(fields["kid"]):
        raise Rejected(MALFORMED, "'kid' must be 16 lowercase hex characters")
    b64decode(fields["ek"], "ek")
    envelope = Envelope(**fields)
    # Fill the cached properties with the bytes just checked (cheaper than their getters).
    vars(envelope).update(
        iv_bytes=b64decode(fields["iv"], "iv", IV_BYTES),
        ct_bytes=b64decode(fields["ct"], "ct"),
        tag_bytes=b64decode(fields["tag"], "tag", TAG_BYTES),
        sig_bytes=b64decode(fields["sig"], "sig"),
    )
    return envelope


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


@dataclass(frozen=True)
class Plaintext:
    seq: int
    ts: int  # milliseconds since the epoch
    data: dict[str, Any]


def parse_plaintext(raw: bytes) -> Plaintext:
    doc = loads_json(raw, "plaintext")
    if not isinstance(doc, dict):
        raise Rejected(MALFORMED, "plaintext is not a JSON object")
    seq, ts, data = doc.get("seq"), doc.get("ts"), doc.get("data")
    if type(seq) is not int or not 0 <= seq < MAX_SEQ:
        raise Rejected(MALFORMED, "plaintext 'seq' must be an integer in [0, 2^63)")
    if type(ts) is not int or not 0 <= ts <= MAX_TS_MS:
        raise Rejected(
            MALFORMED, f"plaintext 'ts' must be an integer count of ms in [0, {MAX_TS_MS}]"
        )
    if not isinstance(data, dict):
        raise Rejected(MALFORMED, "plaintext 'data' must be an object")
    return Plaintext(seq, ts, data)


# --- agent side ---------------------------------------------------------------


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
