"""int8 weights for single-stream sampling on a CPU.

Sampling one stream reads every weight once per character, so on a CPU it is bound by
memory traffic; int8 weights (PyTorch's dynamic quantization: weights stored as int8,
activations quantized on the fly) read four times fewer bytes. Only the step path used
by the sampler is quantized; the prime still goes through the float32 network.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from .model import CharRNN, State


class QuantizedStepper:
    """`step(ids, state) -> logits, state` with the contract of `CharRNN.step`, on int8 weights.

    Only the arithmetic differs: the per-layer loop is the model's own (`CharRNN.step` with
    quantized cells and head), so the two paths cannot drift apart.
    """

    def __init__(self, net: CharRNN):
        c = net.config
        self.net = net
        cells = []
        for layer in range(c.num_layers):
            w_ih, w_hh, b_ih, b_hh = net.layer_weights(layer)
            size_in = w_ih.size(1)
            if c.cell == "lstm":
                cell = nn.LSTMCell(size_in, c.hidden_size)
            elif c.cell == "gru":
                cell = nn.GRUCell(size_in, c.hidden_size)
            else:
                cell = nn.RNNCell(size_in, c.hidden_size, nonlinearity=c.nonlinearity)
            with torch.no_grad():
                cell.weight_ih.copy_(w_ih)
                cell.weight_hh.copy_(w_hh)
                cell.bias_ih.copy_(b_ih)
                cell.bias_hh.copy_(b_hh)
            cells.append(cell)
        head = nn.Linear(c.hidden_size, c.vocab_size)
        with torch.no_grad():
            head.weight.copy_(net.head.weight)
            head.bias.copy_(net.head.bias)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # eager-mode quantization announces its successor
            modules = torch.ao.quantization.quantize_dynamic(
                nn.ModuleList([*cells, head]), {nn.LSTMCell, nn.GRUCell, nn.RNNCell, nn.Linear}, dtype=torch.qint8
            ).eval()
        # Quantized cells take and return hx as the float cells do: (h, c) for an LSTM, h otherwise.
        self.cells, self.head = list(modules[:-1]), modules[-1]

    @torch.no_grad()
    def step(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """ids (B,) -> logits (B, V), new state, as `CharRNN.step`."""
        return self.net.step(ids, state, cells=self.cells, head=self.head)
