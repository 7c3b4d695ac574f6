"""The Python API for trained models: `load()` one, then generate or score text.

(`train()` lives with the run it drives, in charrnn.training.run.) The CLI is a thin layer over
these same functions and classes; nothing here prints.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch

from . import paths
from .checkpoint import store as checkpoint
from .checkpoint.store import Checkpoint
from .config import MAX_BATCH, MAX_SEQ_LEN, DynamicConfig, SampleConfig, shown
from .devices import resolve_device
from .errors import CheckpointError, ConfigError, CorpusError
from .events import LN2
from .model.evaluation import evaluate
from .model.network import CharRNN
from .model.sampling import Chunk, Sampler
from .text.corpus import as_streams


@dataclass(frozen=True)
class DynamicReport:
    """A text scored in one ordered pass twice: as trained (`static`) and by dynamic
    evaluation (`dynamic`: the model learns from each segment after scoring it)."""

    static: "LossReport"
    dynamic: "LossReport"
    seconds: float


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

    def __init__(self, net: CharRNN, vocab, ckpt: Checkpoint, device: torch.device, bundled: bool = False):
        self.net = net
        self.vocab = vocab
        self.checkpoint = ckpt
        self.path = ckpt.path
        self.device = device
        self.bundled = bundled  # the Tiny Shakespeare model shipped with charrnn
        self._samplers: dict[bool, Sampler] = {}  # by `quantize`: the step's folded weights are made once

    def stream(
        self,
        prime: str = "",
        temperature: float = 0.8,
        length: int = 1000,
        seed: int | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        stop: tuple[str, ...] = (),
        max_time: float | None = None,
        num_samples: int = 1,
        quantize: bool = False,
    ) -> Iterator[Chunk]:
        """Generate `num_samples` continuations of `prime` together, as chunks holding the
        new text of each sample and which samples have finished. `quantize` steps on int8
        weights (CPU only). `stop` is one string or several; `max_time` is seconds or a
        duration such as "30s"."""
        prime = _text(prime, "prime")
        if isinstance(max_time, str):
            max_time = _duration(max_time)
        cfg = SampleConfig(
            length=length, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
            num_samples=num_samples, stop=(stop,) if isinstance(stop, str) else tuple(stop), max_time=max_time,
        )
        yield from self._sampler(quantize).generate(prime, cfg)

    def _sampler(self, quantize: bool) -> Sampler:
        """One sampler per kind of step, made on first use: folding the weights for the fast
        step takes tens of milliseconds, a tenth of a short generation. Each generation
        still gets buffers of its own (`Sampler.generate`), so streams may run side by side.
        The weights are read when it is made: a `Model` is for a trained network."""
        if quantize not in self._samplers:
            self._samplers[quantize] = Sampler(self.net, self.vocab, self.device, quantize=quantize)
        return self._samplers[quantize]

    def generate(self, prime: str = "", **options) -> Iterator[str]:
        """Stream the continuation of `prime` in small pieces of text (the prime itself is
        not repeated); `options` are those of `stream` for one sample."""
        for chunk in self.stream(prime, **options):
            if chunk.texts[0]:
                yield chunk.texts[0]

    def adapted(self, text: str, dynamic: DynamicConfig | None = None) -> "Model":
        """A copy of this model whose weights have learned from `text` the way dynamic
        evaluation learns (charrnn.model.dynamic), for generating in its style: one ordered pass,
        a gradient step per segment. Characters outside the vocabulary are left out; this
        model is not changed. Memory is about three times the weights; time is one
        training pass over the text (its last `dynamic.MAX_ADAPT_TOKENS` tokens, at most)."""
        from .model.dynamic import adapt

        ids, _ = self.known_ids(text)
        if len(ids) < 2:
            return self
        net = adapt(self.net, torch.from_numpy(ids.astype("int64")), dynamic or DynamicConfig(), self.device)
        return Model(net, self.vocab, self.checkpoint, self.device, self.bundled)

    def dynamic_loss(self, text: str, dynamic: DynamicConfig | None = None, progress=None) -> DynamicReport:
        """`text` scored in one ordered pass (one stream, the state carried), with the
        weights as trained and by dynamic evaluation (charrnn.model.dynamic); the checkpoint and
        this model are not changed. `progress(done, total)` is called after each segment."""
        from .model.dynamic import dynamic_loss

        ids, excluded = self.known_ids(text)
        _require_two(ids, excluded)
        lengths = torch.from_numpy(self.vocab.char_lengths())
        r = dynamic_loss(self.net, torch.from_numpy(ids.astype("int64")), dynamic or DynamicConfig(), self.device,
                         lengths, progress)
        per_token = lambda nats: nats / max(1, r.tokens)  # noqa: E731
        return DynamicReport(LossReport(r.static_per_char, r.chars, excluded, per_token(r.static_nats), r.tokens),
                             LossReport(r.dynamic_per_char, r.chars, excluded, per_token(r.dynamic_nats), r.tokens),
                             r.seconds)

    def known_ids(self, text: str) -> tuple[np.ndarray, int]:
        """The ids of `text` with the characters outside the vocabulary left out, and how
        many were left out (scoring and adapting skip them)."""
        text = _text(text, "text")
        unknown, excluded = self.vocab.unknown_chars(text)
        if unknown:
            text = text.translate({ord(c): None for c in unknown})
        return self.vocab.encode(text), excluded

    def loss(self, text: str, seq_len: int = 256, streams: int = 16) -> LossReport:
        """Cross-entropy of `text` under the model with carried state, in nats per character;
        characters outside the vocabulary are counted and left out."""
        text = _text(text, "text")
        for name, value, most in (("seq_len", seq_len, MAX_SEQ_LEN), ("streams", streams, MAX_BATCH)):
            if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= most:
                raise ConfigError(f"{name} must be an integer at least 1 and at most {most:,}, not {shown(value)}.")
        ids, excluded = self.known_ids(text)
        _require_two(ids, excluded)
        streams = max(1, min(streams, len(ids) // (seq_len + 1)))
        lengths = torch.from_numpy(self.vocab.char_lengths())
        result = evaluate(self.net, as_streams(ids, streams), seq_len, self.device, char_lengths=lengths)
        return LossReport(result.per_char, result.chars, excluded, result.per_token, result.tokens)


def _require_two(ids, excluded: int) -> None:
    """Scoring needs at least two tokens: one to predict from, one to predict."""
    if len(ids) < 2:
        held = f"{len(ids)} token{'' if len(ids) == 1 else 's'}"
        if excluded:
            raise CorpusError(f"Only {held} of the text are inside the model's vocabulary ({excluded:,} characters "
                              f"are outside it); at least two are needed to score it.")
        raise CorpusError(f"The text is too short to score ({held}); at least two are needed.")


def _text(value, name: str) -> str:
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ConfigError(f"{name} must be text (a str), not {type(value).__name__}.")
    return value


def _duration(text: str) -> float:
    from .durations import parse_duration

    try:
        return parse_duration(text)
    except ValueError as exc:
        raise ConfigError(f"max_time: {exc}.") from None


def load(path: str | os.PathLike | None = None, device: str = "cpu", root: str | os.PathLike = paths.DEFAULT_ROOT) -> Model:
    """Load a checkpoint file or a run folder (its best checkpoint) onto `device`; with no
    path, the newest best checkpoint under `root`, else the bundled Tiny Shakespeare model."""
    found = paths.find(path, root)
    ckpt = checkpoint.load(found.path)
    dev = resolve_device(device)
    net = CharRNN(ckpt.model_config)
    try:
        net.load_state_dict(ckpt.weights)  # copies into float32 parameters, also from float16
    except RuntimeError:
        raise CheckpointError(f"Checkpoint {found.path} has weights that do not fit its model configuration.") from None
    return Model(net.to(dev).eval(), ckpt.vocabulary(), ckpt, dev, found.bundled)
