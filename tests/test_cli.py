import json
import math
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner
from conftest import CAT_TEXT, tiny_args

from charrnn import load, paths
from charrnn.checkpoint import store as checkpoint
from charrnn.cli.app import main

SMALL = tiny_args()
TEXT = CAT_TEXT


@pytest.fixture
def trained(cat_run):
    """A tiny model overfitted on a repetitive text (conftest's shared run): the folder
    holding cat.txt and run/."""
    return cat_run[0]


def invoke(*args, input=None, env=None, **kwargs):
    # An exception the CLI failed to turn into one sentence fails the test with its traceback.
    return CliRunner().invoke(main, [str(a) for a in args], input=input, env=env, catch_exceptions=False,
                              prog_name="charrnn", **kwargs)


def test_train_writes_checkpoints_and_reports_on_stderr_only(trained):
    run = trained / "run"
    assert (run / "best.pt").is_file() and (run / "latest.pt").is_file()
    data = checkpoint.load(run / "latest.pt")
    assert data.progress.step == 150 and data.corpus["name"] == "cat"


def test_train_output_goes_to_stderr(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    result = invoke("train", corpus, "--out", tmp_path / "r", "--max-steps", 10, *SMALL)
    assert result.exit_code == 0
    assert result.stdout == ""
    assert "val" in result.stderr and "Checkpoints:" in result.stderr
    quiet = invoke("train", corpus, "--out", tmp_path / "q", "--max-steps", 10, "-q", *SMALL)
    assert quiet.exit_code == 0 and quiet.stdout == "" and quiet.stderr == ""


def test_sample_stdout_holds_only_the_text(trained):
    result = invoke("sample", "-c", trained / "run", "--prime", "the ", "--length", 120, "--seed", 3)
    assert result.exit_code == 0, result.stderr
    model = load(trained / "run")
    expected = "".join(model.generate(prime="the ", temperature=0.8, length=120, seed=3))
    assert result.stdout == "the " + expected
    assert len(expected) == 120
    assert result.stderr == ""


def test_sample_learned_the_corpus(trained):
    result = invoke("sample", "-c", trained / "run", "--prime", "the cat ", "--temp", 0, "--length", 48,
                    "--no-echo-prime")
    assert result.stdout == "sat on the mat. the cat sat on the mat. the cat "


def test_sample_uses_newest_checkpoint_under_default_folder(trained, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CHARRNN_CHECKPOINTS")  # the built-in default: ./checkpoints
    import shutil
    import time

    shutil.copytree(trained / "run", "checkpoints/old")
    shutil.copytree(trained / "run", "checkpoints/new")
    (tmp_path / "checkpoints" / "new" / "best.pt").touch()
    os.utime("checkpoints/old/best.pt", (time.time() - 100, time.time() - 100))
    assert paths.newest_best("checkpoints").parent.name == "new"
    result = invoke("sample", "--length", 10, "--seed", 1)
    assert result.exit_code == 0 and len(result.stdout) == 10


def test_no_checkpoint_is_a_clear_error(tmp_path, monkeypatch):

    monkeypatch.setattr(paths, "BUNDLED", tmp_path / "no-bundled-model.pt")
    monkeypatch.chdir(tmp_path)
    result = invoke("sample", env={"CHARRNN_CHECKPOINTS": str(tmp_path / "none")})
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: No checkpoint found") and result.stderr.count("\n") == 1


def test_train_reads_stdin(tmp_path):
    result = invoke("train", "-", "--out", tmp_path / "stdin", "--max-steps", 5, *SMALL, input=TEXT)
    assert result.exit_code == 0, result.stderr
    assert checkpoint.load(tmp_path / "stdin" / "latest.pt").corpus["name"] == "stdin"


def test_unknown_prime_characters(trained):
    result = invoke("sample", "-c", trained / "run", "--prime", "the caté", "--length", 5)
    assert result.exit_code == 1
    assert "'\\u00e9'" in result.stderr and "1 occurrence of 1 character" in result.stderr
    assert result.stdout == ""
    skipped = invoke("sample", "-c", trained / "run", "--prime", "the caté", "--length", 5, "--unknown", "skip")
    assert skipped.exit_code == 0 and skipped.stdout.startswith("the cat") and len(skipped.stdout) == 12
    assert "dropped 1 prime character" in skipped.stderr


def test_prime_from_stdin_and_file(trained, tmp_path):
    a = invoke("sample", "-c", trained / "run", "--prime", "-", "--length", 20, "--seed", 2, input="the cat")
    prime_file = tmp_path / "prime.txt"
    prime_file.write_text("the cat")
    b = invoke("sample", "-c", trained / "run", "--prime-file", prime_file, "--length", 20, "--seed", 2)
    assert a.exit_code == b.exit_code == 0
    assert a.stdout == b.stdout and a.stdout.startswith("the cat") and len(a.stdout) == 27


def test_stop_sequence(trained):
    # "mat. the " rather than "the ": after a bare "the " both "cat" and "mat" are right.
    result = invoke("sample", "-c", trained / "run", "--prime", "mat. the ", "--temp", 0, "--stop", "mat.",
                    "--no-echo-prime")
    assert result.stdout == "cat sat on the mat."


def test_num_samples_reproducible_distinct_and_jsonl(trained):
    args = ["sample", "-c", trained / "run", "-N", 4, "--seed", 1, "--temp", 2.0, "--length", 30, "--jsonl"]
    a, b = invoke(*args), invoke(*args)
    assert a.exit_code == 0 and a.stdout == b.stdout
    rows = [json.loads(line) for line in a.stdout.splitlines()]
    assert [r["sample"] for r in rows] == [0, 1, 2, 3]
    assert len({r["text"] for r in rows}) == 4 and all(len(r["text"]) == 30 for r in rows)
    plain = invoke("sample", "-c", trained / "run", "-N", 4, "--seed", 1, "--temp", 2.0, "--length", 30,
                   "--separator", "|", "--no-echo-prime")
    assert plain.stdout == "|".join(r["text"] for r in rows)


def test_eval_near_zero_on_training_text_and_near_uniform_on_noise(trained, tmp_path):
    result = invoke("eval", trained / "cat.txt", "-c", trained / "run", "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["nats_per_char"] < 0.1 and report["chars"] > 4000
    vocab = load(trained / "run").vocab
    import random

    rng = random.Random(0)
    noise = tmp_path / "noise.txt"
    noise.write_text("".join(rng.choice(vocab.chars) for _ in range(5000)) + "ÉÉÉ")
    report = json.loads(invoke("eval", noise, "-c", trained / "run", "--json").stdout)
    assert report["excluded_chars"] == 3
    assert report["nats_per_char"] > 0.8 * math.log(vocab.size)
    line = invoke("eval", trained / "cat.txt", "-c", trained / "run")
    assert "nats/char" in line.stdout and "bits/char" in line.stdout and "perplexity" in line.stdout


def test_info_json_round_trips_checkpoint_numbers(trained):
    result = invoke("info", trained / "run" / "latest.pt", "--json")
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    data = checkpoint.load(trained / "run" / "latest.pt")
    assert info["step"] == data.progress.step == 150
    assert info["best_val_loss"] == data.progress.best_val_loss
    assert info["num_parameters"] == data.num_parameters
    assert info["vocab_size"] == len(data.vocab["chars"])
    assert info["history"] == {"train": data.progress.history_train, "val": data.progress.history_val}
    text = invoke("info", trained / "run")
    assert "LSTM 1 x 48" in text.stdout and "best val" in text.stdout and "validation" in text.stdout


@pytest.mark.slow
def test_broken_pipe_ends_quietly(trained):
    cmd = [sys.executable, "-m", "charrnn", "sample", "-c", str(trained / "run"), "--length", "100000", "--seed", "1"]
    proc = subprocess.run(" ".join(cmd) + " | head -c 20", shell=True, capture_output=True, text=True, timeout=120)
    assert len(proc.stdout) == 20
    assert proc.stderr == ""


def test_version_and_short_help():
    assert invoke("--version").stdout.startswith("charrnn, version")
    assert "Examples" in invoke("sample", "-h").stdout


def panels(text: str) -> dict[str, str]:
    """The option panels of rich-click's help: title -> the text inside the box."""
    found, title = {}, None
    for line in text.splitlines():
        if line.startswith("╭─ "):
            title = line[3:].split(" ─")[0]
            found[title] = ""
        elif line.startswith("╰"):
            title = None
        elif title is not None:
            found[title] += line + "\n"
    return found


def test_help_groups_train_options_and_keeps_summaries_whole():
    text = invoke("train", "-h", terminal_width=120).stdout
    groups = panels(text)
    assert {"Data", "Run folder", "Model", "Optimisation", "Budget", "Device and precision", "Output"} <= set(groups)
    assert "--hidden-size" in groups["Model"] and "--lr" in groups["Optimisation"] and "--max-time" in groups["Budget"]
    assert "Options" not in groups  # every option is in a group of its own purpose
    assert text.count("CHARRNN_DEVICE") == 1  # each env var named once
    overview = invoke(terminal_width=120).stdout
    for name, command in main.commands.items():
        summary = command.help.split("\n")[0].strip()
        assert summary in overview, name  # not cut with "..."
    error = invoke("sample", "--temp", "abc")
    assert error.exit_code == 2 and error.stderr.splitlines()[0] == "Usage: charrnn sample [OPTIONS]"
    assert "Error: Invalid value for '--temp'" in error.stderr and "╭" not in error.stderr


def test_export_is_small_and_samples_like_the_original(trained, tmp_path):
    out = tmp_path / "small.pt"
    result = invoke("export", trained / "run", out, "--half")
    assert result.exit_code == 0 and result.stdout == ""
    assert out.stat().st_size < 0.5 * (trained / "run" / "best.pt").stat().st_size
    assert not checkpoint.load(out).resumable
    raw = __import__("torch").load(out, weights_only=True)
    assert "optimizer" not in raw and "state" not in raw and "rng" not in raw
    greedy = ["sample", "--prime", "the ", "--temp", 0, "--length", 40]
    assert invoke(*greedy, "-c", out).stdout == invoke(*greedy, "-c", trained / "run").stdout
    info = invoke("info", out, "--json")
    assert json.loads(info.stdout)["step"] == 150


def test_sample_falls_back_to_the_bundled_model(trained, tmp_path, monkeypatch):

    bundled = tmp_path / "bundled.pt"
    invoke("export", trained / "run", bundled, "--half")
    monkeypatch.setattr(paths, "BUNDLED", bundled)
    monkeypatch.chdir(tmp_path)
    result = invoke("sample", "--length", 15, "--seed", 2)
    assert result.exit_code == 0 and len(result.stdout) == 15
    assert "bundled" in result.stderr


def test_the_bundled_model_ships_and_loads():

    assert paths.BUNDLED.is_file(), "the bundled default model is missing"
    assert paths.BUNDLED.stat().st_size <= 10 * 1024 * 1024
    model = load(paths.BUNDLED)
    assert model.checkpoint.corpus["name"] == "tinyshakespeare"
    text = "".join(model.generate(prime="KING RICHARD", temperature=0, length=200))
    assert len(text) == 200


def test_info_on_a_random_weight_checkpoint_is_exact(random_checkpoint):
    result = invoke("info", random_checkpoint)
    assert result.exit_code == 0 and result.stderr == ""
    assert result.stdout.splitlines() == [
        f"checkpoint   {random_checkpoint} (format charrnn-checkpoint v3)",
        "model        GRU 2 x 12, embedding 6, dropout 0.0, 1,827 parameters",
        "vocabulary   char, 9 entries: \\n abcdefg",
        "corpus       letters (9 characters from letters.txt)",
        "training     7 steps, 0.50 epochs, 3 s on cpu",
        "best val     2.8854 bits/char (2.0000 nats/char)",
        "",
        "loss (bits/char) by step:",
        *result.stdout.splitlines()[8:],
    ]
    assert len(result.stdout.splitlines()) > 10  # the plot


def test_export_and_eval_of_a_random_weight_checkpoint(random_checkpoint, tmp_path):
    out = tmp_path / "slim.pt"
    assert invoke("export", random_checkpoint, out).exit_code == 0
    (tmp_path / "t.txt").write_text("abc defg\n" * 50)
    a = json.loads(invoke("eval", tmp_path / "t.txt", "-c", random_checkpoint, "--json").stdout)
    b = json.loads(invoke("eval", tmp_path / "t.txt", "-c", out, "--json").stdout)
    assert a["nats_per_char"] == pytest.approx(b["nats_per_char"], abs=1e-6)
    assert abs(a["nats_per_char"] - math.log(9)) < 0.5  # untrained: near uniform over 9 characters


def test_train_has_an_option_for_every_configuration_setting_and_its_check():
    """Each setting of the run's configuration (config.setting, cli=True) is an option of
    `charrnn train`, made from the field: a value outside the field's bounds is a usage
    error naming the option, before any file is read."""
    from charrnn.config import CorpusOptions, ModelConfig, TrainConfig, settings

    params = {p.name: p for p in main.commands["train"].params}
    for cls in (ModelConfig, TrainConfig, CorpusOptions):
        for name, field in settings(cls).items():
            if field.metadata["cli"]:
                assert name in params, f"charrnn train has no option for {cls.__name__}.{name}"
    bad = invoke("train", "missing.txt", "--num-layers", "65")  # ModelConfig.num_layers: at most 64
    assert bad.exit_code == 2 and "--num-layers" in bad.stderr and "Traceback" not in bad.stderr


def test_plain_charrnn_prints_help_and_a_run_name_works_with_c(trained, monkeypatch, tmp_path):
    plain = invoke()
    assert plain.exit_code == 0 and "Commands" in plain.stdout and "Usage: " in plain.stdout
    monkeypatch.chdir(tmp_path)  # no ./run here: "run" can only be the run's name under the checkpoints folder
    by_name = invoke("sample", "-c", "run", "--checkpoints-dir", trained, "--length", 10, "--seed", 1)
    by_path = invoke("sample", "-c", trained / "run", "--length", 10, "--seed", 1)
    assert by_name.exit_code == 0 and by_name.stdout == by_path.stdout


def test_sample_and_eval_say_which_checkpoint_they_chose(trained, monkeypatch):
    monkeypatch.chdir(trained)
    chosen = invoke("sample", "--checkpoints-dir", ".", "--length", 5)
    assert chosen.exit_code == 0 and chosen.stderr.startswith("Using ") and "best.pt" in chosen.stderr
    assert len(chosen.stdout) == 5
    quiet = invoke("sample", "--checkpoints-dir", ".", "--length", 5, "-q")
    assert quiet.stderr == ""
    scored = invoke("eval", "cat.txt", "--checkpoints-dir", ".", "-q", "--json")
    assert scored.exit_code == 0 and scored.stderr == ""


def test_list_shows_runs_newest_first_then_the_bundled_model(trained, tmp_path):
    import shutil

    root = tmp_path / "runs"
    shutil.copytree(trained / "run", root / "older")
    shutil.copytree(trained / "run", root / "newer")
    os.utime(root / "older" / "best.pt", (1, 1))
    (root / "broken").mkdir()
    (root / "broken" / "latest.pt").write_bytes(b"junk")
    (root / "not-a-run").mkdir()
    rows = [json.loads(line) for line in invoke("list", "--json", "--checkpoints-dir", root).stdout.splitlines()]
    assert [r["name"] for r in rows] == ["broken", "newer", "older", "tinyshakespeare"]
    assert rows[0]["error"] and rows[-1]["bundled"] and rows[1]["steps"] == 150 and rows[1]["corpus"] == "cat"
    table = invoke("list", "--checkpoints-dir", root)
    assert table.exit_code == 0 and table.stdout.splitlines()[0].split()[:2] == ["name", "model"]
    assert "LSTM 1 x 48" in table.stdout and "tinyshakespeare (bundled)" in table.stdout


def test_completion_offers_run_names_and_files(trained, tmp_path):
    def complete(words: str) -> list[str]:
        env = {"_CHARRNN_COMPLETE": "bash_complete", "COMP_WORDS": words, "COMP_CWORD": str(len(words.split(" ")) - 1),
               "CHARRNN_CHECKPOINTS": str(trained)}
        result = CliRunner().invoke(main, [], env=env, prog_name="charrnn")
        return result.stdout.split()

    assert complete("charrnn sample -c r") == ["plain,run", "file,r"]
    assert complete("charrnn info ") == ["plain,run", "plain,bundled", "file,"]
    assert complete("charrnn train c --init-from b") == ["plain,bundled", "file,b"]
    assert complete("charrnn train c") == ["file,c"]  # the corpus: files and folders


def test_weight_drop_is_trained_kept_in_the_checkpoint_and_shown(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text(TEXT)
    options = tiny_args(dropout=None)
    result = invoke("train", corpus, "--out", tmp_path / "r", "--max-steps", 12, "--weight-drop", 0.3, *options)
    assert result.exit_code == 0, result.stderr
    config = checkpoint.load(tmp_path / "r" / "latest.pt").model_config
    assert config.weight_drop == 0.3 and config.dropout == 0.0  # naming one regulariser sets the other to 0
    info = invoke("info", tmp_path / "r")
    assert ", dropout 0.0, weight drop 0.3, " in info.stdout
    sample = invoke("sample", "-c", tmp_path / "r", "--length", 20, "--seed", 1)
    assert sample.exit_code == 0 and len(sample.stdout) == 20
