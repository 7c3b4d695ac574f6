"""int8 sampling (`charrnn sample --quantize`) against float32: speed of one stream, and
the model's bits/char on held-out text computed through each step path.

    python -m benchmarks.quantized -c checkpoints/tinyshakespeare
    python -m benchmarks.quantized -c charrnn/models/tinyshakespeare.pt --chars 20000

The held-out text is the last 10% of the corpus the model was trained on (Tiny
Shakespeare unless --text names another file); it is cut into 16 streams and scored one
step at a time, exactly the path sampling takes.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

from .machine import describe, line


def stepwise_bits(step, net, ids, streams: int = 16) -> float:
    import torch
    import torch.nn.functional as F

    from charrnn.text.corpus import as_streams

    x = as_streams(ids, streams).long()  # (B, L)
    state = net.init_state(streams)
    total = 0.0
    with torch.no_grad():
        for t in range(x.size(1) - 1):
            logits, state = step(x[:, t], state)
            total += float(F.cross_entropy(logits.float(), x[:, t + 1], reduction="sum"))
    return total / (streams * (x.size(1) - 1)) / math.log(2)


def speed(sampler_cls, net, vocab, quantize: bool, length: int) -> float:
    from charrnn.config import SampleConfig

    sampler = sampler_cls(net, vocab, quantize=quantize)
    cfg = SampleConfig(length=length, temperature=1.0, seed=0)
    t0 = time.perf_counter()
    n = sum(len(c.texts[0]) for c in sampler.generate("\n", cfg))
    return n / (time.perf_counter() - t0)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--checkpoint", required=True)
    p.add_argument("--text", default=str(HERE.parent / "corpora" / "tinyshakespeare.txt"))
    p.add_argument("--chars", type=int, default=40000, help="held-out characters scored")
    p.add_argument("--length", type=int, default=2000, help="characters generated per speed run")
    p.add_argument("--json")
    args = p.parse_args(argv)

    from charrnn import load
    from charrnn.model.quantize import Int8Stepper
    from charrnn.model.sampling import Sampler

    model = load(args.checkpoint)
    text = Path(args.text).read_text(encoding="utf-8")
    from charrnn.text.corpus import split_text

    held_out = split_text(text)[1][: args.chars]  # the tail training held out
    ids = model.vocab.encode(held_out)
    q = Int8Stepper(model.net)
    rows = {}
    for rnd in range(2):  # alternate to share machine noise
        rows.setdefault("fp32", []).append(speed(Sampler, model.net, model.vocab, False, args.length))
        rows.setdefault("int8", []).append(speed(Sampler, model.net, model.vocab, True, args.length))
    fp32, int8 = (sum(v) / len(v) for v in (rows["fp32"], rows["int8"]))
    bits_fp32 = stepwise_bits(model.net.step, model.net, ids)
    bits_int8 = stepwise_bits(q.step, model.net, ids)
    result = {"machine": describe(), "checkpoint": args.checkpoint, "fp32_chars_per_sec": fp32,
              "int8_chars_per_sec": int8, "speedup": int8 / fp32, "bits_per_char_fp32": bits_fp32,
              "bits_per_char_int8": bits_int8, "bits_per_char_delta": bits_int8 - bits_fp32,
              "held_out_chars": len(held_out)}
    print(f"machine: {line(result['machine'])}")
    print(f"| single-stream sampling | chars/s | bits/char on {len(held_out):,} held-out chars |\n|---|---:|---:|")
    print(f"| float32 | {fp32:,.0f} | {bits_fp32:.4f} |\n| int8 (--quantize) | {int8:,.0f} | {bits_int8:.4f} |")
    print(f"speed-up {int8 / fp32:.2f}x; bits/char change {bits_int8 - bits_fp32:+.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
