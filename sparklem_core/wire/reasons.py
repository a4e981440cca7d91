"""Rejection reasons, exactly as the protocol spells them, and the exception that carries one."""

from __future__ import annotations

# Reason codes, exactly as the protocol spells them.
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
    """A message fails the protocol: ``reason`` is a the protocol code, ``detail`` for humans."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail
