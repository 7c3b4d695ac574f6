"""The network: embedding -> stacked recurrent cell -> linear head over the vocabulary.

`forward` runs whole windows through cuDNN/oneDNN kernels (training, evaluation, prime
warm-up). `step` advances one token through PyTorch's fused single-step cell kernels over
the same weights: at batch 1 on a CPU the sequence kernel of `nn.LSTM` costs several
times more per call than the arithmetic itself, and sampling makes one call per character.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ModelConfig

State = tuple[torch.Tensor, ...]  # lstm: (h, c); gru/rnn: (h,); each (L, B, H), float32
Cell = Callable  # one layer's single step: (x (B, in), hx) -> new hx; hx is (h, c) for an LSTM, h otherwise


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
        """ids (B, T) -> logits (B, T, V) and the state after the last position (float32,
        also under bf16 autocast, so that it can be carried into the next window)."""
        if state is None:
            state = self.init_state(ids.size(0), ids.device)
        x = self.drop(self._inputs(ids))  # (B, T, E)
        hx = state if self.config.cell == "lstm" else state[0]
        if self.training and self.config.weight_drop > 0:
            out, new = torch.func.functional_call(self.rnn, self._dropped_weights(), (x, hx))  # (B, T, H)
        else:
            out, new = self.rnn(x, hx)  # (B, T, H)
        new_state = tuple(new) if self.config.cell == "lstm" else (new,)
        return self.head(self.drop(out)), _as_float32(new_state)  # (B, T, V)

    def _dropped_weights(self) -> dict[str, torch.Tensor]:
        """Weight drop: each layer's hidden-to-hidden matrix with a share `weight_drop` of its
        entries zeroed (the rest scaled up to keep the expected product), one mask per call.

        One mask for every stream and step of a window (Merity et al., 2017): the same
        recurrent connections are missing for all T steps, which regularises the recurrence
        the way per-step dropout on h cannot inside a fused cuDNN/oneDNN kernel, and costs one
        mask per layer and window. The masked matrices are passed to the unchanged kernel
        (`torch.func.functional_call`); the parameters themselves are never modified, so
        evaluation, checkpoints and sampling see the whole matrices.
        """
        names = (f"weight_hh_l{layer}" for layer in range(self.config.num_layers))
        return {name: F.dropout(getattr(self.rnn, name), self.config.weight_drop) for name in names}  # (G*H, H)

    def layer_weights(self, layer: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """(weight_ih, weight_hh, bias_ih, bias_hh) of one recurrent layer: the tensors `forward`
        uses, read by their public names so that `step` and its variants share them."""
        rnn = self.rnn
        return (getattr(rnn, f"weight_ih_l{layer}"), getattr(rnn, f"weight_hh_l{layer}"),
                getattr(rnn, f"bias_ih_l{layer}"), getattr(rnn, f"bias_hh_l{layer}"))

    def cells(self) -> list[Cell]:
        """One single-step callable per layer, `(x, hx) -> new hx`: the cell's fused kernel
        (`torch.lstm_cell`, `torch.gru_cell`, `torch.rnn_tanh_cell`, `torch.rnn_relu_cell`)
        bound to the layer's weights.

        `step` builds these on every call so that it always sees the current weights; a
        caller making many steps in a row (the sampler) builds them once and passes them in,
        since looking the weights up through `nn.Module` costs microseconds per layer and
        step, a percent or two of a batch-1 step.
        """
        kernel = _fused_cell(self.config)
        return [_bind(kernel, self.layer_weights(layer)) for layer in range(self.config.num_layers)]

    @torch.no_grad()
    def step(self, ids: torch.Tensor, state: State, cells: Sequence[Cell] | None = None,
             head: Callable[[torch.Tensor], torch.Tensor] | None = None) -> tuple[torch.Tensor, State]:
        """One token per stream without dropout: ids (B,) -> logits (B, V), new state.

        Same weights and equations as `forward`, through PyTorch's fused single-step cell
        kernels (`cells()`), which at batch 1 cost a fraction of a sequence-kernel call.

        This is the only per-layer step loop. `cells` (one callable per layer,
        `(x (B, in), hx) -> new hx` with hx `(h, c)` for an LSTM and `h` otherwise; default
        `self.cells()`) and `head` (`(B, H) -> (B, V)`; default `self.head`) swap in other
        arithmetic over the same structure, e.g. int8 weights (`charrnn.model.quantize`), without a
        second copy of the loop.
        """
        lstm = self.config.cell == "lstm"
        cells = self.cells() if cells is None else cells
        x = self._inputs(ids)  # (B, E)
        hs, cs = [], []
        for layer, cell in enumerate(cells):
            hx = (state[0][layer], state[1][layer]) if lstm else state[0][layer]  # (B, H) each
            hx = cell(x, hx)
            x = hx[0] if lstm else hx  # (B, H)
            hs.append(x)
            if lstm:
                cs.append(hx[1])
        new_state = (torch.stack(hs), torch.stack(cs)) if lstm else (torch.stack(hs),)
        logits = self.head(x) if head is None else head(x)  # (B, V)
        return logits, _as_float32(new_state)


def _fused_cell(config: ModelConfig) -> Callable:
    """The fused single-step kernel of the cell, called as kernel(x, hx, *layer_weights)."""
    if config.cell == "lstm":
        return torch.lstm_cell
    if config.cell == "gru":
        return torch.gru_cell
    return torch.rnn_relu_cell if config.nonlinearity == "relu" else torch.rnn_tanh_cell


def _bind(kernel: Callable, weights: tuple[torch.Tensor, ...]) -> Cell:
    return lambda x, hx: kernel(x, hx, *weights)


def _as_float32(state: State) -> State:
    """The carried state in float32 whatever the kernels returned.

    Under CUDA bf16 autocast cuDNN (and the fused cells) hand back h and c in bfloat16; fed
    back window after window, bfloat16's 8-bit mantissa would round the long-range memory
    every step, and the state's dtype would differ from `init_state`'s. Casting only when
    the dtype differs keeps the float32 path free.
    """
    if all(s.dtype == torch.float32 for s in state):
        return state
    return tuple(s.float() for s in state)
