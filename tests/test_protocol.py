"""sparklem_core.wire against PROTOCOL.md: every check and its reason code."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import pytest
from Crypto.Cipher import AES, PKCS1_OAEP
from Crypto.Hash import SHA256
from Crypto.PublicKey import RSA
from Crypto.Signature import pkcs1_15, pss

from sparklem_core import wire
from sparklem_core.wire import Envelope, Rejected, SessionKey

AGENT = "edge-01"
PLUGIN = "temperature"
PLAINTEXT = {"seq": 7, "ts": 1_795_349_829_873, "data": {"readings": [{"sensor": "a", "value": 1}]}}


@pytest.fixture(scope="module")
def server_key() -> RSA.RsaKey:
    return RSA.generate(2048)


@pytest.fixture(scope="module")
def agent_key() -> RSA.RsaKey:
    return RSA.generate(2048)


@pytest.fixture(scope="module")
def other_key() -> RSA.RsaKey:
    return RSA.generate(2048)


@pytest.fixture(scope="module")
def session(server_key: RSA.RsaKey) -> SessionKey:
    return SessionKey(server_key)


@pytest.fixture
def envelope(session: SessionKey, agent_key: RSA.RsaKey) -> Envelope:
    return wire.seal(PLAINTEXT, agent=AGENT, plugin=PLUGIN, session=session, agent_key=agent_key)


@pytest.fixture
def doc(envelope: Envelope) -> dict[str, Any]:
    """The envelope as the JSON object on the wire."""
    return json.loads(envelope.to_json())


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def reason(action: Callable[[], Any]) -> Rejected:
    with pytest.raises(Rejected) as caught:
        action()
    assert caught.value.reason in wire.REASONS
    return caught.value


def parse(doc: Any) -> Envelope:
    return wire.parse_envelope(json.dumps(doc).encode("utf-8"))


def resign(env: Envelope, key: RSA.RsaKey) -> Envelope:
    signature = pss.new(key, salt_bytes=32).sign(SHA256.new(env.signed_bytes()))
    return replace(env, sig=b64(signature))


def open_message(env: Envelope, agent_key: RSA.RsaKey, server_key: RSA.RsaKey) -> wire.Plaintext:
    """The processor's order: parse, verify, unwrap, decrypt, parse the plaintext."""
    parsed = wire.parse_envelope(env.to_json())
    wire.verify(parsed, agent_key.public_key())
    session_key = wire.unwrap_key(parsed.ek, server_key)
    return wire.parse_plaintext(wire.decrypt(parsed, session_key))


# --- round trip and key id ----------------------------------------------------------------


def test_round_trip(envelope: Envelope, agent_key: RSA.RsaKey, server_key: RSA.RsaKey) -> None:
    plain = open_message(envelope, agent_key, server_key)
    assert plain == wire.Plaintext(PLAINTEXT["seq"], PLAINTEXT["ts"], PLAINTEXT["data"])


def test_envelope_members_on_the_wire(doc: dict[str, Any], server_key: RSA.RsaKey) -> None:
    assert doc["v"] == 1 and type(doc["v"]) is int
    assert (doc["agent"], doc["plugin"]) == (AGENT, PLUGIN)
    assert doc["kid"] == wire.key_id(server_key)
    assert len(base64.b64decode(doc["iv"], validate=True)) == 12
    assert len(base64.b64decode(doc["tag"], validate=True)) == 16
    assert len(base64.b64decode(doc["ek"], validate=True)) == 256  # 2048-bit modulus


def test_signed_bytes_layout(envelope: Envelope) -> None:
    e = envelope
    expected = f"sparklem/1\n{e.agent}\n{e.plugin}\n{e.kid}\n{e.ek}\n{e.iv}\n{e.ct}\n{e.tag}"
    assert e.signed_bytes() == expected.encode("utf-8")
    assert wire.aad(e.agent, e.plugin, e.kid) == f"sparklem/1\n{AGENT}\n{PLUGIN}\n{e.kid}".encode()


def test_session_key_reuse_keeps_ek_and_changes_iv(
    session: SessionKey, agent_key: RSA.RsaKey, server_key: RSA.RsaKey
) -> None:
    used = session.used
    first = wire.seal(PLAINTEXT, agent=AGENT, plugin=PLUGIN, session=session, agent_key=agent_key)
    second = wire.seal(
        {**PLAINTEXT, "seq": 8}, agent=AGENT, plugin=PLUGIN, session=session, agent_key=agent_key
    )
    assert first.ek == second.ek and first.iv != second.iv
    assert session.used == used + 2 and not session.expired()
    assert open_message(second, agent_key, server_key).seq == 8


def test_key_id_is_sha256_of_der_spki(server_key: RSA.RsaKey) -> None:
    der = server_key.public_key().export_key(format="DER")
    assert der[:2] == b"\x30\x82"  # SEQUENCE: SubjectPublicKeyInfo, not PKCS#1 RSAPublicKey
    assert b"\x2a\x86\x48\x86\xf7\x0d\x01\x01\x01" in der[:32]  # rsaEncryption OID
    kid = wire.key_id(server_key)
    assert kid == hashlib.sha256(der).hexdigest()[:16]
    assert wire.KID_RE.fullmatch(kid)
    assert wire.key_id(server_key.public_key()) == kid  # private or public: same kid


# --- malformed envelopes -------------------------------------------------------------------


def assert_malformed(value: bytes) -> Rejected:
    rejected = reason(lambda: wire.parse_envelope(value))
    assert rejected.reason == wire.MALFORMED, rejected
    return rejected


@pytest.mark.parametrize(
    "value",
    [
        b"",
        b"not json",
        b"{",
        b'{"v": 1,}',
        b"\xff\xfe{}",
        '{"v": 1, "agent": "caf\u00e9"}'.encode("latin-1"),
        b"[]",
        b'[{"v": 1}]',
        b"null",
        b"1",
        b'"v"',
    ],
    ids=[
        "empty",
        "text",
        "truncated",
        "trailing-comma",
        "not-utf8",
        "latin1",
        "array",
        "array-of-object",
        "null",
        "number",
        "string",
    ],
)
def test_not_a_json_object(value: bytes) -> None:
    assert_malformed(value)


@pytest.mark.parametrize("version", ["missing", 2, 0, "1", True, 1.0, None, [1]])
def test_bad_version(doc: dict[str, Any], version: Any) -> None:
    if version == "missing":
        del doc["v"]
    else:
        doc["v"] = version
    assert "'v'" in reason(lambda: parse(doc)).detail


@pytest.mark.parametrize("member", ["agent", "plugin", "kid", "ek", "iv", "ct", "tag", "sig"])
@pytest.mark.parametrize("value", ["missing", None, 1, 1.5, True, [], {}])
def test_member_missing_or_not_a_string(doc: dict[str, Any], member: str, value: Any) -> None:
    if value == "missing":
        del doc[member]
    else:
        doc[member] = value
    rejected = assert_malformed(json.dumps(doc).encode())
    assert f"'{member}'" in rejected.detail


def test_unknown_members_are_ignored(doc: dict[str, Any]) -> None:
    doc["extra"] = {"anything": [1, 2, 3]}
    assert parse(doc).agent == AGENT


@pytest.mark.parametrize(
    ("member", "value"),
    [
        ("agent", ""),
        ("agent", "-edge"),
        ("agent", ".edge"),
        ("agent", "edge 1"),
        ("agent", "edge/1"),
        ("agent", "edge\n1"),
        ("agent", "edge-1\n"),
        ("agent", "a" * 65),
        ("agent", "\u00e9dge"),
        ("agent", "edge\u0661"),  # Arabic-Indic digit one: not ASCII
        ("plugin", ""),
        ("plugin", "Temperature"),
        ("plugin", "1temp"),
        ("plugin", "_temp"),
        ("plugin", "temp-1"),
        ("plugin", "temp.x"),
        ("plugin", "t" * 65),
        ("plugin", "temperature\n"),
        ("kid", ""),
        ("kid", "0123456789abcde"),
        ("kid", "0123456789abcdef0"),
        ("kid", "0123456789ABCDEF"),
        ("kid", "0123456789abcdeg"),
        ("kid", "0123456789abcde\n"),
    ],
)
def test_pattern_violations(doc: dict[str, Any], member: str, value: str) -> None:
    doc[member] = value
    assert f"'{member}'" in assert_malformed(json.dumps(doc).encode()).detail


@pytest.mark.parametrize(
    ("member", "value"), [("agent", "a" * 64), ("agent", "A.b_c-9"), ("plugin", "p" * 64)]
)
def test_pattern_limits_accepted(doc: dict[str, Any], member: str, value: str) -> None:
    doc[member] = value
    assert getattr(parse(doc), member) == value


def _unpadded(text: str) -> str:
    return text.rstrip("=")


def _urlsafe(text: str) -> str:
    return text.replace("+", "-").replace("/", "_")


@pytest.mark.parametrize("member", ["ek", "iv", "ct", "tag", "sig"])
@pytest.mark.parametrize(
    "damage",
    [
        lambda s: s + "!",
        lambda s: "*" + s[1:],
        lambda s: s[:4] + " " + s[4:],
        lambda s: s[:4] + "\n" + s[4:],
        lambda s: s + "=",
        lambda s: s + "A",
        lambda s: "=" + s,
        lambda s: s[:4] + "\u00e9" + s[4:],
    ],
    ids=["bang", "star", "space", "newline", "extra-pad", "extra-char", "leading-pad", "non-ascii"],
)
def test_bad_base64(doc: dict[str, Any], member: str, damage: Callable[[str], str]) -> None:
    doc[member] = damage(doc[member])
    assert f"'{member}'" in assert_malformed(json.dumps(doc).encode()).detail


@pytest.mark.parametrize("member", ["ek", "ct", "sig"])
def test_base64_without_padding_is_malformed(doc: dict[str, Any], member: str) -> None:
    # Pick data whose encoding needs padding, so stripping it changes the string.
    raw = b"\x00" * (len(base64.b64decode(doc[member])) // 3 * 3 + 1)
    doc[member] = _unpadded(b64(raw))
    assert len(doc[member]) % 4 != 0
    assert f"'{member}'" in assert_malformed(json.dumps(doc).encode()).detail


def test_tag_and_iv_without_padding_are_malformed(doc: dict[str, Any]) -> None:
    for member in ("iv", "tag"):
        damaged = dict(doc)
        damaged[member] = b64(b"\x00" * 16)[:-2]  # 16 bytes need "=="; 12 bytes never pad
        assert_malformed(json.dumps(damaged).encode())


@pytest.mark.parametrize("member", ["ek", "iv", "ct", "tag", "sig"])
def test_urlsafe_alphabet_is_malformed(doc: dict[str, Any], member: str) -> None:
    raw = (b"\xfb\xff\xbf" * 6)[: 12 if member == "iv" else 16]  # encodes to "+/+/..."
    doc[member] = _urlsafe(b64(raw))
    assert "-" in doc[member] and "_" in doc[member]
    assert f"'{member}'" in assert_malformed(json.dumps(doc).encode()).detail


@pytest.mark.parametrize("size", [0, 11, 13, 16, 24])
def test_iv_must_be_12_bytes(doc: dict[str, Any], size: int) -> None:
    doc["iv"] = b64(b"\x01" * size)
    assert "'iv' must be 12 bytes" in assert_malformed(json.dumps(doc).encode()).detail


@pytest.mark.parametrize("size", [0, 12, 15, 17, 32])
def test_tag_must_be_16_bytes(doc: dict[str, Any], size: int) -> None:
    doc["tag"] = b64(b"\x01" * size)
    assert "'tag' must be 16 bytes" in assert_malformed(json.dumps(doc).encode()).detail


@pytest.mark.parametrize("opener", ["[", '{"a":'])
def test_deep_nesting_is_malformed_without_recursion_error(opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    value = (opener * 5_000 + "1" + closer * 5_000).encode()  # past Python's recursion limit
    started = time.monotonic()
    assert "nests deeper" in assert_malformed(value).detail
    assert time.monotonic() - started < 5


@pytest.mark.parametrize(
    ("text", "detail"),
    [
        ("[" + "[]," * 9_999 + "[]]", "more than 10000 '[' and '{' characters"),
        ('{"a":"' + "{" * 10_001 + '"}', "more than 10000 '[' and '{' characters"),  # in text
        ("[" + "1," * 20_001 + "1]", "more than 20000 ',' characters"),
        ('{"n":' + "9" * 21 + "}", "more than 20 digits"),
        ('{"n":-' + "9" * 21 + "}", "more than 20 digits"),
        ('{"n":NaN}', "NaN is not a JSON value"),
        ('{"n":-Infinity}', "-Infinity is not a JSON value"),
    ],
)
def test_json_limits_bound_what_a_parse_makes(text: str, detail: str) -> None:
    with pytest.raises(wire.Rejected) as info:
        wire.loads_json(text.encode(), "plaintext")
    assert info.value.reason == "malformed" and detail in info.value.detail


def test_json_at_the_limits_is_accepted() -> None:
    assert len(wire.loads_json(("[" + "[]," * 9_998 + "[]]").encode(), "x")) == 9_999
    assert len(wire.loads_json(("[" + "1," * 20_000 + "1]").encode(), "x")) == 20_001
    assert wire.loads_json(b'{"n":-18446744073709551615}', "x")["n"] == -(2**64 - 1)
    assert wire.loads_json(b'{"n":1e400}', "x")["n"] == float("inf")  # a float, not NaN


def test_deep_nesting_inside_an_ignored_member_is_malformed(doc: dict[str, Any]) -> None:
    value = json.dumps(doc)[:-1] + ', "x": ' + "[" * 100_000 + "]" * 100_000 + "}"
    assert_malformed(value.encode())


def test_deep_nesting_is_not_hidden_by_brackets_in_strings(doc: dict[str, Any]) -> None:
    # Closing brackets inside a string must not offset real nesting (a bound that
    # counted them would let ~1000 levels through, and crash json.dumps later).
    pad = "]" * 5000
    value = json.dumps({**doc, "pad": pad})[:-1] + ', "x": ' + "[" * 900 + "]" * 900 + "}"
    assert "nests deeper" in assert_malformed(value.encode()).detail


def test_brackets_inside_strings_do_not_count_as_nesting(doc: dict[str, Any]) -> None:
    doc["note"] = "[{" * 1000 + '\\"' + "[" * 50
    assert parse(doc).agent == AGENT


def test_moderate_nesting_is_accepted(doc: dict[str, Any]) -> None:
    nested: Any = 1
    for _ in range(wire.MAX_JSON_DEPTH - 1):
        nested = [nested]
    doc["x"] = nested
    assert parse(doc).agent == AGENT


# --- signatures ---------------------------------------------------------------------------


def assert_bad_signature(env: Envelope, key: RSA.RsaKey) -> None:
    parsed = wire.parse_envelope(env.to_json())
    rejected = reason(lambda: wire.verify(parsed, key.public_key()))
    assert rejected.reason == wire.BAD_SIGNATURE


def test_good_signature_verifies(envelope: Envelope, agent_key: RSA.RsaKey) -> None:
    wire.verify(wire.parse_envelope(envelope.to_json()), agent_key.public_key())


def _flip_b64(text: str) -> str:
    raw = bytearray(base64.b64decode(text))
    raw[len(raw) // 2] ^= 0x01
    return b64(bytes(raw))


@pytest.mark.parametrize("member", ["ek", "iv", "ct", "tag"])
def test_tampered_ciphertext_members(
    envelope: Envelope, agent_key: RSA.RsaKey, member: str
) -> None:
    assert_bad_signature(
        replace(envelope, **{member: _flip_b64(getattr(envelope, member))}), agent_key
    )


@pytest.mark.parametrize("member", ["iv", "ct", "tag", "sig"])
def test_copy_of_a_parsed_envelope_uses_its_own_members(
    envelope: Envelope, agent_key: RSA.RsaKey, server_key: RSA.RsaKey, member: str
) -> None:
    """Parsing keeps each member's decoded bytes; a changed copy must not reuse them."""
    parsed = wire.parse_envelope(envelope.to_json())
    changed = replace(parsed, **{member: _flip_b64(getattr(parsed, member))})
    assert_bad_signature(changed, agent_key)
    if member != "sig":
        session_key = wire.unwrap_key(parsed.ek, server_key)
        assert reason(lambda: wire.decrypt(changed, session_key)).reason == "decrypt_failed"
    assert wire.decrypt(parsed, wire.unwrap_key(parsed.ek, server_key))  # unharmed


def test_ct_with_appended_byte(envelope: Envelope, agent_key: RSA.RsaKey) -> None:
    ct = b64(base64.b64decode(envelope.ct) + b"\x00")
    assert_bad_signature(replace(envelope, ct=ct), agent_key)


@pytest.mark.parametrize(
    ("member", "value"),
    [("kid", "0" * 16), ("agent", "edge-02"), ("plugin", "pu_workload")],
)
def test_tampered_header_with_original_signature(
    envelope: Envelope, agent_key: RSA.RsaKey, member: str, value: str
) -> None:
    assert_bad_signature(replace(envelope, **{member: value}), agent_key)


def test_pkcs1_v15_signature_is_refused(envelope: Envelope, agent_key: RSA.RsaKey) -> None:
    signature = pkcs1_15.new(agent_key).sign(SHA256.new(envelope.signed_bytes()))
    assert_bad_signature(replace(envelope, sig=b64(signature)), agent_key)


@pytest.mark.parametrize("salt", [0, 20, 31, 33, 64])
def test_pss_with_another_salt_length_is_refused(
    envelope: Envelope, agent_key: RSA.RsaKey, salt: int
) -> None:
    signature = pss.new(agent_key, salt_bytes=salt).sign(SHA256.new(envelope.signed_bytes()))
    assert_bad_signature(replace(envelope, sig=b64(signature)), agent_key)


def test_pss_with_sha1_is_refused(envelope: Envelope, agent_key: RSA.RsaKey) -> None:
    from Crypto.Hash import SHA1

    signature = pss.new(agent_key, salt_bytes=32).sign(SHA1.new(envelope.signed_bytes()))
    assert_bad_signature(replace(envelope, sig=b64(signature)), agent_key)


def test_signature_by_another_key(
    envelope: Envelope, agent_key: RSA.RsaKey, other_key: RSA.RsaKey
) -> None:
    assert_bad_signature(resign(envelope, other_key), agent_key)


@pytest.mark.parametrize("sig", [b"", b"\x00", b"\x00" * 256, b"\xff" * 256, b"\x01" * 512])
def test_garbage_signatures(envelope: Envelope, agent_key: RSA.RsaKey, sig: bytes) -> None:
    assert_bad_signature(replace(envelope, sig=b64(sig)), agent_key)


def test_signature_over_other_message(
    session: SessionKey, envelope: Envelope, agent_key: RSA.RsaKey
) -> None:
    other = wire.seal(PLAINTEXT, agent=AGENT, plugin=PLUGIN, session=session, agent_key=agent_key)
    assert_bad_signature(replace(envelope, sig=other.sig), agent_key)


# --- decryption failures: one reason, one detail ---------------------------------------------


def decrypt_failure(env: Envelope, server_key: RSA.RsaKey) -> Rejected:
    def attempt() -> None:
        parsed = wire.parse_envelope(env.to_json())
        wire.decrypt(parsed, wire.unwrap_key(parsed.ek, server_key))

    rejected = reason(attempt)
    assert rejected.reason == wire.DECRYPT_FAILED
    return rejected


def _gcm(key: bytes, iv: bytes, aad: bytes, plaintext: bytes) -> tuple[str, str]:
    cipher = AES.new(key, AES.MODE_GCM, nonce=iv)
    cipher.update(aad)
    ct, tag = cipher.encrypt_and_digest(plaintext)
    return b64(ct), b64(tag)


def test_decrypt_failures_are_indistinguishable(
    envelope: Envelope,
    session: SessionKey,
    server_key: RSA.RsaKey,
    other_key: RSA.RsaKey,
) -> None:
    iv = base64.b64decode(envelope.iv)
    plaintext = json.dumps(PLAINTEXT).encode()
    wrong_aad_ct, wrong_aad_tag = _gcm(
        session.key, iv, wire.aad(AGENT, "pu_workload", session.kid), plaintext
    )
    short_key = PKCS1_OAEP.new(server_key.public_key(), hashAlgo=SHA256).encrypt(b"k" * 16)
    sha1_ek = PKCS1_OAEP.new(server_key.public_key()).encrypt(session.key)
    cases = {
        "wrong server key": (envelope, other_key),
        "tampered tag": (replace(envelope, tag=_flip_b64(envelope.tag)), server_key),
        "tampered iv": (replace(envelope, iv=_flip_b64(envelope.iv)), server_key),
        "tampered ct": (replace(envelope, ct=_flip_b64(envelope.ct)), server_key),
        "wrong aad": (replace(envelope, ct=wrong_aad_ct, tag=wrong_aad_tag), server_key),
        "garbage ek": (replace(envelope, ek=b64(b"\x00" * 256)), server_key),
        "short ek": (replace(envelope, ek=b64(b"\x01" * 10)), server_key),
        "empty ek": (replace(envelope, ek=""), server_key),
        "16-byte session key": (replace(envelope, ek=b64(short_key)), server_key),
        "OAEP with SHA-1": (replace(envelope, ek=b64(sha1_ek)), server_key),
    }
    failures = {name: decrypt_failure(env, key) for name, (env, key) in cases.items()}
    details = {(f.reason, f.detail, str(f)) for f in failures.values()}
    assert len(details) == 1, failures
    # Nor does a chained exception tell them apart in a log's traceback.
    assert all(f.__cause__ is None for f in failures.values())
    assert all(f.__context__ is None or f.__suppress_context__ for f in failures.values())


# --- plaintext ------------------------------------------------------------------------------


def plain(**members: Any) -> bytes:
    doc = {**PLAINTEXT, **members}
    return json.dumps({k: v for k, v in doc.items() if v is not ...}).encode()


@pytest.mark.parametrize("seq", [0, 1, 2**63 - 1])
def test_seq_limits_accepted(seq: int) -> None:
    assert wire.parse_plaintext(plain(seq=seq)).seq == seq


@pytest.mark.parametrize(
    "members",
    [
        {"seq": -1},
        {"seq": 2**63},
        {"seq": 2**64},
        {"seq": True},
        {"seq": False},
        {"seq": 1.0},
        {"seq": 1.5},
        {"seq": "1"},
        {"seq": None},
        {"seq": ...},
        {"ts": ...},
        {"ts": -1},
        {"ts": 1.5e12},
        {"ts": "1795349829873"},
        {"ts": True},
        {"ts": None},
        {"data": ...},
        {"data": None},
        {"data": []},
        {"data": "readings"},
        {"data": 1},
    ],
    ids=lambda m: ",".join(f"{k}={'missing' if v is ... else repr(v)}" for k, v in m.items()),
)
def test_bad_plaintext(members: dict[str, Any]) -> None:
    rejected = reason(lambda: wire.parse_plaintext(plain(**members)))
    assert rejected.reason == wire.MALFORMED
    assert f"'{next(iter(members))}'" in rejected.detail


@pytest.mark.parametrize(
    "value", [b"[]", b"null", b"\xc3\x28", b"{", b"[" * 100_000 + b"]" * 100_000]
)
def test_plaintext_not_an_object(value: bytes) -> None:
    assert reason(lambda: wire.parse_plaintext(value)).reason == wire.MALFORMED


def test_plaintext_members_beyond_the_spec_are_ignored() -> None:
    parsed = wire.parse_plaintext(plain(extra={"x": 1}))
    assert parsed.data == PLAINTEXT["data"]
