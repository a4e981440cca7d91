"""What the temperature plugin is: read by the processor, the agent and the CLI."""

from sparklem_core import Manifest

MANIFEST = Manifest(
    name="temperature",
    version="1.0.0",
    description="Temperature sensors (Linux thermal zones and hwmon), stored in Celsius.",
    agent_defaults={
        "interval": 30,
        "thermal_root": "/sys/class/thermal",
        "hwmon_root": "/sys/class/hwmon",
    },
)
