"""Who may call the API: bearer tokens from config (read, admin), or the session cookie.

The dashboard's live stream is an ``EventSource``, which sends no ``Authorization``
header: ``POST /api/v1/session {"token": T}`` checks T and sets it as an HttpOnly,
SameSite=Strict cookie, which every later request (the stream's included) carries.
Every token is compared in constant time, all of them every time. Without tokens the
API is open, and the server refuses to listen anywhere but loopback (``server.bind``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from fastapi import Request

from sparklem_core.db.read_tables import rfc3339
from sparklem_core.http.errors import ApiError
from sparklem_core.settings.config import ServeSettings

COOKIE = "sparklem_session"
audit_log = logging.getLogger("sparklem.audit")


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: a token's id (never the token) and whether it is admin."""

    token_id: str
    admin: bool


# No tokens configured: loopback only, and reading only. Deleting data always takes an admin
# token, so that any local process (or a page a local browser opens) cannot.
OPEN = Caller("none", admin=False)


class Tokens:
    """The configured tokens, kept as digests so every comparison has the same length."""

    def __init__(self, settings: ServeSettings) -> None:
        self.enabled = settings.tokens
        self._digests = [(_digest(t), False) for t in settings.read_tokens] + [
            (_digest(t), True) for t in settings.admin_tokens
        ]

    def check(self, token: str | None) -> Caller | None:
        """The caller holding ``token``, or None; no early exit, whatever matches.

        The caller's id, for the audit log, is the first 8 hex digits of the token's SHA-256.
        """
        if not self.enabled:
            return OPEN
        given = _digest(token or "")
        matched = admin = False
        for digest, is_admin in self._digests:
            same = hmac.compare_digest(given, digest)
            matched |= same
            admin |= same and is_admin
        return Caller(given.hex()[:8], admin) if matched else None

    def caller(self, request: Request) -> Caller:
        """The request's caller from its bearer token or cookie; 401 without a valid one."""
        header = request.headers.get("authorization", "")
        scheme, _, credentials = header.partition(" ")
        token = credentials.strip() if scheme.lower() == "bearer" else None
        if token is None:
            token = session_token(request.cookies.get(COOKIE))
        caller = self.check(token)
        if caller is None:
            raise ApiError(401, "a valid token is required: Authorization: Bearer TOKEN")
        return caller


def session_cookie(token: str) -> str:
    """The cookie's value for ``token``: base64url, so no character needs quoting."""
    return base64.urlsafe_b64encode(token.encode()).decode()


def session_token(cookie: str | None) -> str | None:
    """The token a session cookie holds, or None for a missing or mangled one."""
    if not cookie or len(cookie) > 1024:
        return None
    try:
        return base64.urlsafe_b64decode(cookie.encode("ascii")).decode()
    except (ValueError, UnicodeError):  # binascii.Error is a ValueError
        return None


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


def require_read(request: Request) -> Caller:
    """Dependency of every API route: any valid token (or none configured)."""
    tokens: Tokens = request.app.state.tokens
    return tokens.caller(request)


def require_admin(request: Request) -> Caller:
    """Dependency of admin routes: 401 without a token, 403 with a read-only one."""
    caller = require_read(request)
    if caller is OPEN:
        raise ApiError(403, "this needs an admin token: set serve.admin_tokens "
                       "(or SPARKLEM_ADMIN_TOKENS) and send it as a bearer token")  # fmt: skip
    if not caller.admin:
        raise ApiError(403, "this needs an admin token (serve.admin_tokens)")
    return caller


class AuditLogError(Exception):
    """The audit log cannot be written: serve does not start."""


class Audit:
    """Admin actions, one JSON line each, to ``serve.audit_log`` or else the log."""

    def __init__(self, path: str | None) -> None:
        """:class:`AuditLogError` now if ``path`` cannot be appended to, not at a deletion."""
        self.path = Path(path) if path else None
        if self.path is not None:
            try:
                os.close(self._open())
            except OSError as exc:
                raise AuditLogError(
                    f"serve.audit_log {self.path}: cannot append to it ({exc.strerror})"
                ) from None

    def _open(self) -> int:
        assert self.path is not None
        return os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)

    def write(self, caller: Caller, action: str, **details: Any) -> None:
        line = json.dumps(
            {"time": rfc3339(datetime.now(UTC)),
             "token": caller.token_id, "action": action, **details},
            sort_keys=True,
        )  # fmt: skip
        if self.path is None:
            audit_log.warning("%s", line)
            return
        fd = self._open()
        try:
            os.write(fd, (line + "\n").encode())
        finally:
            os.close(fd)
