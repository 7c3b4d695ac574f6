"""Device and precision choice, shared by training, sampling and evaluation."""

from __future__ import annotations

import contextlib

import torch

from .errors import ConfigError

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(name: str = "auto") -> torch.device:
    """'auto' prefers CUDA, then Apple's MPS, then the CPU; an explicit missing device is an error."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was requested but PyTorch sees no CUDA GPU here.")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise ConfigError("--device mps was requested but Apple's MPS backend is not available here.")
    try:
        return torch.device(name)
    except RuntimeError:
        raise ConfigError(f"Unknown device {name!r}; use auto, cpu, cuda or mps.") from None


def use_bf16(device: torch.device, precision: str = "auto") -> bool:
    """bf16 autocast is used on CUDA GPUs that support it; the CPU always runs float32."""
    if precision == "fp32" or device.type != "cuda":
        return False
    supported = torch.cuda.is_bf16_supported()
    if precision == "bf16" and not supported:
        raise ConfigError("--precision bf16 was requested but this GPU does not support bfloat16.")
    return supported


def autocast(device: torch.device, bf16: bool):
    """Autocast context for the forward pass, or a no-op."""
    if bf16:
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def device_name(device: torch.device) -> str:
    """Human-readable device description stored in checkpoints and shown in progress."""
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return device.type
