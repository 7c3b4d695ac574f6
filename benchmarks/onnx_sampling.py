"""Single-stream sampling speed of an ONNX export in onnxruntime against charrnn's own
sampler (float32, and int8 with --quantize), same model, same CPU, same thread count.

    python benchmarks/onnx_sampling.py                       # the bundled Tiny Shakespeare model
    python benchmarks/onnx_sampling.py -c checkpoints/tinyshakespeare --length 5000
    python benchmarks/onnx_sampling.py --length 50 --rounds 1   # a quick check that it runs

The model is exported with `charrnn export` (`charrnn.checkpoint.export`) into a temporary
folder. The onnxruntime loop is what a user without torch would write (the README's
example, tightened): one `session.run` per character on the single-step graph, softmax with
temperature and a draw in numpy, the drawn id fed back with the state, its text appended.
charrnn's loop is `Model.generate` (`Model.stream` underneath), which also decodes and
checks its length. Both start from the model's default start (a newline) at temperature 1.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from machine import describe, line  # noqa: E402


def onnx_rate(session, length: int, temperature: float = 1.0, seed: int = 0) -> float:
    """Characters per second of a plain numpy + onnxruntime sampling loop."""
    import numpy as np

    meta = session.get_modelmeta().custom_metadata_map
    vocab = [t.encode() if isinstance(t, str) else bytes([t]) for t in json.loads(meta["vocab"])]
    banned = json.loads(meta["banned_ids"])
    shape = (int(meta["num_layers"]), 1, int(meta["hidden_size"]))
    state = {name: np.zeros(shape, np.float32) for name in json.loads(meta["state_inputs"])}
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    for i in json.loads(meta["start_ids"]):
        logits, *new = session.run(None, {"input_ids": np.array([i], np.int64), **state})
        state = dict(zip(state, new))
    out = []
    for _ in range(length):
        z = logits[0] / temperature
        z[banned] = -np.inf
        p = np.exp(z - z.max()).cumsum()
        i = min(int(np.searchsorted(p, rng.random() * p[-1], side="right")), len(p) - 1)  # draw
        out.append(vocab[i])
        logits, *new = session.run(None, {"input_ids": np.array([i], np.int64), **state})
        state = dict(zip(state, new))
    text = b"".join(out).decode("utf-8", "replace")
    return len(text) / (time.perf_counter() - t0)


def charrnn_rate(model, length: int, quantize: bool) -> float:
    t0 = time.perf_counter()
    n = sum(len(piece) for piece in model.generate("", temperature=1.0, length=length, seed=0, quantize=quantize))
    return n / (time.perf_counter() - t0)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--checkpoint", help="checkpoint file or run folder [default: the bundled model]")
    p.add_argument("--length", type=int, default=3000, help="characters generated per run")
    p.add_argument("--rounds", type=int, default=3, help="runs of each loop, alternated to share machine noise")
    p.add_argument("--threads", type=int, help="threads for torch and onnxruntime alike [default: torch's]")
    p.add_argument("--json")
    args = p.parse_args(argv)

    import onnxruntime as ort
    import torch

    from charrnn import checkpoint, load

    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    source = args.checkpoint or str(checkpoint.BUNDLED)
    model = load(source)
    with tempfile.TemporaryDirectory() as folder:
        path = checkpoint.export(source, Path(folder) / "model.onnx")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        size = path.stat().st_size
    onnx_rate(session, 20)  # warm up both before timing
    charrnn_rate(model, 20, False)
    rows: dict[str, list[float]] = {"charrnn float32": [], "charrnn int8 (--quantize)": [], "onnxruntime float32": []}
    for _ in range(args.rounds):
        rows["charrnn float32"].append(charrnn_rate(model, args.length, False))
        rows["charrnn int8 (--quantize)"].append(charrnn_rate(model, args.length, True))
        rows["onnxruntime float32"].append(onnx_rate(session, args.length))
    rates = {name: sum(v) / len(v) for name, v in rows.items()}
    mc = model.checkpoint.model_config
    machine = {**describe(), "onnxruntime": ort.__version__, "threads": threads}
    result = {"machine": machine, "checkpoint": source, "model": f"{mc.cell.upper()} {mc.num_layers} x {mc.hidden_size}",
              "onnx_bytes": size, "length": args.length, "rounds": args.rounds, "chars_per_sec": rates,
              "onnx_vs_charrnn": rates["onnxruntime float32"] / rates["charrnn float32"]}
    print(f"machine: {line(machine)}, onnxruntime {ort.__version__}, {threads} thread(s) for both")
    print(f"model: {result['model']} from {source}; ONNX file {size / 1e6:.1f} MB; "
          f"{args.length:,} characters per run, mean of {args.rounds} runs")
    print("| single-stream sampling | chars/s |\n|---|---:|")
    for name, rate in rates.items():
        print(f"| {name} | {rate:,.0f} |")
    print(f"onnxruntime / charrnn float32: {result['onnx_vs_charrnn']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
