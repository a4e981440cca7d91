"""The kit's pytest fixtures; registered through the ``pytest11`` entry point ``sparklem``.

Loaded into every pytest run where sparklem is installed, so it imports nothing heavy until
a test asks for a fixture: the harness (and with it SQLAlchemy and the processor) is
imported inside the fixture.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from sparklem_core.testing.harness import PluginHarness

MakeHarness = Callable[..., "PluginHarness"]


@pytest.fixture
def plugin_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MakeHarness]:
    """``plugin_harness(plugin, settings=None)``: a :class:`PluginHarness`, closed after the test.

    ``plugin`` is the plugin's module (or its dotted name); ``settings`` its
    processor-side settings, as ``plugins.<name>`` in ``config.yaml`` would hold them.
    """
    from sparklem_core.testing.harness import PluginHarness

    made: list[PluginHarness] = []

    def make(plugin: ModuleType | str, settings: Mapping[str, Any] | None = None) -> PluginHarness:
        directory = Path(tmp_path_factory.mktemp("sparklem"))
        harness = PluginHarness(plugin, directory, settings)
        made.append(harness)
        return harness

    yield make
    for harness in made:
        harness.close()
