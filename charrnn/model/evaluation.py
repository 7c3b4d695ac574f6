"""Scoring a text with a model: the summed cross-entropy over every target, with the
state carried across windows exactly as training does. The trainer's validation,
`charrnn eval` (`api.Model.loss`) and dynamic evaluation's static figure all use it, so
the API scores text without importing the trainer."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..devices import autocast
from ..text.corpus import eval_windows
from .network import CharRNN


@dataclass(frozen=True)
class EvalResult:
    nats: float  # summed cross-entropy
    tokens: int
    chars: int  # characters those tokens stand for (equal to tokens for a character vocabulary)

    @property
    def per_char(self) -> float:
        return self.nats / self.chars if self.chars else math.nan

    @property
    def per_token(self) -> float:
        return self.nats / self.tokens if self.tokens else math.nan


@torch.no_grad()
def evaluate(
    model: CharRNN,
    streams: torch.Tensor,
    seq_len: int,
    device: torch.device,
    bf16: bool = False,
    char_lengths: torch.Tensor | None = None,
) -> EvalResult:
    """Summed cross-entropy over every target of `streams` (B, L), carrying the state across
    windows exactly as training does; `char_lengths` (V,) counts characters per token."""
    was_training = model.training
    model.eval()
    state = model.init_state(streams.size(0), device)
    total = torch.zeros((), dtype=torch.float64, device=device)
    chars = torch.zeros((), dtype=torch.long, device=device)
    lengths = None if char_lengths is None else char_lengths.to(device)
    count = 0
    for x, y in eval_windows(streams, seq_len):
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True).long()
        with autocast(device, bf16):
            logits, state = model(x, state)
        total += F.cross_entropy(logits.float().flatten(0, 1), y.flatten(), reduction="sum").double()
        count += y.numel()
        if lengths is not None:
            chars += lengths[y].sum()
    model.train(was_training)
    return EvalResult(float(total), count, count if lengths is None else int(chars))
