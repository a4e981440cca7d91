"""Secrets never reach output: masked in URLs, and wherever a remembered one appears.

:class:`SecretFilter` sits on the log handler (``settings.logs.setup_logging``); the commands
also pass their one-line error messages through :func:`mask_secrets`.
"""

from __future__ import annotations

import logging
import re
from typing import Any
from urllib.parse import quote, quote_plus

# Names whose values are secrets: Kafka properties, URL query parameters.
SECRET_NAME_RE = re.compile(
    r"password|passwd|secret|token|passphrase|^ssl\.key\.pem$|^sasl\.oauthbearer\.config$",
    re.IGNORECASE,
)
# Shorter secrets are still masked inside URLs, but not wherever their text appears:
# masking every "pw" in every log line would make the logs unreadable.
MIN_MASKED_CHARS = 4

# Filled by load_config (and by the agent for its passphrase): the filter is installed
# when logging is set up, before any configuration is read.
_secrets: set[str] = set()


def remember_secret(value: Any) -> None:
    """Mask ``value`` (as written and URL-encoded) in every log line from now on."""
    if isinstance(value, str) and len(value) >= MIN_MASKED_CHARS:
        _secrets.update({value, quote(value, safe=""), quote_plus(value)})


def forget_secrets() -> None:
    """Stop masking what :func:`remember_secret` was given (a new configuration, a test)."""
    _secrets.clear()


def mask_secrets(text: str) -> str:
    """``text`` with URL passwords and every remembered secret replaced by ``***``."""
    text = mask_url(text)
    for secret in sorted(_secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


class SecretFilter(logging.Filter):
    """Masks secrets in a record's message and traceback; installed on the log handler."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:  # a bad format string: logging reports it itself
            return True
        masked = mask_secrets(message)
        if masked != message:
            record.msg, record.args = masked, None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask_secrets(record.exc_text)
        if record.stack_info:
            record.stack_info = mask_secrets(record.stack_info)
        return True


# The password runs to the "@" after which the host has no "@" up to "/", blank or end:
# it may hold "@" and "/" unencoded (SQLAlchemy's own URL parser accepts "/" there).
_PASSWORD_IN_URL = re.compile(
    r"(?P<head>[a-zA-Z][a-zA-Z0-9+.-]*://[^:/@\s]*:)\S*?@(?=[^@/\s]*(?:[/\s]|$))"
)


# "password=...", "?token=...": query parameters and key=value settings naming a secret.
_SECRET_PARAMETER = re.compile(
    r"(?P<head>[\w.-]*(?:password|passwd|secret|token|passphrase)[\w.-]*=)[^&\s'\"]+",
    re.IGNORECASE,
)


def mask_url(text: str) -> str:
    """Replace the password of every URL in ``text``, and secret parameters, with ``***``."""
    text = _PASSWORD_IN_URL.sub(r"\g<head>***@", text)
    return _SECRET_PARAMETER.sub(r"\g<head>***", text)
