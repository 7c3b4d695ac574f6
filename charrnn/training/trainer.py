"""The training loop: truncated BPTT over contiguous streams with carried, detached state.

`Trainer.run()` is a generator of progress events; it never prints and does not know file
names (its `RunDir` does). Losses stay on the device and are read back only when an event
is due, so a GPU step never waits on the host. What must survive a restart is one
`RunState` plus the optimizer, the carried state and the RNG states, saved and restored
whole through a `Checkpoint`.
"""

from __future__ import annotations

import math
import random
import time
from dataclasses import asdict
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from ..checkpoint.store import Checkpoint, ResumeState, RunState, save
from ..config import ModelConfig, TrainConfig
from ..devices import (
    autocast,
    bf16_works,
    device_name,
    local_device,
    precision_name,
    rng_state,
    set_rng_state,
    use_bf16,
)
from ..errors import CharrnnError, ConfigError
from ..events import LN2, Evaluated, Finished, Progress, Sampled, Saved, Started  # noqa: F401  (re-exported)
from ..model.evaluation import evaluate
from ..model.network import CharRNN, State
from ..paths import RunDir
from ..text.corpus import as_streams
from . import distributed as dist_utils
from . import optim
from .distributed import World
from .metrics import MetricsLog, open_to_append
from .schedule import budget_fraction, lr_at
from .sizing import Sizing


class TrainingError(CharrnnError):
    """Training cannot go on (e.g. the loss stays non-finite)."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def chars_per_token(vocab, train_ids: np.ndarray) -> float:
    """Characters per token over the training text: converts per-token losses and speeds
    to per-character figures (exactly 1 for a character vocabulary)."""
    lengths = vocab.char_lengths()
    if (lengths == 1).all():
        return 1.0
    block = 1 << 22
    total = sum(int(lengths[np.asarray(train_ids[i : i + block])].sum()) for i in range(0, len(train_ids), block))
    return total / max(len(train_ids), 1)


class _Sums:
    """Loss and gradient-norm sums between log steps, kept on the device."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), device=device)
        self.norm = torch.zeros((), device=device)
        self.good = torch.zeros((), device=device)

    def reset(self) -> None:
        for t in (self.loss, self.norm, self.good):
            t.zero_()


class Trainer:
    """Owns model, optimizer and data layout for one run; `run()` yields events.

    `sizing` (what charrnn.training.sizing chose) and `corpus` (what describes the training text)
    are stored in every checkpoint; `run_dir` is where checkpoints and metrics go.
    """

    def __init__(
        self,
        model_config: ModelConfig,
        config: TrainConfig,
        vocab,
        train_ids: np.ndarray,
        val_ids: np.ndarray,
        run_dir: RunDir | str | Path,
        corpus: dict | None = None,
        world: World = World(),
        sizing: Sizing | None = None,
    ):
        self.config = config
        self.world = world
        self.model_config = model_config
        self.vocab = vocab
        self.run_dir = run_dir if isinstance(run_dir, RunDir) else RunDir(run_dir)
        self.sizing = None if sizing is None else sizing.to_dict()  # as the checkpoint stores it
        self.corpus = {**(corpus or {}), **({"sizing": self.sizing} if sizing else {})}
        self.metrics = MetricsLog(self.run_dir.metrics if world.main else None)
        if config.batch_size % world.size:
            raise ConfigError(f"--batch-size {config.batch_size} must be a multiple of the {world.size} processes.")
        lengths = vocab.char_lengths()
        self.char_lengths = None if (lengths == 1).all() else torch.from_numpy(lengths)
        self.device = local_device(config.device, world.local_rank if world.active else None)
        self._build_model()
        self._layout_data(train_ids, val_ids)
        self.optimizer, self.fused = optim.build(self.model, self.config)
        self.progress = RunState(chars_per_token=chars_per_token(vocab, train_ids))
        self._evaluations = 0  # in this process's run (--sample-every counts these)
        self.local_batch = config.batch_size // world.size
        self.state: State = self.model.init_state(self.local_batch, self.device)
        self.skipped = torch.zeros((), dtype=torch.long, device=self.device)
        self.bad_streak = torch.zeros((), dtype=torch.long, device=self.device)
        self.synced_elapsed = 0.0  # the clock all ranks agree on (rank 0's, shared at log steps)
        self.saved: set[str] = set()
        self._stop_reason: str | None = None
        self._stop_agreed = False  # under DDP a stop waits until every rank knows of it

    # -- set-up ----------------------------------------------------------------------------
    def _build_model(self) -> None:
        """Identical initial weights on every rank; bf16 only where the recurrent kernels run it."""
        seed_everything(self.config.seed)
        self.model = CharRNN(self.model_config).to(self.device)
        self.bf16 = use_bf16(self.device, self.config.precision)
        if self.bf16 and self.device.type == "cuda" and not bf16_works(self.model, self.device):
            if self.config.precision == "bf16":
                raise ConfigError("--precision bf16 was requested but this GPU's cuDNN cannot run the recurrent layers "
                                  "in bfloat16.")
            self.bf16 = False  # older cuDNN: recurrent kernels have no bfloat16, stay in float32
        self.net = self.model
        if self.world.active:
            from torch.nn.parallel import DistributedDataParallel

            dist_utils.init(self.world, self.device)
            # One precision for every process (each CPU's probe answers for itself): bf16
            # only where all of them chose it.
            declined = torch.tensor(0 if self.bf16 else 1, device=self.device)
            self.bf16 = not bool(dist_utils.all_max(self.world, declined))
            self.net = DistributedDataParallel(self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
            torch.manual_seed(self.config.seed + self.world.rank)  # each rank draws its own dropout masks

    def _layout_data(self, train_ids: np.ndarray, val_ids: np.ndarray) -> None:
        """B training streams and up to B validation streams; each rank owns a contiguous
        block of rows [rank*B/W, (rank+1)*B/W); on a GPU they live on the device."""
        c = self.config
        if len(train_ids) < c.batch_size * 2:
            held = f" (--val-fraction {c.val_fraction:g} holds out {len(val_ids):,} more)" if len(val_ids) else ""
            raise ConfigError(
                f"The training text is too short for --batch-size {c.batch_size}: it needs at least "
                f"{c.batch_size * 2} tokens but has {len(train_ids):,}{held}; lower --batch-size"
                + (" or --val-fraction." if held else ".")
            )
        train = as_streams(train_ids, c.batch_size)
        val_ids = val_ids[: c.eval_max_tokens]
        val_batch = max(1, min(c.batch_size, len(val_ids) // (c.seq_len + 1)))
        val_batch = max(self.world.size, val_batch - val_batch % self.world.size)
        val = as_streams(val_ids, val_batch) if len(val_ids) >= 2 * val_batch else None
        self.train_streams = self._own_rows(train).to(self.device)  # (B/W, L)
        self.val_streams = None if val is None else self._own_rows(val).to(self.device)

    def _own_rows(self, streams: torch.Tensor) -> torch.Tensor:
        if not self.world.active:
            return streams
        per = streams.size(0) // self.world.size
        return streams[self.world.rank * per : (self.world.rank + 1) * per]

    def request_stop(self, reason: str) -> None:
        """Ask the loop to stop after the current step and save (safe from a signal handler)."""
        self._stop_reason = reason

    @property
    def stop_requested(self) -> bool:
        return self._stop_reason is not None

    # -- where the run stands ----------------------------------------------------------------
    @property
    def step(self) -> int:
        return self.progress.step

    @property
    def windows_per_epoch(self) -> int:
        """Windows of up to T per pass: the last one is shorter when T does not divide the
        stream, so every target of every stream is trained on once per epoch."""
        return math.ceil((self.train_streams.size(1) - 1) / self.config.seq_len)

    @property
    def epoch(self) -> float:
        return self.progress.epochs_done + self.progress.window / self.windows_per_epoch

    def fraction(self, elapsed: float) -> float:
        clock = self.synced_elapsed if self.world.active else elapsed
        return budget_fraction(self.config, self.progress.step, self.epoch, clock)

    # -- checkpoints ---------------------------------------------------------------------
    def checkpoint(self) -> Checkpoint:
        """Everything needed to continue exactly (a collective under DDP: every rank calls it)."""
        self.progress.epoch = self.epoch
        self.progress.skipped_steps = int(self.skipped)
        state = dist_utils.gather_streams(self.world, self.state)
        rngs = dist_utils.gather_objects(self.world, rng_state(self.device))
        weights = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
        return Checkpoint(
            model_config=self.model_config,
            weights=weights,
            vocab=self.vocab.to_dict(),
            train_config=self.config,
            corpus=dict(self.corpus),
            progress=RunState(**asdict(self.progress)),
            resume=ResumeState(self.optimizer.state_dict(), tuple(s.detach().cpu() for s in state), rngs),
            device=self.device_text(),
            num_parameters=self.model.num_parameters(),
        )

    def device_text(self) -> str:
        """The device and the precision this run trains in, for the start line and `info`."""
        return f"{device_name(self.device)}, {precision_name(self.bf16)}"

    def restore(self, ckpt: Checkpoint) -> None:
        """Continue from a checkpoint exactly where it was written."""
        if not ckpt.resumable:
            raise ConfigError(f"{ckpt.path} holds weights only (an exported model), so it cannot be resumed.")
        # A run of an earlier version with a weight average kept the weights it trained on apart.
        self.model.load_state_dict(ckpt.resume.train_weights if ckpt.resume.train_weights is not None else ckpt.weights)
        try:
            self.optimizer.load_state_dict(ckpt.resume.optimizer)
        except (ValueError, KeyError, IndexError) as e:  # groups of another shape: another version's split
            raise ConfigError(
                f"Cannot resume {ckpt.path}: its optimizer state does not fit this version's --optimizer "
                f"{self.config.optimizer} (it groups the weights differently); start a new run from its "
                f"weights with --init-from instead."
            ) from e
        self.progress = RunState(**asdict(ckpt.progress))
        self.synced_elapsed = self.progress.elapsed
        self.skipped.fill_(self.progress.skipped_steps)
        rows = slice(self.world.rank * self.local_batch, (self.world.rank + 1) * self.local_batch)
        self.state = tuple(s[:, rows].to(self.device) for s in ckpt.resume.state)  # float32 (the schema casts)
        rngs = ckpt.resume.rng
        if len(rngs) == self.world.size:
            set_rng_state(rngs[self.world.rank], self.device)
        elif self.world.main:  # saved by another number of processes: rank 0 continues its draws
            set_rng_state(rngs[0], self.device)
        else:
            torch.manual_seed(self.config.seed + 7919 * self.progress.step + self.world.rank)

    def _write(self, *kinds: str | int) -> Iterator[Saved]:
        """Build the checkpoint once and write it under each kind (only rank 0 writes)."""
        if not all(bool(torch.isfinite(p).all()) for p in self.model.parameters()):
            raise TrainingError("The weights are no longer finite; no checkpoint was written.")
        ckpt = self.checkpoint()
        for kind in kinds:
            path = save(ckpt, self.run_dir.checkpoint(kind)) if self.world.main else self.run_dir.checkpoint(kind)
            name = "snapshot" if isinstance(kind, int) else kind
            self.saved.add(name)
            yield Saved(str(path), name)

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
        p = self.progress
        val = self.validate()
        p.val_loss = val if math.isfinite(val) else None
        best = p.best_val_loss if p.best_val_loss is not None else math.inf
        improved = math.isfinite(val) and val < best
        if improved:
            p.best_val_loss, best = val, val
            p.evals_without_improvement = 0
        else:
            p.evals_without_improvement += 1
        if math.isfinite(val):
            p.history_val.append([p.step, val])
        self.metrics.write({"event": "eval", "step": p.step, "epoch": self.epoch, "val_loss": val,
                            "best_val_loss": best, "elapsed": p.elapsed})
        yield Evaluated(p.step, val, best, improved)
        self._evaluations += 1
        every = self.config.sample_every
        if every and self._evaluations % every == 0 and self.world.main:
            yield self._sample(val)
        # Without validation text there is nothing to compare: best follows latest.
        with_best = improved or self.val_streams is None or not self.run_dir.best.exists()
        yield from self._write("latest", *(["best"] if with_best else []))
        patience = self.config.patience
        if patience and p.evals_without_improvement >= patience:
            self.request_stop(f"early stopping: no improvement in {patience} evaluations")
            self._stop_agreed = True  # every rank saw the same validation loss

    def _sample(self, val_loss: float) -> Sampled:
        """--sample-every: a short sample from the model as it is now, appended to
        samples.txt. Its own generator (seeded by the run's seed and the step) leaves the
        training RNG alone, so a run with samples trains exactly like one without."""
        from ..config import SampleConfig
        from ..model.sampling import Sampler

        c, p = self.config, self.progress
        cfg = SampleConfig(temperature=c.sample_temp, length=c.sample_length, seed=(c.seed + p.step) % (2**63))
        try:
            text = "".join(chunk.texts[0] for chunk in Sampler(self.model, self.vocab, self.device).generate("", cfg))
        finally:
            self.model.train()
        bits = f"{val_loss / LN2:.4f} bits/char" if math.isfinite(val_loss) else "no validation"
        try:
            with open_to_append(self.run_dir.samples) as fh:
                fh.write(f"--- step {p.step}, epoch {self.epoch:.2f}, val {bits} ---\n{text}\n\n")
        except OSError as exc:
            raise ConfigError(f"Cannot append to {self.run_dir.samples}: {exc.strerror or exc}.") from None
        return Sampled(p.step, val_loss, text)

    # -- the loop -------------------------------------------------------------------------
    def _train_step(self, lr: float, sums: _Sums) -> int:
        """One optimizer step on the next window; returns the tokens it trained on (all ranks)."""
        c, p = self.config, self.progress
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        t = p.window * c.seq_len
        end = min(t + c.seq_len, self.train_streams.size(1) - 1)
        x = self.train_streams[:, t:end]  # (B, T), T shorter for the last window of a pass
        y = self.train_streams[:, t + 1 : end + 1].long()
        with autocast(self.device, self.bf16):
            logits, state = self.net(x, self.state)  # (B, T, V)
            loss = F.cross_entropy(logits.float().flatten(0, 1), y.flatten())
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip if c.grad_clip > 0 else math.inf)
        bad = ~(torch.isfinite(loss.detach()) & torch.isfinite(norm))  # () bool, stays on device
        bad = dist_utils.all_max(self.world, bad.to(torch.uint8)).bool()  # skip on every rank or none
        if self.fused:
            self.optimizer.found_inf = bad.float()
            self.optimizer.step()
        elif not bool(bad):
            self.optimizer.step()
        self.skipped += bad
        self.bad_streak = (self.bad_streak + 1) * bad
        # A non-finite step may have poisoned the carried state: restart it from zero.
        self.state = tuple(torch.where(bad, torch.zeros_like(s), s.detach()) for s in state)  # float32: the model's contract
        sums.loss += torch.where(bad, torch.zeros_like(loss), loss.detach())
        sums.norm += torch.where(bad, torch.zeros_like(norm), norm.detach())
        sums.good += ~bad
        p.step += 1
        p.window += 1
        if p.window >= self.windows_per_epoch:
            p.window = 0
            p.epochs_done += 1
            self.state = self.model.init_state(self.local_batch, self.device)
        return x.numel() * self.world.size

    def _sync(self, sums: _Sums) -> None:
        """Under DDP, one exchange per log step: rank 0's clock, anyone's stop request and
        the loss sums, so every rank takes the same decisions."""
        if not self.world.active:
            return
        (self.synced_elapsed,) = dist_utils.broadcast_floats(self.world, [self.progress.elapsed], self.device)
        stop = float(dist_utils.all_max(self.world, torch.tensor(float(self.stop_requested), device=self.device)))
        if stop:
            self._stop_agreed = True
            if not self.stop_requested:
                self.request_stop("interrupted on another process")
        totals = dist_utils.all_sum(self.world, sums.loss, sums.good, sums.norm)
        for mine, total in zip((sums.loss, sums.good, sums.norm), totals):
            mine.copy_(total / self.world.size)

    def _log(self, sums: _Sums, lr: float, chars_per_sec: float) -> Progress:
        p = self.progress
        if int(self.bad_streak) >= self.config.max_bad_steps:
            kept = "the last good checkpoint is intact" if self.saved else "no checkpoint was written"
            raise TrainingError(
                f"Training stopped at step {p.step}: the loss or gradients were not finite for "
                f"{int(self.bad_streak)} steps in a row (those updates were skipped); lower --lr "
                f"or check the data; {kept}."
            )
        n_good = float(sums.good)
        token_loss = float(sums.loss) / n_good if n_good else math.nan
        train_loss = token_loss / p.chars_per_token
        if n_good:
            p.history_train.append([p.step, train_loss])
        grad_norm = float(sums.norm) / n_good if n_good else math.nan
        sums.reset()
        event = Progress(p.step, self.epoch, train_loss, lr, chars_per_sec, p.elapsed, self.fraction(p.elapsed),
                         int(self.skipped), token_loss, grad_norm)
        self.metrics.write({"event": "train", **asdict(event), "val_loss": p.val_loss})
        return event

    def run(self) -> Iterator[Started | Progress | Evaluated | Saved | Finished]:
        c, p = self.config, self.progress
        if self.world.main:
            self.run_dir.path.mkdir(parents=True, exist_ok=True)
        yield Started(self.device_text(), self.model.num_parameters(), self.train_streams.numel() * self.world.size,
                      0 if self.val_streams is None else self.val_streams.numel() * self.world.size,
                      self.vocab.size, self.windows_per_epoch, str(self.run_dir.path), self.sizing, c.optimizer, c.lr,
                      c.weight_decay)
        self.model.train()
        sums = _Sums(self.device)
        start = time.monotonic() - p.elapsed
        first_elapsed, eval_time, trained, since_log = p.elapsed, 0.0, 0, 0
        last_log, evaluated_at = time.monotonic(), None
        while True:
            fraction = self.fraction(time.monotonic() - start)
            if fraction >= 1.0 or (self.stop_requested and (self._stop_agreed or not self.world.active)):
                break
            lr = lr_at(c, p.step, fraction)
            tokens = self._train_step(lr, sums)
            trained, since_log = trained + tokens, since_log + tokens
            p.elapsed = time.monotonic() - start
            if p.step % c.log_every == 0:
                self._sync(sums)
                now = time.monotonic()
                yield self._log(sums, lr, since_log * p.chars_per_token / max(now - last_log, 1e-9))
                last_log, since_log = now, 0
            if p.step % c.eval_every == 0:
                t_eval = time.monotonic()
                yield from self.evaluate_and_save()
                evaluated_at = p.step
                eval_time += time.monotonic() - t_eval  # counts against --max-time, not against chars/s
                last_log = time.monotonic()
            if c.keep_every and p.step % c.keep_every == 0:
                yield from self._write(p.step)
        if float(sums.good):
            p.history_train.append([p.step, float(sums.loss) / float(sums.good) / p.chars_per_token])
        reason = self._stop_reason or "budget reached"
        if self._stop_reason is not None and not self._stop_reason.startswith("early"):
            yield from self._write("latest")  # interrupted: save where we are, no evaluation
        elif evaluated_at != p.step:
            yield from self.evaluate_and_save()
        train_time = time.monotonic() - start - first_elapsed - eval_time
        p.elapsed = time.monotonic() - start
        nan = math.nan
        yield Finished(p.step, self.epoch, p.best_val_loss if p.best_val_loss is not None else math.inf,
                       p.val_loss if p.val_loss is not None else nan, p.elapsed,
                       trained * p.chars_per_token / max(train_time, 1e-9), str(self.run_dir.path), reason,
                       tuple(sorted(self.saved)))
