"""Would a parallel-in-time cell beat the LSTM at equal wall time on this machine?

    python benchmarks/mingru.py --time 10m                      # 4 x 384 minGRU blocks
    python benchmarks/mingru.py --time 3m --dim 512 --layers 3
    python benchmarks/mingru.py --rate                          # throughput only

A prototype of minGRU (Feng et al., 2024, "Were RNNs All We Needed?"), kept out of the
library until it earns a place there: its gates are computed from the input alone,

    z_t = sigmoid(W_z x_t),   h~_t = g(W_h x_t),   h_t = (1 - z_t) * h_{t-1} + z_t * h~_t,

so a whole window is two matrix products over (B*T, d) and a scan, done in log space
(Heinsen's logcumsumexp form) because every term is positive (g keeps h~ positive). The
recurrence is linear, so the network gets its nonlinearity from depth: each block is
x + minGRU(norm(x)) then x + MLP(norm(x)), as in the paper's language models.

It trains the way charrnn trains (B contiguous streams, windows of T with the state
carried across them, AdamW with weight decay on matrices, clipping at 1, warm-up then a
cosine that follows the clock to 5% at the deadline) on the same training part, and is
scored the way benchmarks/quality.py scores charrnn: the held-out 10% tail, 16 streams,
windows of 256, state carried. Only the final evaluation is made (charrnn's runs also pay
for an evaluation every 100 steps, about 5% of a 10-minute budget). Appends one line to
benchmarks/results/quality.jsonl.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from machine import describe, line  # noqa: E402


def log_g(x: torch.Tensor) -> torch.Tensor:
    """log of g(x) = x + 0.5 for x >= 0, sigmoid(x) below: positive and continuous."""
    return torch.where(x >= 0, torch.log(F.relu(x) + 0.5), -F.softplus(-x))


class MinGRU(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.proj = nn.Linear(dim, 2 * dim)

    def forward(self, x: torch.Tensor, h0: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x (B, T, d), h0 (B, d) positive -> h (B, T, d), h_T (B, d)."""
        k, pre = self.proj(x).chunk(2, dim=-1)  # (B, T, d) each
        log_keep = -F.softplus(k)  # log(1 - z)
        log_values = -F.softplus(-k) + log_g(pre)  # log(z * h~)
        log_values = torch.cat([h0.clamp_min(1e-30).log().unsqueeze(1), log_values], dim=1)  # (B, T+1, d)
        a_star = F.pad(torch.cumsum(log_keep, dim=1), (0, 0, 1, 0))  # (B, T+1, d)
        h = torch.exp(a_star + torch.logcumsumexp(log_values - a_star, dim=1))[:, 1:]  # (B, T, d)
        return h, h[:, -1]


class Block(nn.Module):
    def __init__(self, dim: int, mlp: int, dropout: float):
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.cell = MinGRU(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp * dim), nn.GELU(), nn.Linear(mlp * dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x, h0):
        h, last = self.cell(self.norm1(x), h0)
        x = x + self.drop(h)
        return x + self.drop(self.mlp(self.norm2(x))), last


class MinGRULM(nn.Module):
    def __init__(self, vocab: int, dim: int, layers: int, mlp: int, dropout: float):
        super().__init__()
        self.embedding = nn.Embedding(vocab, dim)
        self.blocks = nn.ModuleList(Block(dim, mlp, dropout) for _ in range(layers))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, vocab)
        self.dim = dim

    def init_state(self, batch: int) -> torch.Tensor:
        return torch.zeros(len(self.blocks), batch, self.dim)  # (L, B, d)

    def forward(self, ids, state):
        x = self.embedding(ids)  # (B, T, d)
        last = []
        for block, h0 in zip(self.blocks, state):
            x, h = block(x, h0)
            last.append(h)
        return self.head(self.norm(x)), torch.stack(last)  # (B, T, V), (L, B, d)


def main(argv=None) -> int:
    from charrnn.data import as_streams, eval_windows, split_text
    from charrnn.durations import parse_duration

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default=str(HERE.parent / "corpora" / "tinyshakespeare.txt"))
    p.add_argument("--time", default="10m")
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--mlp", type=int, default=2)
    p.add_argument("--dropout", type=float, default=0.05)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--rate", action="store_true", help="time training steps only")
    p.add_argument("--json", default=str(HERE / "results" / "quality.jsonl"))
    args = p.parse_args(argv)

    torch.manual_seed(args.seed)
    text = Path(args.corpus).read_text(encoding="utf-8")
    chars = sorted(set(text))
    index = {c: i for i, c in enumerate(chars)}
    train_text, val_text = split_text(text)
    import numpy as np

    encode = lambda s: np.array([index[c] for c in s], dtype=np.int64)  # noqa: E731
    train = as_streams(encode(train_text), args.batch_size)  # (B, L)
    model = MinGRULM(len(chars), args.dim, args.layers, args.mlp, args.dropout)
    params = sum(q.numel() for q in model.parameters())
    decay = [q for n, q in model.named_parameters() if q.dim() >= 2 and not n.startswith("embedding")]
    rest = [q for n, q in model.named_parameters() if not (q.dim() >= 2 and not n.startswith("embedding"))]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                            lr=args.lr, betas=(0.9, 0.99), fused=True)
    budget = parse_duration(args.time)
    T = args.seq_len
    windows = math.ceil((train.size(1) - 1) / T)
    state = model.init_state(args.batch_size)
    step, window, seen = 0, 0, 0
    start = time.monotonic()
    while True:
        elapsed = time.monotonic() - start
        if elapsed >= budget or (args.rate and step == 20):
            break
        lr = args.lr * min(1.0, (step + 1) / 50) * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * elapsed / budget)))
        for group in opt.param_groups:
            group["lr"] = lr
        t = window * T
        end = min(t + T, train.size(1) - 1)
        x, y = train[:, t:end], train[:, t + 1 : end + 1]
        logits, state = model(x, state)
        loss = F.cross_entropy(logits.flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        state = state.detach()
        step, window, seen = step + 1, window + 1, seen + x.numel()
        if window == windows:
            window, state = 0, model.init_state(args.batch_size)
        if step == 5:
            t5, seen5 = time.monotonic(), seen
        if step % 100 == 0:
            print(f"  {elapsed:7.1f}s  step {step:6d}  train {loss.item():.4f}", flush=True)
    rate = (seen - seen5) / (time.monotonic() - t5)
    print(f"machine: {line()}\nminGRU {args.layers} x {args.dim} (mlp x{args.mlp}), {params / 1e6:.2f}M parameters, "
          f"batch {args.batch_size} x {T}: {rate:,.0f} training chars/s, {step} steps")
    if args.rate:
        return 0

    model.eval()
    val = as_streams(encode(val_text), 16)
    total, count = 0.0, 0
    with torch.no_grad():
        state = model.init_state(16)
        for x, y in eval_windows(val, 256):
            logits, state = model(x, state)
            total += float(F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="sum"))
            count += y.numel()
    val_loss = total / count
    print(f"validation: {val_loss:.4f} nats/char after {budget:.0f} s, {step} steps, {seen / len(train_text):.2f} passes")
    with open(args.json, "a") as fh:
        fh.write(json.dumps({
            "corpus": args.corpus, "time": args.time, "overrides": {"prototype": "mingru", **{
                k: v for k, v in vars(args).items() if k in ("dim", "layers", "mlp", "dropout", "lr", "batch_size", "seq_len")}},
            "params": params, "steps": step, "epochs": seen / len(train_text), "chars_per_sec": rate,
            "val_loss_eval": val_loss, "machine": describe(),
            "note": "benchmarks/mingru.py prototype (not a charrnn cell); final evaluation only",
        }) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
