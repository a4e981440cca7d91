"""Per-message cost of the crypto floor: pycryptodome vs ``cryptography`` (sparklem_core.wire).

``python3 -m benchmarks.crypto [--iterations N]``

Measures, on one realistic message (a ``temperature`` envelope with 8 readings, 2048-bit
agent and server keys), each piece of the processor's floor with both libraries, keeping
PROTOCOL.md's guarantees:

* RSA-PSS verify (SHA-256, MGF1-SHA-256, salt length exactly 32);
* AES-256-GCM decrypt with the protocol's AAD and a 16-byte tag;
* RSA-OAEP unwrap of the session key (SHA-256, MGF1-SHA-256, empty label), paid once per
  session key thanks to the cache, but shown for completeness.

It also checks that the ``cryptography`` settings refuse what the protocol refuses: a PSS
signature with another salt length, a PKCS#1 v1.5 signature, a GCM tag cut to 15 bytes,
a wrong AAD. Exit status 1 if any check fails. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import base64
import json
import sys
import time
from collections.abc import Callable
from typing import Any

from Crypto import __version__ as pycryptodome_version
from Crypto.Cipher import AES, PKCS1_OAEP
from Crypto.Hash import SHA256
from Crypto.PublicKey import RSA
from Crypto.Signature import pkcs1_15, pss

from sparklem_core import wire

KEY_BITS = 2048


def _progress(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def per_call(fn: Callable[[], object], iterations: int, repeat: int = 3) -> float:
    """Best mean seconds per call over ``repeat`` rounds of ``iterations`` calls."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        for _ in range(iterations):
            fn()
        best = min(best, (time.perf_counter() - started) / iterations)
    return best


def _refused(fn: Callable[[], object], *errors: type[BaseException]) -> bool:
    try:
        fn()
    except errors:
        return True
    return False


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m benchmarks.crypto",
        description="Per-message cost of RSA-PSS verify, AES-GCM decrypt and RSA-OAEP unwrap: "
        "pycryptodome vs cryptography (OpenSSL), with the protocol's exact parameters.",
        epilog="Prints a table, then one JSON line with every figure. Exit 1 if a check fails.",
    )
    parser.add_argument("--iterations", type=int, default=2000, metavar="N",
                        help="calls per timing round (best of 3; unwrap uses N/10); "
                        "default 2000")  # fmt: skip
    args = parser.parse_args(argv)
    if args.iterations < 1:
        parser.error("--iterations must be positive")
    try:
        import cryptography
        from cryptography.exceptions import InvalidSignature, InvalidTag
        from cryptography.hazmat.backends.openssl import backend as openssl
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import padding
        from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError:
        print("benchmarks.crypto needs the 'cryptography' package: pip install cryptography",
              file=sys.stderr)  # fmt: skip
        return 2

    from benchmarks.pipeline import temperature_payload

    _progress(f"generating two {KEY_BITS}-bit keys")
    agent_key, server_key = RSA.generate(KEY_BITS), RSA.generate(KEY_BITS)
    agent_pub = agent_key.public_key()
    c_agent_pub = serialization.load_der_public_key(agent_pub.export_key(format="DER"))
    c_server = serialization.load_der_private_key(
        server_key.export_key(format="DER", pkcs=8), password=None
    )
    session = wire.SessionKey(server_key.public_key())
    import random

    now = int(time.time() * 1000)
    plain = {"seq": 1, "ts": now, "data": temperature_payload(random.Random(1), 8, now)}
    env = wire.seal(
        plain, agent="edge-001", plugin="temperature", session=session, agent_key=agent_key
    )
    data, sig = env.signed_bytes(), base64.b64decode(env.sig)
    iv, ct, tag = (base64.b64decode(x) for x in (env.iv, env.ct, env.tag))
    aad = wire.aad(env.agent, env.plugin, env.kid)
    ek = base64.b64decode(env.ek)
    key = session.key

    pss32 = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=wire.PSS_SALT_BYTES)
    oaep = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
    sha256 = hashes.SHA256()
    aesgcm = AESGCM(key)  # what a per-session-key cache would hold
    ct_tag = ct + tag

    def c_verify_env() -> None:  # the same work as wire.verify
        c_agent_pub.verify(base64.b64decode(env.sig), env.signed_bytes(), pss32, sha256)

    def c_decrypt_env() -> bytes:  # the same work as wire.decrypt, cached AESGCM
        return aesgcm.decrypt(
            base64.b64decode(env.iv),
            base64.b64decode(env.ct) + base64.b64decode(env.tag),
            wire.aad(env.agent, env.plugin, env.kid),
        )

    def p_verify_env() -> None:  # the same work as wire.verify, in pycryptodome
        pss.new(agent_pub, salt_bytes=32).verify(
            SHA256.new(env.signed_bytes()), base64.b64decode(env.sig)
        )

    def p_decrypt_env() -> bytes:  # the same work as wire.decrypt, in pycryptodome
        cipher = AES.new(key, AES.MODE_GCM, nonce=base64.b64decode(env.iv))
        cipher.update(wire.aad(env.agent, env.plugin, env.kid))
        return cipher.decrypt_and_verify(base64.b64decode(env.ct), base64.b64decode(env.tag))

    def pcd_gcm() -> bytes:
        cipher = AES.new(key, AES.MODE_GCM, nonce=iv)
        cipher.update(aad)
        return cipher.decrypt_and_verify(ct, tag)

    # Sanity: every path gives the same answer before anything is timed.
    assert wire.decrypt(env, key) == pcd_gcm() == aesgcm.decrypt(iv, ct_tag, aad)
    assert c_decrypt_env() == AESGCM(key).decrypt(iv, ct_tag, aad)
    assert c_server.decrypt(ek, oaep) == key == wire.unwrap_key(env.ek, server_key)
    c_verify_env()
    p_verify_env()
    wire.verify(env, agent_pub)
    cached = wire.session_cipher(key)
    assert p_decrypt_env() == wire.decrypt(env, cached) == c_decrypt_env()

    n, n_unwrap = args.iterations, max(5, args.iterations // 10)
    cases: list[tuple[str, str, str, Callable[[], object], int]] = [
        ("verify", "pycryptodome", "same work as wire.verify (b64 + signed bytes + pss)",
         p_verify_env, n),
        ("verify", "pycryptodome", "pss.new(salt 32).verify, primitive only",
         lambda: pss.new(agent_pub, salt_bytes=32).verify(SHA256.new(data), sig), n),
        ("verify", "cryptography", "wire.verify (what the processor runs)",
         lambda: wire.verify(env, agent_pub), n),
        ("verify", "cryptography", "public_key.verify(PSS salt 32), primitive only",
         lambda: c_agent_pub.verify(sig, data, pss32, sha256), n),
        ("gcm", "pycryptodome", "same work as wire.decrypt (b64 + AES.new + verify)",
         p_decrypt_env, n),
        ("gcm", "pycryptodome", "AES.new(GCM) + decrypt_and_verify, primitive only",
         pcd_gcm, n),
        ("gcm", "cryptography", "wire.decrypt with the cached AESGCM (the processor)",
         lambda: wire.decrypt(env, cached), n),
        ("gcm", "cryptography", "AESGCM(key).decrypt, new object per message",
         lambda: AESGCM(key).decrypt(iv, ct_tag, aad), n),
        ("gcm", "cryptography", "AESGCM.decrypt on a cached object, primitive only",
         lambda: aesgcm.decrypt(iv, ct_tag, aad), n),
        ("unwrap", "pycryptodome", "PKCS1_OAEP(SHA-256).decrypt",
         lambda: PKCS1_OAEP.new(server_key, hashAlgo=SHA256).decrypt(ek), n_unwrap),
        ("unwrap", "cryptography", "private_key.decrypt(OAEP SHA-256)",
         lambda: c_server.decrypt(ek, oaep), n_unwrap),
        ("floor", "pycryptodome", "verify + decrypt, pycryptodome",
         lambda: (p_verify_env(), p_decrypt_env()), n),
        ("floor", "cryptography", "wire.verify + wire.decrypt (cached AESGCM)",
         lambda: (wire.verify(env, agent_pub), wire.decrypt(env, cached)), n),
    ]  # fmt: skip
    timings: list[tuple[str, str, str, float]] = []
    for op, lib, what, fn, iterations in cases:
        _progress(f"timing {op} / {lib}: {what}")
        timings.append((op, lib, what, per_call(fn, iterations)))

    # --- guarantees -----------------------------------------------------------------
    def c_verify(signature: bytes) -> None:
        c_agent_pub.verify(signature, data, pss32, sha256)

    def p_verify(signature: bytes) -> None:
        pss.new(agent_pub, salt_bytes=32).verify(SHA256.new(data), signature)

    other_salts = {s: pss.new(agent_key, salt_bytes=s).sign(SHA256.new(data)) for s in (0, 20, 64)}
    v15 = pkcs1_15.new(agent_key).sign(SHA256.new(data))
    bad_aad = wire.aad("edge-002", env.plugin, env.kid)

    def p_gcm(nonce: bytes, body: bytes, mac: bytes, extra: bytes) -> bytes:
        cipher = AES.new(key, AES.MODE_GCM, nonce=nonce)
        cipher.update(extra)
        return cipher.decrypt_and_verify(body, mac)

    def c_gcm_low(mac: bytes) -> bytes:
        decryptor = Cipher(algorithms.AES(key), modes.GCM(iv, mac, min_tag_length=16)).decryptor()
        decryptor.authenticate_additional_data(aad)
        return decryptor.update(ct) + decryptor.finalize()

    checks: dict[str, bool] = {
        "cryptography accepts a pycryptodome PSS salt-32 signature": not _refused(
            lambda: c_verify(sig), InvalidSignature
        ),
        **{
            f"cryptography (salt_length=32) refuses a PSS salt-{s} signature": _refused(
                lambda s=s: c_verify(other_salts[s]), InvalidSignature
            )
            for s in other_salts
        },
        **{
            f"pycryptodome (salt_bytes=32) refuses a PSS salt-{s} signature": _refused(
                lambda s=s: p_verify(other_salts[s]), ValueError
            )
            for s in other_salts
        },
        "cryptography refuses a PKCS#1 v1.5 signature": _refused(
            lambda: c_verify(v15), InvalidSignature
        ),
        "pycryptodome refuses a PKCS#1 v1.5 signature": _refused(lambda: p_verify(v15), ValueError),
        "AESGCM refuses the genuine tag cut to 15 bytes": _refused(
            lambda: aesgcm.decrypt(iv, ct + tag[:15], aad), InvalidTag
        ),
        "Cipher(GCM, min_tag_length=16) refuses a 15-byte tag": _refused(
            lambda: c_gcm_low(tag[:15]), ValueError, InvalidTag
        ),
        "pycryptodome GCM refuses the tag cut to 15 bytes": _refused(
            lambda: p_gcm(iv, ct, tag[:15], aad), ValueError
        ),
        "AESGCM refuses another agent's AAD": _refused(
            lambda: aesgcm.decrypt(iv, ct_tag, bad_aad), InvalidTag
        ),
        "AESGCM refuses a flipped ciphertext bit": _refused(
            lambda: aesgcm.decrypt(iv, bytes([ct[0] ^ 1]) + ct_tag[1:], aad), InvalidTag
        ),
        "cryptography OAEP unwraps the agent's pycryptodome-wrapped key": c_server.decrypt(ek, oaep)
        == key,
    }

    # --- output ---------------------------------------------------------------------
    versions = {
        "pycryptodome": pycryptodome_version,
        "cryptography": cryptography.__version__,
        "openssl": openssl.openssl_version_text(),
        "python": sys.version.split()[0],
    }
    print(
        f"one temperature message ({len(env.to_json())} bytes, plaintext {len(ct)} bytes), "
        f"{KEY_BITS}-bit keys; best of 3 rounds of {n} calls ({n_unwrap} for unwrap)"
    )
    print(
        "pycryptodome {pycryptodome}, cryptography {cryptography} ({openssl}), "
        "Python {python}".format(**versions)
    )
    base: dict[str, float] = {}
    for op, _lib, _what, seconds in timings:
        base.setdefault(op, seconds)  # the first row of each operation: pycryptodome, as used
    print(f"{'op':<7} {'library':<13} {'µs/msg':>8} {'msgs/s':>9} {'speedup':>8}  what")
    for op, lib, what, seconds in timings:
        speedup = base[op] / seconds
        print(f"{op:<7} {lib:<13} {seconds * 1e6:8.1f} {1 / seconds:9,.0f} {speedup:7.2f}x  {what}")
    print(
        "speedup: against the first row of the same operation (what sparklem_core.wire does today)"
    )
    print()
    for name, ok in checks.items():
        print(f"{'ok  ' if ok else 'FAIL'}  {name}")

    def us(op: str, lib: str, index: int = 0) -> float:
        rows = [s for o, library, _w, s in timings if o == op and library == lib]
        return round(rows[index] * 1e6, 2)

    report: dict[str, Any] = {
        "iterations": n,
        "verify_pycryptodome_us": us("verify", "pycryptodome"),
        "verify_cryptography_us": us("verify", "cryptography"),
        "verify_pycryptodome_primitive_us": us("verify", "pycryptodome", 1),
        "verify_cryptography_primitive_us": us("verify", "cryptography", 1),
        "gcm_pycryptodome_us": us("gcm", "pycryptodome"),
        "gcm_cryptography_us": us("gcm", "cryptography"),
        "gcm_pycryptodome_primitive_us": us("gcm", "pycryptodome", 1),
        "gcm_cryptography_new_object_us": us("gcm", "cryptography", 1),
        "gcm_cryptography_cached_primitive_us": us("gcm", "cryptography", 2),
        "unwrap_pycryptodome_us": us("unwrap", "pycryptodome"),
        "unwrap_cryptography_us": us("unwrap", "cryptography"),
        "floor_pycryptodome_us": us("floor", "pycryptodome"),
        "floor_cryptography_us": us("floor", "cryptography"),
    }
    for op in ("verify", "gcm", "unwrap", "floor"):
        report[f"{op}_speedup"] = round(
            report[f"{op}_pycryptodome_us"] / report[f"{op}_cryptography_us"], 2
        )
    report["checks_passed"] = all(checks.values())
    report["checks"] = checks
    report["versions"] = versions
    print(json.dumps(report, ensure_ascii=False))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
