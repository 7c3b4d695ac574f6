"""Runs that never lose work: exact resume, refusals, fine-tuning, signals, locks."""

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from charrnn.checkpoint import store as checkpoint
from charrnn.cli.app import main
from charrnn.errors import ConfigError
from charrnn.training.lock import RunLock
from charrnn.training.run import Run
from charrnn.training.trainer import Finished, Progress, TrainingError

MODEL = {"hidden_size": 32, "num_layers": 2, "embedding_size": 8, "dropout": 0.2}
TRAIN = {"batch_size": 4, "seq_len": 16, "lr": 1e-2, "warmup_steps": 5, "max_steps": 40, "eval_every": 10,
         "log_every": 5, "device": "cpu", "seed": 7}
CLI_SMALL = ["--hidden-size", "32", "--embedding-size", "8", "--batch-size", "4", "--seq-len", "16",
             "--dropout", "0.2", "--threads", "1", "--warmup-steps", "5"]


@pytest.fixture
def corpus(shakespeare_head):
    return str(shakespeare_head)


def make_run(corpus, out, **kw) -> Run:
    opts = dict(TRAIN)
    opts.update(kw.pop("train", {}))
    return Run(corpus, out=out, model_options={**MODEL, **kw.pop("model", {})}, train_options=opts, **kw)


def train(corpus, out, **kw) -> list:
    """Train to the end; the events."""
    with make_run(corpus, out, **kw) as run:
        return list(run.events())


def weights(path):
    return checkpoint.load(path).weights


@pytest.mark.parametrize("optimizer, model, precision", [
    ("adamw", {}, "float32"), ("muon", {}, "float32"), ("muon", {"dropout": 0.0, "weight_drop": 0.3}, "float32"),
    ("adamw", {}, "bf16"), ("muon", {}, "bf16"),
])
def test_interrupted_then_resumed_equals_uninterrupted(tmp_path, corpus, optimizer, model, precision):
    """Also with Muon (its momentum and the AdamW moments of the other weights come back),
    with weight drop (the masks drawn after the resume are the ones the whole run draws)
    and under bf16 autocast on the CPU (float32 weights, optimizer state and carried state)."""
    options = {"optimizer": optimizer, "precision": precision}
    events_a = train(corpus, tmp_path / "a", train=options, model=model)
    assert checkpoint.load(tmp_path / "a" / "latest.pt").device.endswith(
        "bf16 autocast" if precision == "bf16" else "float32")
    assert all(math.isfinite(e.train_loss) for e in events_a if isinstance(e, Progress))
    with make_run(corpus, tmp_path / "b", train=options, model=model) as run:
        for event in run.events():
            if isinstance(event, Progress) and event.step == 15:
                run.request_stop("interrupted by test")
    assert checkpoint.load(tmp_path / "b" / "latest.pt").progress.step == 15
    events_b = train(corpus, tmp_path / "b", resume=True, explicit=(), model=model)
    a, b = weights(tmp_path / "a" / "latest.pt"), weights(tmp_path / "b" / "latest.pt")
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert events_b[-1].final_val_loss == pytest.approx(events_a[-1].final_val_loss, abs=1e-6)
    assert events_b[-1].step == 40


def test_extended_budget_continues(tmp_path, corpus):
    train(corpus, tmp_path / "r")
    done = train(corpus, tmp_path / "r", resume=True, train={"max_steps": 60}, explicit={"max_steps"})[-1]
    assert done.step == 60
    history = checkpoint.load(tmp_path / "r" / "latest.pt").progress.history_val
    assert [s for s, _ in history] == [10, 20, 30, 40, 50, 60]


def test_resume_keeps_what_the_run_was_sized_to(tmp_path, corpus):
    model = {k: v for k, v in MODEL.items() if k != "dropout"}
    with Run(corpus, out=tmp_path / "r", model_options=model, train_options={**TRAIN, "max_steps": 10}) as run:
        list(run.events())
    sizing = checkpoint.load(tmp_path / "r" / "latest.pt").corpus["sizing"]
    assert sizing["auto"] == ["dropout", "weight_drop"]
    train(corpus, tmp_path / "r", resume=True, train={"max_steps": 20}, explicit={"max_steps"})
    assert checkpoint.load(tmp_path / "r" / "latest.pt").corpus["sizing"] == sizing


def test_resume_refuses_other_corpus_and_other_sizes(tmp_path, corpus):
    train(corpus, tmp_path / "r", train={"max_steps": 5})
    other = tmp_path / "other.txt"
    other.write_text(open(corpus).read()[::-1])
    with pytest.raises(ConfigError, match="differs from the text"):
        train(str(other), tmp_path / "r", resume=True, explicit=())
    with pytest.raises(ConfigError, match=r"--hidden-size 64 \(the run has 32\)"):
        with Run(corpus, out=tmp_path / "r", model_options={**MODEL, "hidden_size": 64},
                 train_options=TRAIN, resume=True, explicit={"hidden_size"}):
            pass
    with pytest.raises(ConfigError, match="--batch-size 8"):
        with Run(corpus, out=tmp_path / "r", model_options=MODEL,
                 train_options={**TRAIN, "batch_size": 8}, resume=True, explicit={"batch_size"}):
            pass
    with pytest.raises(ConfigError, match=r"--optimizer adamw \(the run has muon\)"):  # its state is Muon's
        with Run(corpus, out=tmp_path / "r", model_options=MODEL,
                 train_options={**TRAIN, "optimizer": "adamw"}, resume=True, explicit={"optimizer"}):
            pass


def test_a_muon_run_grouped_another_way_is_refused_in_one_sentence(tmp_path, corpus, monkeypatch):
    """Muon once updated the input matrices too; such a run's optimizer state has other
    groups, and resuming it must say so rather than fail inside torch."""
    from charrnn.training import optim

    monkeypatch.setattr(optim, "MUON_MATRICES", ("rnn.weight_ih", "rnn.weight_hh"))
    train(corpus, tmp_path / "r", train={"max_steps": 5, "optimizer": "muon"})
    monkeypatch.undo()
    before = (tmp_path / "r" / "latest.pt").read_bytes()
    with pytest.raises(ConfigError, match="does not fit this version's --optimizer muon.*--init-from"):
        train(corpus, tmp_path / "r", resume=True, train={"max_steps": 10}, explicit={"max_steps"})
    assert (tmp_path / "r" / "latest.pt").read_bytes() == before


def test_existing_run_is_not_overwritten_without_asking(tmp_path, corpus):
    train(corpus, tmp_path / "r", train={"max_steps": 5})
    before = (tmp_path / "r" / "best.pt").read_bytes()
    with pytest.raises(ConfigError, match="already holds a training run"):
        train(corpus, tmp_path / "r")
    assert (tmp_path / "r" / "best.pt").read_bytes() == before
    train(corpus, tmp_path / "r", overwrite=True, train={"max_steps": 5, "seed": 8})
    assert (tmp_path / "r" / "best.pt").read_bytes() != before


def test_overwrite_removes_nothing_until_every_check_has_passed(tmp_path, corpus):
    train(corpus, tmp_path / "r", train={"max_steps": 5})
    before = {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir() if p.is_file()}
    bad = [{"train": {"device": "cuda"}} if not torch.cuda.is_available() else {"train": {"batch_size": 100_000}},
           {"train": {"batch_size": 100_000}}]
    for options in bad:
        with pytest.raises(ConfigError):
            train(corpus, tmp_path / "r", overwrite=True, **options)
        assert {p.name: p.read_bytes() for p in (tmp_path / "r").iterdir() if p.is_file() and p.name in before} == before


def test_init_from_starts_a_new_run_from_weights(tmp_path, corpus):
    train(corpus, tmp_path / "base", train={"max_steps": 20})
    base = checkpoint.load(tmp_path / "base" / "latest.pt")
    with make_run(corpus, tmp_path / "tuned", init_from=str(tmp_path / "base"), train={"max_steps": 1}) as run:
        for k, v in run.trainer.model.state_dict().items():
            assert torch.equal(v, base.weights[k])
        assert run.trainer.step == 0
        list(run.events())
    other = tmp_path / "other.txt"
    other.write_text("Ωmega " * 1000)  # a character the base lacks grows its vocabulary (tests/test_finetune.py)
    train(str(other), tmp_path / "other", init_from=str(tmp_path / "base"), train={"max_steps": 1})
    assert checkpoint.load(tmp_path / "other" / "latest.pt").vocabulary().chars[-1] == "Ω"


def test_second_trainer_on_same_folder_is_refused(tmp_path, corpus):
    with RunLock(tmp_path / "r"):
        with pytest.raises(ConfigError, match=f"pid {os.getpid()}"):
            train(corpus, tmp_path / "r")
    # the lock is gone once its owner is done
    train(corpus, tmp_path / "r", train={"max_steps": 2})


def test_a_lock_file_removed_while_another_process_waits_for_it_is_taken_afresh(tmp_path, monkeypatch):
    """A run whose set-up fails removes the lock file it made while holding it; a second
    process that had already opened that file must not end up holding a lock on a file
    that no longer exists while a third takes a new one."""
    from charrnn.training import lock as runlock

    first = RunLock(tmp_path / "new" / "r").acquire()
    assert first.created and first.made_folders == [tmp_path / "new" / "r", tmp_path / "new"]
    real_flock, calls = runlock.fcntl.flock, []

    def flock(fd, op):  # the second process has opened the lock file; the first cleans up now
        if not calls:
            calls.append(fd)
            first.remove()
            first.remove_folders()
            first.release()
        return real_flock(fd, op)

    monkeypatch.setattr(runlock.fcntl, "flock", flock)
    second = RunLock(tmp_path / "new" / "r").acquire()
    monkeypatch.undo()
    assert len(calls) == 1 and (tmp_path / "new" / "r" / ".lock").exists()
    assert second._is_current(second._fh)  # it holds the file that is there now
    with pytest.raises(ConfigError, match=f"pid {os.getpid()}"):
        RunLock(tmp_path / "new" / "r").acquire()  # so a third process is refused
    second.release()


def test_only_folders_the_lock_made_are_removed_whatever_the_path_says(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine").mkdir()  # a user's empty folder, reached through a folder that does not exist
    lock = RunLock("gap/../mine/run").acquire()
    assert lock.made_folders == [Path("gap/../mine/run"), Path("gap")]
    lock.remove()
    lock.remove_folders()
    lock.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"] and not any((tmp_path / "mine").iterdir())


def test_folders_that_exist_are_used_whatever_mkdir_answers_and_a_dangling_link_is_named(tmp_path, monkeypatch):
    from charrnn.training import lock as runlock

    real_mkdir = os.mkdir

    def mkdir(path, *args):  # macOS and the BSDs answer EISDIR, not EEXIST, for "/"
        if Path(path).is_dir():
            raise IsADirectoryError(21, "Is a directory")
        return real_mkdir(path, *args)

    monkeypatch.setattr(runlock.os, "mkdir", mkdir)
    lock = RunLock(tmp_path / "a" / "run").acquire()  # absolute: every ancestor up to / is tried
    assert lock.made_folders == [tmp_path / "a" / "run", tmp_path / "a"]
    lock.release()
    monkeypatch.undo()
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    with pytest.raises(ConfigError, match="dangling is a symbolic link to nothing"):
        RunLock(tmp_path / "dangling" / "run").acquire()


def test_non_finite_steps_are_skipped_then_training_stops(tmp_path, corpus, monkeypatch):
    from charrnn.model.network import CharRNN

    run = make_run(corpus, tmp_path / "r", train={"max_steps": 60, "max_bad_steps": 4, "log_every": 2})
    original = CharRNN.forward
    calls = {"n": 0}

    def poisoned(self, ids, state=None):
        logits, new = original(self, ids, state)
        if self.training:
            calls["n"] += 1
            if calls["n"] == 3 or calls["n"] >= 25:
                logits = logits * float("nan")
        return logits, new

    monkeypatch.setattr(CharRNN, "forward", poisoned)
    events = []
    with pytest.raises(TrainingError, match="not finite"), run:
        for event in run.events():
            events.append(event)
            if isinstance(event, Progress) and event.step == 4:
                assert event.skipped == 1
                assert math.isfinite(event.train_loss)
    latest = checkpoint.load(tmp_path / "r" / "latest.pt")
    assert latest.progress.step == 20  # last evaluation before the bad streak; nothing non-finite saved
    assert all(torch.isfinite(v).all() for v in latest.weights.values())


def test_skipped_step_leaves_weights_and_optimizer_untouched(tmp_path, corpus, monkeypatch):
    from charrnn.model.network import CharRNN

    with make_run(corpus, tmp_path / "r", train={"max_steps": 1}) as run:
        trainer = run.trainer
        original = CharRNN.forward
        monkeypatch.setattr(CharRNN, "forward", lambda self, ids, state=None: (
            original(self, ids, state)[0] * float("inf"), original(self, ids, state)[1]))
        before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
        list(run.events())
        for k, v in trainer.model.state_dict().items():
            assert torch.equal(v, before[k])
        assert int(trainer.skipped) == 1


def test_patience_stops_early(tmp_path, corpus):
    done = train(corpus, tmp_path / "r", train={"max_steps": 400, "eval_every": 2, "lr": 0.5, "patience": 2})[-1]
    assert isinstance(done, Finished) and done.reason.startswith("early stopping") and done.step < 400


def test_keep_every_keeps_snapshots(tmp_path, corpus):
    train(corpus, tmp_path / "r", train={"max_steps": 20, "keep_every": 8})
    names = sorted(p.name for p in (tmp_path / "r").glob("*.pt"))
    assert names == ["best.pt", "latest.pt", "step-00000008.pt", "step-00000016.pt"]
    assert checkpoint.load(tmp_path / "r" / "step-00000008.pt").progress.step == 8


def test_unwritable_output_folder_is_a_clear_error(tmp_path, corpus):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    result = CliRunner().invoke(main, ["train", corpus, "--out", str(blocker / "run"), "--max-steps", "2", *CLI_SMALL])
    assert result.exit_code == 1 and result.stderr.startswith("Error: Cannot use run folder")


def test_cli_refuses_running_twice_and_resumes(tmp_path, corpus):
    out = tmp_path / "r"
    runner = CliRunner()
    first = runner.invoke(main, ["train", corpus, "--out", str(out), "--max-steps", "10", *CLI_SMALL])
    assert first.exit_code == 0, first.stderr
    again = runner.invoke(main, ["train", corpus, "--out", str(out), "--max-steps", "10", *CLI_SMALL])
    assert again.exit_code == 1 and "--resume" in again.stderr
    more = runner.invoke(main, ["train", "--resume", str(out), "--max-steps", "20"])
    assert more.exit_code == 0, more.stderr
    assert checkpoint.load(out / "latest.pt").progress.step == 20
    changed = runner.invoke(main, ["train", "--resume", str(out), "--hidden-size", "64"])
    assert changed.exit_code == 1 and "--hidden-size 64 (the run has 32)" in changed.stderr


def _start(corpus, out, steps, eval_every=5):
    cmd = [sys.executable, "-m", "charrnn", "train", corpus, "--out", str(out), "--max-steps", str(steps),
           "--eval-every", str(eval_every), *CLI_SMALL]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path, proc, timeout=60):
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.05)


@pytest.mark.slow
def test_sigint_saves_and_resume_matches_uninterrupted(tmp_path, corpus):
    runner = CliRunner()
    ref = runner.invoke(main, ["train", corpus, "--out", str(tmp_path / "ref"), "--max-steps", "300",
                               "--eval-every", "5", *CLI_SMALL])
    assert ref.exit_code == 0
    proc = _start(corpus, tmp_path / "run", 300)
    _wait_for(tmp_path / "run" / "latest.pt", proc)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Resume with: charrnn train" in err and "Traceback" not in err
    stopped = checkpoint.load(tmp_path / "run" / "latest.pt").progress.step
    assert 0 < stopped < 300
    resumed = runner.invoke(main, ["train", corpus, "--out", str(tmp_path / "run"), "--resume"])
    assert resumed.exit_code == 0, resumed.stderr
    a, b = weights(tmp_path / "ref" / "latest.pt"), weights(tmp_path / "run" / "latest.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGHUP, 129)], ids=["SIGTERM", "SIGHUP"])
def test_sigterm_and_sighup_save_and_exit(tmp_path, corpus, sig, code):
    proc = _start(corpus, tmp_path / "run", 100000)
    _wait_for(tmp_path / "run" / "latest.pt", proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Resume with" in err
    assert checkpoint.load(tmp_path / "run" / "latest.pt").progress.step > 0


@pytest.mark.slow
def test_second_sigint_exits_at_once_and_leaves_checkpoints_loadable(tmp_path, corpus):
    proc = _start(corpus, tmp_path / "run", 100000, eval_every=1)
    _wait_for(tmp_path / "run" / "latest.pt", proc)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    for path in (tmp_path / "run").glob("*.pt"):
        checkpoint.load(path)
