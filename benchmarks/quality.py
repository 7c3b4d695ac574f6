"""Train charrnn under a time budget, evaluate it on the validation tail, and print the
comparison table of the model-quality issue with charrnn's row added.

    python -m benchmarks.quality --time 10m                       # defaults, Tiny Shakespeare
    python -m benchmarks.quality --time 3m --set hidden_size=384  # try a variant
    python -m benchmarks.quality --corpus ../shared/corpora/linux_c.txt --time 5m

Training goes through `charrnn.train()`. Validation loss is measured the way `charrnn eval`
measures it: on the tail the run held out (its val_fraction, by default
`charrnn.text.corpus.VAL_FRACTION`, 10%), read with the state carried across windows. Results
are appended to --json as one object.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

from .machine import describe, line
from .overrides import parse as parse_overrides

REFERENCE = [
    ("nanoGPT README CPU config (4x128, ctx 64), 2000 iters", "0.80M", "103 s", "1.886"),
    ("nanoGPT CPU config stretched to 12000 iters", "0.80M", "643 s", "1.503 / 1.550"),
    ("spro/char-rnn.pytorch defaults (2x100 GRU)", "0.14M", "600 s", "1.601"),
    ("nanoGPT headline, A100 GPU (6x384)", "10.65M", "~3 min", "1.4697"),
]


def main(argv=None) -> int:
    from charrnn.durations import parse_duration

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default=str(HERE.parent / "corpora" / "tinyshakespeare.txt"))
    p.add_argument("--time", default="10m", help="training budget (charrnn's --max-time)")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                   help="override a model or training option, e.g. hidden_size=384 (repeatable)")
    p.add_argument("--out", default="/tmp/charrnn-quality")
    p.add_argument("--json", default=str(HERE / "results" / "quality.jsonl"))
    p.add_argument("--device", default="auto")
    p.add_argument("--note", default="", help="what the run measures, kept with its result")
    args = p.parse_args(argv)

    import charrnn
    from charrnn.text.corpus import split_text
    from charrnn.training.trainer import Evaluated, Started

    overrides = parse_overrides(args.set)
    options = dict(overrides)
    options.setdefault("max_time", parse_duration(args.time))
    options.setdefault("device", args.device)

    curve = []
    seen = {"t0": None, "sizing": None}

    def on_event(event):
        if isinstance(event, Started):  # the clock starts with training, after encoding and sizing
            seen["t0"], seen["sizing"] = time.monotonic(), event.sizing
        elif isinstance(event, Evaluated):
            curve.append((round(time.monotonic() - seen["t0"], 1), event.step, round(event.val_loss, 4)))
            print(f"  {curve[-1][0]:7.1f}s  step {event.step:6d}  val {event.val_loss:.4f}", flush=True)

    done = charrnn.train(args.corpus, out=args.out, overwrite=True, on_event=on_event, **options)

    model = done.load()
    text = Path(args.corpus).read_text(encoding="utf-8")
    _, val_text = split_text(text, model.checkpoint.train_config.val_fraction)  # the tail training held out
    report = model.loss(val_text)
    params = model.net.num_parameters()
    mc = model.net.config

    info = describe()
    print(f"\nmachine: {line(info)}")
    print(f"corpus: {args.corpus}; overrides: {overrides or 'none (defaults)'}\n")
    rows = REFERENCE + [(
        f"charrnn defaults{' + ' + str(overrides) if overrides else ''} ({mc.cell} {mc.num_layers}x{mc.hidden_size}, "
        f"dropout {mc.dropout:g}{f', weight drop {mc.weight_drop:g}' if mc.weight_drop else ''})",
        f"{params / 1e6:.2f}M", f"{done.elapsed:.0f} s",
        f"{report.nats_per_char:.4f} (eval), {done.best_val_loss:.4f} (training)",
    )]
    print("| system | params | budget | val loss (nats/char) |\n|---|---|---|---|")
    for r in rows:
        print("| " + " | ".join(r) + " |")
    print(f"\ncharrnn: {done.steps} steps, {done.epochs:.2f} epochs, {done.chars_per_sec:,.0f} training chars/s")

    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    with open(args.json, "a") as fh:
        fh.write(json.dumps({
            "corpus": args.corpus, "time": args.time, "overrides": overrides, "params": params,
            "model": mc.to_dict(), "sizing": seen["sizing"],
            "steps": done.steps, "epochs": done.epochs, "chars_per_sec": done.chars_per_sec,
            "val_loss_eval": report.nats_per_char, "val_loss_training": done.best_val_loss,
            "curve": curve, "machine": info, **({"note": args.note} if args.note else {}),
        }) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
