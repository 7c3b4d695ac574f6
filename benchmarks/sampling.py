"""Sampling speed: charrnn's streaming sampler against a bare loop of the model's own step,
for 1 stream and for 64 streams, and at two output lengths.

    python benchmarks/sampling.py            # 2x512 LSTM (the default size), random weights
    python benchmarks/sampling.py --quick
    python benchmarks/sampling.py -c checkpoints/tinyshakespeare

Both loops include drawing the next character (softmax + multinomial); charrnn's also
decodes and checks stop and length conditions, so their ratio is the sampler's own
overhead. The step itself runs PyTorch's fused single-step cell kernels
(`torch.lstm_cell` and kin, the kernels `nn.LSTMCell` calls), the fastest plain loop we know
on a CPU. Weights do not change speed, so random weights of the default shape stand in
when no checkpoint is given.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from machine import describe, line  # noqa: E402


def model_and_vocab(path: str | None):
    import torch

    from charrnn import load
    from charrnn.config import ModelConfig
    from charrnn.model import CharRNN
    from charrnn.vocab import CharVocab

    if path:
        m = load(path)
        return m.net, m.vocab
    text = (HERE.parent / "corpora" / "tinyshakespeare.txt").read_text(encoding="utf-8")
    vocab = CharVocab.from_text(text)
    torch.manual_seed(0)
    return CharRNN(ModelConfig(vocab_size=vocab.size)).eval(), vocab


def charrnn_rate(net, vocab, streams: int, length: int) -> float:
    from charrnn.sampling import Sampler, SampleConfig

    cfg = SampleConfig(length=length, temperature=1.0, seed=0, num_samples=streams, chunk_chars=64)
    sampler = Sampler(net, vocab)
    t0 = time.perf_counter()
    chars = sum(len(t) for chunk in sampler.generate("\n", cfg) for t in chunk.texts)
    return chars / (time.perf_counter() - t0)


def bare_rate(net, streams: int, length: int) -> float:
    """`net.step` and the draw, nothing else: the loop charrnn's sampler wraps."""
    import torch

    g = torch.Generator().manual_seed(0)
    cells = net.cells()  # bound once, as the sampler does
    with torch.no_grad():
        state = net.init_state(streams)
        token = torch.zeros(streams, dtype=torch.long)
        t0 = time.perf_counter()
        for _ in range(length):
            logits, state = net.step(token, state, cells=cells)  # (B, V)
            probs = torch.softmax(logits, dim=-1)
            token = torch.multinomial(probs, 1, generator=g).squeeze(-1)
        return streams * length / (time.perf_counter() - t0)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--checkpoint")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json")
    args = p.parse_args(argv)

    net, vocab = model_and_vocab(args.checkpoint)
    short, long = (300, 1500) if args.quick else (1000, 10000)
    batch_len = 200 if args.quick else 500
    rows = {}
    # Interleave the two loops so that machine noise hits both alike.
    rows["b1_charrnn"] = charrnn_rate(net, vocab, 1, short)
    rows["b1_bare"] = bare_rate(net, 1, short)
    rows["b1_charrnn_long"] = charrnn_rate(net, vocab, 1, long)
    rows["b64_charrnn"] = charrnn_rate(net, vocab, 64, batch_len)
    rows["b64_bare"] = bare_rate(net, 64, batch_len)
    result = {
        "machine": describe(),
        "model": f"{net.config.cell} {net.config.num_layers}x{net.config.hidden_size}",
        "chars_per_sec": rows,
        "ratio_b1_vs_bare": rows["b1_charrnn"] / rows["b1_bare"],
        "ratio_b64_vs_b1": rows["b64_charrnn"] / rows["b1_charrnn"],
        "ratio_long_vs_short": rows["b1_charrnn_long"] / rows["b1_charrnn"],
    }
    print(f"machine: {line(result['machine'])}; model {result['model']}")
    print("| sampling | chars/s |\n|---|---:|")
    print(f"| charrnn, 1 stream, {short} chars | {rows['b1_charrnn']:,.0f} |")
    print(f"| bare step loop, 1 stream | {rows['b1_bare']:,.0f} |")
    print(f"| charrnn, 1 stream, {long} chars | {rows['b1_charrnn_long']:,.0f} |")
    print(f"| charrnn, 64 streams | {rows['b64_charrnn']:,.0f} |")
    print(f"| bare step loop, 64 streams | {rows['b64_bare']:,.0f} |")
    print(f"charrnn / bare (1 stream): {result['ratio_b1_vs_bare']:.2f}; 64 streams / 1 stream: "
          f"{result['ratio_b64_vs_b1']:.1f}x; {long} vs {short} chars: {result['ratio_long_vs_short']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
