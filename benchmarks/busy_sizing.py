"""Does a busy machine during the sizing seconds make the time-budget rule pick a worse model?

    python benchmarks/busy_sizing.py                  # Tiny Shakespeare's shapes, 10 minutes

A time budget is sized by timing training steps of each candidate width on the machine
itself (`charrnn.sizing.measure_throughput`), smallest first. Another process that runs
during those seconds slows the widths timed meanwhile. This applies the rule to Tiny
Shakespeare's numbers (65 symbols, 1,003,855 training tokens, the default batch, window
and budget) three times per timing method:

  * quiet: nothing else running;
  * burst: two busy-loop processes (one per core) for --burst seconds, starting
    --burst-at seconds into the timing;
  * busy: the two processes for the whole timing (a load that lasts; the rule should
    then take a smaller model, since training would be slowed too);

with the timing the library uses (the fastest of 3 steps after a warm-up) and the one it
used before (the mean of 2 steps after a warm-up), and prints the width chosen and the
rates measured. Nothing else may run on the machine meanwhile.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from machine import describe, line  # noqa: E402

HOG = "import time\nend = time.monotonic() + {seconds}\nwhile time.monotonic() < end:\n    pass\n"


def hogs(seconds: float, delay: float, n: int) -> threading.Thread:
    """Start n busy-loop processes for `seconds` after `delay` seconds (in the background)."""
    def go():
        time.sleep(delay)
        procs = [subprocess.Popen([sys.executable, "-c", HOG.format(seconds=seconds)]) for _ in range(n)]
        for proc in procs:
            proc.wait()

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


def mean_timing(model_factory, batch_size, seq_len, vocab_size):
    """The earlier measurement: one warm-up step, then the mean of two."""
    import torch
    import torch.nn.functional as F

    def rate(hidden):
        model = model_factory(hidden).train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-9)
        ids = torch.randint(0, vocab_size, (batch_size, seq_len + 1))

        def one():
            logits, _ = model(ids[:, :-1])
            F.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten()).backward()
            opt.step()
            opt.zero_grad(set_to_none=True)

        one()
        start = time.perf_counter()
        one()
        one()
        return 2 * batch_size * seq_len / (time.perf_counter() - start)

    return rate


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--time", type=float, default=600.0, help="the training budget being sized, seconds")
    p.add_argument("--burst", type=float, default=3.0)
    p.add_argument("--burst-at", type=float, default=2.0)
    p.add_argument("--json", default=str(HERE / "results" / "busy_sizing.jsonl"))
    args = p.parse_args(argv)

    import os

    import torch

    from charrnn import sizing
    from charrnn.config import ModelConfig, TrainConfig
    from charrnn.model import CharRNN

    defaults = TrainConfig(max_time=args.time)
    V, N = 65, 1_003_855

    def factory(hidden):
        return CharRNN(ModelConfig(vocab_size=V, hidden_size=hidden))

    methods = {
        "fastest of 3 (now)": lambda: sizing.measure_throughput(factory, defaults.batch_size, defaults.seq_len, V,
                                                                 torch.device("cpu")),
        "mean of 2 (before)": lambda: mean_timing(factory, defaults.batch_size, defaults.seq_len, V),
    }
    cores = os.cpu_count() or 2
    rows = []
    for scenario in ("quiet", "burst", "busy"):
        for name, make in methods.items():
            timed = []
            measure = make()

            def throughput(hidden, measure=measure, timed=timed):
                r = measure(hidden)
                timed.append((hidden, round(r)))
                return r

            load = None
            if scenario == "burst":
                load = hogs(args.burst, args.burst_at, cores)
            elif scenario == "busy":
                load = hogs(3600, 0.0, cores)
                time.sleep(0.5)
            start = time.monotonic()
            choice = sizing.choose(cell="lstm", num_layers=2, input_size=64, vocab_size=V, train_tokens=N,
                                   tokens_per_step=defaults.batch_size * defaults.seq_len, max_time=args.time,
                                   throughput=throughput)
            took = time.monotonic() - start
            if scenario == "busy":
                subprocess.run(["pkill", "-f", "end = time.monotonic"], check=False)
            if load is not None:
                load.join()
            rows.append({"scenario": scenario, "timing": name, "hidden_size": choice.hidden_size,
                         "dropout": choice.dropout, "seconds": round(took, 1), "timed": timed})
            print(f"{scenario:6s} {name:20s} -> 2 x {choice.hidden_size:4d} (dropout {choice.dropout:g}) "
                  f"in {took:4.1f} s; tokens/s by width: {timed}", flush=True)
    info = describe()
    print(f"\nmachine: {line(info)}; batch {defaults.batch_size} x {defaults.seq_len}, budget {args.time:g} s")
    with open(args.json, "a") as fh:
        fh.write(json.dumps({"rows": rows, "machine": info, "budget": args.time, "burst": args.burst,
                             "burst_at": args.burst_at}) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
