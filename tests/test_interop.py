"""Two implementations of PROTOCOL.md talk to each other.

``independent_agent`` (``cryptography``/OpenSSL, written from the spec) seals messages
that ``sparklem_core.wire`` (pycryptodome) must accept, and the reverse.
"""

from __future__ import annotations

import base64
import hashlib
import json
from typing import Any

import independent_agent as ia
import pytest
from Crypto.PublicKey import RSA
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from sparklem_core import wire

AGENT = "jetson-07"
PLUGIN = "temperature"
PLAINTEXT = {
    "seq": 42,
    "ts": 1_795_349_829_873,
    "data": {"readings": [{"sensor": "cpu_thermal", "value": 48.3, "unit": "C"}], "note": "é✓"},
}


class Keys:
    """The same key pairs in both libraries' types."""

    def __init__(self, private: rsa.RSAPrivateKey) -> None:
        self.private = private
        self.public = private.public_key()
        self.pycrypto = RSA.import_key(ia.private_pem(private))
        self.pycrypto_public = self.pycrypto.public_key()


@pytest.fixture(scope="module")
def server() -> Keys:
    return Keys(ia.generate_key(2048))


@pytest.fixture(scope="module")
def agent() -> Keys:
    return Keys(ia.generate_key(2048))


def core_open(value: bytes, agent: Keys, server: Keys) -> wire.Plaintext:
    """The processor's path through sparklem_core.wire."""
    envelope = wire.parse_envelope(value)
    wire.verify(envelope, agent.pycrypto_public)
    assert envelope.kid == wire.key_id(server.pycrypto)
    session_key = wire.unwrap_key(envelope.ek, server.pycrypto)
    return wire.parse_plaintext(wire.decrypt(envelope, session_key))


# --- key ids ------------------------------------------------------------------------------


def test_key_ids_agree(server: Keys, agent: Keys) -> None:
    for keys in (server, agent):
        der = keys.public.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        expected = hashlib.sha256(der).hexdigest()[:16]
        assert ia.key_id(keys.public) == expected
        assert ia.key_id(keys.private) == expected
        assert wire.key_id(keys.pycrypto) == expected
        assert wire.key_id(keys.pycrypto_public) == expected


def test_key_id_of_a_3072_bit_key() -> None:
    key = ia.generate_key(3072)
    assert wire.key_id(RSA.import_key(ia.private_pem(key))) == ia.key_id(key)


def test_key_conversions(server: Keys) -> None:
    kid = ia.key_id(server.public)
    for form in (
        server.private,
        ia.public_pem(server.public),
        ia.private_pem(server.private),
        server.pycrypto,
        server.pycrypto_public,
        server.pycrypto_public.export_key(format="DER"),
    ):
        assert ia.key_id(form) == kid


# --- independent agent -> sparklem_core -------------------------------------------------------


def test_independent_message_is_accepted_by_the_core(server: Keys, agent: Keys) -> None:
    value = ia.seal(PLAINTEXT, AGENT, PLUGIN, server.public, agent.private)
    plain = core_open(value, agent, server)
    assert (plain.seq, plain.ts, plain.data) == (
        PLAINTEXT["seq"],
        PLAINTEXT["ts"],
        PLAINTEXT["data"],
    )


def test_independent_envelope_shape(server: Keys, agent: Keys) -> None:
    doc = json.loads(ia.seal(PLAINTEXT, AGENT, PLUGIN, server.public, agent.private))
    assert set(doc) == {"v", "agent", "plugin", "kid", "ek", "iv", "ct", "tag", "sig"}
    assert doc["v"] == 1 and doc["kid"] == wire.key_id(server.pycrypto)
    for member in ("ek", "iv", "ct", "tag", "sig"):
        assert base64.b64encode(base64.b64decode(doc[member])).decode() == doc[member]
    assert len(base64.b64decode(doc["iv"])) == 12 and len(base64.b64decode(doc["tag"])) == 16


def test_independent_session_reuse(server: Keys, agent: Keys) -> None:
    session = ia.Session(server.public)
    values = [
        ia.seal({**PLAINTEXT, "seq": seq}, AGENT, PLUGIN, server.public, agent.private, session)
        for seq in range(5)
    ]
    docs = [json.loads(v) for v in values]
    assert len({d["ek"] for d in docs}) == 1 and len({d["iv"] for d in docs}) == 5
    assert session.used == 5
    assert [core_open(v, agent, server).seq for v in values] == list(range(5))
    # The processor may cache the unwrapped key by (kid, ek): it is the same key.
    env = wire.parse_envelope(values[3])
    assert wire.unwrap_key(env.ek, server.pycrypto) == session.key


def test_session_for_another_server_key_is_refused(server: Keys, agent: Keys) -> None:
    session = ia.Session(agent.public)
    with pytest.raises(ValueError, match="another server key"):
        ia.seal(PLAINTEXT, AGENT, PLUGIN, server.public, agent.private, session)


@pytest.mark.parametrize("size", [0, 1, 15, 16, 17, 4096, 200_000])
def test_plaintext_sizes(server: Keys, agent: Keys, size: int) -> None:
    plaintext = {**PLAINTEXT, "data": {"blob": "x" * size}}
    assert core_open(
        ia.seal(plaintext, AGENT, PLUGIN, server.public, agent.private), agent, server
    ).data == {"blob": "x" * size}


@pytest.mark.parametrize("agent_id", ["a", "A" * 64, "edge.site-1_b", "0node"])
def test_agent_id_limits(server: Keys, agent: Keys, agent_id: str) -> None:
    value = ia.seal(PLAINTEXT, agent_id, "pu_workload", server.public, agent.private)
    assert core_open(value, agent, server).seq == PLAINTEXT["seq"]
    assert wire.parse_envelope(value).agent == agent_id


def test_independent_message_with_another_agent_key_is_refused(server: Keys, agent: Keys) -> None:
    value = ia.seal(PLAINTEXT, AGENT, PLUGIN, server.public, ia.generate_key(2048))
    with pytest.raises(wire.Rejected) as caught:
        wire.verify(wire.parse_envelope(value), agent.pycrypto_public)
    assert caught.value.reason == wire.BAD_SIGNATURE


def test_cryptography_pss_auto_salt_is_refused(server: Keys, agent: Keys) -> None:
    """OpenSSL's default PSS salt (maximum length) is not the protocol's 32 bytes."""
    doc = json.loads(ia.seal(PLAINTEXT, AGENT, PLUGIN, server.public, agent.private))
    pss_max = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)
    signature = agent.private.sign(ia.signed_bytes(doc), pss_max, hashes.SHA256())
    doc["sig"] = ia.b64(signature)
    with pytest.raises(wire.Rejected) as caught:
        wire.verify(wire.parse_envelope(ia.dumps(doc)), agent.pycrypto_public)
    assert caught.value.reason == wire.BAD_SIGNATURE


def test_aad_binds_the_header(server: Keys, agent: Keys) -> None:
    """A message re-signed under another plugin name still fails GCM: the AAD differs."""
    doc = json.loads(ia.seal(PLAINTEXT, AGENT, PLUGIN, server.public, agent.private))
    doc = ia.sign({**doc, "plugin": "pu_workload"}, agent.private)
    envelope = wire.parse_envelope(ia.dumps(doc))
    wire.verify(envelope, agent.pycrypto_public)
    key = wire.unwrap_key(envelope.ek, server.pycrypto)
    with pytest.raises(wire.Rejected) as caught:
        wire.decrypt(envelope, key)
    assert caught.value.reason == wire.DECRYPT_FAILED


# --- sparklem_core -> independent processor checks ----------------------------------------------


def test_core_message_is_opened_by_the_independent_code(server: Keys, agent: Keys) -> None:
    session = wire.SessionKey(server.pycrypto_public)
    envelope = wire.seal(
        PLAINTEXT, agent=AGENT, plugin=PLUGIN, session=session, agent_key=agent.pycrypto
    )
    doc, plaintext = ia.open_envelope(envelope.to_json(), agent.public, server.private)
    assert plaintext == PLAINTEXT
    assert (doc["agent"], doc["plugin"], doc["kid"]) == (AGENT, PLUGIN, ia.key_id(server.public))


def test_core_session_reuse_is_opened_by_the_independent_code(server: Keys, agent: Keys) -> None:
    session = wire.SessionKey(server.pycrypto_public)
    for seq in range(3):
        envelope = wire.seal(
            {**PLAINTEXT, "seq": seq},
            agent=AGENT,
            plugin=PLUGIN,
            session=session,
            agent_key=agent.pycrypto,
        )
        assert ia.open_envelope(envelope.to_json(), agent.public, server.private)[1]["seq"] == seq


def test_core_raw_bytes_plaintext(server: Keys, agent: Keys) -> None:
    session = wire.SessionKey(server.pycrypto_public)
    raw = b'{"seq":1,"ts":2,"data":{}}'
    envelope = wire.seal(raw, agent=AGENT, plugin=PLUGIN, session=session, agent_key=agent.pycrypto)
    assert ia.open_envelope(envelope.to_json(), agent.public, server.private)[1] == json.loads(raw)


def test_independent_checks_refuse_tampering(server: Keys, agent: Keys) -> None:
    session = wire.SessionKey(server.pycrypto_public)
    envelope = wire.seal(
        PLAINTEXT, agent=AGENT, plugin=PLUGIN, session=session, agent_key=agent.pycrypto
    )
    doc: dict[str, Any] = json.loads(envelope.to_json())
    tampered = {**doc, "agent": "someone-else"}
    with pytest.raises(ia.ProtocolError) as caught:
        ia.open_envelope(ia.dumps(tampered), agent.public, server.private)
    assert caught.value.reason == "bad_signature"
    other_server = ia.generate_key(2048)
    with pytest.raises(ia.ProtocolError) as caught:
        ia.open_envelope(envelope.to_json(), agent.public, other_server)
    assert caught.value.reason == "unknown_key"


def test_both_sides_agree_on_signed_bytes_and_aad(server: Keys, agent: Keys) -> None:
    session = wire.SessionKey(server.pycrypto_public)
    envelope = wire.seal(
        PLAINTEXT, agent=AGENT, plugin=PLUGIN, session=session, agent_key=agent.pycrypto
    )
    doc = json.loads(envelope.to_json())
    assert ia.signed_bytes(doc) == envelope.signed_bytes()
    assert ia.aad(AGENT, PLUGIN, doc["kid"]) == wire.aad(AGENT, PLUGIN, doc["kid"])
