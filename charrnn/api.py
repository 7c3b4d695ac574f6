"""The Python API: `train()` a model and `load()` one to generate or score text.

The CLI is a thin layer over these same functions and classes; nothing here prints.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from . import checkpoint
from .data import as_streams
from .devices import resolve_device
from .errors import CheckpointError
from .model import CharRNN, ModelConfig
from .sampling import Sampler, SampleConfig
from .trainer import LN2, evaluate
from .vocab import vocab_from_dict


@dataclass(frozen=True)
class LossReport:
    nats_per_char: float
    chars: int  # characters scored
    excluded: int  # characters outside the vocabulary, left out
    nats_per_token: float = math.nan
    tokens: int = 0

    @property
    def bits_per_char(self) -> float:
        return self.nats_per_char / LN2

    @property
    def perplexity(self) -> float:
        return math.exp(self.nats_per_char)


class Model:
    """A trained model with its vocabulary, ready to generate text or score it."""

    def __init__(self, net: CharRNN, vocab, data: dict, path: Path, device: torch.device):
        self.net = net
        self.vocab = vocab
        self.data = data
        self.path = path
        self.device = device

    def generate(
        self,
        prime: str = "",
        temperature: float = 0.8,
        length: int = 1000,
        seed: int | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        stop: tuple[str, ...] = (),
        max_time: float | None = None,
    ) -> Iterator[str]:
        """Stream the continuation of `prime` in small chunks (the prime itself is not repeated)."""
        cfg = SampleConfig(
            length=length, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
            stop=tuple(stop), max_time=max_time,
        )
        for chunk in Sampler(self.net, self.vocab, self.device).generate(prime, cfg):
            if chunk.texts[0]:
                yield chunk.texts[0]

    def loss(self, text: str, seq_len: int = 256, streams: int = 16) -> LossReport:
        """Cross-entropy of `text` under the model with carried state, in nats per character;
        characters outside the vocabulary are counted and left out."""
        unknown, excluded = self.vocab.unknown_chars(text)
        if unknown:
            table = {ord(c): None for c in unknown}
            text = text.translate(table)
        ids = self.vocab.encode(text)
        if len(ids) < 2:
            return LossReport(math.nan, 0, excluded)
        streams = max(1, min(streams, len(ids) // (seq_len + 1)))
        lengths = torch.from_numpy(self.vocab.char_lengths())
        result = evaluate(self.net, as_streams(ids, streams), seq_len, self.device, char_lengths=lengths)
        return LossReport(result.per_char, result.chars, excluded, result.per_token, result.tokens)


def load(path: str | os.PathLike, device: str = "cpu") -> Model:
    """Load a checkpoint file or a run folder (its best checkpoint) onto `device`."""
    file = checkpoint.resolve(path)
    data = checkpoint.load(file)
    dev = resolve_device(device)
    try:
        config = ModelConfig.from_dict(data["model_config"])
        net = CharRNN(config)
        net.load_state_dict(data["model"])  # copies into float32 parameters, also from float16
        vocab = vocab_from_dict(data["vocab"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"Checkpoint {file} is incomplete or inconsistent ({type(exc).__name__}).") from None
    return Model(net.to(dev).eval(), vocab, data, file, dev)


@dataclass(frozen=True)
class TrainResult:
    """What a finished `train()` call produced."""

    out_dir: Path
    best_path: Path
    best_val_loss: float  # nats per character
    final_val_loss: float
    steps: int
    epochs: float
    elapsed: float  # seconds
    chars_per_sec: float
    reason: str

    @property
    def best_val_bits_per_char(self) -> float:
        return self.best_val_loss / LN2

    def load(self, device: str = "cpu") -> Model:
        return load(self.best_path, device=device)


def train(
    corpus: str | os.PathLike,
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    init_from: str | os.PathLike | None = None,
    overwrite: bool = False,
    tokenizer: str = "char",
    vocab_size: int = 2000,
    sp_model_type: str = "unigram",
    encoding: str = "utf-8",
    errors: str = "strict",
    newline: str = "keep",
    on_event: Callable[[object], None] | None = None,
    **options,
) -> TrainResult:
    """Train a model exactly as `charrnn train` does, without printing anything.

    `options` are the model and training settings by their PyTorch-style names
    (`hidden_size`, `num_layers`, `cell`, `dropout`, `batch_size`, `seq_len`, `lr`,
    `max_steps`, `max_epochs`, `max_time` — seconds or a string like "2m" —, `seed`,
    `device`, ...). `on_event` receives every progress event (`charrnn.trainer.Progress`,
    `Evaluated`, `Saved`, `Finished`) if you want to show or log them.

        run = train("corpus.txt", hidden_size=256, max_time="2m", out="checkpoints/x")
        print(run.best_val_bits_per_char)
        model = run.load()
    """
    import dataclasses

    from .durations import parse_duration
    from .runs import DEFAULT_ROOT, CorpusOptions, prepare_training
    from .trainer import Finished, TrainConfig

    if isinstance(options.get("max_time"), str):
        options["max_time"] = parse_duration(options["max_time"])
    model_fields = set(ModelConfig.__dataclass_fields__) - {"vocab_size"}
    train_fields = {f.name for f in dataclasses.fields(TrainConfig)}
    unknown = set(options) - model_fields - train_fields
    if unknown:
        raise TypeError(f"train() got unknown option(s): {', '.join(sorted(unknown))}")
    trainer = prepare_training(
        str(corpus),
        out_dir=out,
        model_options={k: v for k, v in options.items() if k in model_fields},
        train_options={k: v for k, v in options.items() if k in train_fields},
        resume=resume,
        init_from=init_from,
        overwrite=overwrite,
        corpus_options=CorpusOptions(tokenizer, vocab_size, sp_model_type, encoding, errors, newline),
        root=os.environ.get("CHARRNN_CHECKPOINTS", DEFAULT_ROOT),
    )
    done = None
    for event in trainer.run():
        if on_event is not None:
            on_event(event)
        if isinstance(event, Finished):
            done = event
    out_dir = Path(done.out_dir)
    best = out_dir / checkpoint.BEST
    return TrainResult(out_dir, best if best.exists() else out_dir / checkpoint.LATEST, done.best_val_loss,
                       done.final_val_loss, done.step, done.epoch, done.elapsed, done.chars_per_sec, done.reason)
