"""Configuration as frozen dataclasses: the model, the training run, the corpus options.

This module imports neither torch nor numpy, so the command line can describe options
(defaults, choices) without paying for them. Values are checked here once, with the
library's own errors, whoever builds the configuration (the CLI, `charrnn.train()`, or a
checkpoint being loaded).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from .errors import ConfigError

CELLS = ("lstm", "gru", "rnn")
TOKENIZERS = ("char", "sentencepiece")


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
    cell: str = "lstm"
    nonlinearity: str = "tanh"  # rnn only
    one_hot: bool = False  # feed one-hot vectors (classic char-rnn) instead of an embedding
    tie_weights: bool = False  # share the embedding table with the output head

    def __post_init__(self):
        if self.cell not in CELLS:
            raise ConfigError(f"Unknown cell {self.cell!r}; choose one of {', '.join(CELLS)}.")
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
    batch_size: int = 32
    seq_len: int = 128
    lr: float = 1e-2
    weight_decay: float = 0.01
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05
    grad_clip: float = 1.0
    max_steps: int | None = None
    max_epochs: float | None = None
    max_time: float | None = None  # seconds
    eval_every: int = 100
    log_every: int = 10
    val_fraction: float = 0.1
    eval_max_tokens: int = 262_144  # validation is capped so evaluation stays cheap on huge corpora
    seed: int = 1337
    device: str = "auto"
    precision: str = "auto"
    patience: int | None = None  # evaluations without improvement before stopping early
    keep_every: int | None = None  # keep a step-NNNNNNNN.pt snapshot every N steps
    max_bad_steps: int = 8  # consecutive non-finite steps (skipped) before giving up

    # Options a resumed run may change; every other one must match the checkpoint.
    RESUMABLE = ("max_steps", "max_epochs", "max_time", "eval_every", "log_every", "device",
                 "precision", "patience", "keep_every", "max_bad_steps")
    BUDGETS = ("max_steps", "max_epochs", "max_time")

    def __post_init__(self):
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
