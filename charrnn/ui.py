"""How the CLI shows training progress on stderr (rich on a terminal, plain lines otherwise).

Only the CLI imports this module; the library yields events and never prints.
"""

from __future__ import annotations

import math
import time

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

from .durations import format_duration
from .events import LN2, Evaluated, Finished, Note, Progress as Step, Saved, Started, Status


def _loss(nats: float) -> str:
    if not math.isfinite(nats):
        return "n/a"
    return f"{nats:.4f} ({nats / LN2:.3f} bpc)"


def sizing_line(sizing: dict) -> str:
    """One sentence on what the sizing rule chose and why (see charrnn.sizing)."""
    chosen = []
    if "hidden_size" in sizing["auto"]:
        chosen.append(f"{sizing['hidden_size']} units per layer")
    if "dropout" in sizing["auto"]:
        chosen.append(f"dropout {sizing['dropout']:g}")
    why = {"budget": "a larger network would not see enough text in the budget",
           "corpus": "a larger network would have too many weights for this corpus",
           "ladder": "the largest size tried"}[sizing["limit"]]
    text = f"Sized to the corpus and budget: {' and '.join(chosen)}, for about {sizing['tokens_seen']:,.0f} tokens "
    text += f"({sizing['epochs']:.1f} passes over {sizing['train_tokens']:,})"
    return text + (f"; {why}." if "hidden_size" in sizing["auto"] else ".")


class TrainView:
    """Renders `Trainer.run()` events: a live bar on a TTY, a line every few seconds elsewhere."""

    def __init__(self, console: Console, quiet: bool = False, plain_every: float = 10.0):
        self.console = console
        self.quiet = quiet
        self.live = console.is_terminal and not quiet
        self.plain_every = plain_every
        self._last_plain = -math.inf
        self._bar: Progress | None = None
        self._task = None
        self._val = math.nan

    def __enter__(self):
        if self.live:
            self._bar = Progress(
                TextColumn("[bold]step {task.fields[step]}[/] ep {task.fields[epoch]}"),
                BarColumn(),
                TaskProgressColumn(),
                TextColumn("loss {task.fields[loss]}  val {task.fields[val]}"),
                TextColumn("{task.fields[speed]} ch/s  {task.fields[elapsed]} ETA {task.fields[eta]}"),
                console=self.console,
                transient=False,
            )
            self._bar.__enter__()
            self._task = self._bar.add_task(
                "train", total=1000, step=0, epoch="0.00", loss="…", val="…", speed="…", elapsed="0s", eta="…"
            )
        return self

    def __exit__(self, *exc):
        if self._bar is not None:
            self._bar.__exit__(*exc)
        return False

    def log(self, message: str) -> None:
        if not self.quiet:
            self.console.print(message, highlight=False, markup=False)

    def handle(self, event) -> None:
        if isinstance(event, Note):
            self.log(f"Note: {event.text}")
        elif isinstance(event, Status):
            pass
        elif isinstance(event, Started):
            self.log(
                f"Training on {event.device}: {event.num_parameters:,} parameters, vocabulary "
                f"{event.vocab_size}, {event.train_tokens:,} training and {event.val_tokens:,} "
                f"validation tokens, {event.windows_per_epoch} windows per epoch; checkpoints in {event.out_dir}"
            )
            if event.sizing:
                self.log(sizing_line(event.sizing))
        elif isinstance(event, Step):
            eta = event.elapsed * (1 - event.fraction) / event.fraction if event.fraction > 0 else math.nan
            eta_text = format_duration(eta) if math.isfinite(eta) else "…"
            if self._bar is not None:
                self._bar.update(
                    self._task,
                    completed=int(event.fraction * 1000),
                    step=event.step,
                    epoch=f"{event.epoch:.2f}",
                    loss=f"{event.train_loss:.4f}",
                    val="…" if not math.isfinite(self._val) else f"{self._val:.4f}",
                    speed=f"{event.chars_per_sec:,.0f}",
                    elapsed=format_duration(event.elapsed),
                    eta=eta_text,
                )
            elif not self.quiet and time.monotonic() - self._last_plain >= self.plain_every:
                self._last_plain = time.monotonic()
                per_token = (f" [{event.train_loss_token:.4f} nats/token]"
                             if math.isfinite(event.train_loss_token) and abs(event.train_loss_token - event.train_loss) > 1e-9 else "")
                self.log(
                    f"step {event.step}  epoch {event.epoch:.2f}  train {_loss(event.train_loss)}{per_token}  "
                    f"lr {event.lr:.2e}  {event.chars_per_sec:,.0f} chars/s  "
                    f"elapsed {format_duration(event.elapsed)}  ETA {eta_text}"
                )
        elif isinstance(event, Evaluated):
            self._val = event.val_loss
            mark = "  (best)" if event.improved else ""
            self.log(f"step {event.step}  val {_loss(event.val_loss)}{mark}")
        elif isinstance(event, Saved):
            pass  # reported once at the end; a line per save would drown the progress
        elif isinstance(event, Finished):
            if self._bar is not None:
                self._bar.update(self._task, completed=1000)
            self.log(
                f"Done ({event.reason}) after {event.step} steps, {event.epoch:.2f} epochs, "
                f"{format_duration(event.elapsed)}, {event.chars_per_sec:,.0f} chars/s. "
                f"Best val {_loss(event.best_val_loss)}, final val {_loss(event.final_val_loss)}."
            )
            written = [f"{event.out_dir}/{kind}.pt" for kind in ("best", "latest") if kind in event.saved]
            if written:
                self.log(f"Checkpoints: {' and '.join(written)}. Sample with: charrnn sample -c {event.out_dir}")
