"""Where the time of one sampling step goes, for 1 and 64 streams (torch.profiler, CPU).

    python benchmarks/profile_sampling.py            # 2x512 LSTM, random weights
    python benchmarks/profile_sampling.py -c charrnn/models/tinyshakespeare.pt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from machine import line  # noqa: E402
from sampling import model_and_vocab  # noqa: E402


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("-c", "--checkpoint")
    p.add_argument("--steps", type=int, default=300)
    args = p.parse_args(argv)
    from torch.profiler import ProfilerActivity, profile

    from charrnn.sampling import Sampler, SampleConfig

    net, vocab = model_and_vocab(args.checkpoint)
    c = net.config
    weight_mb = sum(p.numel() for p in net.parameters()) * 4 / 1e6
    print(f"machine: {line()}; model {c.cell} {c.num_layers}x{c.hidden_size}, {weight_mb:.1f} MB of float32 weights")
    for streams in (1, 64):
        cfg = SampleConfig(length=args.steps, temperature=1.0, seed=0, num_samples=streams)
        sampler = Sampler(net, vocab)
        list(sampler.generate("\n", SampleConfig(length=20, seed=0, num_samples=streams)))  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in sampler.generate("\n", cfg):
                pass
        total = sum(e.self_cpu_time_total for e in prof.key_averages())
        print(f"\n{streams} stream(s), {args.steps} steps: {total / args.steps:,.0f} us of operator time per step")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8))


if __name__ == "__main__":
    main()
