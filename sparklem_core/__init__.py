"""Sparkle-M: edge telemetry over Kafka into SQL.

Plugin authors need only this module::

    from sparklem_core import (
        InvalidPayload, Manifest, Message, PluginResult, RegisterTable, Setting, hookimpl,
    )

and ``sparklem_core.testing`` (a pytest plugin) to test the plugin.
"""

import pluggy

from sparklem_core.plugin_api import (
    MAX_TS_MS,
    InvalidPayload,
    Manifest,
    Message,
    PluginResult,
    RegisterTable,
    Setting,
    check_text,
    text_problem,
)

__version__ = "0.1.0"

PROJECT_NAME = "sparklem"
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)

__all__ = [
    "MAX_TS_MS",
    "PROJECT_NAME",
    "InvalidPayload",
    "Manifest",
    "Message",
    "PluginResult",
    "RegisterTable",
    "Setting",
    "__version__",
    "check_text",
    "hookimpl",
    "text_problem",
]
