"""Dynamic evaluation: a model that keeps learning from the text it reads.

Krause et al. (2018, "Dynamic Evaluation of Neural Sequence Models") score a text one
segment at a time and, *after* scoring each segment, take a gradient step on it, so the
model follows the text's local style (its names, its spelling, its rhythm); on
character-level benchmarks this took 0.05-0.17 bits/char off strong LSTMs. The step here
is their RMS form without a prior from the training data: each weight moves by its
gradient divided by the root mean square of its own recent gradients (Adam's second
moment, bias-corrected, no momentum), and is pulled back toward its original value by
`decay` every segment, so the adaptation stays local and cannot drift far.

- `dynamic_loss` scores a text both ways in one ordered pass (one stream, the state
  carried across segments): the static figure (the weights as trained) and the dynamic
  one. The model given is never changed; the adaptation runs on a copy.
- `adapt` returns a copy of a model adapted to a text (a prime), for `charrnn sample
  --adapt`: memory is one copy of the weights and two of their size for the statistics,
  time is one forward and backward pass over the text (its last `MAX_ADAPT_TOKENS`).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from typing import Callable

import torch
import torch.nn.functional as F

from ..config import DynamicConfig
from .network import CharRNN

MAX_ADAPT_TOKENS = 200_000  # a prime longer than this adapts on its last this many tokens (about 90 s on 2 CPU cores)


@dataclass(frozen=True)
class DynamicResult:
    static_nats: float  # summed over the scored tokens
    dynamic_nats: float
    tokens: int
    chars: int
    seconds: float

    @property
    def static_per_char(self) -> float:
        return self.static_nats / max(1, self.chars)

    @property
    def dynamic_per_char(self) -> float:
        return self.dynamic_nats / max(1, self.chars)


class Adapter:
    """The weights of a copy of `model` and the statistics of their update."""

    def __init__(self, model: CharRNN, config: DynamicConfig):
        self.config = config
        net = copy.deepcopy(model).float()
        # Adaptation follows the text, it does not regularise: no dropout, no weight drop.
        # The copy stays in training mode all the same, since cuDNN's recurrent kernels
        # compute gradients only there.
        net.config = replace(net.config, dropout=0.0, weight_drop=0.0)
        net.drop.p = 0.0
        net.rnn.dropout = 0.0
        self.model = net.train(True)
        self.params = list(net.parameters())  # a private copy: every weight learns, frozen or not
        for p in self.params:
            p.requires_grad_(True)
        self.origin = [p.detach().clone() for p in self.params]
        self.square = [torch.zeros_like(p) for p in self.params]
        self.steps = 0

    def learn(self, loss: torch.Tensor) -> None:
        """One update from the loss of the segment just scored (a mean over its tokens)."""
        c = self.config
        grads = torch.autograd.grad(loss, self.params, allow_unused=True)
        self.steps += 1
        correction = 1 - c.beta ** self.steps
        with torch.no_grad():
            for p, g, sq, p0 in zip(self.params, grads, self.square, self.origin):
                if g is None:
                    continue
                g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
                sq.mul_(c.beta).addcmul_(g, g, value=1 - c.beta)
                p.addcdiv_(g, (sq / correction).sqrt_().add_(1e-8), value=-c.lr)
                p.add_(p0 - p, alpha=c.decay)


def _segments(ids: torch.Tensor, size: int):
    """(x, y) pairs of one stream, size tokens each (the last may be shorter)."""
    for start in range(0, len(ids) - 1, size):
        end = min(start + size, len(ids) - 1)
        yield ids[start:end].unsqueeze(0), ids[start + 1 : end + 1].unsqueeze(0)  # (1, T) each


def dynamic_loss(model: CharRNN, ids: torch.Tensor, config: DynamicConfig, device: torch.device,
                 char_lengths: torch.Tensor | None = None,
                 progress: Callable[[int, int], None] | None = None) -> DynamicResult:
    """Score `ids` (N,) in order with the model as it is (static) and with a copy that
    learns from each segment after scoring it (dynamic); the state is carried across
    segments in both."""
    started = time.monotonic()
    ids = ids.to(device).long()
    lengths = None if char_lengths is None else char_lengths.to(device)
    adapter = Adapter(model, config)
    static = model if all(p.dtype == torch.float32 for p in model.parameters()) else copy.deepcopy(model).float()
    was_training = static.training
    static.eval()
    try:
        return _both_passes(static, adapter, ids, config, device, lengths, progress, started)
    finally:
        static.train(was_training)


def _both_passes(static, adapter, ids, config, device, lengths, progress, started) -> DynamicResult:
    state_static = static.init_state(1, device)
    state = adapter.model.init_state(1, device)
    static_nats = dynamic_nats = 0.0
    tokens = chars = 0
    total = len(ids) - 1
    for x, y in _segments(ids, config.segment):
        with torch.no_grad():
            logits, state_static = static(x, state_static)
            static_nats += float(F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum"))
        with torch.enable_grad():
            logits, new_state = adapter.model(x, tuple(s.detach() for s in state))
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum")
            dynamic_nats += float(loss.detach())
            adapter.learn(loss / y.numel())
        state = tuple(s.detach() for s in new_state)
        tokens += y.numel()
        chars += y.numel() if lengths is None else int(lengths[y].sum())
        if progress is not None:
            progress(tokens, total)
    return DynamicResult(static_nats, dynamic_nats, tokens, chars, time.monotonic() - started)


def adapt(model: CharRNN, ids: torch.Tensor, config: DynamicConfig, device: torch.device) -> CharRNN:
    """A copy of `model` adapted to `ids` (N,) by one ordered pass of dynamic evaluation
    (the last `MAX_ADAPT_TOKENS` of a longer text); the model given is not changed."""
    ids = ids[-MAX_ADAPT_TOKENS:].to(device).long()
    adapter = Adapter(model, config)
    state = adapter.model.init_state(1, device)
    for x, y in _segments(ids, config.segment):
        with torch.enable_grad():
            logits, new_state = adapter.model(x, tuple(s.detach() for s in state))
            adapter.learn(F.cross_entropy(logits.flatten(0, 1).float(), y.flatten()))
        state = tuple(s.detach() for s in new_state)
    net = adapter.model
    net.config = model.config  # its dropout settings back, for anyone who trains it further
    net.drop.p = model.drop.p
    net.rnn.dropout = model.rnn.dropout
    for p in net.parameters():
        p.requires_grad_(False)
    return net.eval()
