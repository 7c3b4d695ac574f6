"""Two CPU processes with gloo, started by torchrun, train like one process with the same global batch."""

import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from charrnn.checkpoint import store as checkpoint
from charrnn.cli.app import main

pytestmark = pytest.mark.slow

ARGS = ["--hidden-size", "32", "--embedding-size", "8", "--num-layers", "2", "--batch-size", "8",
        "--seq-len", "16", "--dropout", "0", "--max-steps", "30", "--eval-every", "10", "--log-every", "5",
        "--threads", "1", "-q",
        # float32: under bf16 autocast (auto's choice on a CPU with native bfloat16) each
        # process rounds its own half-batch, so weights agree only to bf16's precision
        "--precision", "float32"]


def torchrun(*args, nproc=2, timeout=240):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1",
           "--nproc-per-node", str(nproc), "-m", "charrnn", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


# How close two processes' weights stay to one process's after 30 steps. The all-reduced
# mean of two half-batch gradients differs from the one-process mean by float32 rounding
# (about 1e-7 in the weights with AdamW); Muon's orthogonalisation divides by the small
# singular values of the momentum, which magnifies that rounding a hundredfold (1.0e-5 to
# 1.7e-5 at the largest with weight decay 0 to 0.2, measured on this test's run).
TOLERANCE = {"adamw": {"rtol": 1e-5, "atol": 1e-6}, "muon": {"rtol": 1e-4, "atol": 5e-5}}


@pytest.mark.parametrize("optimizer", ["adamw", "muon"])
def test_two_gloo_processes_match_a_single_process(tmp_path, shakespeare_head, optimizer):
    args = [*ARGS, "--optimizer", optimizer]
    single = CliRunner().invoke(main, ["train", str(shakespeare_head), "--out", str(tmp_path / "one"), *args])
    assert single.exit_code == 0, single.stderr
    ddp = torchrun("train", str(shakespeare_head), "--out", str(tmp_path / "two"), *args)
    assert ddp.returncode == 0, ddp.stderr[-3000:]

    files = sorted(p.name for p in (tmp_path / "two").glob("*.pt"))
    assert files == ["best.pt", "latest.pt"]  # one checkpoint set, written by rank 0
    one = checkpoint.load(tmp_path / "one" / "latest.pt")
    two = checkpoint.load(tmp_path / "two" / "latest.pt")
    assert two.progress.step == one.progress.step == 30
    for name, w in one.weights.items():
        torch.testing.assert_close(two.weights[name], w, **TOLERANCE[optimizer])
    assert two.progress.val_loss == pytest.approx(one.progress.val_loss, abs=1e-5)
    assert two.resume.state[0].shape == one.resume.state[0].shape  # all 8 streams' state, same format
    if optimizer == "adamw":
        return

    sample = CliRunner().invoke(main, ["sample", "-c", str(tmp_path / "two"), "--length", "40", "--seed", "1"])
    assert sample.exit_code == 0 and len(sample.stdout) == 40

    # the distributed checkpoint resumes in a single process
    resumed = CliRunner().invoke(main, ["train", "--resume", str(tmp_path / "two"), "--max-steps", "35"])
    assert resumed.exit_code == 0, resumed.stderr
    assert checkpoint.load(tmp_path / "two" / "latest.pt").progress.step == 35


def test_batch_must_divide_among_processes(tmp_path, shakespeare_head):
    args = [a if a != "8" else "9" for a in ARGS]
    result = torchrun("train", str(shakespeare_head), "--out", str(tmp_path / "odd"), *args)
    assert result.returncode != 0
    assert "must be a multiple of the 2 processes" in result.stderr


def test_processes_share_the_size_chosen_by_process_zero(tmp_path, shakespeare_head):
    """With a time budget each process would time the candidate widths differently; the
    size and dropout are chosen once, by process 0, and every process builds that model."""
    args = ["--embedding-size", "8", "--batch-size", "8", "--seq-len", "16", "--max-time", "4s",
            "--eval-every", "10", "--log-every", "5", "--threads", "1", "-q"]
    result = torchrun("train", str(shakespeare_head), "--out", str(tmp_path / "sized"), *args)
    assert result.returncode == 0, result.stderr[-3000:]
    data = checkpoint.load(tmp_path / "sized" / "latest.pt")
    sizing = data.corpus["sizing"]
    assert sizing["auto"] == ["hidden_size", "dropout", "weight_drop"]
    assert data.model_config.hidden_size == sizing["hidden_size"]
    assert data.model_config.dropout == sizing["dropout"]
    assert data.model_config.weight_drop == sizing["weight_drop"]


def test_resumed_two_process_run_with_dropout_equals_the_uninterrupted_one(tmp_path, shakespeare_head):
    """Every process draws its own dropout masks; a resume must restore each process's RNG
    state, not only process 0's, to continue exactly."""
    import signal
    import time

    args = [{"0": "0.3", "30": "200", "10": "5"}.get(a, a) for a in ARGS]  # dropout 0.3, 200 steps, eval every 5
    whole = torchrun("train", str(shakespeare_head), "--out", str(tmp_path / "whole"), *args)
    assert whole.returncode == 0, whole.stderr[-3000:]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes", "1", "--nproc-per-node", "2",
           "-m", "charrnn", "train", str(shakespeare_head), "--out", str(tmp_path / "split"), *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (tmp_path / "split" / "latest.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)  # the agent passes it on to both processes
    proc.communicate(timeout=120)
    stopped = checkpoint.load(tmp_path / "split" / "latest.pt")
    assert 0 < stopped.progress.step < 200 and len(stopped.resume.rng) == 2
    second = torchrun("train", str(shakespeare_head), "--out", str(tmp_path / "split"), "--resume", "-q")
    assert second.returncode == 0, second.stderr[-3000:]
    a = checkpoint.load(tmp_path / "whole" / "latest.pt").weights
    b = checkpoint.load(tmp_path / "split" / "latest.pt").weights
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6)
