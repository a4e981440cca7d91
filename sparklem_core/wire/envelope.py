"""The envelope: what travels in a Kafka record's value, its members and their checks."""

from __future__ import annotations

import binascii
import hashlib
import json
import re
from dataclasses import dataclass, fields
from functools import cached_property

from Crypto.PublicKey import RSA

from sparklem_core.plugin_api import NAME_RE
from sparklem_core.wire.jsonlimits import loads_json
from sparklem_core.wire.reasons import MALFORMED, Rejected

VERSION = 1
MIN_RSA_BITS = 2048
IV_BYTES = 12
TAG_BYTES = 16
AGENT_ID_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
PLUGIN_NAME_RE = NAME_RE  # the plugin API's name rule: the topic suffix and envelope field
KID_RE = re.compile(r"[0-9a-f]{16}")


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
