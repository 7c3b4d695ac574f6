"""Start-up time of the command against `python -c "import torch"` on the same machine.

    python -m benchmarks.startup            # 10 runs of each, median
    python -m benchmarks.startup --runs 20

`charrnn --version`, `charrnn --help`, `charrnn train --help` and a TAB completion
(`_CHARRNN_COMPLETE=bash_complete`) must not import torch: each should take at most
0.3 x the time of importing torch. Prints the medians, the ratios and the machine.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from .machine import line

CHARRNN = [sys.executable, "-m", "charrnn"]


def median_seconds(cmd: list[str], runs: int, env: dict | None = None) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, check=False)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    completion = {**os.environ, "_CHARRNN_COMPLETE": "bash_complete", "COMP_WORDS": "charrnn tr", "COMP_CWORD": "1"}
    baseline = median_seconds([sys.executable, "-c", "import torch"], args.runs)
    rows = [
        ("charrnn --version", median_seconds([*CHARRNN, "--version"], args.runs)),
        ("charrnn --help", median_seconds([*CHARRNN, "--help"], args.runs)),
        ("charrnn train --help", median_seconds([*CHARRNN, "train", "--help"], args.runs)),
        ("completion (charrnn tr<TAB>)", median_seconds(CHARRNN, args.runs, env=completion)),
    ]
    print(f"machine: {line()}")
    print(f"python -c 'import torch': {baseline * 1000:.0f} ms (median of {args.runs})\n")
    print("| command | median | / import torch |")
    print("|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds * 1000:.0f} ms | {seconds / baseline:.2f} |")


if __name__ == "__main__":
    main()
