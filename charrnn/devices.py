"""Device and precision choice, shared by training, sampling and evaluation."""

from __future__ import annotations

import contextlib

import torch

from .errors import ConfigError

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


def local_device(name: str, local_rank: int | None = None) -> torch.device:
    """The device one process trains on: under torchrun each process takes the GPU of its
    local rank."""
    device = resolve_device(name)
    if local_rank is not None and device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    return device


@contextlib.contextmanager
def preserved_rng(device: torch.device):
    """Run a block (a probe, a timing) without changing what the run itself draws later."""
    cpu = torch.get_rng_state()
    cuda = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    try:
        yield
    finally:
        torch.set_rng_state(cpu)
        if cuda is not None:
            torch.cuda.set_rng_state(cuda, device)


def rng_state(device: torch.device) -> dict:
    """This process's RNG state as plain tensors, for a checkpoint."""
    state = {"torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


def bf16_works(model: torch.nn.Module, device: torch.device) -> bool:
    """Run one tiny forward and backward under bf16 autocast (cuDNN supports bfloat16
    recurrent kernels only from version 9.13); gradients and RNG are left as they were."""
    with preserved_rng(device):
        try:
            with autocast(device, True):
                logits, _ = model(torch.zeros(1, 2, dtype=torch.long, device=device))
            logits.float().sum().backward()
            return True
        except RuntimeError:
            return False
        finally:
            model.zero_grad(set_to_none=True)


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
