"""Data-parallel training across processes started by torchrun (DDP over NCCL or gloo).

Each of the W processes (ranks) owns B/W of the B parallel streams and carries their
state; gradients are averaged by DistributedDataParallel, so W processes with B/W streams
each take the same steps as one process with B streams. Decisions that must be identical
everywhere (stop, the clock behind a --max-time schedule) are taken by rank 0 and shared
at log steps; only rank 0 prints, writes checkpoints and metrics.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ..errors import ConfigError

TIMEOUT_ENV = "CHARRNN_DIST_TIMEOUT_MIN"


def timeout() -> timedelta:
    """How long a process waits for the others (CHARRNN_DIST_TIMEOUT_MIN minutes, default
    10); read when a process group is made, so that a bad value only stops a distributed
    run, with one sentence."""
    raw = os.environ.get(TIMEOUT_ENV, "10")
    try:
        minutes = float(raw)
        if not 0 < minutes <= 7 * 24 * 60:
            raise ValueError
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r} is not a number of minutes between 0 and 10080 (a week).") from None
    return timedelta(minutes=minutes)


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0


def world_from_env() -> World:
    """The torchrun environment (RANK, WORLD_SIZE, LOCAL_RANK), or a single process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(int(os.environ.get("RANK", "0")), size, int(os.environ.get("LOCAL_RANK", "0")))


def init(world: World, device: torch.device) -> None:
    """Join the process group (NCCL on CUDA, gloo on CPU) with a timeout, so a rank that
    dies makes the others fail with an error instead of waiting forever."""
    if not world.active or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, timeout=timeout())


def all_sum(world: World, *values: torch.Tensor) -> list[torch.Tensor]:
    """Sum small tensors over ranks (one collective for all of them)."""
    if not world.active:
        return list(values)
    flat = torch.stack([v.double().reshape(()) for v in values])
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    return [flat[i].to(v.dtype) for i, v in enumerate(values)]


def all_max(world: World, value: torch.Tensor) -> torch.Tensor:
    if not world.active:
        return value
    out = value.clone()
    dist.all_reduce(out, op=dist.ReduceOp.MAX)
    return out


def broadcast_floats(world: World, values: list[float], device: torch.device) -> list[float]:
    """Rank 0's values on every rank."""
    if not world.active:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(t, src=0)
    return t.tolist()


def gather_streams(world: World, state: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """Every rank's carried state, concatenated along the stream axis. # (L, B, H)"""
    if not world.active:
        return state
    out = []
    for s in state:
        parts = [torch.empty_like(s) for _ in range(world.size)]
        dist.all_gather(parts, s.contiguous())
        out.append(torch.cat(parts, dim=1))
    return tuple(out)


def gather_objects(world: World, obj) -> list:
    """Every rank's `obj` (small, picklable), in rank order."""
    if not world.active:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
