"""Training throughput: charrnn's real loop against a bare nn.LSTM loop of the same shapes.

    python benchmarks/training.py                 # CPU shapes: 2x512 LSTM, batch 64, seq 128
    python benchmarks/training.py --quick
    python benchmarks/training.py --device cuda   # GPU shapes: 3x1024, batch 256, seq 256

charrnn's side is `Trainer.run()` on a synthetic corpus: data slicing, state carrying and
detaching, the non-finite guard, clipping, the schedule, loss read-back every --log-every
steps. Evaluation and checkpoint writing are timed separately and reported as their own
overhead at the default cadence. The bare side is embedding + nn.LSTM + linear head,
forward, backward and AdamW on pre-made tensors. The two alternate in one process.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from machine import describe, line  # noqa: E402


def shapes(device: str) -> dict:
    if device == "cuda":
        return {"hidden_size": 1024, "num_layers": 3, "batch_size": 256, "seq_len": 256}
    return {"hidden_size": 512, "num_layers": 2, "batch_size": 64, "seq_len": 128}


BF16_PEAK = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}  # dense bf16 FLOP/s


def train_flops_per_char(s: dict, vocab: int = 65, embedding: int = 64) -> float:
    """8·H·(I+H) per LSTM layer per character forward, the output layer 2·H·V, ×3 for training."""
    h = s["hidden_size"]
    forward = sum(8 * h * ((embedding if i == 0 else h) + h) for i in range(s["num_layers"])) + 2 * h * vocab
    return 3 * forward


def bare_rate(s: dict, device, steps: int) -> float:
    import torch
    import torch.nn.functional as F

    V, E = 65, 64
    emb = torch.nn.Embedding(V, E).to(device)
    lstm = torch.nn.LSTM(E, s["hidden_size"], s["num_layers"], batch_first=True).to(device)
    head = torch.nn.Linear(s["hidden_size"], V).to(device)
    params = [*emb.parameters(), *lstm.parameters(), *head.parameters()]
    opt = torch.optim.AdamW(params, lr=1e-3, fused=device.type == "cuda")
    x = torch.randint(0, V, (s["batch_size"], s["seq_len"]), device=device)
    y = torch.randint(0, V, (s["batch_size"], s["seq_len"]), device=device)
    bf16 = device.type == "cuda"

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            out, _ = lstm(emb(x))
            loss = F.cross_entropy(head(out).float().flatten(0, 1), y.flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync(device)
    return steps * s["batch_size"] * s["seq_len"] / (time.perf_counter() - t0)


def sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize()


def charrnn_rate(s: dict, device, steps: int, workdir: Path) -> dict:
    import numpy as np

    from charrnn.model import ModelConfig
    from charrnn.trainer import Progress, TrainConfig, Trainer
    from charrnn.vocab import CharVocab

    vocab = CharVocab([chr(32 + i) for i in range(65)])
    rng = np.random.default_rng(0)
    need = s["batch_size"] * (s["seq_len"] * (steps + 8) + 1)
    ids = rng.integers(0, 65, size=need, dtype=np.uint8)
    val = rng.integers(0, 65, size=max(need // 9, 2 * s["batch_size"] * (s["seq_len"] + 1)), dtype=np.uint8)
    mc = ModelConfig(vocab_size=65, hidden_size=s["hidden_size"], num_layers=s["num_layers"])
    warm = 5  # steps before timing starts; progress is read back every 5 steps as in a real run
    tc = TrainConfig(batch_size=s["batch_size"], seq_len=s["seq_len"], max_steps=warm + steps,
                     eval_every=10**9, log_every=5, device=device.type, warmup_steps=10)
    trainer = Trainer(mc, tc, vocab, ids, val, workdir / "run")
    events = trainer.run()
    t_start = loop = None
    for event in events:
        if isinstance(event, Progress) and event.step == warm:
            sync(device)
            t_start = time.perf_counter()
        elif isinstance(event, Progress) and event.step == warm + steps:
            sync(device)
            loop = steps * s["batch_size"] * s["seq_len"] / (time.perf_counter() - t_start)
            break
    # The cost of one evaluation + checkpoint pair, as paid every --eval-every steps.
    t0 = time.perf_counter()
    list(trainer.evaluate_and_save())
    eval_save = time.perf_counter() - t0
    events.close()
    return {"loop": loop, "eval_and_save_s": eval_save, "val_tokens": trainer.val_streams.numel()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--steps", type=int)
    p.add_argument("--rounds", type=int)
    p.add_argument("--json")
    args = p.parse_args(argv)
    import torch

    device = torch.device(args.device)
    s = shapes(device.type)
    if args.quick and device.type == "cpu":
        s = {**s, "batch_size": 16}
    steps = args.steps or (5 if args.quick else 20)
    steps = max(5, steps - steps % 5)
    rounds = args.rounds or (1 if args.quick else 2)
    bare, ours, evals = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(rounds):
            bare.append(bare_rate(s, device, steps))
            res = charrnn_rate(s, device, steps, Path(tmp) / str(r))
            ours.append(res["loop"])
            evals.append(res["eval_and_save_s"])
    b, o = sum(bare) / len(bare), sum(ours) / len(ours)
    step_time = s["batch_size"] * s["seq_len"] / o
    eval_overhead = (sum(evals) / len(evals)) / (100 * step_time)  # at the default --eval-every 100
    flops = train_flops_per_char(s) * o
    info = describe()
    peak = next((v for k, v in BF16_PEAK.items() if k in info.get("gpu", "")), None)
    result = {
        "machine": info, "shapes": s, "steps": steps, "rounds": rounds,
        "model_flops_per_sec": flops, "bf16_peak_fraction": None if peak is None else flops / peak,
        "bare_chars_per_sec": b, "charrnn_chars_per_sec": o, "ratio": o / b,
        "eval_and_save_s": sum(evals) / len(evals), "eval_overhead_at_default_cadence": eval_overhead,
    }
    print(f"machine: {line(result['machine'])}")
    print(f"shapes: LSTM {s['num_layers']}x{s['hidden_size']}, batch {s['batch_size']}, seq {s['seq_len']}, "
          f"{steps} timed steps x {rounds} rounds")
    print(f"| training loop | chars/s |\n|---|---:|\n| bare nn.LSTM + AdamW | {b:,.0f} |\n| charrnn Trainer | {o:,.0f} |")
    print(f"charrnn / bare: {o / b:.3f}; one evaluation ({res['val_tokens']:,} val chars) + checkpoint takes {result['eval_and_save_s']:.2f} s, "
          f"{eval_overhead:.1%} on top at --eval-every 100")
    peak_text = f", {result['bf16_peak_fraction']:.1%} of the GPU's bf16 peak" if peak else ""
    print(f"model FLOP/s of charrnn's loop: {flops / 1e9:,.1f} GFLOP/s{peak_text}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
