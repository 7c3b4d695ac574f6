"""int8 weights for sampling on a CPU.

Sampling reads every weight once per character, so on a CPU it is bound by memory
traffic; int8 weights read four times fewer bytes than float32. `Int8Stepper` is
`charrnn.model.cpustep.CpuStepper` (same folded layout, same loop, same buffers) with its large
products done by PyTorch's fbgemm/qnnpack kernels on int8 weights, one scale per output
row, the activations quantized on the fly. What stays float32, because it is small or
read a row at a time: layer 0's per-token table, the biases, and the output head (V x H,
a few hundred KB, where a quantized call would cost more than it saves). The prime still
goes through the float32 network.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

from ..errors import ConfigError
from .cpustep import CpuStepper, matmul
from .network import CharRNN


class Int8Stepper(CpuStepper):
    """`CpuStepper` with int8 recurrent and input matrices."""

    def __init__(self, net: CharRNN):
        super().__init__(net)
        self._packed: dict[int, object] = {}  # id of a float32 matrix in self.layers -> its packed int8 form
        for layer in self.layers:
            for w in layer:
                if isinstance(w, np.ndarray) and w.ndim == 2:
                    self._packed[id(w)] = _pack(w)

    def _bytes(self, a: np.ndarray) -> int:
        """An int8 matrix reads one byte per weight and a float32 scale per row."""
        return a.size + 4 * a.shape[0] if id(a) in self._packed else a.nbytes

    def _product(self, x: np.ndarray, w: np.ndarray, out: np.ndarray) -> None:
        packed = self._packed.get(id(w))
        if packed is None:  # the head
            matmul(x, w, out)
            return
        # reduce_range: activations in 7 bits, so that fbgemm's 16-bit intermediate sums
        # cannot overflow on CPUs without VNNI (AVX2, AVX-512 before Cascade Lake).
        y = torch.ops.quantized.linear_dynamic(torch.from_numpy(np.ascontiguousarray(x)), packed, True)  # (B, G)
        np.copyto(out, y.numpy())


def _pack(w: np.ndarray):
    """A (G, K) float32 matrix as the quantized engine's packed int8 weight, one symmetric
    scale per row (per output), so a row of small weights keeps its resolution."""
    weight = torch.from_numpy(w)
    scale = weight.abs().amax(dim=1).clamp_min(1e-12) / 127  # (G,)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # eager-mode quantization announces its successor
            q = torch.quantize_per_channel(weight, scale.double(), torch.zeros(len(scale), dtype=torch.long), 0, torch.qint8)
            return torch.ops.quantized.linear_prepack(q, None)
    except RuntimeError:
        raise ConfigError(f"--quantize needs int8 kernels, which this PyTorch build lacks "
                          f"(quantized engine {torch.backends.quantized.engine!r}).") from None
