"""`kill -9` at random moments, mid-save included, never leaves a checkpoint that fails to load."""

import random
import signal
import subprocess
import sys
import time

import pytest

from charrnn.checkpoint import store as checkpoint

pytestmark = pytest.mark.slow

ARGS = ["--hidden-size", "96", "--embedding-size", "16", "--batch-size", "4", "--seq-len", "16",
        "--threads", "1", "--eval-every", "1", "--max-steps", "100000"]


def _start(out, corpus, resume):
    return subprocess.Popen(
        [sys.executable, "-m", "charrnn", "train", str(corpus), "--out", str(out), "-q", *ARGS, *resume],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
    )


def _wait(proc, ready, what):
    deadline = time.monotonic() + 90
    while not ready():
        if proc.poll() is not None:
            raise AssertionError(proc.stderr.read().decode())
        assert time.monotonic() < deadline, what
        time.sleep(0.002)


def test_kill_9_mid_save_and_at_random_moments_then_resume(tmp_path, shakespeare_head):
    """The first kill lands while a checkpoint is being written (its temporary file is
    there), the next five at random moments after a save (with a save after every step,
    several of them land mid-save too). After each, every checkpoint loads."""
    rng = random.Random(1234)
    out = tmp_path / "run"
    steps_seen = []
    for kill in range(6):
        resume = ["--resume"] if (out / "latest.pt").exists() else ["--overwrite"]
        proc = _start(out, shakespeare_head, resume)
        started = time.time()
        _wait(proc, lambda: (out / "latest.pt").exists() and (out / "latest.pt").stat().st_mtime > started,
              "no checkpoint was written")
        if kill == 0:  # the deterministic one: during the next save
            _wait(proc, lambda: any(out.glob(".latest.pt.*.tmp")), "no save was seen in progress")
        else:
            time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        proc.stderr.close()
        for path in out.glob("*.pt"):
            data = checkpoint.load(path)  # raises if truncated or corrupt
            assert data.weights and data.progress.step >= 0
        if (out / "latest.pt").exists():
            steps_seen.append(checkpoint.load(out / "latest.pt").progress.step)
    assert len(steps_seen) == 6 and steps_seen == sorted(steps_seen) and steps_seen[-1] > steps_seen[0]
    final = subprocess.run(
        [sys.executable, "-m", "charrnn", "train", str(shakespeare_head), "--out", str(out), "-q", "--resume",
         "--max-steps", str(steps_seen[-1] + 5)],
        capture_output=True, text=True, timeout=120,
    )
    assert final.returncode == 0, final.stderr
    assert checkpoint.load(out / "latest.pt").progress.step == steps_seen[-1] + 5
    assert not list(out.glob(".*.tmp"))  # a resume clears temp files left by killed saves
