"""Where one training step of the default LSTM spends its time on this machine.

    python benchmarks/step_parts.py                  # 2 x 512, batch 16 x 128
    python benchmarks/step_parts.py --hidden-size 384

Times, on random tokens, the parts of a training step as the trainer makes them (forward
with the loss, backward, gradient clipping, the update) with Muon (charrnn's LSTM default)
and with fused AdamW; then the parts of Muon's orthogonalisation of one recurrent matrix
(the Gram product, the `eigh`, the final product); then the cost of dropout between the
layers inside `nn.LSTM`. Medians after warm-up steps. Prints the machine.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from machine import line  # noqa: E402

from charrnn import optim  # noqa: E402
from charrnn.config import ModelConfig, TrainConfig  # noqa: E402
from charrnn.model import CharRNN  # noqa: E402


def median_ms(fn, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def step_parts(args, name: str) -> dict[str, float]:
    torch.manual_seed(0)
    model = CharRNN(ModelConfig(vocab_size=65, hidden_size=args.hidden_size, num_layers=2, embedding_size=64,
                                dropout=0.0))
    opt, fused = optim.build(model, TrainConfig(optimizer=name, lr=5e-3, max_steps=1))
    ids = torch.randint(0, 65, (args.batch_size, args.seq_len + 1))
    state = model.init_state(args.batch_size)
    parts: dict[str, list[float]] = {"forward": [], "backward": [], "clip": [], "update": []}
    for i in range(args.steps + 2):
        t0 = time.perf_counter()
        logits, new_state = model(ids[:, :-1], state)  # (B, T, V)
        loss = F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
        t1 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        t2 = time.perf_counter()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        bad = ~(torch.isfinite(loss.detach()) & torch.isfinite(norm))
        t3 = time.perf_counter()
        if fused:
            opt.found_inf = bad.float()
            opt.step()
        elif not bool(bad):
            opt.step()
        t4 = time.perf_counter()
        state = tuple(s.detach() for s in new_state)
        if i >= 2:  # after two warm-up steps
            for key, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3)):
                parts[key].append(dt)
    return {key: statistics.median(v) * 1000 for key, v in parts.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hidden-size", type=int, default=512)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seq-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=10)
    args = p.parse_args()
    print(f"machine: {line()}")
    h, b, t = args.hidden_size, args.batch_size, args.seq_len
    print(f"2 x {h} LSTM, batch {b} x {t}, median of {args.steps} steps (ms):")
    for name in ("muon", "adamw"):
        parts = step_parts(args, name)
        total = sum(parts.values())
        shown = ", ".join(f"{k} {v:.1f}" for k, v in parts.items())
        print(f"  {name:5s}: {shown}; step {total:.1f} ({b * t / total * 1000:,.0f} chars/s)")

    g = torch.randn(4 * h, h)  # (4H, H): one layer's recurrent matrix, the gates stacked
    x = g.T.contiguous()  # (H, 4H): the small side first, as orthogonalise works on it
    gram = x @ x.T
    v = torch.linalg.eigh(gram)[1]
    print(f"Muon's orthogonalisation of one {4 * h} x {h} matrix (ms): whole "
          f"{median_ms(lambda: optim.orthogonalise(g), 10):.1f}; Gram product {median_ms(lambda: x @ x.T, 10):.1f}, "
          f"eigh {median_ms(lambda: torch.linalg.eigh(gram), 10):.1f}, final product {median_ms(lambda: v @ x, 10):.1f}")

    inputs = torch.randn(b, t, 64)
    for dropout in (0.0, 0.01):
        torch.manual_seed(0)
        lstm = torch.nn.LSTM(64, h, num_layers=2, dropout=dropout, batch_first=True)

        def forward_backward():
            out, _ = lstm(inputs)
            out.sum().backward()

        print(f"nn.LSTM forward + backward, dropout {dropout} between the layers: "
              f"{median_ms(forward_backward, 8):.1f} ms")


if __name__ == "__main__":
    main()
