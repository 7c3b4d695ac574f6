"""A one-line description of the machine, printed by every benchmark next to its numbers."""

from __future__ import annotations

import os
import platform


def describe() -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


def line(info: dict | None = None) -> str:
    info = info or describe()
    gpu = f", GPU {info['gpu']} (CUDA {info['cuda']})" if "gpu" in info else ", no GPU"
    return f"{info['cpu']}, {info['cores']} cores, torch {info['torch']} ({info['torch_threads']} threads){gpu}"
