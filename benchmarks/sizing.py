"""How the default sizing behaves on a small and on a large corpus under the same budget.

    python -m benchmarks.sizing --time 3m

Trains three runs with `charrnn`'s defaults (nothing but the budget given):
  * small: the first 50,000 characters of ../shared/corpora/linux_c.txt;
  * small, fixed: the same text with the old fixed default (2 x 512, dropout 0.1), to
    show what the sizing rule avoids;
  * large: linux_c.txt repeated to about 50 MB (the budget reads well under one copy, so
    the repetition is never seen);
  * russian: ../shared/corpora/anna_karenina_ru.txt (1.7M characters, 147 distinct), a
    corpus of Tiny Shakespeare's order of size in another language and alphabet.
--only picks some of them (small, fixed, large, russian); --set NAME=VALUE passes an
option to every run (e.g. batch_size=16), to measure a candidate default against the
current one.
and prints, for each, the size the rule chose, the best and the final validation loss,
the final training loss and the validation curve. Results are appended to --json.

On the large corpus the validation tail is a copy of text the run has already trained on
(it is the same file seven times), so its validation loss flatters; read its training
loss instead: in less than one pass every training character is seen for the first time,
which makes the training loss an honest held-out figure.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

from .machine import describe, line
from .overrides import parse as parse_overrides

SHARED = HERE.parent.parent / "shared" / "corpora"


def run(corpus: Path, out: Path, budget: float, model_options: dict) -> dict:
    import charrnn
    from charrnn.checkpoint import store as checkpoint
    from charrnn.training.trainer import Evaluated, Progress, Started

    curve, seen = [], {"train_loss": None, "t0": None}

    def on_event(event):
        if isinstance(event, Started):  # the clock starts with training, after encoding and sizing
            seen["t0"] = time.monotonic()
        elif isinstance(event, Progress):
            seen["train_loss"] = event.train_loss
        elif isinstance(event, Evaluated):
            curve.append((round(time.monotonic() - seen["t0"]), event.step, round(event.val_loss, 4)))
            print(f"    {curve[-1][0]:5d}s step {event.step:5d}  val {event.val_loss:.4f}  "
                  f"train {fmt(seen['train_loss'])}", flush=True)

    result = charrnn.train(corpus, out=out, overwrite=True, on_event=on_event, max_time=budget, **model_options)
    ckpt = checkpoint.load(result.best_path)
    mc = ckpt.model_config
    return {
        "corpus": str(corpus), "chars": ckpt.corpus.get("chars"), "hidden_size": mc.hidden_size,
        "dropout": mc.dropout, "params": ckpt.num_parameters, "sizing": ckpt.corpus.get("sizing"),
        "steps": result.steps, "epochs": result.epochs, "best_val": result.best_val_loss,
        "final_val": result.final_val_loss, "final_train": seen["train_loss"], "curve": curve,
    }


def fmt(x) -> str:
    return "-" if x is None else f"{x:.4f}"


def main(argv=None) -> int:
    from charrnn.durations import parse_duration

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--time", default="3m", help="budget of each run")
    p.add_argument("--source", default=str(SHARED / "linux_c.txt"))
    p.add_argument("--russian", default=str(SHARED / "anna_karenina_ru.txt"))
    p.add_argument("--only", default="small,fixed,large", help="comma-separated: small, fixed, large, russian")
    p.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--json", default=str(HERE / "results" / "sizing.jsonl"))
    args = p.parse_args(argv)
    overrides = parse_overrides(args.set)
    only = set(args.only.split(","))
    budget = parse_duration(args.time)

    text = Path(args.source).read_text(encoding="utf-8")
    with tempfile.TemporaryDirectory(prefix="charrnn-sizing-") as tmp:  # corpora and runs: ~150 MB
        work = Path(tmp)
        small = work / "small.txt"
        small.write_text(text[:50_000], encoding="utf-8")
        large = work / "large.txt"
        copies = max(1, round(50e6 / len(text.encode("utf-8"))))
        large.write_text(text * copies, encoding="utf-8")

        results = []
        for key, name, corpus, options in [
            ("small", "small (50 KB), sized", small, {}),
            ("fixed", "small (50 KB), fixed 2x512 dropout 0.1", small, {"hidden_size": 512, "dropout": 0.1}),
            ("large", f"large ({large.stat().st_size / 1e6:.0f} MB), sized", large, {}),
            ("russian", "russian (anna_karenina_ru.txt), sized", Path(args.russian), {}),
        ]:
            if key not in only:
                continue
            print(f"{name}:", flush=True)
            r = run(corpus, work / key, budget, {**overrides, **options})
            r["name"] = name
            r["overrides"] = overrides
            results.append(r)

    info = describe()
    print(f"\nmachine: {line(info)}; budget {args.time} each; source {args.source}; overrides {overrides or 'none'}\n")
    print("| run | model | params | steps | passes | best val | final val | final train |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['name']} | 2 x {r['hidden_size']}, dropout {r['dropout']:g} | {r['params'] / 1e6:.2f}M | "
              f"{r['steps']} | {r['epochs']:.1f} | {r['best_val']:.4f} | {r['final_val']:.4f} | {fmt(r['final_train'])} |")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    with open(args.json, "a") as fh:
        fh.write(json.dumps({"time": args.time, "runs": results, "machine": info}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
