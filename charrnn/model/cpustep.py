"""The sampler's step on a CPU: the same equations as `CharRNN.step`, laid out for BLAS.

Sampling one stream is a chain of matrix-vector products (GEMV), so its speed is how fast
the weights can be read. PyTorch's float32 product at batch 1 (`addmm` inside
`torch.lstm_cell`) runs on one thread and reads them at well under half the rate the
machine allows (benchmarks/roofline.py); numpy's BLAS (OpenBLAS in the PyPI wheels) does
GEMV on every core at close to the read bandwidth. So this module keeps the weights as
numpy arrays in the layout that makes each layer one contiguous product:

- Layer 0's input product is a table, one row per token: `embedding @ W_ih.T + biases`
  (or `W_ih.T + biases` for one-hot inputs). A step reads one row instead of the whole
  W_ih. When the table would be large (a big subword vocabulary), layer 0 multiplies the
  embedding row by W_ih as the other layers do.
- Above layer 0, LSTM and RNN layers multiply `[x; h]` by `[W_ih W_hh]` with the two
  biases summed: one product per layer instead of two. (GRU cannot: its candidate gate
  scales only the recurrent part by the reset gate, so it keeps two products.)
- Sigmoid gates are computed as `0.5 * tanh(z / 2) + 0.5`, with the halving folded into
  their rows once, and the LSTM's rows reordered (i, f, o, g) so that one `tanh` covers
  all four gates and one affine step the three sigmoids.

Folding is done in float64 and rounded once, so logits differ from `CharRNN.step` only by
float32 summation order (about 1e-6; tests/test_cpustep.py holds it to 1e-4 over 1,000
fed-back steps for every cell). Any batch size works: at batch B the products become
(B, K) x (K, G) matrix products. The step takes and returns the model's own state layout
(torch tensors (L, B, H), float32; `load` copies it in, `state` copies it out) and gives
logits as a torch tensor (B, V) over a buffer that the next step overwrites.
"""

from __future__ import annotations

import copy

import numpy as np
import torch

from .network import CharRNN, State

MAX_TABLE_BYTES = 64 * 2**20  # layer 0's per-token table is used up to this size


class CpuStepper:
    """`step(ids, state) -> logits, state` with the contract of `CharRNN.step`, on numpy's BLAS."""

    def __init__(self, net: CharRNN, table_limit: int | None = None):
        """Fold `net`'s weights; layer 0 reads a per-token table when it takes at most
        `table_limit` bytes (default `MAX_TABLE_BYTES`; charrnn.checkpoint.webpage asks for the
        smaller of the two layouts)."""
        c = net.config
        table_limit = MAX_TABLE_BYTES if table_limit is None else table_limit
        self.cell = c.cell
        self.relu = c.cell == "rnn" and c.nonlinearity == "relu"
        self.num_layers, self.hidden_size, self.vocab_size = c.num_layers, c.hidden_size, c.vocab_size
        H = c.hidden_size
        with torch.no_grad():
            # Rows of each gate block, in the order this module computes them, and their scale.
            if c.cell == "lstm":  # PyTorch: i, f, g, o -> here i, f, o, g; sigmoids halved
                order = torch.cat([torch.arange(0, 2 * H), torch.arange(3 * H, 4 * H), torch.arange(2 * H, 3 * H)])
                scale = torch.cat([torch.full((3 * H,), 0.5), torch.ones(H)]).double()
            elif c.cell == "gru":  # r, z, n; r and z are sigmoids
                order = torch.arange(3 * H)
                scale = torch.cat([torch.full((2 * H,), 0.5), torch.ones(H)]).double()
            else:
                order = torch.arange(H)
                scale = torch.ones(H, dtype=torch.float64)

            def rows(t: torch.Tensor) -> torch.Tensor:  # reorder and scale a (G, ...) tensor, float64
                t = t.detach().double()[order]
                return t * (scale[:, None] if t.dim() == 2 else scale)

            self.layers = []
            for layer in range(c.num_layers):
                w_ih, w_hh, b_ih, b_hh = (rows(t) for t in net.layer_weights(layer))
                if c.cell == "gru":  # two products: the candidate gate needs W_hh h + b_hh on its own
                    self.layers.append((_f32(w_ih), _f32(b_ih), _f32(w_hh), _f32(b_hh)))
                else:  # one product over [x; h]
                    self.layers.append((_f32(torch.cat([w_ih, w_hh], 1)), _f32(b_ih + b_hh), None, None))
            # Layer 0's input product, one row per token, when it is small enough to keep.
            w_ih0, b0 = rows(net.layer_weights(0)[0]), rows(net.layer_weights(0)[2])
            if c.cell != "gru":
                b0 = b0 + rows(net.layer_weights(0)[3])
            table_bytes = c.vocab_size * w_ih0.size(0) * 4
            self.table = None
            if c.one_hot or table_bytes <= table_limit:
                # One-hot: row i of the table is column i of W_ih (no bigger than W_ih itself).
                rows_in = w_ih0.T if c.one_hot else net.embedding.weight.detach().double() @ w_ih0.T
                self.table = _f32(rows_in + b0)  # (V, G)
                w_hh0 = rows(net.layer_weights(0)[1])
                self.layers[0] = (None, None, *self.layers[0][2:]) if c.cell == "gru" else (_f32(w_hh0), None, None, None)
            self.embedding = None if self.table is not None else _f32(net.embedding.weight.detach().double())
            self.head_weight = _f32(net.head.weight.detach().double())  # (V, H); the embedding's when tied
            self.head_bias = _f32(net.head.bias.detach().double())

    def fork(self) -> "CpuStepper":
        """A stepper over the same weights with buffers of its own, for a generation that
        may run beside another (the weights are read only; the buffers are not shared)."""
        twin = copy.copy(self)
        twin._batch = None
        return twin

    def bytes_per_step(self) -> int:
        """Bytes of weights one step reads at batch 1: every matrix and bias, one row of
        the token table (or of the embedding), the head. The yardstick for speed: a step
        cannot be faster than reading these (benchmarks/sampling.py, the roofline)."""
        arrays = [a for layer in self.layers for a in layer if a is not None]
        arrays += [self.head_weight, self.head_bias]
        rows = self.table if self.table is not None else self.embedding
        return sum(self._bytes(a) for a in arrays) + rows[0].nbytes

    def _bytes(self, a: np.ndarray) -> int:
        return a.nbytes

    # -- the stateful loop: load a state, advance it token by token, read it back --------
    # Each layer reads its input and its own h from one buffer, [x; h] (B, K + H), so the
    # product needs no concatenation; a layer's new h is written into its own slot and
    # copied into the next layer's input slot. Gate vectors, the LSTM's c and the logits
    # have buffers too, so a step allocates little (a table row, a few temporaries): at
    # batch 1 allocation is a sizeable share of its cost besides the products.

    def load(self, state: State) -> None:
        """Start from `state` ((L, B, H) tensors, float32; copied in)."""
        h = state[0].detach().cpu().numpy()
        B, H = h.shape[1], self.hidden_size
        if getattr(self, "_batch", None) != B:
            self._allocate(B)
        for layer, buf in enumerate(self._inputs):
            buf[:, buf.shape[1] - H :] = h[layer]
        if self.cell == "lstm":
            self._c[:] = state[1].detach().cpu().numpy()

    def _allocate(self, B: int) -> None:
        """Buffers for batch B, and every view a step uses, made once: at batch 1 even
        slicing an array costs a noticeable share of a step."""
        H, lstm, gru = self.hidden_size, self.cell == "lstm", self.cell == "gru"
        G = self.layers[0][2].shape[0] if gru else self.layers[0][0].shape[0]
        self._batch = B
        self._inputs = []  # per layer: [x; h] (B, K + H), or h alone (B, H) for layer 0 read from the table
        for layer, (w, _, w_hh, _) in enumerate(self.layers):
            if layer == 0 and self.table is not None:
                self._inputs.append(np.zeros((B, H), np.float32))
            else:
                K = w.shape[1] if gru else w.shape[1] - H
                self._inputs.append(np.zeros((B, K + H), np.float32))
        self._c = np.zeros((self.num_layers, B, H), np.float32) if lstm else None
        g = np.empty((B, G), np.float32)  # gates (the input product, for a GRU)
        gh = np.empty((B, G), np.float32) if gru else None  # GRU: the recurrent product
        self._tmp = np.empty((B, H), np.float32)
        self._logits = np.empty((B, self.vocab_size), np.float32)
        self._g = g
        self._views = []
        for layer, buf in enumerate(self._inputs):
            K = buf.shape[1] - H
            views = {
                "x": buf[:, :K], "h": buf[:, K:],
                "next": self._inputs[layer + 1][:, :H] if layer + 1 < self.num_layers else None,
            }
            if lstm:  # g: i, f, o (halved), g
                views.update(s=g[:, : 3 * H], i=g[:, :H], f=g[:, H : 2 * H], o=g[:, 2 * H : 3 * H], g=g[:, 3 * H :],
                             c=self._c[layer])
            elif gru:  # g = W_ih x + b_ih, gh = W_hh h + b_hh; both r, z, n
                views.update(gh=gh, rz=g[:, : 2 * H], gh_rz=gh[:, : 2 * H], r=g[:, :H], z=g[:, H : 2 * H],
                             n=g[:, 2 * H :], gh_n=gh[:, 2 * H :])
            self._views.append(views)

    def state(self) -> State:
        """The current state as new tensors (L, B, H), float32."""
        h = np.stack([v["h"] for v in self._views])
        if self.cell == "lstm":
            return torch.from_numpy(h), torch.from_numpy(self._c.copy())
        return (torch.from_numpy(h),)

    def advance(self, ids: torch.Tensor) -> torch.Tensor:
        """Feed one token per stream, ids (B,), and return the logits (B, V): a view of a
        buffer that the next call overwrites."""
        tokens = ids.numpy() if ids.dtype == torch.int64 else ids.long().numpy()
        g, tmp, table = self._g, self._tmp, self.table
        for layer, ((w, b, w_hh, b_hh), v) in enumerate(zip(self.layers, self._views)):
            h = v["h"]  # (B, H): this layer's state, overwritten below by the new one
            from_table = layer == 0 and table is not None
            if layer == 0 and not from_table:
                v["x"][:] = self.embedding[tokens]
            if self.cell == "gru":
                gh = v["gh"]
                self._product(h, w_hh, gh)
                gh += b_hh  # (B, 3H)
                if from_table:
                    np.take(table, tokens, axis=0, out=g)
                else:
                    self._product(v["x"], w, g)
                    g += b  # (B, 3H)
                rz = v["rz"]
                rz += v["gh_rz"]
                np.tanh(rz, out=rz)
                rz *= 0.5
                rz += 0.5  # r, z
                n = v["n"]
                np.multiply(v["gh_n"], v["r"], out=tmp)
                n += tmp  # W_in x + b_in + r (W_hn h + b_hn)
                np.tanh(n, out=n)
                np.subtract(h, n, out=tmp)  # h' = n + z (h - n)
                tmp *= v["z"]
                np.add(n, tmp, out=h)
            else:
                self._product(h if from_table else self._inputs[layer], w, g)
                g += table[tokens] if from_table else b
                if self.cell == "lstm":
                    np.tanh(g, out=g)
                    s = v["s"]
                    s *= 0.5
                    s += 0.5
                    c = v["c"]
                    c *= v["f"]
                    np.multiply(v["i"], v["g"], out=tmp)
                    c += tmp
                    np.tanh(c, out=h)
                    h *= v["o"]
                elif self.relu:
                    np.maximum(g, 0, out=h)
                else:
                    np.tanh(g, out=h)
            if v["next"] is not None:
                v["next"][:] = h
        logits = self._logits
        self._product(h, self.head_weight, logits)
        logits += self.head_bias
        return torch.from_numpy(logits)

    def _product(self, x: np.ndarray, w: np.ndarray, out: np.ndarray) -> None:
        """out (B, G) = x (B, K) w.T: every product of a step goes through here, so that a
        subclass can swap the arithmetic (charrnn.model.quantize: int8 weights)."""
        matmul(x, w, out)

    def step(self, ids: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        """ids (B,) -> logits (B, V), new state, as `CharRNN.step` (both new tensors)."""
        self.load(state)
        logits = self.advance(ids.long().cpu())
        return logits.clone(), self.state()


def matmul(x: np.ndarray, w: np.ndarray, out: np.ndarray) -> None:
    """out (B, G) = x (B, K) times w (G, K) transposed, float32. At B = 1 a GEMV over w's
    rows (BLAS's fastest layout for it); above, one GEMM with w read transposed in place."""
    if x.shape[0] == 1:
        np.dot(w, x[0], out=out[0])
    else:
        np.matmul(x, w.T, out=out)


def _f32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.numpy().astype(np.float32))
