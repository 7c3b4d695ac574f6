"""The checkpoint schema: the only code that reads or writes checkpoint files.

A checkpoint is one self-describing `.pt` file of plain Python types and tensors, so it
loads with `torch.load(weights_only=True)`: loading never runs code from the file. Saves
go to a temporary file in the same folder that is fsynced and then `os.replace`d over the
target, so a crash at any moment leaves the previous file whole.

On disk a checkpoint is a flat dict (`FORMAT`, `VERSION`, then the sections' keys). In
memory it is a `Checkpoint`: one dataclass per section, validated once when the file is
read (types, ranges, consistency of weights and vocabulary), and older format versions are
brought up to date by `MIGRATIONS` first. Every other module asks this one for a field
instead of indexing the raw dict.

Where checkpoints live (run folders, the checkpoints root, the bundled model) is
`charrnn.paths`'; exports to other formats are `charrnn.checkpoint.export`'s.
"""

from __future__ import annotations

import math
import os
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .. import paths
from ..config import ModelConfig, TrainConfig, from_known
from ..errors import CharrnnError, CheckpointError
from ..events import LN2
from ..paths import checked_path, run_folders

FORMAT = "charrnn-checkpoint"
VERSION = 3


# -- sections ----------------------------------------------------------------------------
@dataclass
class RunState:
    """Where a run stands: everything about its progress that must survive a restart,
    saved and restored whole (the trainer mutates one instance of it)."""

    step: int = 0
    window: int = 0  # next window within the current epoch
    epochs_done: int = 0
    epoch: float = 0.0  # epochs_done + window / windows per epoch, when saved
    elapsed: float = 0.0  # seconds of training, evaluation and saving
    best_val_loss: float | None = None  # nats per character
    val_loss: float | None = None
    evals_without_improvement: int = 0
    skipped_steps: int = 0
    chars_per_token: float = 1.0
    history_train: list = field(default_factory=list)  # [step, nats/char]
    history_val: list = field(default_factory=list)

    KEYS = ("step", "window", "epochs_done", "epoch", "elapsed", "best_val_loss", "val_loss",
            "evals_without_improvement", "skipped_steps", "chars_per_token")

    def to_dict(self) -> dict:
        out = {k: getattr(self, k) for k in self.KEYS}
        out["history"] = {"train": self.history_train, "val": self.history_val}
        return out

    @classmethod
    def from_dict(cls, data: dict) -> "RunState":
        history = data.get("history") or {}
        _expect(isinstance(history, dict), "history is not a mapping")
        _expect(all(isinstance(history.get(k, []), list) for k in ("train", "val")), "history is malformed")
        state = cls(**{k: data[k] for k in cls.KEYS if k in data},
                    history_train=[list(p) if isinstance(p, (list, tuple)) else [p] for p in history.get("train", [])],
                    history_val=[list(p) if isinstance(p, (list, tuple)) else [p] for p in history.get("val", [])])
        for name in ("step", "window", "epochs_done", "evals_without_improvement", "skipped_steps"):
            _expect(_is_int(getattr(state, name)) and getattr(state, name) >= 0, f"{name} is not a count")
        for name in ("epoch", "elapsed", "chars_per_token"):
            _expect(_is_number(getattr(state, name)) and getattr(state, name) >= 0, f"{name} is not a non-negative number")
        for name in ("best_val_loss", "val_loss"):
            value = getattr(state, name)
            _expect(value is None or _is_number(value), f"{name} is not a number")
        for points in (state.history_train, state.history_val):
            _expect(all(len(p) == 2 and all(_is_number(v) for v in p) for p in points), "history holds a bad point")
        return state


@dataclass(frozen=True)
class ResumeState:
    """What only a resumed run needs: optimizer moments, the carried hidden state of every
    stream (float32, (L, B, H) each), and the RNG state of every process."""

    optimizer: dict
    state: tuple  # of tensors (L, B, H)
    rng: list  # one {"torch": ByteTensor, "cuda"?: ByteTensor} per process (rank order)
    # Runs of earlier versions with a weight average (removed: it lost its benchmark) kept
    # the weights the optimizer trains on here, apart from the averaged `weights`; read
    # so that such a run resumes exactly, never written now.
    train_weights: dict | None = None


@dataclass(frozen=True)
class Checkpoint:
    """One checkpoint, validated. `vocab` is the serialised vocabulary (see
    `charrnn.text.vocabulary`); `vocabulary()` rebuilds it."""

    model_config: ModelConfig
    weights: dict
    vocab: dict
    train_config: TrainConfig | None = None
    corpus: dict = field(default_factory=dict)  # name, source, chars, files, sha256, sizing, init_from
    progress: RunState = field(default_factory=RunState)
    resume: ResumeState | None = None  # None in an exported (sampling-only) file
    device: str | None = None
    num_parameters: int | None = None
    exported_from: str | None = None
    version: int = VERSION
    path: Path | None = None

    @property
    def resumable(self) -> bool:
        return self.resume is not None and self.train_config is not None

    def vocabulary(self):
        from ..text.vocabulary import vocab_from_dict

        return vocab_from_dict(self.vocab)

    def network(self):
        """The network with these weights, in float32 and eval mode (what an export traces
        or folds; sampling goes through `charrnn.api.load`, which also picks the device)."""
        from ..model.network import CharRNN

        net = CharRNN(self.model_config)
        try:
            net.load_state_dict({k: v.float() for k, v in self.weights.items()})
        except RuntimeError:
            raise CheckpointError(f"Checkpoint {self.path} has weights that do not fit its model configuration.") from None
        return net.eval()

    def to_payload(self) -> dict:
        out = {
            "format": FORMAT,
            "version": VERSION,
            "model_config": self.model_config.to_dict(),
            "model": self.weights,
            "vocab": self.vocab,
            "corpus": dict(self.corpus),
            **self.progress.to_dict(),
        }
        if self.train_config is not None:
            out["train_config"] = self.train_config.to_dict()
        if self.resume is not None:
            out.update(optimizer=self.resume.optimizer, state=list(self.resume.state), rng=list(self.resume.rng))
            if self.resume.train_weights is not None:
                out["train_weights"] = self.resume.train_weights
        for name in ("device", "num_parameters", "exported_from"):
            if getattr(self, name) is not None:
                out[name] = getattr(self, name)
        return out

    def summary(self) -> dict:
        """What `charrnn info` shows and `--json` prints: plain types only."""
        mc, p = self.model_config, self.progress
        best = p.best_val_loss
        return {
            "checkpoint": str(self.path),
            "format": FORMAT,
            "version": self.version,
            "cell": mc.cell,
            "num_layers": mc.num_layers,
            "hidden_size": mc.hidden_size,
            "embedding_size": None if mc.one_hot else mc.embedding_size,
            "dropout": mc.dropout,
            "weight_drop": mc.weight_drop,
            "nonlinearity": mc.nonlinearity if mc.cell == "rnn" else None,
            "one_hot": mc.one_hot,
            "tie_weights": mc.tie_weights,
            "num_parameters": self.num_parameters,
            "vocab_kind": self.vocab.get("kind"),
            "vocab_size": mc.vocab_size,
            "corpus": self.corpus,
            "step": p.step,
            "epoch": p.epoch,
            "best_val_loss": best,
            "best_val_bits_per_char": None if best is None else best / LN2,
            "best_val_loss_per_token": None if best is None else best * p.chars_per_token,
            "chars_per_token": p.chars_per_token,
            "val_loss": p.val_loss,
            "train_time_s": p.elapsed,
            "device": self.device,
            "train_config": {} if self.train_config is None else self.train_config.to_dict(),
            "history": {"train": p.history_train, "val": p.history_val},
            "resumable": self.resumable,
        }


# -- validation --------------------------------------------------------------------------
class _Invalid(Exception):
    pass


def _expect(ok: bool, what: str) -> None:
    if not ok:
        raise _Invalid(what)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_number(x) -> bool:
    return (isinstance(x, (int, float)) and not isinstance(x, bool)) and math.isfinite(x)


def _section(data: dict, key: str, required: bool = True) -> dict | None:
    value = data.get(key)
    if value is None and not required:
        return None
    _expect(isinstance(value, dict), f"its {key} section is missing or not a mapping")
    return value


def _from_payload(data: dict, path: Path | None) -> Checkpoint:
    """Check every section of a current-version payload and build the `Checkpoint`."""
    import torch

    model_config = ModelConfig.from_dict(_section(data, "model_config"))
    weights = _section(data, "model")
    _expect(all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()),
            "its weights are not a table of tensors")
    _check_weights(weights, model_config, _file_size(path))
    vocab = _section(data, "vocab")
    train = _section(data, "train_config", required=False)
    train_config = None if train is None else from_known(TrainConfig, train)
    corpus = data.get("corpus") or {}
    _expect(isinstance(corpus, dict), "its corpus section is not a mapping")
    _check_corpus(corpus)
    progress = RunState.from_dict(data)
    resume = None
    if all(k in data for k in ("optimizer", "state", "rng")):
        state, rng = data["state"], data["rng"]
        _expect(isinstance(data["optimizer"], dict), "its optimizer state is not a mapping")
        _expect(isinstance(state, (list, tuple)) and all(isinstance(s, torch.Tensor) and s.dim() == 3 for s in state),
                "its carried state is not a list of (layers, streams, hidden) tensors")
        _expect(isinstance(rng, list) and all(isinstance(r, dict) for r in rng), "its RNG state is malformed")
        n_state = 2 if model_config.cell == "lstm" else 1
        _expect(len(state) == n_state and all(s.shape[0] == model_config.num_layers and s.shape[2] == model_config.hidden_size
                                              for s in state), "its carried state does not fit the model")
        train_weights = data.get("train_weights")
        _expect(train_weights is None or (isinstance(train_weights, dict) and set(train_weights) == set(weights)
                                          and all(isinstance(v, torch.Tensor) and v.shape == weights[k].shape
                                                  and bool(torch.isfinite(v).all()) for k, v in train_weights.items())),
                "its training weights do not match its weights")
        resume = ResumeState(data["optimizer"], tuple(s.float() for s in state), rng, train_weights)
    num_parameters = data.get("num_parameters")
    _expect(num_parameters is None or _is_int(num_parameters), "num_parameters is not a count")
    return Checkpoint(model_config, weights, vocab, train_config, corpus, progress, resume,
                      data.get("device"), num_parameters, data.get("exported_from"), data["version"], path)


def _check_corpus(corpus: dict) -> None:
    """The corpus section's fields that commands show or compute with have their types:
    names are text, counts are counts, the sizing and byte-fallback notes are flat
    mappings of plain values (a file could hold anything there)."""
    for key in ("name", "source", "sha256", "encoding"):
        _expect(corpus.get(key) is None or isinstance(corpus[key], str), f"its corpus {key} is not text")
    for key in ("chars", "bytes", "tokens"):
        _expect(corpus.get(key) is None or (_is_int(corpus[key]) and corpus[key] >= 0), f"its corpus {key} is not a count")
    for key in ("sizing", "byte_fallback"):
        value = corpus.get(key)
        _expect(value is None or (isinstance(value, dict) and _plain(value, 4)), f"its corpus {key} note is malformed")


MAX_NOTE_ITEMS = 100_000


def _plain(value, depth: int, budget: list | None = None) -> bool:
    """Plain data (text, numbers, lists and string-keyed mappings of them) nested at most
    `depth` levels and of at most MAX_NOTE_ITEMS items in all: what charrnn writes in its
    notes, and nothing a printer could choke on (a pickle can repeat one list by reference
    until walking it never ends)."""
    budget = [MAX_NOTE_ITEMS] if budget is None else budget
    budget[0] -= 1
    if budget[0] < 0:
        return False
    if value is None or isinstance(value, (str, bool)) or _is_number(value):
        return True
    if depth == 0:
        return False
    if isinstance(value, (list, tuple)):
        return all(_plain(v, depth - 1, budget) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v, depth - 1, budget) for k, v in value.items())
    return False


def _file_size(path: Path | None) -> int | None:
    try:
        return None if path is None else Path(path).stat().st_size
    except OSError:
        return None


WEIGHT_DTYPES = ("float32", "float16", "bfloat16", "float64")
MAX_WEIGHT = 1e6  # far beyond any trained weight; larger ones overflow float32 inside a step


def _check_weights(weights: dict, config: ModelConfig, file_bytes: int | None = None) -> None:
    """The weights are exactly the tensors the configured network has, in shape and kind,
    checked against the configuration before anything is built from it: a file of a few
    KB declaring an enormous network is refused here, not after allocating it. The
    expected shapes come from the network built on the meta device (shapes, no memory)."""
    import torch

    from ..model.network import CharRNN

    for name, tensor in weights.items():
        _expect(tensor.layout == torch.strided and tensor.device.type != "meta",
                f"its weight {name[:60]!r} is not a dense tensor of numbers")
        # A view that repeats a few stored numbers (stride 0) could declare gigabytes in a
        # file of kilobytes: every weight's numbers must really be stored.
        _expect(tensor.untyped_storage().nbytes() >= tensor.numel() * tensor.element_size(),
                f"its weight {name[:60]!r} holds fewer numbers than its shape declares")
        _expect(str(tensor.dtype).removeprefix("torch.") in WEIGHT_DTYPES,
                f"its weight {name[:60]!r} has dtype {str(tensor.dtype).removeprefix('torch.')}, not one of "
                f"{', '.join(WEIGHT_DTYPES)}")
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in CharRNN(config).state_dict().items()}
    missing = sorted(set(expected) - set(weights))
    extra = sorted(set(weights) - set(expected))
    if missing or extra:
        which = f"missing {missing[0][:60]!r}" if missing else f"unexpected {extra[0][:60]!r}"
        _expect(False, f"its weights do not fit its model configuration ({which})")
    for name, shape in expected.items():
        _expect(tuple(weights[name].shape) == shape, f"its weights do not fit its model configuration ({name!r} has "
                                                    f"shape {tuple(weights[name].shape)[:4]} where {shape} is needed)")
    if file_bytes is not None:
        # Views sharing one stored tensor could still multiply it: the float32 network
        # must stay within a small multiple of the file (float16 halves a file; tied
        # weights count twice).
        need = 4 * sum(t.numel() for t in weights.values())
        _expect(need <= 8 * file_bytes + 2**20, f"its weights would take {need / 1e6:,.0f} MB in memory, far more "
                                                 f"than the file's {file_bytes / 1e6:,.1f} MB hold")
    for tensor in weights.values():
        _expect(bool(torch.isfinite(tensor).all()), "its weights are not all finite numbers")
        _expect(tensor.numel() == 0 or float(tensor.abs().max()) <= MAX_WEIGHT,
                f"its weights reach {float(tensor.abs().max()):.3g}, beyond what a trained network holds "
                f"(at most {MAX_WEIGHT:g})")


def _v1_to_v2(data: dict) -> dict:
    """Version 1 kept only process 0's RNG state, as one dict; version 2 keeps a list with
    every process's RNG state. (A version-1 carried state in bf16 is cast to float32 by the
    validation every version goes through.)"""
    data = dict(data)
    if isinstance(data.get("rng"), dict):
        data["rng"] = [data["rng"]]
    data["version"] = 2
    return data


def _v2_to_v3(data: dict) -> dict:
    """Version 3 names the optimizer in the training configuration; every run before it
    was trained with AdamW (its optimizer state is AdamW's, so a resume must keep it)."""
    data = dict(data)
    train = data.get("train_config")
    if isinstance(train, dict) and "optimizer" not in train:
        data["train_config"] = {**train, "optimizer": "adamw"}
    data["version"] = 3
    return data


# version -> function turning a payload of that version into one of the next version
MIGRATIONS: dict[int, Callable[[dict], dict]] = {1: _v1_to_v2, 2: _v2_to_v3}


def migrate(data: dict) -> dict:
    version = data.get("version")
    while version in MIGRATIONS:
        data = MIGRATIONS[version](data)
        version = data["version"]
    return data


def from_payload(data: Any, path: Path | None = None) -> Checkpoint:
    """Validate a raw payload (after migrations) and return the `Checkpoint`; any problem
    is one `CheckpointError` sentence naming the file."""
    where = path if path is not None else "checkpoint"
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{where} is not a charrnn checkpoint.")
    version = data.get("version")
    if not _is_int(version) or version < 1:
        raise CheckpointError(f"{where} has no valid format version.")
    if version > VERSION:
        raise CheckpointError(
            f"Checkpoint {where} has format version {version}, newer than this charrnn "
            f"understands ({VERSION}); upgrade charrnn to read it."
        )
    try:
        ckpt = _from_payload(migrate(data), path)
        vocab = ckpt.vocabulary()
        _expect(vocab.size == ckpt.model_config.vocab_size,
                f"its vocabulary has {vocab.size} entries but the model expects {ckpt.model_config.vocab_size}")
    except _Invalid as exc:
        raise CheckpointError(f"Checkpoint {where} is damaged or was edited: {exc}.") from None
    except CharrnnError as exc:  # a config or vocabulary value out of range
        raise CheckpointError(f"Checkpoint {where} is damaged or was edited: {str(exc).rstrip('.')}.") from None
    except (TypeError, ValueError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"Checkpoint {where} is damaged or was edited ({type(exc).__name__}).") from None
    return ckpt


# -- files ---------------------------------------------------------------------------------
def save(ckpt: Checkpoint | dict, path: str | os.PathLike) -> Path:
    """Write a checkpoint atomically to `path` (temp file + fsync + rename).

    The file is serialised in memory first, so its size is known: a full disk is reported
    with the space it needed, and the temporary file is removed; the file at `path`, if
    any, is untouched until the new one is complete."""
    import io

    import torch

    path = Path(path)
    payload = ckpt.to_payload() if isinstance(ckpt, Checkpoint) else {"format": FORMAT, "version": VERSION, **ckpt}
    kept = "; the previous checkpoint is untouched" if path.exists() else ""
    buffer = io.BytesIO()
    try:
        torch.save(payload, buffer)
    except (OSError, RuntimeError) as exc:
        reason = getattr(exc, "strerror", None) or (str(exc).strip().splitlines() or [type(exc).__name__])[-1]
        raise CheckpointError(f"Could not write checkpoint {path}: {reason}{kept}.") from None
    return write_atomic(path, buffer.getbuffer())


def write_atomic(path: Path, data, what: str = "checkpoint") -> Path:
    """Write `data` (bytes) to `path` atomically (charrnn.paths): a crash or a full disk
    leaves any earlier file at `path` whole, and a full disk is reported with the space the
    file needed."""
    return paths.write_atomic(path, data, what, CheckpointError)


def load(path: str | os.PathLike, map_location="cpu") -> Checkpoint:
    """Read and validate a checkpoint file, a `.pt` or a safetensors export (told apart by
    their first bytes); tensors land on `map_location` (CPU by default)."""
    import torch

    from . import formats

    path = checked_path(path, "checkpoint")
    if not path.is_file():
        if path.exists():
            raise CheckpointError(f"Checkpoint {path} is not a regular file (a folder, device or pipe).")
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    if formats.is_safetensors(path):
        return from_payload(formats.read_safetensors(path, map_location), path)
    if path.suffix.lower() == formats.FORMATS["onnx"]:
        raise CheckpointError(f"{path} is an ONNX export, which runs in onnxruntime; charrnn reads .pt and "
                              f".safetensors checkpoints.")
    if path.suffix.lower() == formats.FORMATS["html"]:
        raise CheckpointError(f"{path} is a web page export, which runs in a browser; charrnn reads .pt and "
                              f".safetensors checkpoints.")
    _check_archive(path)
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        import zipfile

        if not zipfile.is_zipfile(path):  # not PyTorch's archive format at all: damaged or foreign bytes
            raise CheckpointError(f"Checkpoint {path} is truncated or corrupt.") from None
        raise CheckpointError(
            f"Refusing to load {path}: it contains Python objects other than plain data "
            f"and tensors, so it is not a charrnn checkpoint and may be unsafe."
        ) from None
    except Exception:  # torch reports damaged archives with many exception types
        raise CheckpointError(f"Checkpoint {path} is truncated or corrupt.") from None
    return from_payload(data, path)


def _check_archive(path: Path) -> None:
    """Refuse a .pt archive that would inflate in memory: PyTorch writes every entry of its
    zip archive uncompressed, so a compressed entry (a zip bomb: megabytes that unpack to
    gigabytes) or an entry larger than the file itself is not one of its files. Checked on
    the archive's directory before `torch.load` reads a byte of the entries."""
    import zipfile

    if not zipfile.is_zipfile(path):
        return  # torch.load reports it (an old pickle-only file is refused there)
    try:
        with zipfile.ZipFile(path) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        raise CheckpointError(f"Checkpoint {path} is truncated or corrupt.") from None
    size = path.stat().st_size
    for entry in entries:
        if entry.compress_type != zipfile.ZIP_STORED or entry.file_size > size:
            raise CheckpointError(f"Refusing to load {path}: its archive holds compressed or oversized entries, "
                                  f"which PyTorch never writes (it could unpack to far more than its size).")






















@dataclass(frozen=True)
class Listed:
    """One model `charrnn list` shows: a run under the checkpoints folder, or the bundled one."""

    name: str
    path: Path
    checkpoint: Checkpoint | None  # None when the file cannot be read
    problem: str | None = None
    bundled: bool = False

    def row(self) -> dict:
        """Plain types: what `charrnn list --json` prints for this model."""
        out = {"name": self.name, "path": str(self.path), "bundled": self.bundled, "error": self.problem}
        if self.checkpoint is not None:
            c, p = self.checkpoint, self.checkpoint.progress
            out.update(cell=c.model_config.cell, num_layers=c.model_config.num_layers,
                       hidden_size=c.model_config.hidden_size,
                       best_val_bits_per_char=None if p.best_val_loss is None else p.best_val_loss / LN2,
                       best_val_loss=p.best_val_loss, corpus=c.corpus.get("name"), steps=p.step)
        out["modified"] = self.path.stat().st_mtime if self.path.exists() else None
        return out


def list_runs(root: str | os.PathLike) -> list[Listed]:
    """The runs directly under `root` (each by its best, else latest checkpoint), most
    recently changed first, then the bundled model."""
    found = []
    for run in run_folders(root):
        path = run.best if run.best.is_file() else run.latest
        try:
            found.append(Listed(run.path.name, path, load(path)))
        except CheckpointError as exc:
            found.append(Listed(run.path.name, path, None, str(exc)))
    found.sort(key=lambda item: item.path.stat().st_mtime, reverse=True)
    if paths.BUNDLED.is_file():
        found.append(Listed(paths.BUNDLED.stem, paths.BUNDLED, load(paths.BUNDLED), bundled=True))
    return found
