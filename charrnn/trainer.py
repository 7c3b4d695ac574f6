"""The training loop: truncated BPTT over contiguous streams with carried, detached state.

`Trainer.run()` is a generator of progress events; it never prints. The caller (the CLI,
or a notebook through the Python API) decides how to show them. Losses stay on the device
and are read back only when an event is due, so a GPU step never waits on the host.
"""

from __future__ import annotations

import json
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
from . import distributed as dist_utils
from .distributed import World
from .data import as_streams, eval_windows, num_windows
from .devices import autocast, device_name, resolve_device, use_bf16
from .errors import CharrnnError, ConfigError
from .config import ModelConfig, TrainConfig
from .model import CharRNN, State

LN2 = math.log(2)
METRICS = "metrics.jsonl"


def _finite(x: float) -> float | None:
    """JSON has no NaN or infinity: they are written as null."""
    return x if math.isfinite(x) else None


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
    sizing: dict | None = None  # what charrnn.sizing chose for a new run, when it chose


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


class TrainingError(CharrnnError):
    """Training cannot go on (e.g. the loss stays non-finite); the last good checkpoint stays."""


@dataclass(frozen=True)
class EvalResult:
    nats: float  # summed cross-entropy
    tokens: int
    chars: int  # characters those tokens stand for (equal to tokens for a character vocabulary)

    @property
    def per_char(self) -> float:
        return self.nats / self.chars if self.chars else math.nan

    @property
    def per_token(self) -> float:
        return self.nats / self.tokens if self.tokens else math.nan


@torch.no_grad()
def evaluate(
    model: CharRNN,
    streams: torch.Tensor,
    seq_len: int,
    device: torch.device,
    bf16: bool = False,
    char_lengths: torch.Tensor | None = None,
) -> EvalResult:
    """Summed cross-entropy over every target of `streams` (B, L), carrying the state across
    windows exactly as training does; `char_lengths` (V,) counts characters per token."""
    was_training = model.training
    model.eval()
    state = model.init_state(streams.size(0), device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    chars = torch.zeros((), dtype=torch.long, device=device)
    lengths = None if char_lengths is None else char_lengths.to(device)
    count = 0
    for x, y in eval_windows(streams, seq_len):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True).long()
        with autocast(device, bf16):
            logits, state = model(x, state)
        total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").double()
        count += y.numel()
        if lengths is not None:
            chars += lengths[y].sum()
    model.train(was_training)
    return EvalResult(float(total), count, count if lengths is None else int(chars))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class Trainer:
    """Owns model, optimizer and data layout for one run; `run()` yields events.

    Everything needed to continue a run exactly is in `payload()`: weights, optimizer,
    step, data position, carried hidden state and RNG state; `restore()` puts it back.
    """

    def __init__(
        self,
        model_config: ModelConfig,
        config: TrainConfig,
        vocab,
        train_ids: np.ndarray,
        val_ids: np.ndarray,
        out_dir: str | Path,
        corpus_info: dict | None = None,
        world: World = World(),
    ):
        self.config = config
        self.world = world
        self.model_config = model_config
        self.vocab = vocab
        self.out_dir = Path(out_dir)
        self.corpus_info = corpus_info or {}
        lengths = vocab.char_lengths()
        self.char_lengths = None if (lengths == 1).all() else torch.from_numpy(lengths)
        # Characters per token over the training text: converts per-token training loss
        # and throughput to per-character figures (exactly 1 for a character vocabulary).
        self.chars_per_token = 1.0 if self.char_lengths is None else float(
            sum(int(lengths[np.asarray(train_ids[i : i + (1 << 22)])].sum()) for i in range(0, len(train_ids), 1 << 22))
        ) / max(len(train_ids), 1)
        self.device = resolve_device(config.device)
        if world.active and self.device.type == "cuda":
            self.device = torch.device("cuda", world.local_rank)
            torch.cuda.set_device(self.device)
        self.bf16 = use_bf16(self.device, config.precision)
        self.lock = None  # a RunLock held for the run, released when run() ends
        self.sizing: dict | None = None  # set by runs.prepare_training when it sized the model
        if config.batch_size % world.size:
            raise ConfigError(f"--batch-size {config.batch_size} must be a multiple of the {world.size} processes.")

        seed_everything(config.seed)  # identical initial weights on every rank
        self.model = CharRNN(model_config).to(self.device)
        if self.bf16 and not self._bf16_works():
            if config.precision == "bf16":
                raise ConfigError("--precision bf16 was requested but this GPU's cuDNN cannot run the recurrent layers in bfloat16.")
            self.bf16 = False  # older cuDNN: recurrent kernels have no bfloat16, stay in float32
        if world.active:
            dist_utils.init(world, self.device)
            from torch.nn.parallel import DistributedDataParallel

            self.net = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            torch.manual_seed(config.seed + world.rank)  # each rank draws its own dropout masks
        else:
            self.net = self.model
        self.train_streams = as_streams(train_ids, config.batch_size)
        if num_windows(self.train_streams, config.seq_len) < 1:
            raise ConfigError(
                f"The training text is too short for --batch-size {config.batch_size} and "
                f"--seq-len {config.seq_len}: it needs at least "
                f"{config.batch_size * (config.seq_len + 1)} characters but has {len(train_ids)}; "
                f"lower --batch-size or --seq-len."
            )
        val_ids = val_ids[: config.eval_max_tokens]
        val_batch = max(1, min(config.batch_size, len(val_ids) // (config.seq_len + 1)))
        val_batch = max(world.size, val_batch - val_batch % world.size)
        self.val_streams = as_streams(val_ids, val_batch) if len(val_ids) >= 2 * val_batch else None
        # Each rank owns a contiguous block of the streams: rows [rank*B/W, (rank+1)*B/W).
        self.train_streams = self._own_rows(self.train_streams)
        if self.val_streams is not None:
            self.val_streams = self._own_rows(self.val_streams)
        if self.device.type == "cuda":
            self.train_streams = self.train_streams.to(self.device)
            if self.val_streams is not None:
                self.val_streams = self.val_streams.to(self.device)

        # Fused AdamW reads `found_inf` and skips a non-finite update on the device itself,
        # so guarding against NaN/inf costs no host synchronisation per step.
        try:
            self.optimizer = torch.optim.AdamW(self._param_groups(), lr=config.lr, betas=(0.9, 0.99), fused=True)
            self.fused = True
        except (RuntimeError, ValueError):
            self.optimizer = torch.optim.AdamW(self._param_groups(), lr=config.lr, betas=(0.9, 0.99))
            self.fused = False
        self.step = 0
        self.window = 0  # next window index within the current epoch
        self.epochs_done = 0
        self.elapsed = 0.0
        self.best_val = math.inf
        self.last_val = math.nan
        self.evals_without_improvement = 0
        self.skipped = torch.zeros((), dtype=torch.long, device=self.device)
        self.bad_streak = torch.zeros((), dtype=torch.long, device=self.device)
        self.history = History()
        self.local_batch = config.batch_size // world.size
        self.state: State = self.model.init_state(self.local_batch, self.device)
        self.synced_elapsed = 0.0  # the clock all ranks agree on (rank 0's, shared at log steps)
        self._stop_reason: str | None = None
        self._stop_agreed = False  # under DDP a stop waits until every rank knows of it

    def _bf16_works(self) -> bool:
        """Run one tiny forward and backward under bf16 autocast (cuDNN supports bfloat16
        recurrent kernels only from version 9.13); the RNG is left as it was."""
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        try:
            with autocast(self.device, True):
                logits, _ = self.model(torch.zeros(1, 2, dtype=torch.long, device=self.device))
            logits.float().sum().backward()
            return True
        except RuntimeError:
            return False
        finally:
            self.model.zero_grad(set_to_none=True)
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, self.device)

    def _own_rows(self, streams: torch.Tensor) -> torch.Tensor:
        if not self.world.active:
            return streams
        per = streams.size(0) // self.world.size
        return streams[self.world.rank * per : (self.world.rank + 1) * per]

    def _param_groups(self) -> list[dict]:
        """Weight decay on matrices only; biases and the embedding table are left alone."""
        decay, no_decay = [], []
        for name, p in self.model.named_parameters():
            (decay if p.dim() >= 2 and not name.startswith("embedding") else no_decay).append(p)
        return [
            {"params": decay, "weight_decay": self.config.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]

    def request_stop(self, reason: str) -> None:
        """Ask the loop to stop after the current step and save (safe from a signal handler)."""
        self._stop_reason = reason

    @property
    def stop_requested(self) -> bool:
        return self._stop_reason is not None

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
            parts.append((self.synced_elapsed if self.world.active else elapsed) / c.max_time)
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
        rng = {"torch": torch.get_rng_state()}
        if self.device.type == "cuda":
            rng["cuda"] = torch.cuda.get_rng_state(self.device)
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
            "evals_without_improvement": self.evals_without_improvement,
            "skipped_steps": int(self.skipped),
            "history": {"train": self.history.train, "val": self.history.val},
            "optimizer": self.optimizer.state_dict(),
            "state": [s.detach().cpu() for s in dist_utils.gather_streams(self.world, self.state)],
            "rng": rng,
            "device": device_name(self.device),
            "chars_per_token": self.chars_per_token,
            "num_parameters": self.model.num_parameters(),
        }

    def restore(self, data: dict) -> None:
        """Continue from a checkpoint's payload exactly where it was written."""
        self.model.load_state_dict(data["model"])
        self.optimizer.load_state_dict(data["optimizer"])
        self.step = int(data["step"])
        self.window = int(data["window"])
        self.epochs_done = int(data["epochs_done"])
        self.elapsed = self.synced_elapsed = float(data["elapsed"])
        self.best_val = data["best_val_loss"] if data.get("best_val_loss") is not None else math.inf
        self.last_val = data["val_loss"] if data.get("val_loss") is not None else math.nan
        self.evals_without_improvement = int(data.get("evals_without_improvement", 0))
        self.skipped.fill_(int(data.get("skipped_steps", 0)))
        self.history = History(train=[list(p) for p in data["history"]["train"]], val=[list(p) for p in data["history"]["val"]])
        rows = slice(self.world.rank * self.local_batch, (self.world.rank + 1) * self.local_batch)
        self.state = tuple(s[:, rows].to(self.device) for s in data["state"])
        if self.world.main:
            torch.set_rng_state(data["rng"]["torch"])
        else:  # dropout masks of other ranks continue from a seed tied to rank and step
            torch.manual_seed(self.config.seed + 7919 * self.step + self.world.rank)
        if "cuda" in data["rng"] and self.device.type == "cuda":
            torch.cuda.set_rng_state(data["rng"]["cuda"], self.device)

    def _metrics(self, row: dict) -> None:
        """Append one JSON line to <run>/metrics.jsonl (kept across resumes)."""
        if not self.world.main:
            return
        clean = {k: (_finite(v) if isinstance(v, float) else v) for k, v in row.items()}
        try:
            with open(self.out_dir / METRICS, "a", encoding="utf-8") as fh:
                fh.write(json.dumps(clean) + "\n")
        except OSError:
            pass  # metrics are a convenience; a full disk is reported when a checkpoint is saved

    def _write(self, *names: str) -> Iterator[Saved]:
        """Build the payload once and write it under each name (only rank 0 writes)."""
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise TrainingError("The weights are no longer finite; no checkpoint was written and the previous ones are intact.")
        payload = self.payload()  # a collective under DDP: every rank takes part
        for name in names:
            path = checkpoint.save(payload, self.out_dir / name) if self.world.main else self.out_dir / name
            yield Saved(str(path), name)

    def save(self, improved: bool) -> Iterator[Saved]:
        best = improved or not (self.out_dir / checkpoint.BEST).exists()
        yield from self._write(checkpoint.LATEST, *([checkpoint.BEST] if best else []))

    def validate(self) -> float:
        """Validation loss in nats per character (NaN when there is no validation text)."""
        if self.val_streams is None:
            return math.nan
        result = evaluate(self.model, self.val_streams, self.config.seq_len, self.device, self.bf16, self.char_lengths)
        if self.world.active:
            nats, chars = dist_utils.all_sum(self.world, torch.tensor(result.nats, device=self.device),
                                             torch.tensor(float(result.chars), device=self.device))
            return float(nats) / float(chars)
        return result.per_char

    def evaluate_and_save(self) -> Iterator[Evaluated | Saved]:
        val = self.validate()
        self.last_val = val
        improved = math.isfinite(val) and val < self.best_val
        if improved:
            self.best_val = val
            self.evals_without_improvement = 0
        else:
            self.evals_without_improvement += 1
        if math.isfinite(val):
            self.history.val.append([self.step, val])
        self._metrics({"event": "eval", "step": self.step, "epoch": self.epoch, "val_loss": _finite(val),
                       "best_val_loss": _finite(self.best_val), "elapsed": self.elapsed})
        yield Evaluated(self.step, val, self.best_val, improved)
        # Without validation text there is nothing to compare: best follows latest.
        yield from self.save(improved or self.val_streams is None)
        patience = self.config.patience
        if patience and self.evals_without_improvement >= patience:
            self.request_stop(f"early stopping: no improvement in {patience} evaluations")
            self._stop_agreed = True  # every rank saw the same validation loss

    # -- the loop -------------------------------------------------------------------------
    def run(self) -> Iterator[Started | Progress | Evaluated | Saved | Finished]:
        try:
            yield from self._run()
        finally:
            if self.lock is not None:
                self.lock.release()

    def _run(self) -> Iterator[Started | Progress | Evaluated | Saved | Finished]:
        c = self.config
        model, opt, device = self.model, self.optimizer, self.device
        self.out_dir.mkdir(parents=True, exist_ok=True)
        yield Started(
            device_name(device),
            model.num_parameters(),
            self.train_streams.numel(),
            0 if self.val_streams is None else self.val_streams.numel(),
            self.vocab.size,
            self.windows_per_epoch,
            str(self.out_dir),
            self.sizing,
        )
        model.train()
        params = [p for p in model.parameters()]
        net = self.net
        tokens_per_step = c.batch_size * c.seq_len  # global: all ranks together
        loss_sum = torch.zeros((), device=device)
        good_steps = torch.zeros((), device=device)
        norm_sum = torch.zeros((), device=device)
        start = time.monotonic() - self.elapsed
        first_step, first_elapsed, self.eval_time = self.step, self.elapsed, 0.0
        last_log_time, last_log_step = time.monotonic(), self.step
        evaluated_at = None
        while True:
            elapsed = time.monotonic() - start
            fraction = self.fraction(elapsed)
            if fraction >= 1.0 or (self.stop_requested and (self._stop_agreed or not self.world.active)):
                break
            lr = self.lr_at(fraction)
            for group in opt.param_groups:
                group["lr"] = lr

            t = self.window * c.seq_len
            x = self.train_streams[:, t : t + c.seq_len].to(device, non_blocking=True)  # (B, T)
            y = self.train_streams[:, t + 1 : t + c.seq_len + 1].to(device, non_blocking=True).long()
            with autocast(device, self.bf16):
                logits, state = net(x, self.state)  # (B, T, V)
                loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            norm = torch.nn.utils.clip_grad_norm_(params, c.grad_clip if c.grad_clip > 0 else math.inf)
            bad = ~(torch.isfinite(loss.detach()) & torch.isfinite(norm))  # () bool, stays on device
            bad = dist_utils.all_max(self.world, bad.to(torch.uint8)).bool()  # skip on every rank or none
            if self.fused:
                opt.found_inf = bad.float()
                opt.step()
            elif not bool(bad):
                opt.step()
            self.skipped += bad
            self.bad_streak = (self.bad_streak + 1) * bad
            # A non-finite step may have poisoned the carried state: restart it from zero.
            self.state = tuple(torch.where(bad, torch.zeros_like(s), s.detach()) for s in state)
            loss_sum += torch.where(bad, torch.zeros_like(loss), loss.detach())
            norm_sum += torch.where(bad, torch.zeros_like(norm), norm.detach())
            good_steps += ~bad
            self.step += 1
            self.window += 1
            if self.window >= self.windows_per_epoch:
                self.window = 0
                self.epochs_done += 1
                self.state = model.init_state(self.local_batch, device)

            self.elapsed = time.monotonic() - start
            if self.step % c.log_every == 0:
                now = time.monotonic()
                if self.world.active:
                    # One exchange per log step: rank 0's clock, anyone's stop request, and
                    # the loss sums, so every rank takes the same decisions.
                    (self.synced_elapsed,) = dist_utils.broadcast_floats(self.world, [self.elapsed], device)
                    stop = float(dist_utils.all_max(self.world, torch.tensor(float(self.stop_requested), device=device)))
                    if stop:
                        self._stop_agreed = True
                        if not self.stop_requested:
                            self.request_stop("interrupted on another process")
                    loss_sum, good_steps, norm_sum = [v / self.world.size for v in dist_utils.all_sum(
                        self.world, loss_sum, good_steps, norm_sum)]
                if int(self.bad_streak) >= c.max_bad_steps:
                    raise TrainingError(
                        f"Training stopped at step {self.step}: the loss or gradients were not finite "
                        f"for {int(self.bad_streak)} steps in a row (those updates were skipped); lower "
                        f"--lr or check the data. The last good checkpoint in {self.out_dir} is intact."
                    )
                n_good = float(good_steps)
                token_loss = float(loss_sum) / n_good if n_good else math.nan
                train_loss = token_loss / self.chars_per_token
                if n_good:
                    self.history.train.append([self.step, train_loss])
                speed = (self.step - last_log_step) * tokens_per_step * self.chars_per_token / max(now - last_log_time, 1e-9)
                grad_norm = float(norm_sum) / n_good if n_good else math.nan
                progress = Progress(self.step, self.epoch, train_loss, lr, speed, self.elapsed,
                                    self.fraction(self.elapsed), int(self.skipped), token_loss, grad_norm)
                self._metrics({"event": "train", **asdict(progress), "val_loss": _finite(self.last_val)})
                yield progress
                loss_sum.zero_()
                good_steps.zero_()
                norm_sum.zero_()
                last_log_time, last_log_step = now, self.step
            if self.step % c.eval_every == 0:
                t_eval = time.monotonic()
                yield from self.evaluate_and_save()
                evaluated_at = self.step
                # Evaluation and saving count against --max-time but not against chars/s.
                self.eval_time += time.monotonic() - t_eval
                last_log_time = time.monotonic()
            if c.keep_every and self.step % c.keep_every == 0:
                yield from self._write(f"step-{self.step:08d}.pt")
        train_time = time.monotonic() - start - first_elapsed - self.eval_time
        if float(good_steps):
            self.history.train.append([self.step, float(loss_sum) / float(good_steps) / self.chars_per_token])
        reason = self._stop_reason or "budget reached"
        if self._stop_reason is not None and not self._stop_reason.startswith("early"):
            yield from self._write(checkpoint.LATEST)  # interrupted: save where we are, no evaluation
        elif evaluated_at != self.step:
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
