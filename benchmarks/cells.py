"""rnn vs gru vs lstm at comparable parameter counts, trained for the same time budget.

    python benchmarks/cells.py --time 3m          # Tiny Shakespeare, about 10 minutes in all
    python benchmarks/cells.py --time 1m --params 1.0

Each cell's hidden size is chosen so that the model has about --params million
parameters (2 layers, embedding 64); validation loss is the last 10% of the corpus, read
with carried state, as `charrnn eval` reads it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from machine import describe, line  # noqa: E402

GATES = {"rnn": 1, "gru": 3, "lstm": 4}


def hidden_for(cell: str, params: float, vocab: int, layers: int = 2, emb: int = 64) -> int:
    """Largest hidden size whose model has at most `params` parameters."""
    from charrnn.model import CharRNN, ModelConfig

    lo, hi = 8, 4096
    while lo < hi:
        mid = (lo + hi + 1) // 2
        n = CharRNN(ModelConfig(vocab_size=vocab, hidden_size=mid, num_layers=layers, embedding_size=emb,
                                cell=cell)).num_parameters()
        lo, hi = (mid, hi) if n <= params * 1e6 else (lo, mid - 1)
    return lo


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default=str(HERE.parent / "corpora" / "tinyshakespeare.txt"))
    p.add_argument("--time", default="3m")
    p.add_argument("--params", type=float, default=1.9, help="millions of parameters per model")
    p.add_argument("--cells", default="rnn,gru,lstm")
    p.add_argument("--out", default="/tmp/charrnn-cells")
    p.add_argument("--json", default=str(HERE / "results" / "cells.json"))
    args = p.parse_args(argv)

    from charrnn import load, train
    from charrnn.vocab import CharVocab

    text = Path(args.corpus).read_text(encoding="utf-8")
    vocab = CharVocab.from_text(text)
    from charrnn.data import split_text

    held_out = split_text(text)[1]  # the tail training held out (the default fraction)
    rows = []
    for cell in args.cells.split(","):
        hidden = hidden_for(cell, args.params, vocab.size)
        run = train(args.corpus, out=Path(args.out) / cell, overwrite=True, cell=cell, hidden_size=hidden,
                    max_time=args.time)
        model = load(run.best_path)
        loss = model.loss(held_out)
        rows.append({"cell": cell, "hidden_size": hidden, "params": model.net.num_parameters(), "steps": run.steps,
                     "chars_per_sec": run.chars_per_sec, "val_nats": loss.nats_per_char,
                     "val_bits": loss.bits_per_char})
        print(f"  {cell}: done, val {loss.nats_per_char:.4f}", flush=True)
    info = describe()
    print(f"\nmachine: {line(info)}; corpus {Path(args.corpus).name}; budget {args.time} each\n")
    print("| cell | layers x hidden | params | steps | train chars/s | val nats/char | val bits/char |")
    print("|---|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['cell']} | 2 x {r['hidden_size']} | {r['params'] / 1e6:.2f}M | {r['steps']} | "
              f"{r['chars_per_sec']:,.0f} | {r['val_nats']:.4f} | {r['val_bits']:.4f} |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"machine": info, "time": args.time, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
