"""Training throughput: charrnn's real loop against a bare nn.LSTM loop of the same shapes.

    python -m benchmarks.training                 # CPU shapes: 2x512 LSTM, batch 64, seq 128
    python -m benchmarks.training --quick
    python -m benchmarks.training --device cuda   # GPU shapes: 3x1024, batch 256, seq 256

charrnn's side is `charrnn.train()` on a synthetic corpus (random text over 65 symbols),
timed between two of its Progress events: data slicing, state carrying and detaching, the
non-finite guard, clipping, the schedule, loss read-back every --log-every steps. The
evaluation and checkpoint writing after the last step are timed separately (from the last
Progress event to the last Saved one) and reported as their own overhead at the default
cadence. The bare side is embedding + nn.LSTM + linear head, forward, backward and AdamW
on pre-made tensors. The two alternate in one process.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

from .machine import describe, line


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


def synthetic_corpus(path: Path, train_chars: int, min_val_chars: int, seed: int = 0) -> Path:
    """Random text over 65 symbols, long enough that `charrnn.text.corpus.split_ids` (at its default
    fraction, as `charrnn.train()` splits) leaves `train_chars` for training and at least
    `min_val_chars` for validation."""
    import math

    import numpy as np

    from charrnn.text.corpus import VAL_FRACTION, split_ids

    total = max(math.ceil(train_chars / (1 - VAL_FRACTION)), math.ceil(min_val_chars / VAL_FRACTION)) + 1
    train, val = split_ids(np.arange(total), VAL_FRACTION)
    assert len(train) >= train_chars and len(val) >= min_val_chars
    ids = np.random.default_rng(seed).integers(0, 65, size=total, dtype=np.uint8)
    path.write_bytes((ids + 32).tobytes())  # ASCII 32..96: every one of the 65 symbols occurs
    return path


def charrnn_rate(s: dict, device, steps: int, workdir: Path) -> dict:
    import charrnn
    from charrnn.config import ModelConfig
    from charrnn.training.trainer import Progress, Saved, Started

    workdir.mkdir(parents=True, exist_ok=True)
    need = s["batch_size"] * (s["seq_len"] * (steps + 8) + 1)
    corpus = synthetic_corpus(workdir / "corpus.txt", need, 2 * s["batch_size"] * (s["seq_len"] + 1))
    warm = 5  # steps before timing starts; progress is read back every 5 steps as in a real run
    marks: dict = {}

    def on_event(event):
        if isinstance(event, Started):
            assert event.vocab_size == 65, event  # the bare loop's V
            marks["val_tokens"] = event.val_tokens
        elif isinstance(event, Progress) and event.step in (warm, warm + steps):
            sync(device)
            marks[event.step] = time.perf_counter()
        elif isinstance(event, Saved):  # the evaluation + checkpoint pair after the last step
            marks["saved"] = time.perf_counter()

    # No evaluation inside the timed steps; the one at the end is timed on its own.
    result = charrnn.train(corpus, out=workdir / "run", overwrite=True, on_event=on_event,
                           hidden_size=s["hidden_size"], num_layers=s["num_layers"],
                           dropout=ModelConfig.dropout,  # the fixed default, not the sizing rule's choice
                           batch_size=s["batch_size"], seq_len=s["seq_len"], max_steps=warm + steps,
                           eval_every=10**9, log_every=5, device=device.type, warmup_steps=10)
    assert result.steps == warm + steps, result
    loop = steps * s["batch_size"] * s["seq_len"] / (marks[warm + steps] - marks[warm])
    # The cost of one evaluation + checkpoint pair, as paid every --eval-every steps.
    eval_save = marks["saved"] - marks[warm + steps]
    return {"loop": loop, "eval_and_save_s": eval_save, "val_tokens": marks["val_tokens"]}


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
