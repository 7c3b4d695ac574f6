"""The training loop: truncated BPTT over contiguous streams with carried, detached state.

`Trainer.run()` is a generator of progress events; it never prints. The caller (the CLI,
or a notebook through the Python API) decides how to show them. Losses stay on the device
and are read back only when an event is due, so a GPU step never waits on the host.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from . import checkpoint
from .data import as_streams, eval_windows, num_windows, windows
from .devices import autocast, device_name, resolve_device, use_bf16
from .errors import ConfigError
from .model import CharRNN, ModelConfig, State, detach_state

LN2 = math.log(2)


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 64
    seq_len: int = 128
    lr: float = 3e-3
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    max_steps: int | None = None
    max_epochs: float | None = None
    max_time: float | None = None  # seconds
    eval_every: int = 100
    log_every: int = 10
    val_fraction: float = 0.1
    eval_max_tokens: int = 1_000_000
    seed: int = 1337
    device: str = "auto"
    precision: str = "auto"

    def __post_init__(self):
        if self.max_steps is None and self.max_epochs is None and self.max_time is None:
            raise ConfigError("Training needs a budget: --max-steps, --max-epochs or --max-time.")

    def to_dict(self) -> dict:
        return asdict(self)


# -- events ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class Started:
    device: str
    num_parameters: int
    train_tokens: int
    val_tokens: int
    vocab_size: int
    windows_per_epoch: int
    out_dir: str


@dataclass(frozen=True)
class Progress:
    step: int
    epoch: float
    train_loss: float  # nats per token, mean since the previous Progress
    lr: float
    chars_per_sec: float
    elapsed: float
    fraction: float  # of the budget used, 0..1


@dataclass(frozen=True)
class Evaluated:
    step: int
    val_loss: float  # nats per character
    best_val_loss: float
    improved: bool


@dataclass(frozen=True)
class Saved:
    path: str
    kind: str  # "latest" or "best"


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


@dataclass
class History:
    """Loss curves kept in the checkpoint (for `charrnn info`)."""

    train: list[list[float]] = field(default_factory=list)  # [step, nats/token]
    val: list[list[float]] = field(default_factory=list)  # [step, nats/char]


def bits(nats: float) -> float:
    return nats / LN2


@torch.no_grad()
def evaluate(
    model: CharRNN,
    streams: torch.Tensor,
    seq_len: int,
    device: torch.device,
    bf16: bool = False,
) -> tuple[float, int]:
    """Summed cross-entropy (nats) and token count over every target of `streams` (B, L),
    carrying the state across windows exactly as training does."""
    was_training = model.training
    model.eval()
    state = model.init_state(streams.size(0), device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    count = 0
    for x, y in eval_windows(streams, seq_len):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True).long()
        with autocast(device, bf16):
            logits, state = model(x, state)
        total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").double()
        count += y.numel()
    model.train(was_training)
    return float(total), count


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Owns model, optimizer and data layout for one run; `run()` yields events."""

    def __init__(
        self,
        model_config: ModelConfig,
        config: TrainConfig,
        vocab,
        train_ids: np.ndarray,
        val_ids: np.ndarray,
        out_dir: str | Path,
        corpus_info: dict | None = None,
        chars_per_token: float = 1.0,
    ):
        self.config = config
        self.model_config = model_config
        self.vocab = vocab
        self.out_dir = Path(out_dir)
        self.corpus_info = corpus_info or {}
        self.chars_per_token = chars_per_token
        self.device = resolve_device(config.device)
        self.bf16 = use_bf16(self.device, config.precision)

        seed_everything(config.seed)
        self.model = CharRNN(model_config).to(self.device)
        self.train_streams = as_streams(train_ids, config.batch_size)
        if num_windows(self.train_streams, config.seq_len) < 1:
            per_stream = self.train_streams.size(1)
            raise ConfigError(
                f"The training text is too short for --batch-size {config.batch_size} and "
                f"--seq-len {config.seq_len}: it needs at least "
                f"{config.batch_size * (config.seq_len + 1)} tokens but has "
                f"{len(train_ids)} ({per_stream} per stream)."
            )
        val_ids = val_ids[: config.eval_max_tokens]
        val_batch = max(1, min(config.batch_size, len(val_ids) // (config.seq_len + 1)))
        self.val_streams = as_streams(val_ids, val_batch) if len(val_ids) >= 2 * val_batch else None
        if self.device.type == "cuda":
            self.train_streams = self.train_streams.to(self.device)
            if self.val_streams is not None:
                self.val_streams = self.val_streams.to(self.device)

        self.optimizer = torch.optim.AdamW(
            self._param_groups(),
            lr=config.lr,
            betas=(0.9, 0.99),
            fused=self.device.type == "cuda",
        )
        self.step = 0
        self.window = 0  # next window index within the current epoch
        self.epochs_done = 0
        self.elapsed = 0.0
        self.best_val = math.inf
        self.last_val = math.nan
        self.history = History()
        self.state: State = self.model.init_state(config.batch_size, self.device)

    def _param_groups(self) -> list[dict]:
        """Weight decay on matrices only; biases and the embedding table are left alone."""
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (decay if p.dim() >= 2 and not name.startswith("embedding") else no_decay).append(p)
        return [
            {"params": decay, "weight_decay": self.config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    # -- budget and schedule ---------------------------------------------------------------
    @property
    def windows_per_epoch(self) -> int:
        return num_windows(self.train_streams, self.config.seq_len)

    @property
    def epoch(self) -> float:
        return self.epochs_done + self.window / self.windows_per_epoch

    def fraction(self, elapsed: float) -> float:
        """Share of the budget used: the largest over the budgets that were set."""
        c = self.config
        parts = []
        if c.max_steps is not None:
            parts.append(self.step / max(c.max_steps, 1))
        if c.max_epochs is not None:
            parts.append(self.epoch / c.max_epochs)
        if c.max_time is not None:
            parts.append(elapsed / c.max_time)
        return min(1.0, max(parts))

    def lr_at(self, fraction: float) -> float:
        """Linear warmup over `warmup_steps`, then cosine from lr to lr*min_lr_ratio over
        the budget. With --max-time the cosine follows the clock, so it ends at the deadline."""
        c = self.config
        warm = min(1.0, (self.step + 1) / max(c.warmup_steps, 1))
        cos = 0.5 * (1.0 + math.cos(math.pi * min(fraction, 1.0)))
        return c.lr * warm * (c.min_lr_ratio + (1.0 - c.min_lr_ratio) * cos)

    # -- checkpoints ---------------------------------------------------------------------
    def payload(self) -> dict:
        return {
            "model_config": self.model_config.to_dict(),
            "model": {k: v.detach().cpu() for k, v in self.model.state_dict().items()},
            "vocab": self.vocab.to_dict(),
            "train_config": self.config.to_dict(),
            "corpus": dict(self.corpus_info),
            "step": self.step,
            "epoch": self.epoch,
            "window": self.window,
            "epochs_done": self.epochs_done,
            "elapsed": self.elapsed,
            "best_val_loss": self.best_val if math.isfinite(self.best_val) else None,
            "val_loss": self.last_val if math.isfinite(self.last_val) else None,
            "history": {"train": self.history.train, "val": self.history.val},
            "optimizer": self.optimizer.state_dict(),
            "state": [s.detach().cpu() for s in self.state],
            "rng": {"torch": torch.get_rng_state()},
            "device": device_name(self.device),
            "chars_per_token": self.chars_per_token,
            "num_parameters": self.model.num_parameters(),
        }

    def save(self, improved: bool) -> Iterator[Saved]:
        self.out_dir.mkdir(parents=True, exist_ok=True)
        payload = self.payload()
        yield Saved(str(checkpoint.save(payload, self.out_dir / checkpoint.LATEST)), "latest")
        if improved or not (self.out_dir / checkpoint.BEST).exists():
            yield Saved(str(checkpoint.save(payload, self.out_dir / checkpoint.BEST)), "best")

    def validate(self) -> float:
        """Validation loss in nats per character (NaN when there is no validation text)."""
        if self.val_streams is None:
            return math.nan
        total, count = evaluate(self.model, self.val_streams, self.config.seq_len, self.device, self.bf16)
        return total / (count * self.chars_per_token)

    def evaluate_and_save(self) -> Iterator[Evaluated | Saved]:
        val = self.validate()
        self.last_val = val
        improved = math.isfinite(val) and val < self.best_val
        if improved:
            self.best_val = val
        if math.isfinite(val):
            self.history.val.append([self.step, val])
        yield Evaluated(self.step, val, self.best_val, improved)
        yield from self.save(improved or not math.isfinite(val))

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> Iterator[Started | Progress | Evaluated | Saved | Finished]:
        c = self.config
        model, opt, device = self.model, self.optimizer, self.device
        yield Started(
            device_name(device),
            model.num_parameters(),
            self.train_streams.numel(),
            0 if self.val_streams is None else self.val_streams.numel(),
            self.vocab.size,
            self.windows_per_epoch,
            str(self.out_dir),
        )
        model.train()
        tokens_per_step = c.batch_size * c.seq_len
        loss_sum = torch.zeros((), device=device)
        loss_steps = 0
        start = time.monotonic() - self.elapsed
        first_step, first_elapsed, self.eval_time = self.step, self.elapsed, 0.0
        last_log_time, last_log_step = time.monotonic(), self.step
        reason = "budget"
        while True:
            elapsed = time.monotonic() - start
            fraction = self.fraction(elapsed)
            if fraction >= 1.0:
                break
            lr = self.lr_at(fraction)
            for group in opt.param_groups:
                group["lr"] = lr

            t = self.window * c.seq_len
            x = self.train_streams[:, t : t + c.seq_len].to(device, non_blocking=True)  # (B, T)
            y = self.train_streams[:, t + 1 : t + c.seq_len + 1].to(device, non_blocking=True).long()
            with autocast(device, self.bf16):
                logits, state = model(x, self.state)  # (B, T, V)
                loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if c.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(model.parameters(), c.grad_clip)
            opt.step()
            self.state = detach_state(state)
            loss_sum += loss.detach()
            loss_steps += 1
            self.step += 1
            self.window += 1
            if self.window >= self.windows_per_epoch:
                self.window = 0
                self.epochs_done += 1
                self.state = model.init_state(c.batch_size, device)

            self.elapsed = time.monotonic() - start
            if self.step % c.log_every == 0:
                now = time.monotonic()
                train_loss = float(loss_sum) / loss_steps
                self.history.train.append([self.step, train_loss])
                speed = (self.step - last_log_step) * tokens_per_step * self.chars_per_token / max(now - last_log_time, 1e-9)
                yield Progress(self.step, self.epoch, train_loss, lr, speed, self.elapsed, self.fraction(self.elapsed))
                loss_sum.zero_()
                loss_steps = 0
                last_log_time, last_log_step = now, self.step
            if self.step % c.eval_every == 0:
                t_eval = time.monotonic()
                yield from self.evaluate_and_save()
                # Evaluation and saving count against --max-time but not against chars/s.
                self.eval_time += time.monotonic() - t_eval
                last_log_time = time.monotonic()
        train_time = time.monotonic() - start - first_elapsed - self.eval_time
        if loss_steps:
            self.history.train.append([self.step, float(loss_sum) / loss_steps])
        if not self.history.val or self.history.val[-1][0] != self.step:
            yield from self.evaluate_and_save()
        self.elapsed = time.monotonic() - start
        total_chars = (self.step - first_step) * tokens_per_step * self.chars_per_token
        yield Finished(
            self.step,
            self.epoch,
            self.best_val,
            self.last_val,
            self.elapsed,
            total_chars / max(train_time, 1e-9),
            str(self.out_dir),
            reason,
        )
