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
        **cpu_details(),
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
    }
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
        info["cuda"] = torch.version.cuda
    return info


SIMD_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_tile", "amx_bf16")


def cpu_details() -> dict:
    """Vendor, family and model numbers and the SIMD flags that decide which kernels run
    (what `lscpu` shows), from /proc/cpuinfo; empty where there is none."""
    details: dict = {}
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "vendor_id":
                    details["vendor"] = value
                elif key in ("cpu family", "model") and key.replace(" ", "_") not in details:
                    details[key.replace(" ", "_")] = int(value)
                elif key == "flags":
                    flags = set(value.split())
                    details["simd"] = [f for f in SIMD_FLAGS if f in flags]
                    break
    except (OSError, ValueError):
        pass
    return details


def line(info: dict | None = None) -> str:
    info = info or describe()
    gpu = f", GPU {info['gpu']} (CUDA {info['cuda']})" if "gpu" in info else ", no GPU"
    cpu = info["cpu"]
    if "cpu_family" in info:
        cpu += f" (family {info['cpu_family']} model {info.get('model')}, {' '.join(info.get('simd', [])) or 'no AVX2'})"
    return f"{cpu}, {info['cores']} cores, torch {info['torch']} ({info['torch_threads']} threads){gpu}"
