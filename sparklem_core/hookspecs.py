"""The hooks a Sparkle-M plugin can implement, grouped by the side that calls them.

A plugin is a module (or any object) with functions named after these hooks and
decorated with ``sparklem_core.hookimpl``. Each plugin is called on its own: the core
never hands one plugin's messages to another, so no hook needs to check a name, and no
hook is ``firstresult``: the host calls one plugin's implementation and takes its result.
A hook function may accept fewer of the arguments below, never others (pluggy passes
them by name). docs/writing-plugins.md documents every hook and argument here
(tests/test_docs.py keeps the two in step).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pluggy

from sparklem_core import PROJECT_NAME
from sparklem_core.plugin_api import Manifest, Message, PluginResult, RegisterTable

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
#: Every hook's name starts with it; a plugin's function so named must be a hook.
HOOK_PREFIX = f"{PROJECT_NAME}_"

# -------------------------------------------------------------------------
# Both sides
# -------------------------------------------------------------------------


@hookspec
def sparklem_manifest() -> Manifest:
    """Describe the plugin. The one hook every plugin must implement.

    Called once, when the plugin is loaded, by the processor, the agent and
    ``main.py plugins``.

    :return: The plugin's :class:`~sparklem_core.Manifest`: its name (the envelope's
        ``plugin`` member, ``[a-z][a-z0-9_]{0,63}``), version, topic, description and
        declared settings. Anything else, or a bad name, fails the plugin's load.
    """


# -------------------------------------------------------------------------
# Processor hooks
# -------------------------------------------------------------------------


@hookspec
def sparklem_register_tables(register: RegisterTable) -> None:
    """Declare the SQL tables the plugin writes to.

    Called once at processor start (and by ``main.py init``), before the schema is
    created or upgraded to the declarations (new tables, columns and indexes are added).

    :param register: ``register(name, *columns, time=..., series=(...), values=(...))``
        creates the table ``name`` from SQLAlchemy ``Column`` (and ``Index``...) objects
        in the processor's metadata and returns the ``Table``. ``time`` names its
        ``DateTime(timezone=True)``, NOT NULL column a row is measured at; ``series`` the
        columns naming one series; ``values`` the measured columns; ``units`` (optional)
        a value column's unit, at most 16 characters (``"°C"``, ``"%"``, ``"B"``). It
        raises if the core or another plugin already owns that name or the keywords do
        not fit the columns, and the plugin then fails to load.
    :return: Nothing.
    """


@hookspec
def sparklem_process(message: Message, settings: Mapping[str, Any]) -> PluginResult:
    """Validate and normalize one message into rows. A pure function: no I/O, no clock.

    Called by the processor for every authenticated, decrypted, non-duplicate
    message whose ``plugin`` member names this plugin, in stream order; maybe again
    for the same message after a database conflict. Required of a plugin that
    registers tables or declares processor settings (it fails to load otherwise).

    :param message: The :class:`~sparklem_core.Message`: agent id, ``seq``, send
        time, the payload (``data``, a parsed JSON object as the agent sent it) and
        ``received_at``, when the processor received the record (aware UTC; a redriven
        message keeps its first arrival): a row's arrival time, never ``datetime.now()``.
    :param settings: The plugin's processor-side settings from the processor config
        (``plugins.NAME``), checked against the manifest's declaration, defaults
        filled in.
    :return: A :class:`~sparklem_core.PluginResult`: rows per registered table, and
        the single readings refused (stored as ``invalid_reading``). Raise
        :class:`~sparklem_core.InvalidPayload` (or any ``ValueError``) to refuse the
        whole message (``invalid_payload``); any other exception is recorded as
        ``processing_error`` with its type and text. Rows holding text that some
        database refuses (control characters, lone surrogates) are refused by the core.
    """


# -------------------------------------------------------------------------
# Agent hooks
# -------------------------------------------------------------------------


@hookspec
def sparklem_collect(settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """Collect one payload on the device.

    Called by the agent every ``settings["interval"]`` seconds; never by the processor.

    :param settings: The plugin's agent-side settings from the agent's bundle
        (``topic``, ``interval`` and the declared ones), checked against the manifest's
        declaration, defaults filled in.
    :return: The ``data`` member of the next message (a JSON-serializable dict), or
        None when there is nothing to send this time (no sensor found, say).
    """


PROCESSOR_HOOKS = ("sparklem_manifest", "sparklem_register_tables", "sparklem_process")
AGENT_HOOKS = ("sparklem_manifest", "sparklem_collect")
ALL_HOOKS: tuple[str, ...] = tuple(name for name in list(globals()) if name.startswith(HOOK_PREFIX))
