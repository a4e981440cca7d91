"""Built-in ``pu_workload`` plugin: CPU, core, memory, load and GPU utilization.

Same layout as ``plugins.temperature``: ``manifest.py`` (``MANIFEST``), ``server.py``
(processor hooks), ``main.py`` (``sparklem_collect``, agent side), ``requirements.txt``.
``pynvml`` is optional and imported only inside the collector, so the processor never
needs it.
"""

from .main import sparklem_collect
from .server import sparklem_manifest, sparklem_process, sparklem_register_tables

__all__ = [
    "sparklem_collect",
    "sparklem_manifest",
    "sparklem_process",
    "sparklem_register_tables",
]
