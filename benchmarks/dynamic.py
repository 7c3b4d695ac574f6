"""Dynamic evaluation and --adapt, measured.

    python -m benchmarks.dynamic                       # the bundled model on Tiny Shakespeare's validation tail
    python -m benchmarks.dynamic -c RUN --corpus FILE  # another model and its corpus
    python -m benchmarks.dynamic --grid                # the settings grid the defaults were chosen from

- static against dynamic bits/char on the corpus's validation tail (the last
  `val_fraction` of the text, the part training never saw), one ordered pass;
- --adapt: passages of the tail, each a prime of `--prime-chars` followed by a
  continuation of `--continuation-chars`; the continuation's loss (state carried from the
  prime) under the model as trained and under a copy adapted to the prime;
- with --grid: learning rate, decay and segment length tried on the first quarter of the
  tail (the defaults are chosen there), the best reported on the other three quarters.
"""

from __future__ import annotations

import argparse
import itertools
import json
import time
from dataclasses import asdict
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

from .machine import describe, line


def continuation_nats(net, prime, continuation) -> float:
    """Summed loss of `continuation` (N,) after the state and logits of `prime` (P,)."""
    import torch
    import torch.nn.functional as F

    from charrnn.model.sampling import warm_up

    with torch.no_grad():
        logits, state = warm_up(net, prime.unsqueeze(0))  # (1, V)
        first = F.cross_entropy(logits.float(), continuation[:1], reduction="sum")
        out, _ = net(continuation[:-1].unsqueeze(0), state)  # (1, N - 1, V)
        rest = F.cross_entropy(out[0].float(), continuation[1:], reduction="sum")
    return float(first + rest)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--checkpoint", default=str(ROOT / "charrnn" / "models" / "tinyshakespeare.pt"))
    p.add_argument("--corpus", default=str(ROOT / "corpora" / "tinyshakespeare.txt"))
    p.add_argument("--val-fraction", type=float, default=0.1)
    p.add_argument("--passages", type=int, default=6)
    p.add_argument("--prime-chars", type=int, default=5000)
    p.add_argument("--continuation-chars", type=int, default=2000)
    p.add_argument("--grid", action="store_true")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)

    import torch

    from charrnn import load
    from charrnn.config import DynamicConfig
    from charrnn.events import LN2
    from charrnn.model.dynamic import adapt, dynamic_loss

    torch.set_num_threads(torch.get_num_threads())
    info = describe()
    print(line(info))
    model = load(args.checkpoint)
    with open(args.corpus, encoding="utf-8", newline="") as fh:  # line endings kept, as charrnn reads them
        text = fh.read()
    tail = text[int(len(text) * (1 - args.val_fraction)):]
    ids = torch.from_numpy(model.known_ids(tail)[0].astype("int64"))
    lengths = torch.from_numpy(model.vocab.char_lengths())
    cpu = torch.device("cpu")
    results: dict = {"machine": info, "checkpoint": args.checkpoint, "corpus": args.corpus, "tail_chars": len(tail)}

    def bits(nats, chars):
        return nats / chars / LN2

    if args.grid:
        cut = len(ids) // 4
        rows = []
        for lr, decay, segment in itertools.product((3e-4, 1e-3, 3e-3), (0.0, 0.001, 0.01), (50, 100)):
            cfg = DynamicConfig(segment=segment, lr=lr, decay=decay)
            a = dynamic_loss(model.net, ids[:cut], cfg, cpu, lengths)
            row = {"lr": lr, "decay": decay, "segment": segment, "static": bits(a.static_nats, a.chars),
                   "dynamic": bits(a.dynamic_nats, a.chars)}
            rows.append(row)
            print(f"lr {lr:g} decay {decay:g} segment {segment}: first quarter {row['dynamic']:.4f} bits/char "
                  f"(static {row['static']:.4f})", flush=True)
        best = min(rows, key=lambda r: r["dynamic"])
        b = dynamic_loss(model.net, ids[cut:], DynamicConfig(segment=best["segment"], lr=best["lr"],
                                                             decay=best["decay"]), cpu, lengths)
        print(f"best on the first quarter: lr {best['lr']:g}, decay {best['decay']:g}, segment {best['segment']}; "
              f"on the other three quarters {bits(b.dynamic_nats, b.chars):.4f} bits/char "
              f"(static {bits(b.static_nats, b.chars):.4f})", flush=True)
        results["grid"] = {"rows": rows, "best": best,
                           "held_out": [bits(b.static_nats, b.chars), bits(b.dynamic_nats, b.chars)]}

    cfg = DynamicConfig()  # the defaults, or with --grid the settings chosen on the first quarter
    if args.grid:
        cfg = DynamicConfig(segment=best["segment"], lr=best["lr"], decay=best["decay"])
    r = dynamic_loss(model.net, ids, cfg, cpu, lengths)
    static, dynamic = bits(r.static_nats, r.chars), bits(r.dynamic_nats, r.chars)
    results["tail"] = {"static_bits": static, "dynamic_bits": dynamic, "chars": r.chars, "seconds": r.seconds,
                       "config": asdict(cfg)}
    print(f"validation tail ({r.chars:,} characters): static {static:.4f} bits/char ({static * LN2:.4f} nats), "
          f"dynamic {dynamic:.4f} ({dynamic * LN2:.4f} nats): {dynamic - static:+.4f} bits/char in {r.seconds:.1f} s "
          f"({r.chars / r.seconds:,.0f} chars/s)")

    # --adapt: primes and continuations taken from the tail, evenly spaced
    span = args.prime_chars + args.continuation_chars
    starts = [round(i * (len(tail) - span) / max(1, args.passages - 1)) for i in range(args.passages)]
    plain = adapted = 0.0
    chars = 0
    seconds = 0.0
    for s in starts:
        prime = torch.from_numpy(model.known_ids(tail[s : s + args.prime_chars])[0].astype("int64"))
        cont = torch.from_numpy(model.known_ids(tail[s + args.prime_chars : s + span])[0].astype("int64"))
        t = time.perf_counter()
        net = adapt(model.net, prime, cfg, cpu)
        seconds += time.perf_counter() - t
        plain += continuation_nats(model.net, prime, cont)
        adapted += continuation_nats(net, prime, cont)
        chars += int(lengths[cont].sum())
    results["adapt"] = {"passages": len(starts), "prime_chars": args.prime_chars,
                        "continuation_chars": args.continuation_chars, "plain_bits": bits(plain, chars),
                        "adapted_bits": bits(adapted, chars), "adapt_seconds_per_prime": seconds / len(starts)}
    print(f"--adapt over {len(starts)} passages ({args.prime_chars:,}-character prime, {args.continuation_chars:,} "
          f"characters scored after it): as trained {bits(plain, chars):.4f} bits/char, adapted to the prime "
          f"{bits(adapted, chars):.4f} ({bits(adapted, chars) - bits(plain, chars):+.4f}); adapting took "
          f"{seconds / len(starts):.2f} s per prime")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1, default=str))
    return results


if __name__ == "__main__":
    main()
