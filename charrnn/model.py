"""The network: embedding -> stacked recurrent cell -> linear head over the vocabulary.

`forward` runs whole windows through cuDNN/oneDNN kernels (training, evaluation, prime
warm-up). `step` advances one token with plain matrix-vector products over the same
weights: at batch 1 on a CPU the fused `nn.LSTM` kernel costs several times more per call
than the arithmetic itself, and sampling makes one call per character.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .config import CELLS, ModelConfig

State = tuple[torch.Tensor, ...]  # lstm: (h, c); gru/rnn: (h,); each (L, B, H)


class CharRNN(nn.Module):
    """forward(ids, state) -> logits, state, with state carried by the caller across windows."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        self.embedding = None if c.one_hot else nn.Embedding(c.vocab_size, c.embedding_size)
        self.drop = nn.Dropout(c.dropout)
        rnn_cls = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[c.cell]
        kwargs = {"nonlinearity": c.nonlinearity} if c.cell == "rnn" else {}
        self.rnn = rnn_cls(
            c.input_size,
            c.hidden_size,
            num_layers=c.num_layers,
            dropout=c.dropout if c.num_layers > 1 else 0.0,
            batch_first=True,
            **kwargs,
        )
        self.head = nn.Linear(c.hidden_size, c.vocab_size)
        if c.tie_weights:
            self.head.weight = self.embedding.weight
        # The LSTM keeps PyTorch's initialisation, forget-gate bias included: the common
        # forget-bias-1 trick learned markedly slower here (validation 2.30 against 2.18
        # nats/char after 200 steps of a 2 x 256 LSTM on Tiny Shakespeare; 1.93 against 1.73
        # at lr 1e-2), probably because a half-open forget gate lets short-range statistics come first.

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def init_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        """Zero state for B streams."""
        device = device if device is not None else self.head.weight.device
        shape = (self.config.num_layers, batch_size, self.config.hidden_size)
        n = 2 if self.config.cell == "lstm" else 1
        return tuple(torch.zeros(shape, device=device) for _ in range(n))

    def _inputs(self, ids: torch.Tensor) -> torch.Tensor:
        if self.embedding is None:
            return F.one_hot(ids.long(), self.config.vocab_size).to(self.head.weight.dtype)
        return self.embedding(ids.long())

    def forward(self, ids: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """ids (B, T) -> logits (B, T, V) and the state after the last position."""
        if state is None:
            state = self.init_state(ids.size(0), ids.device)
        x = self.drop(self._inputs(ids))  # (B, T, E)
        hx = state if self.config.cell == "lstm" else state[0]
        out, new = self.rnn(x, hx)  # (B, T, H)
        new_state = tuple(new) if self.config.cell == "lstm" else (new,)
        return self.head(self.drop(out)), new_state  # (B, T, V)

    @torch.no_grad()
    def step(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """One token per stream without dropout: ids (B,) -> logits (B, V), new state.

        Same weights and equations as `forward`, through PyTorch's fused single-step cell
        kernels (`torch.lstm_cell`, `torch.gru_cell`, `torch.rnn_tanh_cell`), which at
        batch 1 cost a fraction of a sequence-kernel call.
        """
        c = self.config
        x = self._inputs(ids)  # (B, E)
        hs, cs = [], []
        flat = self.rnn._flat_weights  # per layer: w_ih, w_hh, b_ih, b_hh (kept current by nn.RNNBase)
        for layer in range(c.num_layers):
            weights = flat[4 * layer : 4 * layer + 4]
            h = state[0][layer]  # (B, H)
            if c.cell == "lstm":
                h, cell = torch.lstm_cell(x, (h, state[1][layer]), *weights)
                cs.append(cell)
            elif c.cell == "gru":
                h = torch.gru_cell(x, h, *weights)
            elif c.nonlinearity == "tanh":
                h = torch.rnn_tanh_cell(x, h, *weights)
            else:
                h = torch.rnn_relu_cell(x, h, *weights)
            hs.append(h)
            x = h
        new_state = (torch.stack(hs), torch.stack(cs)) if c.cell == "lstm" else (torch.stack(hs),)
        return self.head(x), new_state
