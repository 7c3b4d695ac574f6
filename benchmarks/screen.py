"""Quick screens of training settings: a fixed number of steps on the first 300,000
characters of Tiny Shakespeare, small model, validation loss every --eval-every steps.

    python benchmarks/screen.py --steps 200 --variant lr=0.003 --variant lr=0.01
    python benchmarks/screen.py --steps 200 --variant forget_bias=1 --variant forget_bias=0
    python benchmarks/screen.py --steps 800 --variant lr=0.01 --variant lr=0.01,seq_len=128,steps=400

A variant is comma-separated NAME=VALUE pairs over ModelConfig and TrainConfig fields,
plus `steps` (this variant's step count) and `forget_bias` (set the LSTM's forget-gate
bias to this value after initialisation; PyTorch's own initialisation otherwise). Base
settings: 2 x 256 LSTM, embedding 64, no dropout, batch 32 x seq 64, lr 1e-2. Runs are
step-bounded, so results do not depend on the machine's speed (only the time taken does).
"""

from __future__ import annotations

import argparse
import ast
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from machine import describe, line  # noqa: E402

BASE_MODEL = {"hidden_size": 256, "num_layers": 2, "embedding_size": 64, "dropout": 0.0, "cell": "lstm"}
BASE_TRAIN = {"batch_size": 32, "seq_len": 64, "lr": 1e-2, "eval_every": 100, "log_every": 50, "device": "cpu"}


def parse_variant(text: str) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        try:
            out[name.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[name.strip()] = value
    return out


def main(argv=None) -> int:
    import torch

    from charrnn.data import split_ids
    from charrnn.model import ModelConfig
    from charrnn.trainer import Evaluated, TrainConfig, Trainer
    from charrnn.vocab import CharVocab

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default=str(HERE.parent / "corpora" / "tinyshakespeare.txt"))
    p.add_argument("--chars", type=int, default=300_000)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--variant", action="append", default=[], help="NAME=VALUE[,NAME=VALUE...] (repeatable)")
    args = p.parse_args(argv)

    text = Path(args.corpus).read_text(encoding="utf-8")[: args.chars]
    vocab = CharVocab.from_text(text)
    train_ids, val_ids = split_ids(vocab.encode(text), 0.1)
    model_fields = set(ModelConfig.__dataclass_fields__)
    rows = []
    for spec in args.variant or [""]:
        v = parse_variant(spec)
        steps = v.pop("steps", args.steps)
        forget = v.pop("forget_bias", None)
        mc = ModelConfig(vocab_size=vocab.size, **{**BASE_MODEL, **{k: x for k, x in v.items() if k in model_fields}})
        tc = TrainConfig(**{**BASE_TRAIN, "max_steps": steps, **{k: x for k, x in v.items() if k not in model_fields}})
        with tempfile.TemporaryDirectory() as out:
            trainer = Trainer(mc, tc, vocab, train_ids, val_ids, out)
            if forget is not None:
                h = mc.hidden_size
                with torch.no_grad():
                    for name, param in trainer.model.rnn.named_parameters():
                        if name.startswith("bias_"):  # both bias vectors: their sum is the gate's bias
                            param[h : 2 * h].fill_(forget if name.startswith("bias_ih") else 0.0)
            t0 = time.monotonic()
            curve = [(e.step, round(e.val_loss, 3)) for e in trainer.run() if isinstance(e, Evaluated)]
        rows.append((spec or "base", steps, curve, time.monotonic() - t0))
        print(f"{spec or 'base'}: " + ", ".join(f"{s}: {x}" for s, x in curve), flush=True)

    print(f"\nmachine: {line(describe())}")
    print(f"corpus: first {args.chars:,} characters of {args.corpus}; base {BASE_MODEL} {BASE_TRAIN}\n")
    print("| variant | steps | final val (nats/char) | time |\n|---|---:|---:|---:|")
    for spec, steps, curve, seconds in rows:
        print(f"| {spec} | {steps} | {curve[-1][1]:.3f} | {seconds:.0f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
