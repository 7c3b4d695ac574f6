"""How the CLI shows training on stderr: live status lines and a self-refreshing bar on a
terminal, plain periodic lines elsewhere (logs, CI).

Only the CLI imports this module; the library yields `charrnn.events` and never prints.
Losses are shown in bits per character first (what people compare), nats beside them.
"""

from __future__ import annotations

import math
import time

from rich.console import Console
from rich.progress import BarColumn, Progress, ProgressColumn, Task, TaskProgressColumn, TextColumn
from rich.text import Text

from ..durations import format_duration
from ..events import LN2, Evaluated, Finished, Note, Sampled, Saved, Started, Status
from ..events import Progress as Step
from .terminal import safe_text


def bits(nats: float) -> str:
    """A loss in nats as "1.234 bpc", or "n/a"."""
    return f"{nats / LN2:.3f} bpc" if math.isfinite(nats) else "n/a"


def loss_line(nats: float) -> str:
    """A loss for a summary line: bits/char first, nats/char beside it."""
    if not math.isfinite(nats):
        return "n/a"
    return f"{nats / LN2:.4f} bits/char ({nats:.4f} nats/char)"


def update_text(event: Started) -> str:
    """The start line's mention of the update, e.g. ", Muon at peak lr 0.005, weight decay
    0.1" ("" when unknown)."""
    if event.optimizer is None:
        return ""
    name = {"adamw": "AdamW", "muon": "Muon"}.get(event.optimizer, event.optimizer)
    text = f", {name} at peak lr {event.lr:g}" if event.lr is not None else f", {name}"
    return text + (f", weight decay {event.weight_decay:g}" if event.weight_decay is not None else "")


def sizing_line(sizing: dict) -> str:
    """One sentence on what the sizing rule chose and why (see charrnn.training.sizing)."""
    chosen = []
    if "hidden_size" in sizing["auto"]:
        chosen.append(f"{sizing['hidden_size']} units per layer")
    if "weight_drop" in sizing["auto"] and sizing.get("weight_drop"):
        chosen.append(f"weight drop {sizing['weight_drop']:g}")
    elif "dropout" in sizing["auto"]:
        chosen.append(f"dropout {sizing['dropout']:g}")
    why = {"budget": "a larger network would not see enough text in the budget",
           "steps": "a larger network would make too few optimizer steps in the budget",
           "corpus": "a larger network would have too many weights for this corpus",
           "ladder": "the largest size tried"}[sizing["limit"]]
    text = f"Sized to the corpus and budget: {' and '.join(chosen)}, for about {sizing['tokens_seen']:,.0f} tokens "
    text += f"({sizing['epochs']:.1f} passes over {sizing['train_tokens']:,})"
    text += f"; {why}." if "hidden_size" in sizing["auto"] else "."
    if sizing.get("adamw_for_passes"):
        text += " AdamW rather than Muon for that many passes."
    if sizing.get("timed"):
        text += " Timed here: " + ", ".join(f"{h} units {rate:,.0f} tokens/s" for h, rate in sizing["timed"]) + "."
    return text


class ClockColumn(ProgressColumn):
    """Elapsed time and ETA that keep moving between progress events: they are extrapolated
    from the last event's values and the time since it arrived (until the run finishes)."""

    def __init__(self, clock=time.monotonic):
        super().__init__()
        self.clock = clock

    def render(self, task: Task) -> Text:
        f = task.fields
        since = 0.0 if f["final"] else self.clock() - f["at"]
        elapsed = f["elapsed"] + since
        eta = f["eta"] - since
        if f["final"]:
            eta_text = "done" if f["final"] == "budget reached" else "stopped"
        else:
            eta_text = format_duration(eta) if math.isfinite(eta) else "…"
        return Text(f"{format_duration(elapsed)} ETA {eta_text}")


class TrainView:
    """Renders a run's events: set-up status lines, then the live bar on a TTY; a line every
    `plain_every` seconds elsewhere. Notes, evaluations and samples are printed above the
    bar; at the end the bar is stopped on its real last frame and the summary follows it."""

    def __init__(self, console: Console, quiet: bool = False, plain_every: float = 10.0, clock=time.monotonic):
        self.console = console
        self.quiet = quiet
        self.live = console.is_terminal and not quiet
        self.plain_every = plain_every
        self.clock = clock
        self._last_plain = -math.inf
        self._status = None
        self._bar: Progress | None = None
        self._task = None
        self._val = math.nan

    # -- lifetime ----------------------------------------------------------------------------
    def __enter__(self):
        if self.live:
            self._status = self.console.status("Starting…", spinner="dots")
            self._status.start()
        return self

    def __exit__(self, *exc):
        self._stop_status()
        if self._bar is not None:
            self._bar.stop()  # on an error: leave the bar where it was
            self._bar = None
        return False

    def _stop_status(self) -> None:
        if self._status is not None:
            self._status.stop()
            self._status = None

    def _start_bar(self) -> None:
        self._bar = Progress(
            TextColumn("[bold]step {task.fields[step]}[/] ep {task.fields[epoch]}"),
            BarColumn(bar_width=24),
            TaskProgressColumn(),
            TextColumn("train {task.fields[train]}  val {task.fields[val]}  lr {task.fields[lr]}  {task.fields[speed]} ch/s"),
            ClockColumn(self.clock),
            console=self.console,
            transient=False,
            refresh_per_second=4,
        )
        self._task = self._bar.add_task("train", total=1000, step=0, epoch="0.00", train="…", val="…", lr="…",
                                        speed="…", elapsed=0.0, eta=math.nan, at=self.clock(), final=False)
        self._bar.start()

    def log(self, message: str) -> None:
        if not self.quiet:
            try:
                # Notes and samples can carry text from files (names, a model's output).
                self.console.print(safe_text(message, keep_lines=True), highlight=False, markup=False)
            except OSError:  # stderr closed (`2>&1 | head`): keep training, stop talking
                self.quiet = True

    # -- events ------------------------------------------------------------------------------
    def handle(self, event) -> None:
        if isinstance(event, Status):  # a spinner on a terminal; logs get the Started line instead
            if self._status is not None:
                self._status.update(event.text + "…")
        elif isinstance(event, Note):
            self.log(f"Note: {event.text}")
        elif isinstance(event, Started):
            self._stop_status()
            self.log(
                f"Training on {event.device}: {event.num_parameters:,} parameters, vocabulary "
                f"{event.vocab_size}, {event.train_tokens:,} training and {event.val_tokens:,} "
                f"validation tokens, {event.windows_per_epoch} windows per epoch{update_text(event)}; "
                f"checkpoints in {event.out_dir}"
            )
            if event.sizing:
                self.log(sizing_line(event.sizing))
            if self.live:
                self._start_bar()
        elif isinstance(event, Step):
            self._step(event)
        elif isinstance(event, Evaluated):
            self._val = event.val_loss
            mark = "  (best)" if event.improved else ""
            self.log(f"step {event.step}  val {loss_line(event.val_loss)}{mark}")
            if self._bar is not None:
                self._bar.update(self._task, val=bits(event.val_loss))
        elif isinstance(event, Sampled):
            self.log(f"--- sample at step {event.step} (val {bits(event.val_loss)}) ---\n{event.text.rstrip()}\n---")
        elif isinstance(event, Saved):
            pass  # reported once at the end; a line per save would drown the progress
        elif isinstance(event, Finished):
            self._finish(event)

    def _step(self, event: Step) -> None:
        eta = event.elapsed * (1 - event.fraction) / event.fraction if event.fraction > 0 else math.nan
        if self._bar is not None:
            self._bar.update(
                self._task, completed=int(event.fraction * 1000), step=f"{event.step:,}", epoch=f"{event.epoch:.2f}",
                train=bits(event.train_loss), lr=f"{event.lr:.1e}", speed=f"{event.chars_per_sec:,.0f}",
                elapsed=event.elapsed, eta=eta, at=self.clock(),
            )
        elif not self.quiet and self.clock() - self._last_plain >= self.plain_every:
            self._last_plain = self.clock()
            per_token = (f" [{event.train_loss_token:.4f} nats/token]"
                         if math.isfinite(event.train_loss_token) and abs(event.train_loss_token - event.train_loss) > 1e-9 else "")
            eta_text = format_duration(eta) if math.isfinite(eta) else "…"
            self.log(
                f"step {event.step}  epoch {event.epoch:.2f}  train {loss_line(event.train_loss)}{per_token}  "
                f"lr {event.lr:.2e}  {event.chars_per_sec:,.0f} chars/s  "
                f"elapsed {format_duration(event.elapsed)}  ETA {eta_text}"
            )

    def _finish(self, event: Finished) -> None:
        if self._bar is not None:
            # The last frame tells the truth: where the run stopped (not 100% after a
            # Ctrl-C), its final step and validation loss; then the summary goes below it.
            task = self._bar.tasks[0]
            completed = 1000 if event.reason == "budget reached" else task.completed
            self._bar.update(self._task, completed=completed, step=f"{event.step:,}", epoch=f"{event.epoch:.2f}",
                             val=bits(event.final_val_loss) if math.isfinite(event.final_val_loss) else task.fields["val"],
                             elapsed=event.elapsed, eta=0.0, final=event.reason)
            self._bar.stop()
            self._bar = None
        self.log(
            f"Done ({event.reason}) after {event.step:,} steps, {event.epoch:.2f} epochs, "
            f"{format_duration(event.elapsed)}, {event.chars_per_sec:,.0f} chars/s. "
            f"Best val {loss_line(event.best_val_loss)}, final val {loss_line(event.final_val_loss)}."
        )
        written = [f"{event.out_dir}/{kind}.pt" for kind in ("best", "latest") if kind in event.saved]
        if written:
            self.log(f"Checkpoints: {' and '.join(written)}. Sample with: charrnn sample -c {event.out_dir}")
