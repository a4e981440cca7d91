"""A test kit for plugin authors: a plugin's messages through the real pipeline.

Installed as a pytest plugin (entry point ``pytest11``), so a plugin's tests get the
``plugin_harness`` fixture with no ``conftest.py``::

    import sparklem_humidity

    def test_a_reading_is_stored(plugin_harness):
        humidity = plugin_harness(sparklem_humidity)
        outcome = humidity.send({"samples": [{"sensor": "room", "value": 40.5}]})
        assert outcome.rows("humidity_readings")[0]["value"] == 40.5
        assert outcome.rejections == []

Outside pytest, :class:`PluginHarness` is the same thing (close it when done).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from sparklem_core.testing.harness import Outcome, PluginHarness, Rejection

__all__ = ["Outcome", "PluginHarness", "Rejection"]


def __getattr__(name: str) -> Any:
    """The harness on first use: importing this package loads no database stack."""
    if name in __all__:
        from sparklem_core.testing import harness

        return getattr(harness, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
