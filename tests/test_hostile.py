"""Hostile input, table-driven: every row is a command a user (or an attacker) might run.

Each row gives the command line (built from the row's set-up in a fresh folder), the exit
code it must end with, and a piece of the one sentence it must print. For every row,
stderr is short and holds no traceback, and every file that existed before the command
is byte-for-byte the same afterwards.
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
from pathlib import Path

import pytest
from conftest import tiny_args
import torch
from click.testing import CliRunner

import charrnn
from charrnn import CharrnnError
from charrnn.checkpoint import store as checkpoint
from charrnn.cli.app import main
from charrnn.errors import ConfigError

TEXT = "the cat sat on the mat.\n" * 300
BIG = "1" + "0" * 400  # an integer of 401 digits
# conftest's tiny model at 16 units, quiet, with the rate, warmup and dropout of a new run left to charrnn
SMALL = [*tiny_args(hidden_size=16, lr=None, warmup_steps=None, dropout=None), "-q"]


@pytest.fixture
def world(tmp_path, random_checkpoint, resumable_run, monkeypatch):
    """A folder with a corpus, a run (random weights, resumable copy of a real run is not
    needed for refusals), the user's own files, and a few odd files."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "c.txt").write_text(TEXT, encoding="utf-8")
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(random_checkpoint, run / "best.pt")
    shutil.copy(random_checkpoint, run / "latest.pt")
    (run / "notes.md.tmp").write_text("my notes")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "corpus.json").write_text("{}")
    (tmp_path / "mine" / "step-by-step.pt").write_text("not charrnn's")
    (tmp_path / "blocker").write_text("a file, not a folder")
    (tmp_path / "bad-utf8.txt").write_bytes(b"ROMEO:\xff\xfe\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "blank.txt").write_text("  \n\n ")
    (tmp_path / "binary.bin").write_bytes(b"\x00\x01\x02" * 100)
    (tmp_path / "nul.txt").write_bytes(b"ab\x00cd")
    (tmp_path / "existing.pt").write_bytes(b"precious")
    (tmp_path / "target.txt").write_text("the link's target")
    (tmp_path / "link.pt").symlink_to(tmp_path / "target.txt")
    (tmp_path / "metrics-run").mkdir()
    (tmp_path / "metrics-run" / "metrics.jsonl").write_text('{"event": "train", "step": 1, "train_loss": 2.0}\n{oops\n')
    (tmp_path / "other.txt").write_text("a different text entirely! " * 300)
    (tmp_path / "alien.txt").write_text("xyzxyz")  # nothing inside the random run's vocabulary
    (tmp_path / "hollow").mkdir()  # a folder without text files or checkpoints
    (tmp_path / "loop").mkdir()  # two symbolic links that point at each other
    (tmp_path / "loop" / "l1").symlink_to("l2")
    (tmp_path / "loop" / "l2").symlink_to("l1")
    (tmp_path / "hollow-run").mkdir()  # a run folder (it has a lock) whose only text is a user's file
    (tmp_path / "hollow-run" / ".lock").write_text("")
    (tmp_path / "hollow-run" / "notes.txt").write_text("a user's notes\n" * 50)
    (tmp_path / "junkrun").mkdir()
    (tmp_path / "junkrun" / "latest.pt").write_bytes(b"junk")
    (tmp_path / "junkrun" / "best.pt").write_bytes(b"junk")
    shutil.copytree(resumable_run, tmp_path / "real")  # a real, resumable run trained on c.txt
    return tmp_path


@pytest.fixture(scope="session")
def resumable_run(tmp_path_factory) -> Path:
    """A run trained for two steps of a tiny model on TEXT: for the rows that resume."""
    root = tmp_path_factory.mktemp("resumable")
    (root / "c.txt").write_text(TEXT, encoding="utf-8")
    result = CliRunner().invoke(main, ["train", str(root / "c.txt"), "--out", str(root / "run"), "--max-steps", "2",
                                       "--eval-every", "1", *SMALL], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    return root / "run"


def tampered(world: Path, **changes) -> str:
    data = torch.load(world / "run" / "best.pt", weights_only=True)
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            data[section][field] = value
        else:
            data[section] = value
    path = world / f"tampered-{len(list(world.glob('tampered-*')))}.pt"
    torch.save(data, path)
    return str(path)


def nan_weights(world: Path) -> str:
    data = torch.load(world / "run" / "best.pt", weights_only=True)
    data["model"]["head.bias"] = torch.full_like(data["model"]["head.bias"], float("nan"))
    torch.save(data, world / "nan.pt")
    return str(world / "nan.pt")


# (id, argv builder, exit code, a piece of the message)
CASES = [
    # numbers that are not numbers, or that cannot work
    ("temp-nan", lambda w: ["sample", "--temp", "nan"], 2, "not a finite number"),
    ("top-p-nan", lambda w: ["sample", "--top-p", "nan"], 2, "not a finite number"),
    ("lr-nan", lambda w: ["train", "c.txt", "--lr", "nan"], 2, "not a finite number"),
    ("dropout-nan", lambda w: ["train", "c.txt", "--dropout", "nan"], 2, "not a finite number"),
    ("weight-drop-nan", lambda w: ["train", "c.txt", "--weight-drop", "nan"], 2, "not a finite number"),
    ("weight-drop-one", lambda w: ["train", "c.txt", "--weight-drop", "1"], 2, "--weight-drop"),
    ("val-fraction-nan", lambda w: ["train", "c.txt", "--val-fraction", "nan"], 2, "not a finite number"),
    ("max-epochs-nan", lambda w: ["train", "c.txt", "--max-epochs", "nan"], 2, "not a finite number"),
    ("max-epochs-inf", lambda w: ["train", "c.txt", "--max-epochs", "inf"], 2, "not a finite number"),
    ("weight-decay-inf", lambda w: ["train", "c.txt", "--weight-decay", "inf"], 2, "not a finite number"),
    ("temp-negative", lambda w: ["sample", "--temp", "-1"], 2, "'--temp'"),
    ("top-p-zero", lambda w: ["sample", "--top-p", "0"], 2, "'--top-p'"),
    ("top-p-above-one", lambda w: ["sample", "--top-p", "1.5"], 2, "'--top-p'"),
    ("top-k-zero", lambda w: ["sample", "--top-k", "0"], 2, "'--top-k'"),
    ("length-negative", lambda w: ["sample", "--length", "-3"], 2, "'--length'"),
    ("max-time-words", lambda w: ["train", "c.txt", "--max-time", "soon"], 2, "'--max-time'"),
    ("hidden-zero", lambda w: ["train", "c.txt", "--hidden-size", "0"], 2, "'--hidden-size'"),
    ("seed-huge", lambda w: ["train", "c.txt", "--seed", str(2**70)], 2, "--seed"),
    ("sample-seed-huge", lambda w: ["sample", "--seed", str(2**70)], 2, "--seed"),
    ("samples-huge", lambda w: ["sample", "-N", str(10**12)], 2, "--num-samples"),
    ("hidden-huge", lambda w: ["train", "c.txt", "--out", "h", "--hidden-size", str(10**7), "--max-steps", "1"], 2,
     "'--hidden-size': 10000000 is not in the range 1<=x<=16384"),
    ("hidden-too-big-for-memory", lambda w: ["train", "c.txt", "--out", "h", "--hidden-size", "16384", "--num-layers",
                                             "8", "--dropout", "0", "--max-steps", "1"], 1, "GB to train"),
    ("max-time-words", lambda w: ["train", "c.txt", "--max-time", "forever"], 2, "not a duration"),
    # integers of hundreds of digits: one short sentence, never an overflow
    ("top-k-400-digits", lambda w: ["sample", "-c", "run", "--top-k", BIG, "--length", "5"], 0, ""),
    ("temp-400-digits", lambda w: ["sample", "--temp", BIG], 2, "(401 digits)' is not a finite number"),
    ("length-5000-digits", lambda w: ["sample", "--length", "1" + "0" * 5000], 2, "(5,001 digits)"),
    ("eval-seq-len-400-digits", lambda w: ["eval", "c.txt", "-c", "run", "--seq-len", BIG], 2, "(401 digits) is not in"),
    ("eval-streams-400-digits", lambda w: ["eval", "c.txt", "-c", "run", "--streams", BIG], 2, "(401 digits) is not in"),
    ("batch-size-400-digits", lambda w: ["train", "c.txt", "--out", "h", "--batch-size", BIG], 2, "(401 digits) is not in the range"),
    ("seq-len-400-digits", lambda w: ["train", "c.txt", "--out", "h", "--seq-len", BIG], 2, "(401 digits)"),
    ("hidden-400-digits", lambda w: ["train", "c.txt", "--out", "h", "--hidden-size", BIG], 2,
     "'--hidden-size': 100000... (401 digits) is not in the range 1<=x<=16384."),
    ("layers-400-digits", lambda w: ["train", "c.txt", "--out", "h", "--num-layers", BIG], 2,
     "'--num-layers': 100000... (401 digits) is not in the range 1<=x<=64."),
    ("max-steps-400-digits", lambda w: ["train", "c.txt", "--out", "h", "--max-steps", BIG], 2,
     "(401 digits) is not in the range"),
    ("max-steps-nines", lambda w: ["train", "c.txt", "--out", "h", "--max-steps", "9" * 400], 2, "(400 digits)"),
    ("serve-max-tokens-5000-digits", lambda w: ["serve", "--max-tokens", "1" + "0" * 5000], 2, "(5,001 digits)"),
    # a prime that never ends
    ("prime-file-dev-zero", lambda w: ["sample", "-c", "run", "--prime-file", "/dev/zero"], 1,
     "longer than 16 MiB, charrnn's limit on a prime"),
    ("prime-stdin-endless", lambda w: (["sample", "-c", "run", "--prime", "-"], b"a" * (16 * 2**20 + 1)), 1,
     "limit on a prime"),
    # sources
    ("corpus-missing", lambda w: ["train", "nope.txt"], 1, "does not exist"),
    ("corpus-empty", lambda w: ["train", "empty.txt", "--out", "e"], 1, "is empty"),
    ("corpus-blank", lambda w: ["train", "blank.txt", "--out", "b"], 1, "only whitespace"),
    ("corpus-binary", lambda w: ["train", "binary.bin", "--out", "b"], 1, "binary"),
    ("corpus-nul", lambda w: ["train", "nul.txt", "--out", "b"], 1, "NUL byte at byte offset 2"),
    ("corpus-bad-utf8", lambda w: ["train", "bad-utf8.txt", "--out", "b"], 1, "not valid UTF-8"),
    ("corpus-device", lambda w: ["train", "/dev/zero", "--out", "z"], 1, "device or socket"),
    ("encoding-rot13", lambda w: ["train", "c.txt", "--out", "r", "--encoding", "rot13"], 1, "Unknown text encoding"),
    ("encoding-hex", lambda w: ["train", "c.txt", "--out", "r", "--encoding", "hex"], 1, "Unknown text encoding"),
    ("encoding-bogus", lambda w: ["train", "c.txt", "--out", "r", "--encoding", "klingon"], 1, "Unknown text encoding"),
    # runs and folders: nothing lost
    ("existing-run", lambda w: ["train", "c.txt", "--out", "run", *SMALL], 1, "already holds a training run"),
    ("foreign-folder", lambda w: ["train", "c.txt", "--out", "mine", *SMALL], 1, "holds files charrnn did not write"),
    ("out-is-file", lambda w: ["train", "c.txt", "--out", "blocker", *SMALL], 2, "is a file"),
    ("out-under-file", lambda w: ["train", "c.txt", "--out", "blocker/run", *SMALL], 1,
     "Cannot use run folder blocker/run: blocker is a file, not a folder."),
    ("overwrite-cuda", lambda w: ["train", "c.txt", "--out", "run", "--overwrite", "--device", "cuda", *SMALL]
     if not torch.cuda.is_available() else ["train", "c.txt", "--out", "run", "--overwrite", "-b", "100000"],
     1, "cuda" if not torch.cuda.is_available() else "too short"),
    ("overwrite-big-batch", lambda w: ["train", "c.txt", "--out", "run", "--overwrite", "-b", "100000",
                                       "--max-steps", "1", "--hidden-size", "8"], 1, "too short"),
    ("overwrite-tie-mismatch", lambda w: ["train", "c.txt", "--out", "run", "--overwrite", "--tie-weights",
                                          "--hidden-size", "32", "--embedding-size", "8", "--max-steps", "1"], 1,
     "--tie-weights"),
    ("resume-exported", lambda w: ["train", "c.txt", "--out", "run", "--resume"], 1, "weights only"),
    ("resume-nothing", lambda w: ["train", "c.txt", "--out", "fresh", "--resume"], 1, "Nothing to resume"),
    ("resume-a-file", lambda w: ["train", "c.txt", "--resume", "existing.pt"], 2, "takes a run folder"),
    ("init-from-junk", lambda w: ["train", "c.txt", "--out", "i", "--init-from", "existing.pt"], 1,
     "truncated or corrupt"),
    # tampered checkpoints, every reading command
    *[(f"{cmd}-{name}", (lambda cmd, kw: lambda w: [*cmd.split(), tampered(w, **kw)] if cmd in ("info", "plot")
                         else [*cmd.split(), "-c", tampered(w, **kw)] if cmd != "export"
                         else ["export", tampered(w, **kw), "out.pt"])(cmd, kw), 1, msg)
      for cmd in ("sample", "info", "plot", "export", "eval c.txt")
      for name, kw, msg in [
          ("hidden-negative", {"model_config__hidden_size": -5}, "hidden_size must be"),
          ("dropout-5", {"model_config__dropout": 5.0}, "dropout must be"),
          ("short-vocab", {"vocab__chars": "ab"}, "vocabulary has 2 entries"),
          ("epoch-none", {"epoch": None}, "epoch is not"),
          ("config-list", {"model_config": [1, 2, 3]}, "model_config section"),
      ]],
    ("sample-nan-weights", lambda w: ["sample", "-c", nan_weights(w)], 1, "not all finite"),
    ("info-junk", lambda w: ["info", "existing.pt"], 1, "truncated or corrupt"),
    ("sample-missing", lambda w: ["sample", "-c", "nowhere.pt"], 1, "does not exist"),
    # export destinations
    ("export-exists", lambda w: ["export", "run", "existing.pt"], 1, "already exists"),
    ("export-symlink", lambda w: ["export", "run", "link.pt"], 1, "already exists"),
    ("export-device", lambda w: ["export", "run", "/dev/null", "--force"], 1, "not a regular file"),
    ("export-under-file", lambda w: ["export", "run", "blocker/x.pt"], 1, "is a file, not a folder"),
    # prime and output
    ("prime-file-missing", lambda w: ["sample", "-c", "run", "--prime-file", "nope.txt"], 1, "Cannot read the prime"),
    ("prime-file-bad-utf8", lambda w: ["sample", "-c", "run", "--prime-file", "bad-utf8.txt"], 1, "not valid UTF-8"),
    ("prime-unknown-chars", lambda w: ["sample", "-c", "run", "--prime", "Ωmega"], 1, "outside the model's vocabulary"),
    ("plot-bad-extension", lambda w: ["plot", "run", "-o", "loss.xyz"], 1, "use one of the extensions"),
    ("plot-device", lambda w: ["plot", "run", "-o", "/dev/full"], 1, "not a regular file"),
    ("plot-nothing", lambda w: ["plot", "nowhere"], 1, "does not exist"),
    # eval of what is not a usable text
    ("eval-missing", lambda w: ["eval", "nope.txt", "-c", "run"], 1, "does not exist"),
    ("eval-binary", lambda w: ["eval", "binary.bin", "-c", "run"], 1, "looks like a binary file"),
    ("eval-empty", lambda w: ["eval", "empty.txt", "-c", "run"], 1, "is empty"),
    ("eval-blank", lambda w: ["eval", "blank.txt", "-c", "run"], 1, "only whitespace"),
    ("eval-folder-without-text", lambda w: ["eval", "hollow", "-c", "run"], 1, "contains no text files"),
    ("eval-empty-path", lambda w: ["eval", "", "-c", "run"], 1, "corpus path is empty"),
    ("eval-outside-vocabulary", lambda w: ["eval", "alien.txt", "-c", "run"], 1, "inside the model's vocabulary"),
    ("eval-stdin-empty", lambda w: (["eval", "-", "-c", "run"], b""), 1, "from stdin is empty"),
    ("eval-stdin-binary", lambda w: (["eval", "-", "-c", "run"], b"\x00\x01\x02"), 1, "binary data"),
    ("eval-device", lambda w: ["eval", "/dev/zero", "-c", "run"], 1, "device or socket"),
    # checkpoints that are not there or not checkpoints
    ("ckpt-folder-without-checkpoints", lambda w: ["sample", "-c", "hollow"], 1, "has no best.pt or latest.pt"),
    ("ckpt-empty-path", lambda w: ["sample", "-c", ""], 1, "checkpoint path is empty"),
    ("ckpt-device", lambda w: ["sample", "-c", "/dev/null"], 1, "not a regular file"),
    ("eval-junk-run", lambda w: ["eval", "c.txt", "-c", "junkrun"], 1, "truncated or corrupt"),
    ("info-junk-run", lambda w: ["info", "junkrun"], 1, "truncated or corrupt"),
    ("plot-junk-run", lambda w: ["plot", "junkrun"], 1, "truncated or corrupt"),
    ("export-junk-run", lambda w: ["export", "junkrun", "x.pt"], 1, "truncated or corrupt"),
    ("info-empty-path", lambda w: ["info", ""], 1, "checkpoint path is empty"),
    ("plot-empty-path", lambda w: ["plot", ""], 1, "run path is empty"),
    ("plot-device-checkpoint", lambda w: ["plot", "/dev/null"], 1, "not a regular file"),
    ("plot-damaged-metrics", lambda w: ["plot", "metrics-run"], 0, "skipped 1 damaged line"),
    ("plot-empty-output", lambda w: ["plot", "run", "-o", ""], 1, "picture's path is empty"),
    # sampling options at and past their edges
    ("prime-file-folder", lambda w: ["sample", "-c", "run", "--prime-file", "hollow"], 2, "is a directory"),
    ("prime-file-empty-path", lambda w: ["sample", "-c", "run", "--prime-file", ""], 1, "--prime-file path is empty"),
    ("prime-stdin-bad-utf8", lambda w: (["sample", "-c", "run", "--prime", "-"], b"ROMEO:\xff"), 1, "not valid UTF-8"),
    ("stop-empty", lambda w: ["sample", "-c", "run", "--stop", "", "--length", "5", "--seed", "1"], 0, ""),
    ("sample-max-time-0", lambda w: ["sample", "-c", "run", "--max-time", "0"], 2, "not a positive duration"),
    ("sample-max-time-endless", lambda w: ["sample", "-c", "run", "--max-time", "9" * 400 + "h"], 2,
     "too long to be a duration"),
    ("sample-length-0", lambda w: ["sample", "-c", "run", "--length", "0"], 0, ""),
    ("sample-top-k-huge", lambda w: ["sample", "-c", "run", "--top-k", str(10**9), "--length", "5", "--seed", "1"], 0, ""),
    # training options that cannot work
    ("threads-0", lambda w: ["train", "c.txt", "--threads", "0"], 2, "--threads"),
    ("encoding-empty", lambda w: ["train", "c.txt", "--out", "r", "--encoding", ""], 1, "Unknown text encoding"),
    ("errors-bogus", lambda w: ["train", "c.txt", "--errors", "bogus"], 2, "'bogus' is not one of"),
    ("max-time-endless", lambda w: ["train", "c.txt", "--max-time", "9" * 400 + "h"], 2, "too long to be a duration"),
    ("val-fraction-0.99", lambda w: ["train", "c.txt", "--out", "v", "--val-fraction", "0.99", "--max-steps", "1",
                                     *SMALL, "-b", "64"], 1, "--val-fraction 0.99 holds out"),
    ("batch-size-beyond-corpus", lambda w: ["train", "c.txt", "--out", "b", "--max-steps", "1", *SMALL, "-b", "100000"],
     1, "too short for --batch-size 100000"),
    ("seq-len-beyond-corpus", lambda w: ["train", "c.txt", "--out", "s", "--max-steps", "1", *SMALL, "-t", "100000"],
     0, ""),  # windows end with the streams: one window of the whole stream
    ("train-empty-corpus-path", lambda w: ["train", "", "--out", "e"], 1, "corpus path is empty"),
    ("train-empty-out", lambda w: ["train", "c.txt", "--out", "", *SMALL], 1, "run folder path is empty"),
    ("stdin-empty", lambda w: (["train", "-", "--out", "s", *SMALL], b""), 1, "from stdin is empty"),
    ("stdin-binary", lambda w: (["train", "-", "--out", "s", *SMALL], b"\x00\x01\x02" * 9), 1, "binary data"),
    ("stdin-blank", lambda w: (["train", "-", "--out", "s", *SMALL], b" \n\t\n"), 1, "only whitespace"),
    # resume and fine-tune: refused before the run is touched
    ("resume-empty-path", lambda w: ["train", "c.txt", "--resume", ""], 1, "run folder path is empty"),
    ("resume-junk-latest", lambda w: ["train", "c.txt", "--out", "junkrun", "--resume"], 1, "truncated or corrupt"),
    ("resume-other-corpus", lambda w: ["train", "other.txt", "--out", "real", "--resume", "--max-steps", "3"], 1,
     "differs from the text the run"),
    ("resume-other-size", lambda w: ["train", "c.txt", "--out", "real", "--resume", "--hidden-size", "32"], 1,
     "--hidden-size 32 (the run has 16)"),
    ("resume-other-tokenizer", lambda w: ["train", "c.txt", "--out", "real", "--resume", "--tokenizer",
                                          "sentencepiece"], 1, "--tokenizer sentencepiece (the run has char)"),
    ("resume-other-batch", lambda w: ["train", "c.txt", "--out", "real", "--resume", "-b", "8"], 1,
     "--batch-size 8 (the run has 4)"),
    ("resume-and-init-from", lambda w: ["train", "c.txt", "--out", "x", "--init-from", "run", "--resume"], 1,
     "either --resume or --init-from"),
    ("init-from-tokenizer-mismatch", lambda w: ["train", "c.txt", "--out", "i", "--init-from", "real", "--tokenizer",
                                                "sentencepiece", "--max-steps", "1"], 1, "Cannot fine-tune from real"),
    ("init-from-mismatch-nested-out", lambda w: ["train", "c.txt", "--out", "new/sub/run", "--init-from", "real",
                                                 "--tokenizer", "sentencepiece", "--max-steps", "1"], 1,
     "Cannot fine-tune from real"),  # no new/, new/sub/ or lock left behind
    ("out-is-the-corpus-folder", lambda w: ["train", "hollow-run", "--out", "hollow-run", "--overwrite", *SMALL], 1,
     "is a charrnn run folder, whose files are never read as a corpus"),
    ("out-through-a-missing-folder", lambda w: ["train", "c.txt", "--out", "gap/../hollow/run", "--max-steps", "1",
                                                *SMALL, "-b", "100000"], 1, "too short"),  # hollow/ stays, gap/ goes
    ("out-name-too-long", lambda w: ["train", "c.txt", "--out", "deep/" + "x" * 300, *SMALL], 1,
     "Cannot use run folder"),  # no empty deep/ left behind
    *[(f"name-too-long-{name}", (lambda argv: lambda w: argv)(argv), 1, "File name too long")
      for name, argv in [
          ("train-out", ["train", "c.txt", "--out", "x" * 300, *SMALL]),
          ("init-from", ["train", "c.txt", "--out", "i", "--init-from", "x" * 300, *SMALL]),
          ("sample", ["sample", "-c", "x" * 300]),
          ("info", ["info", "x" * 300]),
          ("plot", ["plot", "x" * 300]),
          ("plot-output", ["plot", "run", "-o", "x" * 300 + ".png"]),
          ("eval", ["eval", "x" * 300, "-c", "run"]),
          ("export", ["export", "run", "x" * 300 + ".pt"]),
          ("list", ["list", "--checkpoints-dir", "x" * 300]),
      ]],
    ("init-from-missing", lambda w: ["train", "c.txt", "--out", "i", "--init-from", "nope.pt", "--max-steps", "1"], 1,
     "Checkpoint nope.pt does not exist."),
    ("init-from-hollow-folder", lambda w: ["train", "c.txt", "--out", "i", "--init-from", "hollow"], 1,
     "has no best.pt or latest.pt"),
    # export destinations, again
    ("export-half-into-missing-folder", lambda w: ["export", "run", "new/sub/x.pt", "--half"], 0, "Wrote new/sub/x.pt"),
    ("export-onto-its-source", lambda w: ["export", "real/latest.pt", "real/latest.pt", "--force"], 1,
     "is the checkpoint being exported"),
    ("export-empty-destination", lambda w: ["export", "run", ""], 1, "destination path is empty"),
    ("export-through-a-link-loop", lambda w: ["export", "run", "loop/l1/x.pt"], 1, "loop of symbolic links"),
    ("export-over-a-runs-checkpoint", lambda w: ["export", "run", "real/latest.pt", "--force"], 1,
     "is a training run's own checkpoint"),  # an export cannot be resumed: the run would end
]


def _model(w: Path):
    return charrnn.load(w / "run")


# The Python API: (id, call, a piece of the message); each must raise CharrnnError.
API_CASES = [
    ("train-batch-size-0", lambda w: charrnn.train("c.txt", out="a", batch_size=0, max_steps=1), "batch_size must be"),
    ("train-max-time-words", lambda w: charrnn.train("c.txt", out="a", max_time="forever"), "not a duration"),
    ("train-max-time-nan", lambda w: charrnn.train("c.txt", out="a", max_time=float("nan")), "max_time must be"),
    ("train-hidden-float", lambda w: charrnn.train("c.txt", out="a", hidden_size=8.5, max_steps=1),
     "hidden_size must be an integer"),
    ("train-encoding-none", lambda w: charrnn.train("c.txt", out="a", encoding=None, max_steps=1), "Unknown text encoding"),
    ("train-empty-corpus", lambda w: charrnn.train("", out="a", max_steps=1), "corpus path is empty"),
    ("train-empty-out", lambda w: charrnn.train("c.txt", out="", max_steps=1), "run folder path is empty"),
    ("train-existing-run", lambda w: charrnn.train("c.txt", out="run", max_steps=1), "already holds a training run"),
    ("train-resume-other-corpus", lambda w: charrnn.train("other.txt", out="real", resume=True, max_steps=3),
     "differs from the text"),
    ("train-stdin-empty", lambda w: charrnn.train("-", out="s", stdin=io.BytesIO(b""), max_steps=1), "is empty"),
    ("load-junk", lambda w: charrnn.load("existing.pt"), "truncated or corrupt"),
    ("load-missing", lambda w: charrnn.load("nope.pt"), "does not exist"),
    ("load-empty-path", lambda w: charrnn.load(""), "checkpoint path is empty"),
    ("load-not-a-path", lambda w: charrnn.load(5), "named by a path"),
    ("load-hollow-folder", lambda w: charrnn.load("hollow"), "has no best.pt or latest.pt"),
    ("load-device-bogus", lambda w: charrnn.load("run", device="tpu"), "Unknown device"),
    ("loss-empty", lambda w: _model(w).loss(""), "too short to score"),
    ("loss-outside-vocabulary", lambda w: _model(w).loss("xyz"), "inside the model's vocabulary"),
    ("loss-seq-len-0", lambda w: _model(w).loss("abc abc", seq_len=0), "seq_len must be"),
    ("loss-not-text", lambda w: _model(w).loss(b"abc"), "must be text"),
    ("generate-temperature-negative", lambda w: list(_model(w).generate(temperature=-1)), "temperature must be"),
    ("generate-temperature-nan", lambda w: list(_model(w).generate(temperature=float("nan"))), "temperature must be"),
    ("generate-length-negative", lambda w: list(_model(w).generate(length=-1)), "length must be"),
    ("generate-top-k-0", lambda w: list(_model(w).generate(top_k=0)), "top_k must be"),
    ("generate-top-p-0", lambda w: list(_model(w).generate(top_p=0)), "top_p must be"),
    ("generate-seed-huge", lambda w: list(_model(w).generate(seed=2**70)), "seed must be"),
    ("generate-temperature-400-digits", lambda w: list(_model(w).generate(temperature=10**400)),
     "not 100000... (an integer of 401 digits)"),
    ("loss-seq-len-400-digits", lambda w: _model(w).loss("abc abc", seq_len=10**400), "seq_len must be an integer"),
    ("train-batch-400-digits", lambda w: charrnn.train("c.txt", out="a", batch_size=10**400), "batch_size must be"),
    ("generate-max-time-0", lambda w: list(_model(w).generate(max_time=0)), "max_time must be"),
    ("generate-max-time-words", lambda w: list(_model(w).generate(max_time="forever")), "not a duration"),
    ("generate-stop-empty", lambda w: list(_model(w).generate(stop=("",))), "non-empty strings"),
    ("generate-prime-outside", lambda w: list(_model(w).generate("ZZZ")), "outside the model's vocabulary"),
    ("generate-prime-not-text", lambda w: list(_model(w).generate(5)), "prime must be text"),
    ("stream-num-samples-0", lambda w: list(_model(w).stream(num_samples=0)), "num_samples must be"),
    ("stream-num-samples-huge", lambda w: list(_model(w).stream(num_samples=10**12)), "at most 100000"),
]


@pytest.mark.parametrize("call, message", [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_hostile_api_call(world, call, message):
    before = snapshot(world)
    with pytest.raises(CharrnnError) as caught:
        call(world)
    assert message in str(caught.value) and "\n" not in str(caught.value), str(caught.value)
    after = snapshot(world)
    changed = [p for p, digest in before.items() if after.get(p) != digest]
    assert not changed, f"files changed or removed: {changed}"


def snapshot(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = Path(dirpath) / name
            if path.is_symlink() or not stat.S_ISREG(path.lstat().st_mode):
                out[str(path)] = f"link:{os.readlink(path)}" if path.is_symlink() else "special"
            else:
                out[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.mark.parametrize("build, code, message", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_hostile_case(world, build, code, message):
    argv = build(world)
    argv, stdin = argv if isinstance(argv, tuple) else (argv, None)  # (argv, bytes on stdin)
    before, folders = snapshot(world), entries(world)
    result = CliRunner().invoke(main, argv, input=stdin, catch_exceptions=False)
    after = snapshot(world)
    assert result.exit_code == code, (result.exit_code, result.stderr)
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) <= 4, result.stderr
    assert message in result.stderr, result.stderr
    changed = [p for p, digest in before.items() if after.get(p) != digest]
    assert not changed, f"files changed or removed: {changed}"
    gone = sorted(folders - entries(world))
    assert not gone, f"removed: {gone}"
    if code:  # a refused command leaves nothing behind: no run folder, lock or corpus cache
        left = sorted(entries(world) - folders)
        assert not left, f"left behind: {left}"


def entries(root: Path) -> set[str]:
    """Every file and folder under root, by path."""
    return {str(Path(dirpath) / name) for dirpath, dirs, files in os.walk(root) for name in (*dirs, *files)}


def _charrnn(*args, **kw):
    import subprocess
    import sys

    return subprocess.Popen([sys.executable, "-m", "charrnn", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, **kw)


@pytest.mark.slow
def test_a_named_pipe_is_read_as_a_stream(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    proc = _charrnn("train", str(fifo), "--out", str(tmp_path / "r"), "--max-steps", "2", *SMALL)
    with open(fifo, "w", encoding="utf-8") as fh:  # blocks until charrnn opens the pipe
        fh.write(TEXT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert checkpoint.load(tmp_path / "r" / "latest.pt").progress.step == 2


@pytest.mark.slow
def test_a_pipe_inside_a_corpus_folder_is_skipped_not_waited_on(tmp_path):
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text(TEXT)
    os.mkfifo(tmp_path / "notes" / "pipe")
    proc = _charrnn("train", str(tmp_path / "notes"), "--out", str(tmp_path / "r"), "--max-steps", "2", *SMALL)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err


@pytest.mark.slow
def test_ctrl_c_while_reading_the_corpus_exits_130_with_a_sentence(tmp_path):
    import signal
    import time

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)  # nobody writes: charrnn waits in set-up
    proc = _charrnn("train", str(fifo), "--out", str(tmp_path / "r"), "--max-steps", "2", *SMALL)
    deadline = time.monotonic() + 60
    while True:  # a non-blocking open for writing succeeds once charrnn has opened the pipe to read it
        try:
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:
            assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
            time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # charrnn now waits for text in its set-up
    _, err = proc.communicate(timeout=60)
    os.close(writer)
    assert proc.returncode == 130, err
    assert "Traceback" not in err and "while setting up" in err
    assert not (tmp_path / "r" / "latest.pt").exists()


@pytest.mark.slow
def test_a_run_inside_its_own_corpus_folder_can_be_resumed(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text(TEXT)
    first = _charrnn("train", str(notes), "--out", str(notes / "run"), "--max-steps", "2", *SMALL)
    assert first.wait(timeout=120) == 0, first.communicate()
    again = _charrnn("train", str(notes), "--out", str(notes / "run"), "--resume", "--max-steps", "4")
    _, err = again.communicate(timeout=120)
    assert again.returncode == 0, err
    assert checkpoint.load(notes / "run" / "latest.pt").progress.step == 4


@pytest.mark.parametrize("redirect, message", [(">/dev/full", "Cannot write to standard output"),
                                               (">&-", "Standard output is closed")])
@pytest.mark.slow
def test_stdout_full_or_closed_is_one_sentence(random_checkpoint, redirect, message):
    import subprocess
    import sys

    for command in (f"sample -c {random_checkpoint} --length 50", f"info {random_checkpoint}"):
        proc = subprocess.run(f"{sys.executable} -m charrnn {command} {redirect}", shell=True,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 1, (command, proc.stderr)
        assert message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


@pytest.fixture
def small_disk(tmp_path):
    """A 3 MB tmpfs (root only): the disk-full rows run on it."""
    import subprocess

    mount = tmp_path / "disk"
    mount.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mount)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", "--lazy", str(mount)], capture_output=True)  # a memory map may still hold it


def _fill(folder: Path, leave: int) -> None:
    free = shutil.disk_usage(folder).free
    with open(folder / "filler", "wb") as fh:
        fh.write(b"\0" * max(0, free - leave))


@pytest.mark.slow
def test_a_full_disk_while_saving_keeps_the_earlier_checkpoints(small_disk, tmp_path):
    (tmp_path / "c.txt").write_text(TEXT)
    run = small_disk / "run"
    runner = CliRunner()
    first = runner.invoke(main, ["train", str(tmp_path / "c.txt"), "--out", str(run), "--max-steps", "4",
                                 "--eval-every", "2", *SMALL], catch_exceptions=False)
    assert first.exit_code == 0, first.stderr
    before = {p.name: p.read_bytes() for p in run.glob("*.pt")}
    _fill(small_disk, leave=8192)
    again = runner.invoke(main, ["train", str(tmp_path / "c.txt"), "--out", str(run), "--resume", "--max-steps", "8"],
                          catch_exceptions=False)
    assert again.exit_code == 1, again.stderr
    assert "no space left in" in again.stderr and "MB are free" in again.stderr and "Traceback" not in again.stderr
    assert {p.name: p.read_bytes() for p in run.glob("*.pt")} == before
    assert not list(run.glob(".*.tmp"))


@pytest.mark.slow
def test_a_full_disk_while_writing_the_corpus_cache_is_one_sentence(small_disk, tmp_path):
    big = tmp_path / "big.txt"
    big.write_text(TEXT * 40)  # about 290 KB of ids
    _fill(small_disk, leave=65536)
    result = CliRunner().invoke(main, ["train", str(big), "--out", str(small_disk / "run"), "--max-steps", "1", *SMALL],
                                catch_exceptions=False)
    assert result.exit_code == 1, result.stderr
    assert "Could not write the corpus cache" in result.stderr and "Traceback" not in result.stderr
    assert not list((small_disk / "run").glob(".*.tmp"))


def test_a_utf16_corpus_trains_with_its_encoding_named(tmp_path):
    corpus = tmp_path / "u16.txt"
    corpus.write_text(TEXT, encoding="utf-16")
    refused = CliRunner().invoke(main, ["train", str(corpus), "--out", str(tmp_path / "a"), "--max-steps", "1", *SMALL])
    assert refused.exit_code == 1 and "--encoding" in refused.stderr
    result = CliRunner().invoke(main, ["train", str(corpus), "--out", str(tmp_path / "b"), "--max-steps", "1",
                                       "--encoding", "utf-16", *SMALL], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    assert checkpoint.load(tmp_path / "b" / "latest.pt").model_config.vocab_size == len(set(TEXT))


def test_a_corrupt_id_cache_is_rebuilt(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    args = ["train", str(corpus), "--out", str(tmp_path / "r"), "--max-steps", "1", *SMALL]
    assert CliRunner().invoke(main, args, catch_exceptions=False).exit_code == 0
    ids = tmp_path / "r" / "corpus.ids"
    data = bytearray(ids.read_bytes())
    data[10] = 250  # an id far outside a 12-character vocabulary
    ids.write_bytes(bytes(data))
    again = CliRunner().invoke(main, [*args, "--overwrite"], catch_exceptions=False)
    assert again.exit_code == 0, again.stderr
    assert max(ids.read_bytes()) < len(set(TEXT))


@pytest.mark.slow
@pytest.mark.parametrize("command", ["sample", "eval"])
def test_ctrl_c_while_sampling_or_scoring_exits_130_quietly(random_checkpoint, tmp_path, command):
    import signal
    import subprocess
    import sys
    import time

    if command == "sample":
        args = ["sample", "-c", str(random_checkpoint), "--length", str(10**9)]
    else:
        big = tmp_path / "big.txt"
        big.write_text("abc defg\n" * 2_000_000)
        args = ["eval", str(big), "-c", str(random_checkpoint), "--streams", "1", "--seq-len", "8"]
    proc = subprocess.Popen([sys.executable, "-m", "charrnn", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(4)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and err == "", err


def test_a_file_that_grows_while_it_is_read_is_reported(tmp_path, monkeypatch):
    """Simulated: the corpus gains text between the two streaming passes."""
    from charrnn.errors import CorpusError
    from charrnn.text import corpus as data

    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    original = data._check_text

    def grow(*args, **kwargs):
        original(*args, **kwargs)
        with open(corpus, "a") as fh:
            fh.write("the cat sat on the mat.\n")  # characters the vocabulary knows

    monkeypatch.setattr(data, "_check_text", grow)
    with pytest.raises(CorpusError, match="changed while it was being read"):
        data.encode_corpus(corpus, cache_dir=tmp_path / "run")


@pytest.mark.parametrize("value", ["abc", "inf", "1e400", "0", "-5", "nan"])
def test_a_bad_distributed_timeout_is_one_sentence_and_only_where_it_is_used(value, monkeypatch):
    from charrnn.training import distributed

    monkeypatch.setenv("CHARRNN_DIST_TIMEOUT_MIN", value)
    with pytest.raises(ConfigError, match="CHARRNN_DIST_TIMEOUT_MIN=.* is not a number of minutes"):
        distributed.timeout()
    monkeypatch.setenv("CHARRNN_DIST_TIMEOUT_MIN", "2.5")
    assert distributed.timeout().total_seconds() == 150
