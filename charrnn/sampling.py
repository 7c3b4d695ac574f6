"""Streaming generation: warm up on the prime once, then one step per token.

The prime goes through `model.forward` in a single call; each generated token then costs
one `model.step` with the carried state, so the cost per character is flat however long
the prime or the output. Several samples are generated together as one batch.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Iterator

import torch

from .model import CharRNN
from .vocab import StreamDecoder


@dataclass(frozen=True)
class Chunk:
    """New text of each of the N samples since the previous chunk, and which have finished."""

    texts: list[str]
    done: list[bool]


@dataclass(frozen=True)
class SampleConfig:
    length: int = 1000  # characters to generate per sample (the prime not included)
    temperature: float = 0.8  # 0 = greedy argmax
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    num_samples: int = 1
    stop: tuple[str, ...] = ()
    max_time: float | None = None  # seconds
    chunk_chars: int = 32  # flush granularity of the yielded text


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Scale by temperature and mask everything outside top-k / the top-p nucleus. # (B, V)"""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already hold top_p of the mass;
        # the most likely token always stays.
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def choose(logits: torch.Tensor, cfg: SampleConfig, generator: torch.Generator) -> torch.Tensor:
    """Next token per stream: argmax at temperature 0, else a draw from the filtered distribution."""
    if cfg.temperature == 0:
        return logits.argmax(dim=-1)
    probs = torch.softmax(filter_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p), dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


class Sampler:
    """Generates text from a model and its vocabulary."""

    def __init__(self, model: CharRNN, vocab, device: torch.device | str = "cpu", quantize: bool = False):
        self.model = model.eval()
        self.vocab = vocab
        self.device = torch.device(device)
        self.step = model.step
        if quantize:
            if self.device.type != "cpu":
                from .errors import ConfigError

                raise ConfigError("--quantize (int8 weights) works on the CPU only.")
            from .quantize import QuantizedStepper

            self.step = QuantizedStepper(model).step

    def default_prime_ids(self) -> list[int]:
        """Start from a newline when no prime is given: most corpora begin text after one."""
        if not self.vocab.unknown_chars("\n")[0]:
            return [int(i) for i in self.vocab.encode("\n")]
        return [0]

    @torch.no_grad()
    def generate(self, prime: str, cfg: SampleConfig) -> Iterator[Chunk]:
        """Yield chunks holding the new text of each of the N samples.

        A sample that has hit a stop sequence or its length gets "" from then on; the
        generator ends when every sample is finished.
        """
        n = cfg.num_samples
        generator = torch.Generator(device=self.device)
        if cfg.seed is not None:
            generator.manual_seed(cfg.seed)
        else:
            generator.seed()
        prime_ids = [int(i) for i in self.vocab.encode(prime)] if prime else self.default_prime_ids()
        if not prime_ids:
            prime_ids = self.default_prime_ids()
        banned = list(self.vocab.banned_ids)
        decoder = StreamDecoder(self.vocab, n)
        ids = torch.tensor(prime_ids, dtype=torch.long, device=self.device).unsqueeze(0).expand(n, -1)
        logits, state = self.model(ids)  # (N, P, V)
        logits = logits[:, -1]  # (N, V)
        deadline = None if cfg.max_time is None else time.monotonic() + cfg.max_time
        one_char_tokens = bool((self.vocab.char_lengths() == 1).all())
        if not cfg.stop and one_char_tokens:
            yield from self._fixed_length(logits, state, cfg, generator, decoder, banned, deadline)
            return

        count = [0] * n  # characters produced per sample
        tail = [""] * n  # the last characters produced, enough to see a stop sequence
        keep = max((len(s) for s in cfg.stop), default=1)
        pending = [""] * n  # text not yet yielded
        done = [False] * n
        steps = 0
        while not all(done):
            if banned:
                logits[:, banned] = float("-inf")
            token = choose(logits, cfg, generator)  # (N,)
            for i, piece in enumerate(decoder.push(token.tolist())):
                if done[i]:
                    continue
                piece, finished = self._clip(count[i], tail[i], piece, cfg)
                count[i] += len(piece)
                tail[i] = (tail[i] + piece)[-keep:]
                pending[i] += piece
                done[i] = finished
            steps += 1
            if deadline is not None and time.monotonic() >= deadline:
                done = [True] * n
            if all(done) or steps % cfg.chunk_chars == 0 or any("\n" in p for p in pending):
                yield Chunk(pending, list(done))
                pending = [""] * n
            if not all(done):
                logits, state = self.step(token, state)
        if any(pending):
            yield Chunk(pending, list(done))

    def _fixed_length(self, logits, state, cfg, generator, decoder, banned, deadline) -> Iterator[Chunk]:
        """Every sample ends after exactly `length` one-character tokens: no per-sample checks
        are needed at each step, so tokens are decoded a chunk at a time."""
        n = cfg.num_samples
        chunk: list[torch.Tensor] = []
        for step in range(cfg.length):
            if banned:
                logits[:, banned] = float("-inf")
            token = choose(logits, cfg, generator)  # (N,)
            chunk.append(token)
            last = step == cfg.length - 1 or (deadline is not None and time.monotonic() >= deadline)
            if last or len(chunk) == cfg.chunk_chars:
                rows = torch.stack(chunk, dim=1).tolist()  # (N, k)
                yield Chunk(["".join(decoder.push_one(i, row)) for i, row in enumerate(rows)], [last] * n)
                chunk = []
            if last:
                return
            logits, state = self.step(token, state)
        yield Chunk([""] * n, [True] * n)  # length 0

    @staticmethod
    def _clip(count: int, tail: str, piece: str, cfg: SampleConfig) -> tuple[str, bool]:
        """Cut `piece` at the length limit or right after the first stop sequence."""
        room = cfg.length - count
        finished = len(piece) >= room
        piece = piece[:room]
        if cfg.stop:
            text = tail + piece
            # Only matches that end inside the new piece are new.
            ends = [text.find(s, max(0, len(tail) - len(s) + 1)) for s in cfg.stop]
            ends = [e + len(s) for e, s in zip(ends, cfg.stop) if e >= 0]
            if ends:
                return piece[: min(ends) - len(tail)], True
        return piece, finished
