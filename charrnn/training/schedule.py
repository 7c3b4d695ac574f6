"""The budget and the learning-rate schedule, as pure functions of where a run stands.

Kept apart from the loop so that they can be read, tested and changed on their own: the
trainer asks `budget_fraction` how much of the budget is used and `lr_at` what the
learning rate is there.
"""

from __future__ import annotations

import math

from ..config import TrainConfig


def budget_fraction(config: TrainConfig, step: int, epoch: float, elapsed: float) -> float:
    """Share of the budget used, 0..1: the largest over the budgets that were set
    (steps, epochs, seconds)."""
    parts = []
    if config.max_steps is not None:
        parts.append(step / max(config.max_steps, 1))
    if config.max_epochs is not None:
        parts.append(epoch / config.max_epochs)
    if config.max_time is not None:
        parts.append(elapsed / config.max_time)
    return min(1.0, max(parts))


def lr_at(config: TrainConfig, step: int, fraction: float) -> float:
    """Linear warmup over `warmup_steps`, then a cosine from lr to lr * min_lr_ratio over
    the budget. With --max-time the decay follows the clock, so it ends at the deadline.
    (A warm-up-stable-decay shape was measured against it and lost: docs/benchmarks.md.)"""
    warm = min(1.0, (step + 1) / max(config.warmup_steps, 1))
    fraction = min(fraction, 1.0)
    shape = 0.5 * (1.0 + math.cos(math.pi * fraction))
    return config.lr * warm * (config.min_lr_ratio + (1.0 - config.min_lr_ratio) * shape)
