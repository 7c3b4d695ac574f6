"""What a run tells the person watching it: set-up status, the live bar's fields and its
true last frame, plain lines for logs, and --sample-every."""

import io
import math

import pytest
from conftest import TINY
import torch
from rich.console import Console

from charrnn import train
from charrnn.checkpoint import store as checkpoint
from charrnn.cli.live import ClockColumn, TrainView
from charrnn.events import Evaluated, Finished, Note, Progress, Sampled, Started, Status
from charrnn.training.sizing import MUON_WEIGHT_DECAY, WEIGHT_DECAY, default_lr

TEXT = "the cat sat on the mat. " * 200
# conftest's tiny model at 32 units, with the rate, warmup and dropout of a new run left to charrnn
SMALL = {**TINY, "hidden_size": 32, "lr": None, "warmup_steps": None, "dropout": None, "device": "cpu"}


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def screen(raw: str) -> list[str]:
    """The lines a terminal ends up showing: escape sequences dropped, and of a line
    redrawn in place (carriage return) only its last drawing; cursor-up clears."""
    import re

    lines = []
    for line in raw.split("\n"):
        if "\x1b[1A" in line:  # a transient line (the status spinner) was taken back
            lines.pop()
        line = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", line).split("\r")[-1]
        lines.append(line)
    return lines


def terminal(width=200):
    out = io.StringIO()
    return Console(file=out, force_terminal=True, width=width, color_system=None), out


def started():
    return Started("cpu", 1000, 900, 100, 9, 10, "checkpoints/x")


def progress(step, fraction, loss=math.log(2) * 3, elapsed=10.0):
    return Progress(step=step, epoch=step / 10, train_loss=loss, lr=1e-3, chars_per_sec=5000, elapsed=elapsed,
                    fraction=fraction)


def test_clock_keeps_moving_between_events_and_stops_at_the_end():
    clock = FakeClock()
    console, _ = terminal()
    with TrainView(console, clock=clock) as view:
        view.handle(started())
        view.handle(progress(10, 0.25, elapsed=10.0))  # ETA 30 s
        column, task = ClockColumn(clock), view._bar.tasks[0]
        assert str(column.render(task)) == "10s ETA 30s"
        clock.now += 7  # no event for 7 seconds: the clock still moves
        assert str(column.render(task)) == "17s ETA 23s"
        view.handle(Finished(12, 1.2, math.log(2) * 2, math.log(2) * 2.5, 12.0, 5000, "checkpoints/x",
                             "interrupted by SIGINT", ("latest",)))
        clock.now += 100
        assert str(column.render(task)) == "12s ETA stopped"  # interrupted: not "done"


def test_last_frame_is_the_real_state_above_the_summary():
    console, out = terminal()
    with TrainView(console, clock=FakeClock()) as view:
        view.handle(Status("Reading corpus.txt"))
        view.handle(Note("something worth knowing"))
        view.handle(started())
        view.handle(progress(30, 0.03, loss=math.log(2) * 2.5))
        view.handle(Evaluated(30, math.log(2) * 2.25, math.log(2) * 2.25, True))
        view.handle(Finished(31, 3.1, math.log(2) * 2.25, math.log(2) * 2.25, 10.0, 5000, "checkpoints/x",
                             "interrupted by SIGINT", ("latest",)))
    text = out.getvalue()
    final = screen(text)
    done = next(i for i, line in enumerate(final) if line.startswith("Done (interrupted by SIGINT)"))
    bar = final[done - 1]  # the bar's last frame sits right above the summary, and only there
    assert "step 31" in bar and "3%" in bar and "100%" not in text
    assert "train 2.500 bpc" in bar and "val 2.250 bpc" in bar and "lr 1.0e-03" in bar and "ETA stopped" in bar
    assert not any("step 31" in line for line in final[done + 1:])
    assert "Note: something worth knowing" in text
    assert "Best val 2.2500 bits/char (1.5596 nats/char)" in final[done]


def test_plain_output_is_periodic_lines_in_bits_first_without_status():
    out = io.StringIO()
    console = Console(file=out, force_terminal=False, width=300)
    clock = FakeClock()
    with TrainView(console, plain_every=10, clock=clock) as view:
        view.handle(Status("Reading corpus.txt"))
        view.handle(started())
        view.handle(progress(10, 0.1))
        view.handle(progress(20, 0.2))  # within 10 s of the previous line: not printed
        clock.now += 11
        view.handle(progress(30, 0.3))
        view.handle(Sampled(30, math.log(2) * 2, "to be or not"))
    lines = out.getvalue().splitlines()
    assert not any("Reading" in line for line in lines)  # logs get no spinner text
    steps = [line for line in lines if line.startswith("step ")]
    assert [s.split()[1] for s in steps] == ["10", "30"]
    assert "train 3.0000 bits/char (2.0794 nats/char)" in steps[0]
    assert "--- sample at step 30 (val 2.000 bpc) ---" in lines and "to be or not" in lines


def test_the_start_line_names_the_update_its_peak_rate_and_weight_decay():
    out = io.StringIO()
    with TrainView(Console(file=out, force_terminal=False, width=400), clock=FakeClock()) as view:
        view.handle(Started("cpu", 1000, 900, 100, 9, 10, "checkpoints/x", None, "muon", 0.005, 0.1))
    line = next(line for line in out.getvalue().splitlines() if line.startswith("Training on cpu"))
    assert "10 windows per epoch, Muon at peak lr 0.005, weight decay 0.1; checkpoints in checkpoints/x" in line


def test_train_reports_set_up_stages_before_started(tmp_path):
    (tmp_path / "c.txt").write_text(TEXT)
    events = []
    train(tmp_path / "c.txt", out=tmp_path / "r", max_time=1, **{**SMALL, "hidden_size": None, "dropout": 0.0},
          on_event=events.append)
    kinds = [type(e).__name__ for e in events]
    first_started = kinds.index("Started")
    set_up = [e.text for e in events[:first_started] if isinstance(e, Status)]
    assert set_up[0].startswith("Reading ") and set_up[0].endswith("c.txt")
    assert any("timing" in s and "units per layer" in s for s in set_up)  # which widths were timed
    assert set_up[-1].startswith("Building a 1 x ")
    assert all(k in ("Status", "Note") for k in kinds[:first_started])
    chosen = events[first_started].sizing["optimizer"]  # the update the run got, named on the start line
    started = events[first_started]
    assert (started.optimizer, started.lr) == (chosen, default_lr("lstm", chosen))
    assert started.weight_decay == (MUON_WEIGHT_DECAY if chosen == "muon" else WEIGHT_DECAY)
    timed = events[first_started].sizing["timed"]
    assert timed and all(h > 0 and rate > 0 for h, rate in timed)


def test_sample_every_writes_samples_and_leaves_training_unchanged(tmp_path):
    (tmp_path / "c.txt").write_text(TEXT)
    options = dict(SMALL, max_steps=20, eval_every=5, dropout=0.3, seed=5)
    events = []
    with_samples = train(tmp_path / "c.txt", out=tmp_path / "a", sample_every=2, sample_length=40,
                         on_event=events.append, **options)
    without = train(tmp_path / "c.txt", out=tmp_path / "b", **options)
    sampled = [e for e in events if isinstance(e, Sampled)]
    assert [e.step for e in sampled] == [10, 20]  # every 2nd of the evaluations at 5, 10, 15, 20
    assert all(len(e.text) == 40 for e in sampled)
    written = (tmp_path / "a" / "samples.txt").read_text()
    assert written.count("--- step ") == 2 and "--- step 20, epoch" in written and sampled[1].text in written
    assert not (tmp_path / "b" / "samples.txt").exists()
    # Sampling draws from its own generator: the run trains exactly as it does without it.
    a, b = checkpoint.load(with_samples.best_path).weights, checkpoint.load(without.best_path).weights
    for name, tensor in a.items():
        assert torch.equal(tensor, b[name]), name


def test_the_quick_start_corpus_ships_with_the_package(tmp_path, monkeypatch, checkpoints_root):
    from click.testing import CliRunner

    from charrnn.cli.app import main

    monkeypatch.chdir(tmp_path)  # an empty folder: no corpora/ here
    args = ["train", "corpora/tinyshakespeare.txt", "--max-steps", "1", "--eval-every", "1", "--hidden-size", "8",
            "--num-layers", "1", "--embedding-size", "4", "-b", "2", "-t", "8", "--dropout", "0"]
    result = CliRunner().invoke(main, args, catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert result.stderr.startswith("Note: corpora/tinyshakespeare.txt is not here; using the copy that ships")
    stored = checkpoint.load(checkpoints_root / "tinyshakespeare" / "best.pt")
    assert stored.corpus["chars"] == 1_115_394 and stored.model_config.vocab_size == 65
    # A file of that name that the user has is always theirs.
    (tmp_path / "corpora").mkdir()
    (tmp_path / "corpora" / "tinyshakespeare.txt").write_text(TEXT)
    mine = CliRunner().invoke(main, args + ["--out", "mine"], catch_exceptions=False)
    assert mine.exit_code == 0 and "ships" not in mine.stderr
    assert checkpoint.load(tmp_path / "mine" / "best.pt").corpus["chars"] == len(TEXT)


@pytest.mark.slow
def test_a_closed_stderr_pipe_does_not_stop_training(tmp_path):
    import subprocess
    import sys

    (tmp_path / "c.txt").write_text(TEXT)
    cmd = [sys.executable, "-m", "charrnn", "train", str(tmp_path / "c.txt"), "--out", str(tmp_path / "r"),
           "--max-steps", "40", "--eval-every", "20", "--log-every", "1", "--hidden-size", "16", "--num-layers", "1"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    proc.stderr.readline()  # `2>&1 | head -1`: the reader goes away after one line
    proc.stderr.close()
    assert proc.wait(timeout=300) == 0
    assert checkpoint.load(tmp_path / "r" / "latest.pt").progress.step == 40


def test_notes_and_samples_from_files_cannot_drive_the_terminal():
    """A note quoting a checkpoint's corpus name and a sample of a model's text reach the
    terminal with escape sequences shown, not acted on; the sample keeps its lines."""
    from charrnn.cli.terminal import safe_text

    out = io.StringIO()
    with TrainView(Console(file=out, force_terminal=True, width=400), clock=FakeClock()) as view:
        view.handle(Note("init from \x1b]0;pwned\x07 corpus"))
        view.handle(Sampled(step=5, val_loss=2.0, text="line one\x1b[2J\nline two"))
    text = out.getvalue()
    assert "\\x1b]0;pwned\\x07" in text and "\\x1b[2J" in text and "line one\\x1b[2J\nline two" in text
    assert "]0;pwned" not in text.replace("\\x1b]0;pwned", "")
    assert safe_text("a\u202eb\tc\nd") == "a\\u202eb\\tc\\nd" and safe_text("é 日本 ok") == "é 日本 ok"
