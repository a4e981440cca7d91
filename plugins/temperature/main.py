"""Agent side of the temperature plugin: read the Linux sensors.

Sources, both in millidegrees Celsius:

- ``<thermal_root>/thermal_zone*/{type,temp}`` (default ``/sys/class/thermal``), sensor
  named after ``type``;
- ``<hwmon_root>/hwmon*/{name,temp*_input,temp*_label}`` (default ``/sys/class/hwmon``),
  sensor named ``<name>/<label>``, or ``<name>/tempN`` without a label.

A sensor that cannot be read (some report EIO or ENODATA while asleep) is skipped.
Repeated names get a ``#2``, ``#3``... suffix in discovery order, so they stay distinct.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from sparklem_core import hookimpl
from sparklem_core.commands import ENROLL, command

log = logging.getLogger(__name__)

MAX_READINGS = 1000
MAX_SENSOR_CHARS = 128

# The (thermal_root, hwmon_root) pairs already reported empty: said once, not every interval.
_said_empty: set[tuple[Path, Path]] = set()


@hookimpl
def sparklem_collect(settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """Return ``{"readings": [...]}`` for every readable sensor, or None if there is none."""
    thermal = Path(settings.get("thermal_root") or "/sys/class/thermal")
    hwmon = Path(settings.get("hwmon_root") or "/sys/class/hwmon")
    readings: list[dict[str, Any]] = []
    seen: dict[str, int] = {}
    for name, celsius in [*_thermal_zones(thermal), *_hwmon(hwmon)]:
        name = name[: MAX_SENSOR_CHARS - 8]  # room for a "#n" suffix
        seen[name] = seen.get(name, 0) + 1
        sensor = name if seen[name] == 1 else f"{name}#{seen[name]}"
        readings.append({"sensor": sensor, "value": celsius, "unit": "C"})
    if readings:
        _said_empty.discard((thermal, hwmon))
        return {"readings": readings[:MAX_READINGS]}
    if (thermal, hwmon) not in _said_empty:
        _said_empty.add((thermal, hwmon))
        log.info(
            "temperature: no readable sensor in %s or %s, so no temperature readings are "
            "sent (other paths: %s --set temperature.thermal_root=PATH)",
            thermal,
            hwmon,
            command(ENROLL),
        )
    return None


def _thermal_zones(root: Path) -> Iterator[tuple[str, float]]:
    for zone in _sorted(root.glob("thermal_zone*")):
        celsius = _millidegrees(zone / "temp")
        if celsius is not None:
            yield _read(zone / "type") or zone.name, celsius


def _hwmon(root: Path) -> Iterator[tuple[str, float]]:
    for chip in _sorted(root.glob("hwmon*")):
        chip_name = _read(chip / "name") or chip.name
        for path in _sorted(chip.glob("temp*_input")):
            celsius = _millidegrees(path)
            if celsius is not None:
                channel = path.name.removesuffix("_input")
                label = _read(chip / f"{channel}_label") or channel
                yield f"{chip_name}/{label}", celsius


def _read(path: Path) -> str | None:
    """The stripped text of a sysfs file, or None if missing, unreadable or empty."""
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip() or None
    except OSError:
        return None


def _millidegrees(path: Path) -> float | None:
    text = _read(path)
    try:
        return int(text) / 1000 if text is not None else None
    except ValueError:
        return None


def _sorted(paths: Iterable[Path]) -> list[Path]:
    """By the number in the name: thermal_zone2 before thermal_zone10."""
    return sorted(paths, key=lambda p: (int(re.sub(r"\D", "", p.name) or -1), p.name))
