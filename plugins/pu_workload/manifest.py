"""What the pu_workload plugin is: read by the processor, the agent and the CLI."""

from sparklem_core import Manifest

MANIFEST = Manifest(
    name="pu_workload",
    version="1.0.0",
    description="CPU, per-core, memory, load average and NVIDIA GPU utilization.",
    agent_defaults={
        "interval": 30,
        "proc_root": "/proc",
        "nvidia_smi": None,  # None: NVML, else nvidia-smi on the PATH; a path: that command
    },
)
