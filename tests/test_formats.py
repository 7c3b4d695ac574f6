"""Exports to safetensors and ONNX (`charrnn export`, `charrnn.checkpoint.formats`)."""

import functools
import json
import pickle
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from charrnn import load
from charrnn.checkpoint import formats, onnx_export
from charrnn.checkpoint import store as checkpoint
from charrnn.checkpoint.export import export
from charrnn.cli.app import main
from charrnn.config import ModelConfig
from charrnn.errors import CheckpointError, ConfigError
from charrnn.model.network import CharRNN
from charrnn.text.characters import CharVocab
from charrnn.text.vocabulary import piece_texts

REPO = Path(__file__).resolve().parents[1]


def invoke(*args, **kwargs):
    return CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, prog_name="charrnn", **kwargs)


def make_checkpoint(vocab, seed: int = 0, **config) -> checkpoint.Checkpoint:
    """A random-weight sampling-only checkpoint (no file) for `vocab`."""
    torch.manual_seed(seed)
    cfg = ModelConfig(vocab_size=vocab.size, dropout=0.0, **{"hidden_size": 10, "num_layers": 2, "embedding_size": 6, **config})
    net = CharRNN(cfg)
    return checkpoint.Checkpoint(cfg, dict(net.state_dict()), vocab.to_dict(), corpus={"name": "letters"},
                                 num_parameters=net.num_parameters())


@functools.cache
def sp_vocab():
    from charrnn.text.sentencepiece_vocab import SentencePieceVocab

    return SentencePieceVocab.train("the cat sat on the mat.\nthe dog ran far.\n" * 50, vocab_size=300)


# -- choosing the format -------------------------------------------------------------------
@pytest.mark.parametrize("name, given, expected", [
    ("m.pt", None, "pt"), ("m.safetensors", None, "safetensors"), ("m.ONNX", None, "onnx"),
    ("m.bin", "onnx", "onnx"), ("m", "safetensors", "safetensors"), ("m.onnx", "onnx", "onnx"),
])
def test_the_format_follows_the_extension_or_the_option(name, given, expected):
    assert formats.choose_format(Path(name), given) == expected


@pytest.mark.parametrize("name, given, message", [
    ("m.bin", None, "Cannot tell the format of m.bin from its extension; name it .pt, .safetensors, .onnx, "
                    ".html or pass --format pt|safetensors|onnx|html."),
    ("m.pt", "onnx", "m.pt has the .pt extension but --format is onnx; name the output m.onnx or drop --format."),
])
def test_an_unclear_or_contradicted_format_is_one_sentence(name, given, message):
    with pytest.raises(ConfigError) as info:
        formats.choose_format(Path(name), given)
    assert str(info.value) == message


def test_export_refuses_before_writing_anything(random_checkpoint, tmp_path):
    cases = [
        (["m.pt", "--format", "onnx"], "Error: m.pt has the .pt extension but --format is onnx"),
        (["m.bin"], "Error: Cannot tell the format of m.bin"),
        (["m.onnx", "--half"], "Error: --half applies to .pt and .safetensors exports"),
    ]
    for args, message in cases:
        result = invoke("export", random_checkpoint, tmp_path / args[0], *args[1:])
        assert result.exit_code == 1 and result.stderr.startswith(message), result.stderr
        assert list(tmp_path.iterdir()) == []
    (tmp_path / "mine.safetensors").write_bytes(b"not charrnn's")
    result = invoke("export", random_checkpoint, tmp_path / "mine.safetensors")
    assert result.exit_code == 1 and "already exists; pass --force" in result.stderr
    assert (tmp_path / "mine.safetensors").read_bytes() == b"not charrnn's"


def test_onnx_export_without_the_extra_names_it(random_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # an import of it now fails
    result = invoke("export", random_checkpoint, tmp_path / "m.onnx")
    assert result.exit_code == 1
    assert result.stderr == ("Error: ONNX export needs onnxscript; install them with "
                             "`pip install 'charrnn-cli[onnx]'`.\n")
    assert not (tmp_path / "m.onnx").exists()


# -- safetensors ---------------------------------------------------------------------------
def test_safetensors_export_samples_scores_and_describes_like_the_run(random_checkpoint, tmp_path):
    out = tmp_path / "m.safetensors"
    result = invoke("export", random_checkpoint, out)
    assert result.exit_code == 0 and result.stdout == "" and result.stderr.startswith(f"Wrote {out}")
    options = ["--seed", 11, "--length", 300, "--temp", 1.3, "--top-k", 6, "--prime", "ab"]
    original = invoke("sample", "-c", random_checkpoint, *options).stdout
    assert invoke("sample", "-c", out, *options).stdout == original and len(original) == 302
    (tmp_path / "t.txt").write_text("abc defg\n" * 50)
    scores = [json.loads(invoke("eval", tmp_path / "t.txt", "-c", c, "--json").stdout) for c in (random_checkpoint, out)]
    assert scores[0]["nats_per_char"] == scores[1]["nats_per_char"]
    info = [json.loads(invoke("info", c, "--json").stdout) for c in (random_checkpoint, out)]
    assert info[1]["checkpoint"] == str(out) and not info[1]["resumable"]
    for key in ("checkpoint", "resumable"):
        del info[0][key], info[1][key]
    assert info[0] == info[1]  # model, vocabulary, corpus, progress and history all survive


def test_safetensors_loading_never_unpickles(random_checkpoint, tmp_path, monkeypatch):
    out = tmp_path / "m.safetensors"
    export(random_checkpoint, out)

    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError("unpickling while loading a safetensors file")

    for name in ("load", "loads", "Unpickler"):
        monkeypatch.setattr(pickle, name, refuse)
    monkeypatch.setattr(torch, "load", refuse)
    model = load(out)
    assert len("".join(model.generate("ab", temperature=0, length=20))) == 20
    assert calls == []
    with pytest.raises(CheckpointError):  # the patch does bite: a .pt goes through torch.load
        checkpoint.load(random_checkpoint)
    assert len(calls) == 1


@pytest.mark.parametrize("config, vocab", [
    ({"cell": "lstm", "tie_weights": True, "embedding_size": 10}, CharVocab.from_text("héllo wörld\n")),
    ({"cell": "rnn", "nonlinearity": "relu", "one_hot": True}, "sentencepiece"),
])
def test_safetensors_round_trip_keeps_every_weight_and_the_vocabulary(tmp_path, config, vocab):
    vocab = sp_vocab() if vocab == "sentencepiece" else vocab
    ckpt = make_checkpoint(vocab, **config)
    src = checkpoint.save(ckpt, tmp_path / "src.pt")
    out = export(src, tmp_path / "m.safetensors")
    back = checkpoint.load(out)
    assert back.vocab == ckpt.vocab and back.model_config == ckpt.model_config and back.resume is None
    assert back.weights.keys() == ckpt.weights.keys()
    assert all(torch.equal(back.weights[k], v) for k, v in ckpt.weights.items())
    from safetensors import safe_open

    with safe_open(out, "pt") as fh:
        metadata = fh.metadata()
        assert set(fh.keys()) == set(ckpt.weights) - ({"head.weight"} if config.get("tie_weights") else set())
    assert metadata["charrnn_format"] == checkpoint.FORMAT and metadata["charrnn_layout"] == "1"
    assert json.loads(metadata["model_config"]) == ckpt.model_config.to_dict()
    if config.get("tie_weights"):
        assert json.loads(metadata["tensor_aliases"]) == {"head.weight": "embedding.weight"}
    texts = ["".join(load(p).generate("lo", temperature=0.9, length=60, seed=3)) for p in (src, out)]
    assert texts[0] == texts[1]


def test_half_safetensors_stores_float16(random_checkpoint, tmp_path):
    out = export(random_checkpoint, tmp_path / "m.safetensors", half=True)
    from safetensors.torch import load_file

    assert {t.dtype for t in load_file(out).values()} == {torch.float16}
    assert load(out).net.head.weight.dtype == torch.float32


def _rewrite(src: Path, dst: Path, **changes) -> Path:
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(src, "pt") as fh:
        metadata, tensors = fh.metadata(), {k: fh.get_tensor(k) for k in fh.keys()}
    metadata.update(changes)
    save_file(tensors, dst, metadata={k: v for k, v in metadata.items() if v is not None})
    return dst


def test_damaged_or_foreign_safetensors_files_are_one_sentence(random_checkpoint, tmp_path):
    good = export(random_checkpoint, tmp_path / "m.safetensors")
    truncated = tmp_path / "short.safetensors"
    truncated.write_bytes(good.read_bytes()[:-50])
    cases = {
        truncated: f"Checkpoint {truncated} is truncated or corrupt.",
        _rewrite(good, tmp_path / "hf.safetensors", charrnn_format=None):
            f"{tmp_path / 'hf.safetensors'} is a safetensors file but not a charrnn export (it has no charrnn metadata).",
        _rewrite(good, tmp_path / "json.safetensors", vocab="{oops"):
            f"Checkpoint {tmp_path / 'json.safetensors'} is damaged or was edited: its metadata is not valid.",
        _rewrite(good, tmp_path / "future.safetensors", charrnn_layout="2"):
            f"{tmp_path / 'future.safetensors'} was written by a newer charrnn (safetensors layout '2'); "
            f"upgrade charrnn to read it.",
        _rewrite(good, tmp_path / "size.safetensors", vocab=json.dumps({"kind": "char", "chars": "ab"})):
            f"Checkpoint {tmp_path / 'size.safetensors'} is damaged or was edited: its vocabulary has 2 entries "
            f"but the model expects 9.",
    }
    for path, message in cases.items():
        with pytest.raises(CheckpointError) as info:
            checkpoint.load(path)
        assert str(info.value) == message
    result = invoke("info", tmp_path / "hf.safetensors")
    assert result.exit_code == 1 and result.stderr.startswith("Error: ") and "Traceback" not in result.output


# -- ONNX ------------------------------------------------------------------------------------
# One model per cell, input and head variant. The export costs seconds (torch.export and
# the ONNX translation), so the fast tier exports the default cell once, through the CLI,
# and the other cells run with the slow tests.
CELLS = {
    "lstm-embedding": {"cell": "lstm"},
    "gru-one-hot": {"cell": "gru", "one_hot": True},
    "rnn-tanh-tied": {"cell": "rnn", "tie_weights": True, "embedding_size": 10},
    "rnn-relu": {"cell": "rnn", "nonlinearity": "relu", "num_layers": 1},
}
VOCAB = "abcdefghij \n"


def onnx_checkpoint(name: str) -> checkpoint.Checkpoint:
    return make_checkpoint(CharVocab.from_text(VOCAB), seed=len(name), **CELLS[name])


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory) -> Path:
    """`charrnn export model.pt shakespeare.onnx` of the LSTM (the README example's name)."""
    folder = tmp_path_factory.mktemp("onnx")
    src = checkpoint.save(onnx_checkpoint("lstm-embedding"), folder / "model.pt")
    out = folder / "shakespeare.onnx"
    result = invoke("export", src, out)
    assert result.exit_code == 0 and result.stdout == "" and result.stderr.startswith(f"Wrote {out}"), result.output
    return out


@pytest.mark.parametrize("name", [pytest.param(n, marks=[] if n == "lstm-embedding" else [pytest.mark.slow])
                                  for n in CELLS])
def test_onnx_step_matches_pytorch_for_1000_fed_back_steps(name, onnx_file):
    import onnxruntime as ort

    ckpt = onnx_checkpoint(name)
    data = onnx_file.read_bytes() if name == "lstm-embedding" else onnx_export.onnx_bytes(ckpt)
    net = CharRNN(ckpt.model_config)
    net.load_state_dict(ckpt.weights)
    net.eval()
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    states = ["h", "c"] if ckpt.model_config.cell == "lstm" else ["h"]
    assert [i.name for i in session.get_inputs()] == ["input_ids", *states]
    assert [o.name for o in session.get_outputs()] == ["logits", *[s + "_out" for s in states]]
    assert session.get_inputs()[0].type == "tensor(int64)"
    rng = np.random.default_rng(0)
    batch = 3
    ids = rng.integers(0, ckpt.model_config.vocab_size, batch)
    state = net.init_state(batch)
    feeds = {s: t.numpy() for s, t in zip(states, state)}
    for _ in range(1000):
        logits, state = net.step(torch.from_numpy(ids), state)  # (B, V)
        got = session.run(None, {"input_ids": ids, **feeds})
        worst = max(float(np.abs(a - b.numpy()).max()) for a, b in zip(got, (logits, *state)))
        assert worst < 1e-4, f"logits or state differ by {worst}"
        feeds = dict(zip(states, got[1:]))  # ONNX's own state goes round its own loop
        probs = torch.softmax(logits.double(), -1).numpy()
        ids = np.array([rng.choice(len(p), p=p / p.sum()) for p in probs])  # a drawn text, fed back
    one = session.run(None, {"input_ids": ids[:1], **{s: f[:, :1] for s, f in feeds.items()}})
    assert one[0].shape == (1, ckpt.model_config.vocab_size)  # the batch dimension is dynamic


def test_onnx_metadata_describes_the_interface(onnx_file):
    import onnx

    model = onnx.load(onnx_file)
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["vocab"]) == list("\n abcdefghij")
    assert meta["cell"] == "lstm" and meta["num_layers"] == "2" and meta["hidden_size"] == "10"
    assert json.loads(meta["state_inputs"]) == ["h", "c"] and json.loads(meta["state_outputs"]) == ["h_out", "c_out"]
    assert json.loads(meta["start_ids"]) == [0] and json.loads(meta["banned_ids"]) == []
    assert meta["charrnn_format"] == "charrnn-onnx-step" and meta["charrnn_version"]
    assert not any(node.metadata_props for node in model.graph.node)  # no source paths or stack traces
    onnx.checker.check_model(model)


def test_onnx_vocab_of_sentencepiece_decodes_byte_pieces():
    vocab = sp_vocab()
    table = piece_texts(vocab)
    assert len(table) == vocab.size
    assert all(isinstance(t, str) or (isinstance(t, int) and 0x80 <= t <= 0xFF) for t in table)
    assert all(table[i] == "" for i in vocab.banned_ids)
    text = "the cat — naïve 猫\nsat"
    ids = vocab.encode(text)
    raw = b"".join(table[i].encode() if isinstance(table[i], str) else bytes([table[i]]) for i in ids)
    assert raw.decode("utf-8") == text == vocab.decode(ids)


def test_the_readme_onnxruntime_example_runs_as_written(onnx_file, monkeypatch, capsys):
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("### Export", 1)[1].split("\n## ", 1)[0]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    assert "torch" not in code and "charrnn" not in code
    monkeypatch.chdir(onnx_file.parent)
    exec(compile(code, "README.md", "exec"), {})
    text = capsys.readouterr().out
    assert len(text) == 301 and set(text) <= set(VOCAB)  # 300 drawn characters and print's newline


def test_charrnn_refuses_to_load_an_onnx_export(onnx_file):
    result = invoke("sample", "-c", onnx_file)
    assert result.exit_code == 1
    assert result.stderr == (f"Error: {onnx_file} is an ONNX export, which runs in onnxruntime; "
                             f"charrnn reads .pt and .safetensors checkpoints.\n")


def test_exports_keep_names_that_are_not_valid_utf8(random_checkpoint, tmp_path):
    """A corpus or run folder whose name is not UTF-8 reaches Python as lone surrogates;
    both exports store it escaped and safetensors reads it back exactly."""
    import dataclasses
    import os

    name = os.fsdecode(b"caf\xe9")  # Latin-1 bytes on a UTF-8 system
    ckpt = checkpoint.load(random_checkpoint)
    ckpt = dataclasses.replace(ckpt, corpus={**ckpt.corpus, "name": name, "source": name + ".txt"})
    (tmp_path / os.fsdecode(b"run\xff")).mkdir()
    src = checkpoint.save(ckpt, tmp_path / os.fsdecode(b"run\xff") / "best.pt")
    for suffix in (".safetensors", ".onnx"):
        out = tmp_path / f"m{suffix}"
        result = CliRunner().invoke(main, ["export", str(src), str(out)])
        assert result.exit_code == 0 and "Traceback" not in result.stderr, result.stderr
    assert checkpoint.load(tmp_path / "m.safetensors").corpus["name"] == name
