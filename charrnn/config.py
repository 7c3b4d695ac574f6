"""Configuration as frozen dataclasses: the model, the training run, the corpus options.

Each option is declared once, as a field made by `setting`: its name, its default, its
help text and its check (kind, bounds, choices). Everything else is built from that
declaration: `check_settings` applies the checks in `__post_init__`, whoever builds the
configuration (the CLI, `charrnn.train()`, or a checkpoint being loaded), and the command
line makes its options from the same fields (`charrnn.cli.options`), so a default or a
bound is never written twice. Rules between fields stay in each `__post_init__`.

This module imports neither torch nor numpy, so the command line can describe options
(defaults, choices) without paying for them.
"""

from __future__ import annotations

import math
import re
from dataclasses import MISSING, Field, asdict, dataclass, field, fields

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


DURATION = "duration"  # a float of seconds that the command line reads as "90s", "10m", "1h30m"


def setting(default=MISSING, *, help: str = "", kind: type | str | None = None, lo=None, hi=None,
            lo_open: bool = False, hi_open: bool = False, choices: tuple | None = None,
            unset: str | None = None, cli: bool = True, short: str | None = None, flag: str | None = None):
    """A configuration field with everything said about it in one place.

    `kind` (int, float, bool, str or DURATION; by default the default's type), `lo`/`hi`
    (with `lo_open`/`hi_open`) and `choices` are the check; `help` is the sentence the
    command line shows. `unset` says what happens when a new run does not give the option
    (the sizing rule, the cell's own rate, ...): the command line then passes nothing and
    shows it as the default instead of the field's value. `cli=False` keeps a field off the
    command line; `flag` and `short` name its option when `--field-name` is not it."""
    if kind is None:
        kind = type(default) if default not in (MISSING, None) else str
    meta = {"help": help, "kind": kind, "lo": lo, "hi": hi, "lo_open": lo_open, "hi_open": hi_open,
            "choices": choices, "unset": unset, "cli": cli, "short": short, "flag": flag}
    return field(default=default, metadata=meta)


def check_settings(obj) -> None:
    """Apply each `setting`'s check to its value (None passes where the default is None).
    Text without choices is checked where it is used (an encoding by the codec lookup)."""
    for f in fields(obj):
        meta = f.metadata
        if "kind" not in meta:
            continue
        value, optional = getattr(obj, f.name), f.default is None
        if value is None and optional:
            continue
        if meta["choices"] is not None:
            _choice(obj, f.name, meta["choices"])
        elif meta["kind"] is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{f.name} must be true or false, not {shown(value)}.")
        elif meta["kind"] in (int, float, DURATION):
            check_number(obj, f.name, int if meta["kind"] is int else float, meta["lo"], meta["hi"],
                         lo_open=meta["lo_open"], hi_open=meta["hi_open"], optional=optional)


def settings(cls) -> dict[str, Field]:
    """The fields of a configuration class declared with `setting`, by name."""
    return {f.name: f for f in fields(cls) if "kind" in f.metadata}


def field_names(cls) -> tuple[str, ...]:
    return tuple(f.name for f in fields(cls))


def from_known(cls, data: dict):
    """Build `cls` from the keys of `data` it knows (stored dicts may carry extra keys)."""
    known = set(field_names(cls))
    return cls(**{k: v for k, v in data.items() if k in known})


SIZED = "from the passes over the text the budget allows"  # what the sizing rule sets unless given


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = setting(kind=int, lo=1, hi=2**31 - 1, cli=False)
    hidden_size: int = setting(512, lo=1, hi=MAX_HIDDEN, unset="sized to the corpus and budget",
                               help="Units per recurrent layer.")
    num_layers: int = setting(2, lo=1, hi=64, help="Stacked recurrent layers.")
    embedding_size: int = setting(64, lo=1, hi=MAX_HIDDEN, help="Size of the learned character embedding.")
    dropout: float = setting(0.1, lo=0, hi=1, hi_open=True, unset=SIZED,
                             help="Dropout on the embedding, between layers and before the head; naming it sets "
                                  "--weight-drop to 0.")
    # DropConnect on the hidden-to-hidden matrices (AWD-LSTM's weight drop): the share of
    # their entries zeroed, one mask per training window. 0 in checkpoints written before it.
    weight_drop: float = setting(0.0, lo=0, hi=1, hi_open=True, unset=SIZED,
                                 help="Share of each recurrent layer's hidden-to-hidden weights dropped, one mask per "
                                      "window (AWD-LSTM's weight drop); naming it sets --dropout to 0.")
    cell: str = setting("lstm", choices=CELLS, help="Recurrent cell.")
    nonlinearity: str = setting("tanh", choices=("tanh", "relu"), help="Activation of the vanilla rnn cell.")
    one_hot: bool = setting(False, help="Feed one-hot characters (classic char-rnn) instead of a learned embedding.")
    tie_weights: bool = setting(False, help="Share the embedding table with the output layer (needs "
                                            "--embedding-size equal to --hidden-size).")

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ConfigError(f"Unknown cell {self.cell!r}; choose one of {', '.join(CELLS)}.")
        check_settings(self)
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
    batch_size: int = setting(16, lo=1, hi=MAX_BATCH, short="-b", help="Parallel streams B.")
    seq_len: int = setting(128, lo=1, hi=MAX_SEQ_LEN, short="-t",
                           help="Window length T for truncated backpropagation through time.")
    # New runs that name no rate or update get `sizing.choose_update(cell, ...)` (Muon for
    # the LSTM) from charrnn.training.run; these defaults are what a Trainer built
    # directly, and a version-2 checkpoint, use.
    lr: float = setting(1e-2, lo=0, lo_open=True, help="Peak learning rate.",
                        unset="5e-3 with muon; with adamw 1e-2 for lstm, 5e-3 for gru, 3e-3 for rnn")
    # "muon": Muon for the recurrent matrices, AdamW for the rest (charrnn.training.optim).
    optimizer: str = setting("adamw", choices=OPTIMIZERS, unset="muon for lstm, adamw for gru and rnn",
                             help="muon: orthogonalised momentum for the recurrent matrices, AdamW for the rest; "
                                  "or adamw.")
    # New runs that name none get the update's (`sizing.choose_update`); this default is AdamW's.
    weight_decay: float = setting(0.01, lo=0, help="Decoupled weight decay on weight matrices.",
                                  unset="0.2 with muon, 0.01 with adamw")
    warmup_steps: int = setting(50, lo=0, help="Linear learning-rate warmup steps before the cosine decay.")
    # Ending the cosine at zero instead gained 0.008 on Tiny Shakespeare in 10 minutes but
    # lost 0.017-0.025 on three other corpora in 3 minutes (docs/benchmarks.md), so 5% stays.
    min_lr_ratio: float = setting(0.05, lo=0, hi=1, cli=False)
    grad_clip: float = setting(1.0, lo=0, help="Clip the gradient norm to this value (0 turns clipping off).")
    max_steps: int | None = setting(None, kind=int, lo=1, hi=MAX_STEPS, help="Stop after this many optimizer steps.")
    max_epochs: float | None = setting(None, kind=float, lo=0, lo_open=True,
                                       help="Stop after this many passes over the training text.")
    max_time: float | None = setting(None, kind=DURATION, lo=0, lo_open=True, unset="10m when no budget is given",
                                     help="Stop after this long, e.g. 90s, 10m, 1h.")  # seconds
    # 200 x 16 x 128 characters between evaluations
    eval_every: int = setting(200, lo=1, help="Evaluate on validation text and checkpoint every N steps.")
    log_every: int = setting(10, lo=1, help="Read back the training loss every N steps.")
    val_fraction: float = setting(0.1, lo=0, hi=1, hi_open=True, help="Tail of the text held out for validation.")
    # validation is capped so evaluation stays cheap on huge corpora
    eval_max_tokens: int = setting(262_144, lo=1, cli=False)
    seed: int = setting(1337, lo=0, hi=MAX_SEED, help="Random seed (initialisation and dropout).")
    device: str = setting("auto", cli=False)  # the command line's --device is shared by every command
    precision: str = setting("auto", choices=("auto", "float32", "bf16"),
                             help="bf16 autocast with float32 weights, or float32. auto uses bf16 on CUDA GPUs that "
                                  "support it and on CPUs that do bfloat16 natively and train faster for it (a probe "
                                  "in a child process decides, once per machine); fp32 = float32.")
    patience: int | None = setting(None, kind=int, lo=1, hi=MAX_STEPS, unset="off",
                                   help="Stop after N evaluations without a better validation loss.")
    keep_every: int | None = setting(None, kind=int, lo=1, hi=MAX_STEPS, unset="off",
                                     help="Also keep a step-NNNNNNNN.pt snapshot every N steps.")
    # consecutive non-finite steps (skipped) before giving up
    max_bad_steps: int = setting(8, lo=1, cli=False)
    sample_every: int | None = setting(None, kind=int, lo=1, hi=MAX_STEPS, unset="off",
                                       help="Show a short sample at every Nth evaluation and append it to "
                                            "<run>/samples.txt.")
    sample_length: int = setting(200, lo=1, hi=100_000, help="Characters in each --sample-every sample.")
    sample_temp: float = setting(0.8, lo=0, help="Temperature of the --sample-every samples.")

    # Options a resumed run may change; every other one must match the checkpoint.
    RESUMABLE = ("max_steps", "max_epochs", "max_time", "eval_every", "log_every", "device",
                 "precision", "patience", "keep_every", "max_bad_steps", "sample_every", "sample_length", "sample_temp")
    BUDGETS = ("max_steps", "max_epochs", "max_time")

    def __post_init__(self):
        if self.precision == "fp32":  # the name before float32; stored in older checkpoints
            object.__setattr__(self, "precision", "float32")
        check_settings(self)
        if not (isinstance(self.device, str) and re.fullmatch(r"auto|cpu|mps|cuda(:\d+)?", self.device)):
            raise ConfigError(f"device must be auto, cpu, cuda, cuda:N or mps, not {self.device!r}.")
        if self.max_steps is None and self.max_epochs is None and self.max_time is None:
            raise ConfigError("Training needs a budget: --max-steps, --max-epochs or --max-time.")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class CorpusOptions:
    """How the corpus is read and turned into tokens."""

    tokenizer: str = setting("char", choices=TOKENIZERS,
                             help="Characters, or subword pieces trained with sentencepiece on the corpus.")
    vocab_size: int = setting(2000, lo=260, hi=1_000_000,
                              help="Pieces in a sentencepiece vocabulary (at least 260: 256 byte pieces come first).")
    sp_model_type: str = setting("unigram", choices=("unigram", "bpe"), help="sentencepiece algorithm.")
    encoding: str = setting("utf-8", help="Text encoding of the corpus.")
    errors: str = setting("strict", choices=("strict", "replace", "ignore"),
                          help="What to do with bytes that do not decode.")
    newline: str = setting("keep", choices=("keep", "lf"),
                           help="keep line endings as they are, or turn CRLF/CR into LF.")

    def __post_init__(self):
        check_settings(self)


@dataclass(frozen=True)
class DynamicConfig:
    """Settings of dynamic evaluation; the defaults are measured (docs/benchmarks.md)."""

    segment: int = setting(50, lo=1, hi=1 << 20, help="--dynamic: tokens per segment (one gradient step each).")
    lr: float = setting(3e-4, lo=0, hi=1, flag="--dynamic-lr",
                        help="--dynamic: step size of the RMS-normalised gradient.")
    decay: float = setting(0.001, lo=0, hi=1, flag="--dynamic-decay",
                           help="--dynamic: share of the way back to the trained weights per segment.")
    beta: float = setting(0.99, lo=0, hi=1, hi_open=True, cli=False)  # how long the mean square of gradients remembers

    def __post_init__(self):
        check_settings(self)


@dataclass(frozen=True)
class SampleConfig:
    """How text is drawn; declared once for the API, `serve` and the command line
    (`charrnn.config.setting`)."""

    length: int = setting(1000, lo=0, short="-n", help="Characters to generate per sample (the prime is not counted).")
    temperature: float = setting(0.8, lo=0, flag="--temp",
                                 help="Sampling temperature; 0 is greedy (always the most likely character).")
    top_k: int | None = setting(None, kind=int, lo=1, help="Sample only among the K most likely characters.")
    top_p: float | None = setting(None, kind=float, lo=0, hi=1, lo_open=True,
                                  help="Nucleus sampling: only the most likely characters holding probability P.")
    seed: int | None = setting(None, kind=int, lo=0, hi=MAX_SEED, unset="random",
                               help="Random seed: same checkpoint, seed and options give the same text.")
    num_samples: int = setting(1, lo=1, hi=MAX_SAMPLES, short="-N",
                               help=f"Generate N samples together in one batch (at most {MAX_SAMPLES:,}).")
    stop: tuple[str, ...] = ()
    max_time: float | None = setting(None, kind=DURATION, lo=0, lo_open=True,
                                     help="Stop generating after this long, e.g. 30s.")  # seconds
    chunk_chars: int = setting(32, lo=1, cli=False)  # flush granularity of the yielded text

    def __post_init__(self):
        """The same rules as the command line's options, for callers of the API."""
        check_settings(self)
        if not isinstance(self.stop, tuple) or not all(isinstance(s, str) and s for s in self.stop):
            raise ConfigError(f"stop must be a tuple of non-empty strings, not {self.stop!r}.")
