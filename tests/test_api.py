"""The Python API and the CLI's feel: train()/load(), plot, environment defaults, docs."""

import itertools
import json
import os
import re
import shutil
from pathlib import Path

import pytest
from click.testing import CliRunner
from conftest import TINY

import charrnn
from charrnn import CharrnnError, load, train
from charrnn.cli.app import main

REPO = Path(__file__).resolve().parents[1]
SMALL = {**TINY, "device": "cpu"}


@pytest.fixture
def run(cat_run):
    return cat_run


def test_train_returns_a_result_and_prints_nothing(run, capsys):
    root, result, events = run
    assert result.steps == 150 and result.out_dir == root / "run"
    assert result.best_path.name == "best.pt"
    assert result.best_val_bits_per_char == pytest.approx(result.best_val_loss / 0.6931471805599453)
    assert any(type(e).__name__ == "Evaluated" for e in events)
    assert capsys.readouterr() == ("", "")


def test_load_generate_and_loss(run):
    root, result, _ = run
    model = load(root / "run")
    text = "".join(model.generate(prime="the cat ", temperature=0, length=24, seed=1))
    assert text == "sat on the mat. the cat "
    report = model.loss("the cat sat on the mat. " * 20)
    assert report.nats_per_char < 0.5 and report.bits_per_char == pytest.approx(report.nats_per_char / 0.6931471805599453)
    assert result.load().net.config.hidden_size == 48


def test_train_accepts_duration_strings_and_rejects_unknown_options(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("abc " * 500)
    with pytest.raises(TypeError, match="hiden_size"):
        train(corpus, out=tmp_path / "x", hiden_size=3)
    from charrnn.training.run import Run

    with pytest.raises(TypeError, match="encoding"):  # a corpus option is not a training option
        Run(corpus, out=tmp_path / "y", train_options={"encoding": "latin-1"})
    result = train(corpus, out=tmp_path / "t", max_time="1s", **SMALL)
    assert result.elapsed < 10
    with pytest.raises(CharrnnError):
        train(tmp_path / "missing.txt", out=tmp_path / "m", max_steps=1)


def test_help_of_the_package_is_useful():
    assert "train(" in charrnn.__doc__ and "load(" in charrnn.__doc__
    for fn in (charrnn.train, charrnn.load, charrnn.Model.generate, charrnn.Model.loss):
        assert fn.__doc__ and fn.__annotations__


def test_plot_terminal_and_png(run, tmp_path):
    root, _, _ = run
    result = CliRunner().invoke(main, ["plot", str(root / "run")])
    assert result.exit_code == 0 and "bits per character" in result.stdout and "validation" in result.stdout
    from_checkpoint = CliRunner().invoke(main, ["plot", str(root / "run" / "latest.pt")])
    assert from_checkpoint.exit_code == 0
    pytest.importorskip("matplotlib")
    png = tmp_path / "loss.png"
    result = CliRunner().invoke(main, ["plot", str(root / "run"), "-o", str(png)])
    assert result.exit_code == 0 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert result.stdout == ""


def test_plot_replaces_a_picture_only_with_force_and_never_writes_through_a_link(run, tmp_path):
    pytest.importorskip("matplotlib")
    root, _, _ = run
    mine = tmp_path / "notes.pdf"
    mine.write_text("a user's notes")
    result = CliRunner().invoke(main, ["plot", str(root / "run"), "-o", str(mine)])
    assert result.exit_code == 1 and "already exists; pass --force" in result.stderr
    assert mine.read_text() == "a user's notes"
    target = tmp_path / "target.txt"
    target.write_text("precious")
    link = tmp_path / "link.png"
    link.symlink_to(target)
    result = CliRunner().invoke(main, ["plot", str(root / "run"), "-o", str(link), "--force"])
    assert result.exit_code == 0, result.stderr
    assert target.read_text() == "precious" and not link.is_symlink()
    assert link.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["link.png", "notes.pdf", "target.txt"]  # no temporary left


def test_run_files_are_never_written_through_a_link(tmp_path):
    """A symbolic link under one of charrnn's names is not charrnn's file: a new run refuses
    the folder, and with --overwrite neither the lock nor the metrics follow a link."""
    (tmp_path / "c.txt").write_text("the cat sat on the mat.\n" * 200)
    small = ["--max-steps", "2", "--hidden-size", "8", "--num-layers", "1", "--embedding-size", "4", "-b", "4",
             "-t", "16", "-q"]
    precious = tmp_path / "precious.txt"
    precious.write_text("precious")
    for name in (".lock", "metrics.jsonl"):
        folder = tmp_path / name.strip(".")
        folder.mkdir()
        (folder / name).symlink_to(precious)
        refused = CliRunner().invoke(main, ["train", str(tmp_path / "c.txt"), "--out", str(folder), *small])
        assert refused.exit_code == 1 and f"did not write ({name})" in refused.stderr
        CliRunner().invoke(main, ["train", str(tmp_path / "c.txt"), "--out", str(folder), "--overwrite", *small])
        assert precious.read_text() == "precious"
    result = CliRunner().invoke(main, ["train", str(tmp_path / "c.txt"), "--out", str(tmp_path / "lock"), "--overwrite",
                                       *small])
    assert result.exit_code == 1 and ".lock is a symbolic link, which charrnn does not follow" in result.stderr


def test_resume_refuses_a_linked_metrics_file_before_training(tmp_path):
    (tmp_path / "c.txt").write_text("the cat sat on the mat.\n" * 200)
    small = ["--hidden-size", "8", "--num-layers", "1", "--embedding-size", "4", "-b", "4", "-t", "16", "-q"]
    out = tmp_path / "r"
    assert CliRunner().invoke(main, ["train", str(tmp_path / "c.txt"), "--out", str(out), "--max-steps", "2",
                                     *small]).exit_code == 0
    kept = tmp_path / "kept.jsonl"
    (out / "metrics.jsonl").rename(kept)
    (out / "metrics.jsonl").symlink_to(kept)
    before, latest = kept.read_bytes(), (out / "latest.pt").read_bytes()
    result = CliRunner().invoke(main, ["train", str(tmp_path / "c.txt"), "--out", str(out), "--resume",
                                       "--max-steps", "4", *small])
    assert result.exit_code == 1 and "metrics.jsonl is a symbolic link" in result.stderr
    assert kept.read_bytes() == before and (out / "latest.pt").read_bytes() == latest


def test_an_export_named_best_pt_outside_a_run_can_be_replaced(random_checkpoint, tmp_path):
    dst = tmp_path / "deploy" / "best.pt"
    for extra in ([], ["--force"]):
        result = CliRunner().invoke(main, ["export", str(random_checkpoint), str(dst), *extra])
        assert result.exit_code == 0, result.stderr


def test_a_link_to_a_process_stream_is_never_replaced(random_checkpoint, run, tmp_path):
    """/dev/stdout is a link to /proc/self/fd/1: a regular file when output is redirected,
    but --force must not replace the link (it would break the system's /dev)."""
    link = tmp_path / "out.png"
    link.symlink_to("/proc/self/fd/1")
    root, _, _ = run
    for argv in (["export", str(random_checkpoint), str(link), "--force"],
                 ["plot", str(root / "run"), "-o", str(link), "--force"]):
        result = CliRunner().invoke(main, argv)
        assert result.exit_code == 1 and "not a regular file" in result.stderr, result.stderr
        assert link.is_symlink() and os.readlink(link) == "/proc/self/fd/1"


def test_metrics_are_appended_on_resume(run, tmp_path):
    root, _, _ = run
    shutil.copytree(root, tmp_path / "copy")  # the shared run stays as it is
    root = tmp_path / "copy"
    rows = [json.loads(l) for l in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    train(root / "cat.txt", out=root / "run", resume=True, max_steps=170)
    more = [json.loads(l) for l in (root / "run" / "metrics.jsonl").read_text().splitlines()]
    assert more[: len(rows)] == rows and more[-1]["step"] == 170


def test_environment_provides_defaults(run, tmp_path, monkeypatch):
    root, _, _ = run
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["sample", "--length", "12", "--seed", "1"],
                                env={"CHARRNN_CHECKPOINTS": str(root), "CHARRNN_DEVICE": "cpu"})
    assert result.exit_code == 0 and len(result.stdout) == 12
    bad = CliRunner().invoke(main, ["sample"], env={"CHARRNN_DEVICE": "tpu"})
    assert bad.exit_code == 2


def test_no_color_and_no_tty_mean_plain_stderr(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("abc abd " * 300)
    result = CliRunner().invoke(main, ["train", str(corpus), "--out", str(tmp_path / "r"), "--max-steps", "20",
                                       "--hidden-size", "16", "--batch-size", "4", "--seq-len", "8"],
                                env={"NO_COLOR": "1"})
    assert result.exit_code == 0
    assert "\x1b[" not in result.stderr
    assert "Best val" in result.stderr and "charrnn sample -c" in result.stderr


def _documented_names():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    return readme


def test_every_command_and_option_is_documented_in_the_readme():
    readme = _documented_names()
    missing = []
    for name, command in main.commands.items():
        if f"charrnn {name}" not in readme:
            missing.append(f"command {name}")
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("-") and not re.search(re.escape(opt) + r"(?![\w-])", readme):
                    missing.append(f"{name} {opt}")
    assert not missing, f"undocumented in README.md: {missing}"


def test_shell_completion_is_documented_and_works():
    assert "_CHARRNN_COMPLETE=bash_source charrnn" in _documented_names()
    result = CliRunner().invoke(main, [], prog_name="charrnn", env={"_CHARRNN_COMPLETE": "bash_source"})
    assert "complete" in result.output


@pytest.mark.parametrize("options, message", [
    ({"batch_size": 0}, "batch_size must be an integer"),
    ({"cell": "bogus"}, "Unknown cell"),
    ({"max_time": "forever"}, "not a duration"),
    ({"lr": float("nan")}, "lr must be a number"),
    ({"hidden_size": 10**7}, "hidden_size must be an integer"),
    ({"seed": 2**70}, "seed must be an integer"),
    ({"device": "tpu"}, "device must be"),
])
def test_bad_values_raise_the_library_error(tmp_path, options, message):
    corpus = tmp_path / "c.txt"
    corpus.write_text("abc " * 500)
    with pytest.raises(CharrnnError, match=message):
        train(corpus, out=tmp_path / "x", max_steps=1, **options)


def test_streams_of_one_model_run_side_by_side(random_checkpoint):
    """A Model makes its sampler once; two of its generations interleaved give the texts
    each gives alone."""
    model = load(random_checkpoint)
    alone = ["".join(model.generate("ab", length=150, seed=s, temperature=1.0)) for s in (1, 2)]
    a, b = (model.generate("ab", length=150, seed=s, temperature=1.0) for s in (1, 2))
    got = ["", ""]
    for pieces in itertools.zip_longest(a, b, fillvalue=""):  # interleaved, piece by piece
        got = [g + p for g, p in zip(got, pieces)]
    assert got == alone and len(alone[0]) == 150
    assert model._sampler(False) is model._sampler(False)
