"""Device and precision choice, shared by training, sampling and evaluation."""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

from .errors import ConfigError

BF16_FLAGS = ("avx512_bf16", "amx_bf16")  # CPU flags that advertise native bfloat16 arithmetic
BF16_MIN_SPEEDUP = 1.15  # auto trains a CPU in bf16 only when the probe's step is at least this much faster
PROBE_TIMEOUT = 120  # seconds

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
    """Whether to train under bf16 autocast (float32 master weights, optimizer state and
    carried state either way).

    - CUDA: on GPUs that support bfloat16.
    - CPU: `auto` where the CPU does bfloat16 natively and a training step is faster for
      it (`cpu_bf16`); `bf16` always (autocast works on every CPU, slowly without native
      bfloat16).
    - Apple's MPS: never."""
    if precision in ("float32", "fp32"):
        return False
    if device.type == "cpu":
        return precision == "bf16" or cpu_bf16()
    if device.type != "cuda":
        return False
    supported = torch.cuda.is_bf16_supported()
    if precision == "bf16" and not supported:
        raise ConfigError("--precision bf16 was requested but this GPU does not support bfloat16.")
    return supported


def precision_name(bf16: bool) -> str:
    """What a run's start line and checkpoint say it trained in."""
    return "bf16 autocast" if bf16 else "float32"


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux reports them (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


# Run in a child process: one training step of a 2 x 512 LSTM (the default width) in
# float32 and under bf16 autocast. A CPU that advertises bfloat16 but faults on it kills
# the child, not the run; one that computes it wrongly fails the comparison.
_PROBE = """
import sys
sys.path[:] = [p for p in sys.path if p not in ("", ".")]  # never a json.py of the folder charrnn ran in
import json, math, time, torch
torch.set_num_threads(int(sys.argv[1]))
torch.manual_seed(0)
net, head = torch.nn.LSTM(64, 512, 2, batch_first=True), torch.nn.Linear(512, 96)
x = torch.randn(16, 64, 64)
def step(bf16):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        out, _ = net(x)
        loss = head(out).float().logsumexp(-1).mean()
    loss.backward()
    return loss.item()
def seconds(bf16, n=3):
    t = time.perf_counter()
    for _ in range(n):
        step(bf16)
    return (time.perf_counter() - t) / n
full, half = step(False), step(True)
ok = math.isfinite(half) and abs(half - full) <= 0.02 * abs(full) + 0.02
t32 = t16 = float("inf")
if ok:
    for _ in range(2):
        t32, t16 = min(t32, seconds(False)), min(t16, seconds(True))
print(json.dumps({"ok": ok, "speedup": t32 / t16 if ok else 0.0}))
"""


def _cache_file() -> Path:
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "charrnn" / "cpu-bf16.json"


def _cpu_key(flags: set[str]) -> str:
    name = ""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            name = next((line.split(":", 1)[1].strip() for line in fh if line.startswith("model name")), "")
    except OSError:
        pass
    import hashlib

    digest = hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:16]
    return f"{name}|flags {digest}|torch {torch.__version__}|{torch.get_num_threads()} threads"


@functools.cache
def cpu_bf16() -> bool:
    """Whether this CPU trains faster under bf16 autocast: it advertises native bfloat16
    (`BF16_FLAGS`), a probe in a child process computes it correctly without faulting, and
    the probe's training step is at least `BF16_MIN_SPEEDUP` times faster than in
    float32. The flags alone are no proof (a VM advertised AMX and faulted on it).

    The probe takes a few seconds, so its answer is kept per CPU, torch version and thread
    count in ~/.cache/charrnn/cpu-bf16.json (or under $XDG_CACHE_HOME); a CPU without the
    flags is never probed."""
    flags = cpu_flags()
    if not flags & set(BF16_FLAGS):
        return False
    path, key = _cache_file(), _cpu_key(flags)
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
        known = known if isinstance(known, dict) else {}
    except (OSError, ValueError):
        known = {}
    entry = known.get(key)
    if isinstance(entry, dict) and isinstance(entry.get("bf16"), bool):
        return entry["bf16"]
    entry = _probe()
    if entry is None:
        return False  # no answer (killed, timed out, unreadable): float32 now, and the next run asks again
    known[key] = entry
    _write_cache(path, known)
    return entry["bf16"]


_FAULTS = {-signal.SIGILL, -signal.SIGSEGV, -signal.SIGBUS, -signal.SIGFPE}  # the CPU cannot run it


def _probe() -> dict | None:
    """Run the probe: its answer, a definite no when the child dies of a fault, else None."""
    try:
        out = subprocess.run([sys.executable, "-c", _PROBE, str(torch.get_num_threads())], capture_output=True,
                             text=True, timeout=PROBE_TIMEOUT, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode in _FAULTS:
        return {"bf16": False, "speedup": None}
    if out.returncode != 0:
        return None
    try:
        result = json.loads(out.stdout.strip().splitlines()[-1])
        ok, speedup = result["ok"], float(result["speedup"])
    except (ValueError, KeyError, IndexError, TypeError):
        return None
    return {"bf16": ok is True and speedup >= BF16_MIN_SPEEDUP, "speedup": round(speedup, 3)}


def _write_cache(path: Path, data: dict) -> None:
    """Write the probe cache atomically; a cache that cannot be written is only a slower start."""
    from . import paths
    from .errors import CharrnnError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        paths.write_atomic(path, json.dumps(data, indent=1).encode("utf-8"), "the CPU probe's cache")
    except (OSError, CharrnnError):
        pass


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
