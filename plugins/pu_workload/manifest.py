"""What the pu_workload plugin is: read by the processor, the agent and the CLI."""

from sparklem_core import Manifest, Setting

MANIFEST = Manifest(
    name="pu_workload",
    version="1.0.0",
    description="CPU, per-core, memory, load average and NVIDIA GPU utilization.",
    settings=[
        Setting("interval", int, 30, "seconds between two readings", side="agent"),
        Setting("proc_root", str, "/proc", "where /proc is mounted", side="agent"),
        Setting(
            "nvidia_smi",
            str,
            None,
            "GPUs: null reads NVML, else nvidia-smi on the PATH; a path runs that command",
            side="agent",
        ),
    ],
)
