"""The hooks a Sparkle-M plugin can implement.

A plugin is a module (or any object) with functions named after these hooks and
decorated with ``sparklem_core.hookimpl``. Each plugin is called on its own: the core
never hands one plugin's messages to another, so no hook needs to check a name.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import pluggy

from sparklem_core import PROJECT_NAME
from sparklem_core.plugin_api import Manifest, Message, PluginResult

if TYPE_CHECKING:
    from sqlalchemy import Table

hookspec = pluggy.HookspecMarker(PROJECT_NAME)

RegisterTable = Callable[..., "Table"]


@hookspec(firstresult=True)
def sparklem_manifest() -> Manifest:
    """Describe the plugin.

    Called once, when the plugin is loaded, by the processor, the agent and
    ``main.py plugins``.

    Returns the plugin's :class:`~sparklem_core.Manifest`: name (the envelope's
    ``plugin`` member), version, topic, description and agent defaults.
    """


@hookspec
def sparklem_register_tables(register: RegisterTable) -> None:
    """Declare the SQL tables the plugin writes to.

    Called once at processor start, before the schema is created.

    ``register(name, *columns)`` creates the table in the processor's metadata and
    returns it; it raises if another plugin or the core already owns that name, so
    two plugins can never write into one table by accident. Returns nothing.
    """


@hookspec(firstresult=True)
def sparklem_process(message: Message, settings: Mapping[str, Any]) -> PluginResult:
    """Validate and normalize one message into rows.

    Called by the processor for every authenticated, decrypted, non-duplicate
    message whose ``plugin`` member names this plugin, in stream order.

    ``message`` carries the agent id, ``seq``, the send time and the payload;
    ``settings`` holds the plugin's processor-side settings from the processor config
    (``plugins.NAME``), checked against the manifest's declaration, defaults filled in.

    Returns a :class:`~sparklem_core.PluginResult`: rows per registered table, and the
    single readings refused (stored as ``invalid_reading``). Raise
    :class:`~sparklem_core.InvalidPayload` (or any ``ValueError``) to refuse the whole
    message (``invalid_payload``); any other exception is recorded as
    ``processing_error`` with its type and text. Rows holding text that some database
    refuses (control characters, lone surrogates) are refused by the core, one by one.
    """


@hookspec(firstresult=True)
def sparklem_collect(settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """Collect one payload on the device (agent side).

    Called by the agent every ``settings["interval"]`` seconds; ``settings`` holds the
    plugin's agent-side settings from the bundle, checked against the manifest's
    declaration, defaults filled in.

    Returns the ``data`` member of the next message, or None when there is nothing
    to send this time (no sensors found, say).
    """


ALL_HOOKS: tuple[str, ...] = tuple(name for name in list(globals()) if name.startswith("sparklem_"))
