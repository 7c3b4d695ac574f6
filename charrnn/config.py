"""Configuration as frozen dataclasses: the model, the training run, the corpus options.

This module imports neither torch nor numpy, so the command line can describe options
(defaults, choices) without paying for them. Values are checked here once, with the
library's own errors, whoever builds the configuration (the CLI, `charrnn.train()`, or a
checkpoint being loaded).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, fields

from .errors import ConfigError

CELLS = ("lstm", "gru", "rnn")
OPTIMIZERS = ("adamw", "muon")
TOKENIZERS = ("char", "sentencepiece")


MAX_HIDDEN = 16384
MAX_SEED = 2**64 - 1
MAX_BATCH = 2**24  # parallel streams (--batch-size, eval's --streams)
MAX_SEQ_LEN = 2**24  # window length (--seq-len)
MAX_STEPS = 10**15  # optimizer steps: far beyond any run, small enough for float arithmetic
MAX_PRIME_BYTES = 16 * 2**20  # a prime read from a file or stdin
MAX_SAMPLES = 100_000  # samples generated together share one batch: their states must fit in memory


_FLOAT_MAX = 1.7976931348623157e308


def shown(value) -> str:
    """A value as a message quotes it: repr, with an integer of many digits shortened."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) >= 10**30:
        digits = len(str(abs(value)))
        return f"{'-' if value < 0 else ''}{str(abs(value))[:6]}... (an integer of {digits:,} digits)"
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + "..."


def check_number(obj, name: str, kind: type, lo=None, hi=None, *, lo_open=False, hi_open=False, optional=False) -> None:
    """One rule for every numeric field: the right type, finite, inside [lo, hi]."""
    value = getattr(obj, name)
    if value is None and optional:
        return
    ok = isinstance(value, (int, float) if kind is float else int) and not isinstance(value, bool)
    # An int is always finite (math.isfinite would overflow on one of hundreds of digits);
    # comparing it with a bound is exact whatever its size.
    if ok and isinstance(value, int) and kind is float:
        ok = abs(value) <= _FLOAT_MAX  # a float field takes an int only where a float can hold it
    ok = ok and (isinstance(value, int) or math.isfinite(value))
    if ok and lo is not None:
        ok = value > lo if lo_open else value >= lo
    if ok and hi is not None:
        ok = value < hi if hi_open else value <= hi
    if not ok:
        what = "an integer" if kind is int else "a number"
        bounds = []
        if lo is not None:
            bounds.append(f"{'above' if lo_open else 'at least'} {lo:g}" if kind is float else f"at least {lo}")
        if hi is not None:
            bounds.append(f"{'below' if hi_open else 'at most'} {hi:g}" if kind is float else f"at most {hi}")
        raise ConfigError(f"{name} must be {what}{' ' + ' and '.join(bounds) if bounds else ''}, not {shown(value)}.")


def _choice(obj, name: str, choices: tuple) -> None:
    if getattr(obj, name) not in choices:
        raise ConfigError(f"{name} must be one of {', '.join(choices)}, not {getattr(obj, name)!r}.")


def field_names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def from_known(cls, data: dict):
    """Build `cls` from the keys of `data` it knows (stored dicts may carry extra keys)."""
    known = set(field_names(cls))
    return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int
    hidden_size: int = 512
    num_layers: int = 2
    embedding_size: int = 64
    dropout: float = 0.1
    # DropConnect on the hidden-to-hidden matrices (AWD-LSTM's weight drop): the share of
    # their entries zeroed, one mask per training window. 0 in checkpoints written before it.
    weight_drop: float = 0.0
    cell: str = "lstm"
    nonlinearity: str = "tanh"  # rnn only
    one_hot: bool = False  # feed one-hot vectors (classic char-rnn) instead of an embedding
    tie_weights: bool = False  # share the embedding table with the output head

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ConfigError(f"Unknown cell {self.cell!r}; choose one of {', '.join(CELLS)}.")
        check_number(self, "vocab_size", int, 1, 2**31 - 1)
        check_number(self, "hidden_size", int, 1, MAX_HIDDEN)
        check_number(self, "num_layers", int, 1, 64)
        check_number(self, "embedding_size", int, 1, MAX_HIDDEN)
        check_number(self, "dropout", float, 0, 1, hi_open=True)
        check_number(self, "weight_drop", float, 0, 1, hi_open=True)
        _choice(self, "nonlinearity", ("tanh", "relu"))
        for name in ("one_hot", "tie_weights"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, not {getattr(self, name)!r}.")
        if self.tie_weights and (self.one_hot or self.embedding_size != self.hidden_size):
            raise ConfigError("--tie-weights needs an embedding (not --one-hot) with --embedding-size equal to --hidden-size.")

    @property
    def input_size(self) -> int:
        return self.vocab_size if self.one_hot else self.embedding_size

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        return from_known(cls, data)


@dataclass(frozen=True)
class TrainConfig:
    # 16 streams of 128: on the 2-core CPU a 2 x 512 LSTM trains as many characters per
    # second at batch 16 as at 32 (the recurrence, not the matrix width, sets the pace),
    # and twice the optimizer steps gave 1.440 against 1.465 nats/char on Tiny
    # Shakespeare in 10 minutes; batch 8 was slower and worse (1.456). docs/benchmarks.md.
    batch_size: int = 16
    seq_len: int = 128
    lr: float = 1e-2
    # "muon": Muon for the recurrent matrices, AdamW for the rest (charrnn.optim). New runs
    # that name none get `sizing.choose_update(cell, ...)` (Muon for the LSTM) from
    # charrnn.runs; this default is what a Trainer built directly, and a version-2
    # checkpoint, use.
    optimizer: str = "adamw"
    weight_decay: float = 0.01
    warmup_steps: int = 50
    # Ending the cosine at zero instead gained 0.008 on Tiny Shakespeare in 10 minutes but
    # lost 0.017-0.025 on three other corpora in 3 minutes (docs/benchmarks.md), so 5% stays.
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    max_steps: int | None = None
    max_epochs: float | None = None
    max_time: float | None = None  # seconds
    eval_every: int = 200  # steps; 200 x 16 x 128 characters between evaluations
    log_every: int = 10
    val_fraction: float = 0.1
    eval_max_tokens: int = 262_144  # validation is capped so evaluation stays cheap on huge corpora
    seed: int = 1337
    device: str = "auto"
    precision: str = "auto"
    patience: int | None = None  # evaluations without improvement before stopping early
    keep_every: int | None = None  # keep a step-NNNNNNNN.pt snapshot every N steps
    max_bad_steps: int = 8  # consecutive non-finite steps (skipped) before giving up
    sample_every: int | None = None  # show and keep a sample at every Nth evaluation
    sample_length: int = 200  # characters per such sample
    sample_temp: float = 0.8

    # Options a resumed run may change; every other one must match the checkpoint.
    RESUMABLE = ("max_steps", "max_epochs", "max_time", "eval_every", "log_every", "device",
                 "precision", "patience", "keep_every", "max_bad_steps", "sample_every", "sample_length", "sample_temp")
    BUDGETS = ("max_steps", "max_epochs", "max_time")

    def __post_init__(self):
        check_number(self, "batch_size", int, 1, MAX_BATCH)
        check_number(self, "seq_len", int, 1, MAX_SEQ_LEN)
        for name in ("eval_every", "log_every", "eval_max_tokens", "max_bad_steps"):
            check_number(self, name, int, 1)
        check_number(self, "warmup_steps", int, 0)
        for name in ("max_steps", "patience", "keep_every", "sample_every"):
            check_number(self, name, int, 1, MAX_STEPS, optional=True)
        check_number(self, "sample_length", int, 1, 100_000)
        check_number(self, "sample_temp", float, 0)
        check_number(self, "lr", float, 0, lo_open=True)
        for name in ("weight_decay", "grad_clip"):
            check_number(self, name, float, 0)
        check_number(self, "min_lr_ratio", float, 0, 1)
        check_number(self, "val_fraction", float, 0, 1, hi_open=True)
        for name in ("max_epochs", "max_time"):
            check_number(self, name, float, 0, lo_open=True, optional=True)
        check_number(self, "seed", int, 0, MAX_SEED)
        if not (isinstance(self.device, str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device)):
            raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, not {self.device!r}.")
        if self.precision == "fp32":  # the name before float32; stored in older checkpoints
            object.__setattr__(self, "precision", "float32")
        _choice(self, "precision", ("auto", "float32", "bf16"))
        _choice(self, "optimizer", OPTIMIZERS)
        if self.max_steps is None and self.max_epochs is None and self.max_time is None:
            raise ConfigError("Training needs a budget: --max-steps, --max-epochs or --max-time.")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CorpusOptions:
    """How the corpus is read and turned into tokens."""

    tokenizer: str = "char"  # or "sentencepiece"
    vocab_size: int = 2000  # sentencepiece only
    sp_model_type: str = "unigram"  # sentencepiece only
    encoding: str = "utf-8"
    errors: str = "strict"
    newline: str = "keep"

    def __post_init__(self):
        _choice(self, "tokenizer", TOKENIZERS)
        check_number(self, "vocab_size", int, 260, 1_000_000)
        _choice(self, "sp_model_type", ("unigram", "bpe"))
        _choice(self, "errors", ("strict", "replace", "ignore"))
        _choice(self, "newline", ("keep", "lf"))


@dataclass(frozen=True)
class DynamicConfig:
    """Settings of dynamic evaluation; the defaults are measured (docs/benchmarks.md)."""

    segment: int = 50  # tokens scored, then learned from, per step
    lr: float = 3e-4  # step size of the RMS-normalised gradient
    decay: float = 0.001  # share of the way back to the original weights per step
    beta: float = 0.99  # how long the mean square of gradients remembers

    def __post_init__(self):
        check_number(self, "segment", int, 1, 1 << 20)
        check_number(self, "lr", float, 0, 1)
        check_number(self, "decay", float, 0, 1)
        check_number(self, "beta", float, 0, 1, hi_open=True)
