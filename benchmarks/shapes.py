"""Training and evaluation throughput of the CPU model across batch shapes.

    python benchmarks/shapes.py                       # 2 x 384 and 2 x 512, a grid of (B, T)
    python benchmarks/shapes.py --hidden 512 --shape 32x128 --shape 32x64

With a time budget the model's quality depends on how many optimizer steps it makes and
how many characters it sees. For a truncated-BPTT LSTM both depend on the window shape:
the recurrence makes T sequential steps per window whatever B is, so tokens/s grows with
B (bigger matrix products) while steps per token grow as B x T shrinks. This prints, per
(hidden, B, T): training tokens/s (forward, backward, clipping, fused AdamW, as the
trainer does it) and forward-only tokens/s without gradients (evaluation), each the best
of --repeat timings, interleaved so that a noisy machine affects every shape alike.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from machine import describe, line  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden", type=int, action="append", default=[])
    p.add_argument("--shape", action="append", default=[], metavar="BxT")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    import torch
    import torch.nn.functional as F

    from charrnn.config import ModelConfig
    from charrnn.model import CharRNN

    hiddens = args.hidden or [384, 512]
    shapes = [tuple(int(v) for v in s.split("x")) for s in (args.shape or ["32x128", "32x64", "64x64", "64x32", "128x32", "16x128"])]
    V = 65
    models = {}
    for h in hiddens:
        torch.manual_seed(0)
        m = CharRNN(ModelConfig(vocab_size=V, hidden_size=h, num_layers=2, dropout=0.1)).train()
        opt = torch.optim.AdamW(m.parameters(), lr=1e-9, fused=True)
        models[h] = (m, opt)

    def train_rate(h, b, t):
        m, opt = models[h]
        ids = torch.randint(0, V, (b, t + 1))
        state = m.init_state(b)

        def one(state):
            logits, new = m(ids[:, :-1], state)
            loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(m.parameters(), 1.0)
            opt.step()
            return tuple(s.detach() for s in new)

        state = one(state)
        start = time.perf_counter()
        for _ in range(args.steps):
            state = one(state)
        return args.steps * b * t / (time.perf_counter() - start)

    @torch.no_grad()
    def eval_rate(h, b, t):
        m, _ = models[h]
        m.eval()
        ids = torch.randint(0, V, (b, t))
        state = m.init_state(b)
        m(ids, state)
        start = time.perf_counter()
        for _ in range(args.steps):
            _, state = m(ids, state)
        m.train()
        return args.steps * b * t / (time.perf_counter() - start)

    best = {}
    for _ in range(args.repeat):
        for h in hiddens:
            for b, t in shapes:
                key = (h, b, t)
                tr, ev = train_rate(h, b, t), eval_rate(h, b, t)
                old = best.get(key, (0.0, 0.0))
                best[key] = (max(old[0], tr), max(old[1], ev))

    info = describe()
    print(line(info))
    print(f"{'hidden':>6} {'B':>4} {'T':>4} {'train tok/s':>12} {'eval tok/s':>11}")
    rows = []
    for (h, b, t), (tr, ev) in best.items():
        print(f"{h:>6} {b:>4} {t:>4} {tr:>12,.0f} {ev:>11,.0f}")
        rows.append({"hidden": h, "batch": b, "seq_len": t, "train_tokens_per_s": round(tr), "eval_tokens_per_s": round(ev)})
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps({"machine": info, "rows": rows}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
