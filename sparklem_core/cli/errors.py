"""How a command fails: one line after the program's name, and an exit status."""

from __future__ import annotations

import sys

EXIT_USAGE = 2
EXIT_FAILURE = 1

#: Failures a command meets in normal use (a missing key, a database that refuses), by
#: the module that defines them: printed as one line, never as a traceback. Looked up in
#: ``sys.modules`` only, so that no command imports a database stack it does not use: an
#: exception of a module never imported cannot have been raised.
KNOWN_FAILURES = {
    "sparklem_core.fleet.registry": ("NoServerKey",),
    "sparklem_core.db.schema_lock": ("SchemaLockTimeout",),
    "sparklem_core.db.errors": ("DatabaseUnusable",),
    "sparklem_core.db.plugin_tables": ("PluginTableRefused",),
    "sparklem_core.processor.metrics_server": ("EndpointError",),
}


class CommandError(Exception):
    """A user-facing failure of a command: one line, printed after the program's name."""

    def __init__(self, message: str, status: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.status = status


def known_failure(exc: BaseException) -> str | None:
    """The one line for an expected failure (see :data:`KNOWN_FAILURES`), else None."""
    for module_name, names in KNOWN_FAILURES.items():
        module = sys.modules.get(module_name)
        if module is not None and isinstance(exc, tuple(getattr(module, n) for n in names)):
            return str(exc)
    sqlalchemy_exc = sys.modules.get("sqlalchemy.exc")
    if sqlalchemy_exc is not None and isinstance(exc, sqlalchemy_exc.DBAPIError):
        # init and friends: the database refused or is unreachable
        return "database error: " + str(exc.orig or exc).strip().splitlines()[0][:300]
    return None
