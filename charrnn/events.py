"""What a training run tells its caller, as plain data: set-up stages and notes, then the
trainer's progress. The library never prints; `charrnn.cli.live` renders these on stderr and
`charrnn.train(on_event=...)` hands them to any caller. Torch-free, so that a view can
show the first status line before torch is imported.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

LN2 = math.log(2)


# -- set-up ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Status:
    """A set-up stage has begun (reading the corpus, sizing the model, building it); it
    lasts until the next Status or the trainer's Started."""

    text: str


@dataclass(frozen=True)
class Note:
    """A fact the user should know about the run being set up (shown once, kept in logs)."""

    text: str


# -- training -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Started:
    device: str
    num_parameters: int
    train_tokens: int
    val_tokens: int
    vocab_size: int
    windows_per_epoch: int
    out_dir: str
    sizing: dict | None = None  # what charrnn.training.sizing chose for a new run, when it chose
    optimizer: str | None = None  # "adamw" or "muon" (charrnn.training.optim)
    lr: float | None = None  # the peak learning rate
    weight_decay: float | None = None  # decoupled, on the weight matrices


@dataclass(frozen=True)
class Progress:
    step: int
    epoch: float
    train_loss: float  # nats per character, mean over the finite steps since the previous Progress
    lr: float
    chars_per_sec: float
    elapsed: float
    fraction: float  # of the budget used, 0..1
    skipped: int = 0  # updates skipped so far because the loss or gradients were not finite
    train_loss_token: float = math.nan  # nats per token (differs from per character for subwords)
    grad_norm: float = math.nan  # mean gradient norm (before clipping) since the previous Progress


@dataclass(frozen=True)
class Evaluated:
    step: int
    val_loss: float  # nats per character
    best_val_loss: float
    improved: bool


@dataclass(frozen=True)
class Sampled:
    """A short sample at an evaluation (--sample-every), also appended to the run's samples.txt."""

    step: int
    val_loss: float  # nats per character
    text: str


@dataclass(frozen=True)
class Saved:
    path: str
    kind: str  # "latest", "best" or "snapshot"


@dataclass(frozen=True)
class Finished:
    step: int
    epoch: float
    best_val_loss: float
    final_val_loss: float
    elapsed: float
    chars_per_sec: float
    out_dir: str
    reason: str
    saved: tuple[str, ...] = ()  # kinds of checkpoint this run wrote ("best", "latest")
