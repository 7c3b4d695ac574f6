"""One training step in float32 against bf16 autocast, on this CPU.

    python -m benchmarks.precision           # about a minute
    python -m benchmarks.precision --quick

The step of charrnn's default model shape: embedding, 2 x 512 LSTM, head, backward and
AdamW, batch 16 x 128, with the state carried as training does. Rounds alternate between
the two precisions; each round times `--steps` steps after two warm-up steps; the best
round of each is reported, with what charrnn's probe (`devices.cpu_bf16`, a child process)
decided for `--precision auto` here.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

from .machine import describe, line


def rate(bf16: bool, steps: int, batch: int, seq_len: int, hidden: int, vocab: int = 65) -> float:
    import torch
    import torch.nn.functional as F

    from charrnn.config import ModelConfig
    from charrnn.devices import autocast
    from charrnn.model.network import CharRNN

    torch.manual_seed(0)
    cpu = torch.device("cpu")
    net = CharRNN(ModelConfig(vocab_size=vocab, hidden_size=hidden, num_layers=2, embedding_size=64, dropout=0.0))
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3)
    x = torch.randint(0, vocab, (batch, seq_len + 1))
    state = net.init_state(batch)

    def step():
        nonlocal state
        with autocast(cpu, bf16):
            logits, state = net(x[:, :-1], state)
        loss = F.cross_entropy(logits.float().flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        state = tuple(s.detach() for s in state)

    for _ in range(2):
        step()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch * seq_len / (time.perf_counter() - t0)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json")
    args = p.parse_args(argv)
    if args.quick:
        args.steps, args.rounds = 2, 1

    import torch

    from charrnn import devices

    info = describe()
    print(line(info))
    rates = {"float32": [], "bf16": []}
    for _ in range(args.rounds):
        for name in rates:
            rates[name].append(rate(name == "bf16", args.steps, 16, 128, args.hidden))
    f32, b16 = max(rates["float32"]), max(rates["bf16"])
    auto = devices.use_bf16(torch.device("cpu"), "auto")
    print(f"2 x {args.hidden} LSTM step, batch 16 x 128, AdamW: float32 {f32:,.0f} chars/s, bf16 autocast "
          f"{b16:,.0f} chars/s: {b16 / f32:.2f}x (best of {args.rounds} rounds; "
          f"float32 {', '.join(f'{r:,.0f}' for r in rates['float32'])}; bf16 {', '.join(f'{r:,.0f}' for r in rates['bf16'])})")
    print(f"--precision auto on this CPU: {devices.precision_name(auto)} "
          f"(CPU flags with native bfloat16: {', '.join(sorted(devices.cpu_flags() & set(devices.BF16_FLAGS))) or 'none'})")
    result = {"machine": info, "float32": f32, "bf16": b16, "speedup": b16 / f32, "auto_bf16": auto, "rounds": rates}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
