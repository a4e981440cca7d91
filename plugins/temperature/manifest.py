"""What the temperature plugin is: read by the processor, the agent and the CLI."""

from collections.abc import Mapping
from typing import Any

from sparklem_core import Manifest, Setting


def check(settings: Mapping[str, Any]) -> None:
    """The plausible range must not be empty."""
    if settings["min_celsius"] >= settings["max_celsius"]:
        raise ValueError("min_celsius must be below max_celsius")


MANIFEST = Manifest(
    name="temperature",
    version="1.0.0",
    description="Temperature sensors (Linux thermal zones and hwmon), stored in Celsius.",
    settings=[
        Setting("min_celsius", float, -90, "lowest plausible reading, in C", ge=-273.15),
        Setting("max_celsius", float, 200, "highest plausible reading, in C", ge=-273.15),
        Setting("interval", int, 30, "seconds between two readings", side="agent"),
        Setting("thermal_root", str, "/sys/class/thermal", "thermal zones", side="agent"),
        Setting("hwmon_root", str, "/sys/class/hwmon", "hwmon chips", side="agent"),
    ],
    check=check,
)
