"""Hostile files, table-driven: small crafted checkpoints (declared sizes, compressed
archive entries, odd dtypes, nested sections, control characters) run through every
command that reads a checkpoint. Each command gives one sentence (or works), never a
traceback; a file of a few KB never costs more than a small multiple of its size.
"""

from __future__ import annotations

import functools
import io
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from charrnn.checkpoint import store as checkpoint
from charrnn.checkpoint.export import export
from charrnn.cli.app import main
from charrnn.config import ModelConfig, TrainConfig
from charrnn.model.network import CharRNN
from charrnn.text.characters import CharVocab

VOCAB = CharVocab.from_text("abcdefg \n")


def payload(**config) -> dict:
    """A small valid checkpoint payload (random weights), as torch.load gives it back."""
    torch.manual_seed(0)
    mc = ModelConfig(**{**dict(vocab_size=VOCAB.size, hidden_size=8, num_layers=1, embedding_size=4, dropout=0.0),
                        **config})
    net = CharRNN(mc)
    progress = checkpoint.RunState(step=3, epoch=0.1, elapsed=1.0, best_val_loss=2.0, val_loss=2.0,
                                   history_train=[[1, 2.2]], history_val=[[3, 2.0]])
    ckpt = checkpoint.Checkpoint(mc, {k: v.detach().clone() for k, v in net.state_dict().items()}, VOCAB.to_dict(),
                                 TrainConfig(max_steps=3), {"name": "letters", "source": "letters.txt", "chars": 9},
                                 progress, device="cpu", num_parameters=net.num_parameters())
    buf = io.BytesIO()
    torch.save(ckpt.to_payload(), buf)
    return torch.load(io.BytesIO(buf.getvalue()), weights_only=True)


def save(data: dict, path: Path) -> Path:
    torch.save(data, path)
    return path


def huge_declaration(path: Path) -> Path:
    """A few KB whose configuration declares a 64 x 16384 LSTM (tens of GB of weights)."""
    data = payload()
    data["model_config"].update(hidden_size=16384, num_layers=64)
    return save(data, path)


def huge_declaration_safetensors(path: Path) -> Path:
    src = save(payload(), path.with_suffix(".src.pt"))
    out = export(src, path.with_suffix(".safetensors"))
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(out), "pt") as fh:
        meta = fh.metadata()
        tensors = {k: fh.get_tensor(k) for k in fh.keys()}
    config = json.loads(meta["model_config"])
    config.update(hidden_size=16384, num_layers=64)
    meta["model_config"] = json.dumps(config)
    save_file(tensors, str(out), metadata=meta)
    return out


def zip_bomb(path: Path) -> Path:
    """A .pt archive whose entries are compressed, one of them 200 MB of zeros in a few KB
    (made once: compressing the zeros is most of a test's time)."""
    path.write_bytes(_zip_bomb_bytes())
    return path


@functools.cache
def _zip_bomb_bytes() -> bytes:
    with tempfile.TemporaryDirectory() as folder:
        plain = save(payload(), Path(folder) / "plain.pt")
        bomb = Path(folder) / "bomb.pt"
        with zipfile.ZipFile(plain) as src, zipfile.ZipFile(bomb, "w", compression=zipfile.ZIP_DEFLATED) as dst:
            for info in src.infolist():
                dst.writestr(info.filename, src.read(info))
            first = src.infolist()[0].filename.split("/")[0]
            dst.writestr(f"{first}/data/9999", b"\0" * (200 * 2**20))
        return bomb.read_bytes()


def weights_as(dtype):
    def build(path: Path) -> Path:
        data = payload()
        data["model"] = {k: v.to(dtype) for k, v in data["model"].items()}
        return save(data, path)
    return build


def sparse_weight(path: Path) -> Path:
    data = payload()
    data["model"]["head.bias"] = data["model"]["head.bias"].to_sparse()
    return save(data, path)


def enormous_weights(path: Path) -> Path:
    data = payload()
    data["model"]["head.weight"].fill_(1e30)
    return save(data, path)


def garbage_sentencepiece(path: Path) -> Path:
    data = payload()
    data["vocab"] = {"kind": "sentencepiece", "model": b"\x0a\xff\xfe garbage, not a model proto" * 10}
    return save(data, path)


def nested(section: str, depth: int = 400):
    def build(path: Path) -> Path:
        data = payload()
        value: list = []
        for _ in range(depth):
            value = [value]
        if section == "corpus":
            data["corpus"] = {"name": value, "source": value}
        elif section == "history-train":
            data["history"] = {"train": [value], "val": []}
        elif section == "sizing":
            data["corpus"]["sizing"] = {"hidden_size": value, "epochs": value}
        else:
            data[section] = value
        return save(data, path)
    return build


def huge_integer(field: str):
    def build(path: Path) -> Path:
        data = payload()
        if field in ("hidden_size", "vocab_size"):
            data["model_config"][field] = 10**400
        elif field == "corpus.chars":
            data["corpus"]["chars"] = 10**400
        else:
            data[field] = 10**400
        return save(data, path)
    return build


def stride_zero_views(path: Path) -> Path:
    """Each weight a view repeating one stored number (stride 0), shaped for a network of
    about a billion weights declared in the configuration: kilobytes on disk."""
    data = payload()
    data["model_config"].update(hidden_size=4096, num_layers=8)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in CharRNN(ModelConfig(**data["model_config"])).state_dict().items()}
    data["model"] = {k: torch.zeros(1, dtype=torch.float16).expand(shape) for k, shape in shapes.items()}
    return save(data, path)


def shared_views(path: Path) -> Path:
    """Every weight a view into one stored tensor of the largest size: the file holds it
    once, the network would need it about thirty times."""
    data = payload()
    data["model_config"].update(hidden_size=512, num_layers=8)
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in CharRNN(ModelConfig(**data["model_config"])).state_dict().items()}
    store = torch.zeros(max(s.numel() for s in shapes.values()), dtype=torch.float16)
    data["model"] = {k: store[: s.numel()].view(s) for k, s in shapes.items()}
    return save(data, path)


def shared_references(path: Path) -> Path:
    """A note whose lists repeat one list by reference: a small file, 10^10 items to walk."""
    data = payload()
    inner = [1.0] * 2000
    middle = [inner] * 2000
    data["corpus"]["sizing"] = {"timed": [middle] * 2000}
    return save(data, path)


def vocabulary_with_escapes(path: Path) -> Path:
    """A vocabulary holding ESC, and a model that writes nothing else."""
    data = payload()
    chars = list(data["vocab"]["chars"])
    chars[2] = "\x1b"
    data["vocab"]["chars"] = "".join(chars)
    data["model"]["head.bias"][2] = 60.0
    return save(data, path)


def control_characters(path: Path) -> Path:
    data = payload()
    data["corpus"].update(name="\x1b]0;pwned\x07\x1b[2J\x1b[Hforged\nline", source="\x1b[31mred\x1b[0m.txt")
    return save(data, path)


# (id, builder, a piece of the sentence; None: the commands work)
FILES = [
    ("declares-a-huge-network", huge_declaration, "do not fit its model configuration"),
    ("declares-a-huge-network-safetensors", huge_declaration_safetensors, "do not fit its model configuration"),
    ("zip-bomb", zip_bomb, "compressed or oversized entries"),
    ("fp8-weights", weights_as(torch.float8_e4m3fn), "has dtype float8_e4m3fn"),
    ("complex-weights", weights_as(torch.complex64), "has dtype complex64"),
    ("integer-weights", weights_as(torch.int32), "has dtype int32"),
    ("sparse-weight", sparse_weight, "not a dense tensor"),
    ("enormous-weights", enormous_weights, "beyond what a trained network holds"),
    ("garbage-sentencepiece", garbage_sentencepiece, "vocabulary"),
    ("nested-history", nested("history"), "history"),
    ("nested-corpus", nested("corpus"), "corpus"),
    ("nested-history-train", nested("history-train"), "history"),
    ("nested-sizing", nested("sizing"), "corpus"),
    ("huge-hidden-size", huge_integer("hidden_size"), "hidden_size must be an integer"),
    ("huge-vocab-size", huge_integer("vocab_size"), "vocab_size must be an integer"),
    ("huge-step", huge_integer("step"), None),
    ("huge-corpus-chars", huge_integer("corpus.chars"), None),
    ("stride-zero-views", stride_zero_views, "holds fewer numbers than its shape declares"),
    ("shared-views", shared_views, "far more than the file"),
    ("shared-references", shared_references, "sizing note is malformed"),
    ("vocabulary-with-escapes", vocabulary_with_escapes, None),
    ("control-characters", control_characters, None),
]

COMMANDS = {  # name: argv given the checkpoint's path
    "sample": lambda p: ["sample", "-c", str(p), "--length", "20", "-q"],
    "eval": lambda p: ["eval", "corpus.txt", "-c", str(p)],
    "info": lambda p: ["info", str(p)],
    "info-json": lambda p: ["info", str(p), "--json"],
    "list": lambda p: ["list", "--checkpoints-dir", str(p.parent.parent)],
    "export": lambda p: ["export", str(p), str(p.parent / "out.safetensors"), "--force"],
    "init-from": lambda p: ["train", "corpus.txt", "--init-from", str(p), "--out", "fresh", "--max-steps", "1",
                            "--batch-size", "2", "--seq-len", "8", "-q"],
    "resume": lambda p: ["train", "corpus.txt", "--resume", str(p.parent), "--max-steps", "4", "-q"],
}


@pytest.mark.parametrize("build, message", [f[1:] for f in FILES], ids=[f[0] for f in FILES])
@pytest.mark.parametrize("command", list(COMMANDS))
def test_hostile_file(tmp_path, monkeypatch, build, message, command):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus.txt").write_text("abc defg\n" * 200, encoding="utf-8")
    run = tmp_path / "runs" / "evil"
    run.mkdir(parents=True)
    path = build(tmp_path / "evil.pt")
    target = run / "best.pt"  # charrnn tells a safetensors file by its first bytes, whatever its name
    shutil.copy(path, target)
    shutil.copy(path, run / "latest.pt")
    result = CliRunner().invoke(main, COMMANDS[command](target), catch_exceptions=False)
    err = result.stderr
    assert "Traceback" not in err and len(err.splitlines()) <= 4, err
    assert "\x1b" not in err  # nothing from the file acts on the terminal
    if command != "sample":  # sample's stdout here is no terminal: it holds exactly the text (see below)
        assert "\x1b" not in result.stdout
    if command == "list":
        assert result.exit_code == 0, err  # a bad run is listed as unreadable, the rest still show
        if message is not None:
            assert "unreadable" in result.stdout
        return
    if message is None or (command == "resume" and message is None):
        assert result.exit_code in (0, 1), err
        if result.exit_code:
            assert err.startswith("Error: ") or "Error: " in err
        return
    assert result.exit_code == 1, (result.exit_code, err, result.stdout[:200])
    assert message in err or (command == "resume" and "Error: " in err), err


def test_control_characters_from_a_file_are_shown_escaped(tmp_path):
    path = control_characters(tmp_path / "c.pt")
    out = CliRunner().invoke(main, ["info", str(path)]).stdout
    assert "\\x1b]0;pwned\\x07" in out and "\\nline" in out
    assert "\x1b" not in out and "\x07" not in out


def test_the_file_table_is_wide():
    assert len(FILES) * len(COMMANDS) >= 120


CHILD = """
import resource, sys, time
import charrnn, torch
from charrnn.errors import CharrnnError
def vm() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmSize:"):
                return int(line.split()[1]) * 1024
charrnn.load(sys.argv[2])  # a valid file first: every module a load imports is in place
limit = vm() + {extra}
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t = time.perf_counter()
try:
    charrnn.load(sys.argv[1])
    print("loaded")
except CharrnnError as exc:
    print("refused:", exc)
except MemoryError:
    print("MEMORY")
print("grew_mb", (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024, "s", time.perf_counter() - t)
"""


@pytest.mark.slow
@pytest.mark.parametrize("build", [huge_declaration, huge_declaration_safetensors, zip_bomb, stride_zero_views,
                                   shared_views, shared_references],
                         ids=["pt", "safetensors", "zip-bomb", "stride-zero", "shared-views", "shared-references"])
def test_crafted_files_load_within_a_small_memory_ceiling(tmp_path, build):
    """Under an address-space limit of what the interpreter has plus 256 MB, each crafted
    file (megabytes at most, declaring gigabytes) is refused with a sentence, quickly."""
    path = build(tmp_path / "evil.pt")
    valid = save(payload(), tmp_path / "valid.pt")
    code = CHILD.format(extra=256 * 2**20)
    out = subprocess.run([sys.executable, "-c", code, str(path), str(valid)], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("refused:"), out.stdout
    grew_mb, seconds = float(lines[1].split()[1]), float(lines[1].split()[3])
    assert grew_mb < 32 and seconds < 10, out.stdout


@pytest.mark.slow
def test_generated_escape_sequences_are_shown_not_run_on_a_terminal(tmp_path):
    """A model whose vocabulary holds ESC writes it raw into a pipe (the text is the text)
    and as an escape on a terminal."""
    import os
    import pty

    path = vocabulary_with_escapes(tmp_path / "esc.pt")
    argv = [sys.executable, "-m", "charrnn", "sample", "-c", str(path), "--length", "10", "--seed", "1", "-q"]
    piped = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert piped.returncode == 0 and "\x1b" in piped.stdout
    main_fd, child_fd = pty.openpty()
    shown = subprocess.run(argv, stdout=child_fd, stderr=subprocess.PIPE, timeout=120)
    os.close(child_fd)
    out = b""
    while True:
        try:
            chunk = os.read(main_fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(main_fd)
    assert shown.returncode == 0, shown.stderr
    assert b"\x1b" not in out and b"\\x1b" in out
