"""Loading trained models for sampling and evaluation (the Python-facing entry points)."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import torch

from . import checkpoint
from .data import as_streams
from .devices import resolve_device
from .errors import CheckpointError
from .model import CharRNN, ModelConfig
from .sampling import Sampler, SampleConfig
from .train import LN2, evaluate
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
        net.load_state_dict(data["model"])
        vocab = vocab_from_dict(data["vocab"])
    except (KeyError, TypeError, RuntimeError) as exc:
        raise CheckpointError(f"Checkpoint {file} is incomplete or inconsistent ({type(exc).__name__}).") from None
    return Model(net.to(dev).eval(), vocab, data, file, dev)
