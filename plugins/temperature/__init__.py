"""Built-in ``temperature`` plugin, and the layout to copy for a plugin of your own.

- ``manifest.py``: ``MANIFEST``, the plugin's name, version, topic and declared settings.
- ``server.py``: processor side: ``sparklem_manifest``, ``sparklem_register_tables`` (the
  SQL tables) and ``sparklem_process`` (validate one message's payload into rows).
- ``main.py``: agent side: ``sparklem_collect`` (read the device, return the payload).
- ``requirements.txt``: what the plugin needs beyond sparklem, in pip syntax.

This package exports the hooks under their standard names; the ``sparklem`` entry point
group (``pyproject.toml``) names the package. Libraries only the agent needs are imported
inside the collector, so the processor never needs them.
"""

from .main import sparklem_collect
from .server import sparklem_manifest, sparklem_process, sparklem_register_tables

__all__ = [
    "sparklem_collect",
    "sparklem_manifest",
    "sparklem_process",
    "sparklem_register_tables",
]
