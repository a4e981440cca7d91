"""Agent side of the pu_workload plugin: CPU, memory, load and NVIDIA GPUs.

- CPU busy percentages (whole and per core) are the delta of ``<proc_root>/stat``
  between this call and the previous one; the first call samples twice, 0.1 s apart.
- ``<proc_root>/loadavg`` gives ``load_avg``; ``<proc_root>/meminfo`` gives ``memory``
  (used = MemTotal - MemAvailable).
- GPUs come from NVML (``pynvml``, imported only here and only if installed), else from
  ``nvidia-smi`` on the PATH. Setting ``nvidia_smi`` to a command uses only that command.
  No GPU, no driver or a failing tool means no ``gpus`` member, never an error.
"""

from __future__ import annotations

import contextlib
import csv
import math
import shutil
import subprocess
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sparklem_core import hookimpl

FIRST_SAMPLE_GAP_S = 0.1
NVIDIA_SMI_TIMEOUT_S = 10
NVIDIA_SMI_QUERY = [
    "--query-gpu=index,name,utilization.gpu,memory.used,memory.total,temperature.gpu",
    "--format=csv,noheader,nounits",
]
MIB = 1024 * 1024
MAX_NAME_CHARS = 128

CpuTimes = dict[str, tuple[int, int]]  # "cpu", "cpu0", ... -> (busy, total) jiffies
_previous: dict[str, CpuTimes] = {}  # last /proc/stat sample, per proc root


@hookimpl
def sparklem_collect(settings: Mapping[str, Any]) -> dict[str, Any] | None:
    """Return the payload, or None when neither a CPU nor a GPU could be read."""
    proc = Path(settings.get("proc_root") or "/proc")
    data: dict[str, Any] = {}
    cpu = _cpu(proc)
    if cpu is not None:
        data["cpu"] = cpu
        memory = _memory(proc)
        if memory is not None:
            data["memory"] = memory
    gpus = _gpus(settings.get("nvidia_smi"))
    if gpus:
        data["gpus"] = gpus
    return data or None


def _cpu(proc: Path) -> dict[str, Any] | None:
    now = _cpu_times(proc / "stat")
    if not now:
        return None
    before = _previous.get(str(proc))
    if before is None:
        time.sleep(FIRST_SAMPLE_GAP_S)
        before, now = now, _cpu_times(proc / "stat") or now
    _previous[str(proc)] = now
    if "cpu" not in now or "cpu" not in before:
        return None
    cpu: dict[str, Any] = {"percent": _busy_percent(before["cpu"], now["cpu"])}
    cores = [name for name in now if name != "cpu"]
    if cores and set(cores) == set(before) - {"cpu"}:  # else a core went on/offline
        cpu["per_core"] = [_busy_percent(before[name], now[name]) for name in cores]
    load_avg = _load_avg(proc / "loadavg")
    if load_avg is not None:
        cpu["load_avg"] = load_avg
    return cpu


def _cpu_times(path: Path) -> CpuTimes:
    """(busy, total) jiffies per cpu line of /proc/stat, cores in kernel order."""
    times: CpuTimes = {}
    for line in _lines(path):
        name, *fields = line.split()
        if not name.startswith("cpu") or len(fields) < 4:
            continue
        # user nice system idle iowait irq softirq steal; guest time is already in user.
        try:
            ticks = [int(x) for x in fields[:8]]
        except ValueError:
            continue
        idle = sum(ticks[3:5])
        times[name] = (sum(ticks) - idle, sum(ticks))
    return times


def _busy_percent(before: tuple[int, int], now: tuple[int, int]) -> float:
    busy, total = now[0] - before[0], now[1] - before[1]
    if total <= 0:
        return 0.0
    return round(min(max(100.0 * busy / total, 0.0), 100.0), 2)


def _load_avg(path: Path) -> list[float] | None:
    lines = _lines(path)
    try:
        loads = [float(x) for x in lines[0].split()[:3]] if lines else []
    except ValueError:
        return None
    return loads if len(loads) == 3 and all(0 <= x < math.inf for x in loads) else None


def _memory(proc: Path) -> dict[str, int] | None:
    """Bytes from /proc/meminfo; MemAvailable is estimated on kernels older than 3.14."""
    kib: dict[str, int] = {}
    for line in _lines(proc / "meminfo"):
        key, _, rest = line.partition(":")
        value = rest.split()
        if value and value[0].isdigit():
            kib[key] = int(value[0])
    if "MemTotal" not in kib:
        return None
    available = kib.get("MemAvailable")
    if available is None:
        available = sum(kib.get(k, 0) for k in ("MemFree", "Buffers", "Cached"))
    total = kib["MemTotal"] * 1024
    used = min(max(total - available * 1024, 0), total)
    return {"used_bytes": used, "total_bytes": total}


def _lines(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="ascii", errors="replace").splitlines()
    except OSError:
        return []


def _gpus(command: str | None) -> list[dict[str, Any]]:
    """NVIDIA GPUs, through NVML or nvidia-smi; [] whenever there are none to read."""
    if command:
        return _nvidia_smi(command)
    gpus = _nvml()
    if gpus is not None:
        return gpus
    found = shutil.which("nvidia-smi")
    return _nvidia_smi(found) if found else []


def _nvml() -> list[dict[str, Any]] | None:
    """GPUs through NVML, or None if pynvml or the driver is missing (then try nvidia-smi)."""
    try:
        import pynvml  # optional (nvidia-ml-py), so imported only here
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
    except Exception:  # pynvml.NVMLError: no driver, no device
        return None
    gpus: list[dict[str, Any]] = []
    try:
        for index in range(pynvml.nvmlDeviceGetCount()):
            with contextlib.suppress(Exception):  # a GPU that cannot report is left out
                handle = pynvml.nvmlDeviceGetHandleByIndex(index)
                memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
                temp: float | None = None
                with contextlib.suppress(Exception):
                    temp = pynvml.nvmlDeviceGetTemperature(handle, pynvml.NVML_TEMPERATURE_GPU)
                gpus.append(
                    _gpu(
                        index,
                        pynvml.nvmlDeviceGetName(handle),
                        pynvml.nvmlDeviceGetUtilizationRates(handle).gpu,
                        memory.used,
                        memory.total,
                        temp,
                    )
                )
    except Exception:
        return None
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
    return [gpu for gpu in gpus if gpu]


def _nvidia_smi(command: str) -> list[dict[str, Any]]:
    """GPUs from nvidia-smi's CSV (memory in MiB); [] if the command fails."""
    try:
        done = subprocess.run(
            [command, *NVIDIA_SMI_QUERY],
            capture_output=True,
            text=True,
            timeout=NVIDIA_SMI_TIMEOUT_S,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return []
    if done.returncode != 0:
        return []
    gpus = []
    for fields in csv.reader(done.stdout.splitlines(), skipinitialspace=True):
        if len(fields) == 6:
            index, name, util, used, total, temp = fields
            gpus.append(_gpu(index, name, util, _mib(used), _mib(total), temp))
    return [gpu for gpu in gpus if gpu]


def _gpu(index: Any, name: Any, util: Any, used: Any, total: Any, temp: Any) -> dict[str, Any]:
    """One ``gpus`` item that the processor will accept, or {} if a required value is unusable
    (nvidia-smi prints "[N/A]" for what a GPU cannot report)."""
    try:
        gpu = {
            "index": int(index),
            "name": (name.decode() if isinstance(name, bytes) else str(name)).strip(),
            "util_percent": float(util),
            "mem_total_bytes": int(total),
            "mem_used_bytes": min(int(used), int(total)),
        }
    except (TypeError, ValueError):
        return {}
    if gpu["index"] < 0 or gpu["mem_used_bytes"] < 0 or not 0 <= gpu["util_percent"] <= 100:
        return {}
    gpu["name"] = (gpu["name"] or f"GPU {gpu['index']}")[:MAX_NAME_CHARS]
    with contextlib.suppress(TypeError, ValueError):
        if math.isfinite(float(temp)):
            gpu["temperature_c"] = float(temp)
    return gpu


def _mib(text: str) -> int | None:
    try:
        return int(float(text)) * MIB
    except ValueError:
        return None
