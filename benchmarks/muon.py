"""What Muon's update costs per training step on this machine.

    python benchmarks/muon.py                   # 2 x 512, batch 16 x 128
    python benchmarks/muon.py --batch-size 32
    python benchmarks/quality.py --time 10m --set optimizer=muon   # its quality at equal time

Times one training step of the 2 x 512 LSTM (forward, backward, clipping, update) with
AdamW (fused, charrnn's default), with Muon as charrnn.optim computes it (one
eigendecomposition per matrix), and with Muon computed by the published Newton-Schulz
iteration (five steps of three matrix products each, float32), and prints how long the
update itself took. Prints the machine.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402

from machine import line  # noqa: E402


def newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The published iteration, for comparison with charrnn.optim.orthogonalise."""
    from charrnn.optim import QUINTIC

    a, b, c = QUINTIC
    x = g if g.size(0) <= g.size(1) else g.T
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if g.size(0) <= g.size(1) else x.T


def main(argv=None) -> int:
    from charrnn import optim
    from charrnn.config import ModelConfig, TrainConfig
    from charrnn.model import CharRNN

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden-size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=6, help="timed steps per optimizer (after two warm-ups); the fastest counts")
    args = p.parse_args(argv)

    print(f"machine: {line()}")
    print(f"2 x {args.hidden_size} LSTM, batch {args.batch_size} x {args.seq_len}: seconds per training step")
    x = torch.randint(0, 65, (args.batch_size, args.seq_len + 1))
    fast = optim.orthogonalise
    for label in ("adamw", "muon", "muon, Newton-Schulz"):
        torch.manual_seed(0)
        model = CharRNN(ModelConfig(vocab_size=65, hidden_size=args.hidden_size, dropout=0.0))
        opt, _ = optim.build(model, TrainConfig(max_steps=1, optimizer="adamw" if label == "adamw" else "muon"))
        optim.orthogonalise = newton_schulz if "Newton" in label else fast
        best, update = math.inf, 0.0
        for i in range(args.steps + 2):
            t0 = time.perf_counter()
            logits, _ = model(x[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), x[:, 1:].flatten())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            t1 = time.perf_counter()
            opt.step()
            t2 = time.perf_counter()
            if i >= 2 and t2 - t0 < best:
                best, update = t2 - t0, t2 - t1
        print(f"  {label:20s} {best:.3f} s per step, of which the update {update:.3f} s")
    optim.orthogonalise = fast
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
