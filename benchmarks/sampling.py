"""Generation speed against its yardsticks: onnxruntime on the same graph, the machine's
read bandwidth (the roofline), int8 against float32, and many samples against one.

    python -m benchmarks.sampling            # the bundled model, about 2 minutes
    python -m benchmarks.sampling --quick    # a check that it runs
    python -m benchmarks.sampling -c checkpoints/tinyshakespeare

Sampling one stream reads every weight once per character, so its ceiling is the rate at
which this machine reads that many bytes. The script measures the read bandwidth over a
working set of the model's size (in cache: the same buffer read again and again, as the
sampler does) and over 512 MB (from memory), with the fastest readers it has (a BLAS
matrix-vector product on all cores, torch's parallel sum), and divides it by the bytes one
step reads (`CpuStepper.bytes_per_step`) to get the ceiling in characters per second.

Each route runs in a child process of its own, the routes alternated round by round, so
that one engine's spinning thread pool (onnxruntime's, OpenBLAS's) never runs beside
another's:
- charrnn float32: `Model.generate` (the sampler, the draw, decoding: what `charrnn sample` runs);
- charrnn int8: the same with `quantize=True`;
- onnxruntime float32: the exported single-step graph, one `session.run` per character,
  softmax and draw in numpy (the loop a user without charrnn would write);
- torch step: the sampler over `CharRNN.step` (PyTorch's fused cells), the route charrnn
  used before, for scale;
- 64 samples: `Model.stream(num_samples=64)` against one stream, and the same ratio for a
  bare loop of the stepper and the draw (what the sampler's own work costs on top).
All start from the model's default start (a newline) at temperature 1.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

from .machine import describe, line

ROUTES = ("float32", "int8", "onnxruntime", "torch-step")


# -- the children ------------------------------------------------------------------------

def route_rate(route: str, checkpoint: str, onnx: str, length: int, streams: int = 1) -> float:
    """Characters per second of one route (in this process)."""
    if route == "onnxruntime":
        return onnx_rate(onnx, length)
    from charrnn import load

    model = load(checkpoint)
    if route in ("bare", "bare-int8"):
        return bare_rate(model, streams, length, route == "bare-int8")
    if route == "torch-step":
        from charrnn.config import SampleConfig
        from charrnn.model.sampling import Sampler, StepLoop

        sampler = Sampler(model.net, model.vocab)
        cells = model.net.cells()
        sampler.stepper = StepLoop(lambda ids, state: model.net.step(ids, state, cells=cells))

        def run(n):
            cfg = SampleConfig(length=n, temperature=1.0, seed=0, num_samples=streams)
            return sum(len(t) for c in sampler.generate("", cfg) for t in c.texts)
    else:
        def run(n):
            chunks = model.stream("", temperature=1.0, length=n, seed=0, num_samples=streams, quantize=route == "int8")
            return sum(len(t) for c in chunks for t in c.texts)
    run(100)
    t0 = time.perf_counter()
    chars = run(length)
    return chars / (time.perf_counter() - t0)


def bare_rate(model, streams: int, length: int, quantize: bool) -> float:
    """The stepper and the draw with nothing around them, `streams` at once."""
    import torch

    from charrnn.config import SampleConfig
    from charrnn.model.cpustep import CpuStepper
    from charrnn.model.quantize import Int8Stepper
    from charrnn.model.sampling import Uniforms, choose

    stepper = (Int8Stepper if quantize else CpuStepper)(model.net)
    stepper.load(model.net.init_state(streams))
    cfg = SampleConfig(temperature=1.0)
    uniforms = Uniforms(torch.Generator().manual_seed(0), streams)
    token = torch.zeros(streams, dtype=torch.long)
    for _ in range(50):
        token = choose(stepper.advance(token), cfg, uniforms)
    t0 = time.perf_counter()
    for _ in range(length):
        token = choose(stepper.advance(token), cfg, uniforms)
    return streams * length / (time.perf_counter() - t0)


def onnx_rate(path: str, length: int, temperature: float = 1.0, seed: int = 0) -> float:
    """A plain numpy + onnxruntime sampling loop over the exported step graph."""
    import numpy as np
    import onnxruntime as ort
    import torch

    options = ort.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    meta = session.get_modelmeta().custom_metadata_map
    vocab = [t.encode() if isinstance(t, str) else bytes([t]) for t in json.loads(meta["vocab"])]
    banned = json.loads(meta["banned_ids"])
    shape = (int(meta["num_layers"]), 1, int(meta["hidden_size"]))
    rng = np.random.default_rng(seed)

    def run(n):
        state = {name: np.zeros(shape, np.float32) for name in json.loads(meta["state_inputs"])}
        for i in json.loads(meta["start_ids"]):
            logits, *new = session.run(None, {"input_ids": np.array([i], np.int64), **state})
            state = dict(zip(state, new))
        out = []
        for _ in range(n):
            z = logits[0] / temperature
            z[banned] = -np.inf
            p = np.exp(z - z.max()).cumsum()
            i = min(int(np.searchsorted(p, rng.random() * p[-1], side="right")), len(p) - 1)
            out.append(vocab[i])
            logits, *new = session.run(None, {"input_ids": np.array([i], np.int64), **state})
            state = dict(zip(state, new))
        return len(b"".join(out).decode("utf-8", "replace"))

    run(100)
    t0 = time.perf_counter()
    chars = run(length)
    return chars / (time.perf_counter() - t0)


def bandwidth(nbytes: int, seconds: float = 0.5) -> dict:
    """Read bandwidth (bytes/s) over a working set of `nbytes`, by each reader."""
    import numpy as np
    import torch

    cols = 1024
    rows = max(1, nbytes // (4 * cols))
    w = np.random.default_rng(0).standard_normal((rows, cols), dtype=np.float32)
    x = np.ones(cols, np.float32)
    out = np.empty(rows, np.float32)
    flat = torch.from_numpy(w).reshape(-1)
    readers = {
        "BLAS GEMV (numpy)": lambda: np.dot(w, x, out=out),
        "torch.sum": lambda: flat.sum(),
    }
    result = {}
    for name, read in readers.items():
        for _ in range(3):
            read()
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            read()
            n += 1
        result[name] = w.nbytes * n / (time.perf_counter() - t0)
    return result


def peak_flops(size: int = 2048, seconds: float = 1.0) -> float:
    """Float32 multiply-add rate (FLOP/s) of a large square matrix product through numpy's
    BLAS on all cores: the compute ceiling of a step at large batch."""
    import numpy as np

    a = np.random.default_rng(0).standard_normal((size, size), dtype=np.float32)
    b = a.T.copy()
    a @ b
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        n += 1
    return 2 * size**3 * n / (time.perf_counter() - t0)


def child_main(spec: dict) -> None:
    kind = spec.pop("kind")
    if kind == "bandwidth":
        print(json.dumps(bandwidth(**spec)))
    elif kind == "flops":
        print(json.dumps(peak_flops()))
    else:
        print(json.dumps(route_rate(**spec)))


def in_child(**spec):
    """Run `child_main(spec)` in a fresh interpreter and return what it printed."""
    code = "import json, sys\nfrom benchmarks import sampling\nsampling.child_main(json.loads(sys.argv[1]))"  # run in ROOT
    out = subprocess.run([sys.executable, "-c", code, json.dumps(spec)], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the parent ---------------------------------------------------------------------------

def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--checkpoint", help="checkpoint file or run folder [default: the bundled model]")
    p.add_argument("--length", type=int, default=4000, help="characters per single-stream run")
    p.add_argument("--rounds", type=int, default=3, help="rounds, each running every route once")
    p.add_argument("--quick", action="store_true", help="short runs, one round")
    p.add_argument("--json")
    args = p.parse_args(argv)
    length, rounds = (400, 1) if args.quick else (args.length, args.rounds)
    batch_length = max(50, length // 16)

    from charrnn import load, paths
    from charrnn.checkpoint.export import export
    from charrnn.model.cpustep import CpuStepper
    from charrnn.model.quantize import Int8Stepper

    source = args.checkpoint or str(paths.BUNDLED)
    model = load(source)
    mc = model.checkpoint.model_config
    bytes_f32 = CpuStepper(model.net).bytes_per_step()
    bytes_int8 = Int8Stepper(model.net).bytes_per_step()
    with tempfile.TemporaryDirectory() as folder:
        onnx = str(export(source, Path(folder) / "model.onnx"))
        in_cache = in_child(kind="bandwidth", nbytes=bytes_f32)
        from_memory = in_child(kind="bandwidth", nbytes=512 * 2**20)
        flops = in_child(kind="flops")
        rates: dict[str, list[float]] = {r: [] for r in ROUTES}
        batch: dict[str, list[float]] = {k: [] for k in ("sampler-1", "sampler-64", "bare-1", "bare-64")}
        for _ in range(rounds):
            for route in ROUTES:
                rates[route].append(in_child(kind="route", route=route, checkpoint=source, onnx=onnx, length=length))
            batch["sampler-1"].append(in_child(kind="route", route="float32", checkpoint=source, onnx=onnx, length=length))
            batch["sampler-64"].append(in_child(kind="route", route="float32", checkpoint=source, onnx=onnx,
                                                length=batch_length, streams=64))
            batch["bare-1"].append(in_child(kind="route", route="bare", checkpoint=source, onnx=onnx, length=length))
            batch["bare-64"].append(in_child(kind="route", route="bare", checkpoint=source, onnx=onnx,
                                             length=batch_length, streams=64))
    mean = {k: sum(v) / len(v) for k, v in rates.items()}
    bmean = {k: sum(v) / len(v) for k, v in batch.items()}
    cache_bw = max(in_cache.values())
    ceiling_f32, ceiling_int8 = cache_bw / bytes_f32, cache_bw / bytes_int8
    # At batch B a step multiplies every weight by B rows: 2 FLOP per weight and row.
    ceiling_n64 = min(flops / (2 * bytes_f32 / 4), 64 * ceiling_f32)
    ratios = {
        "float32_vs_onnxruntime": mean["float32"] / mean["onnxruntime"],
        "float32_vs_roofline": mean["float32"] / ceiling_f32,
        "int8_vs_roofline": mean["int8"] / ceiling_int8,
        "int8_vs_float32": mean["int8"] / mean["float32"],
        "float32_vs_torch_step": mean["float32"] / mean["torch-step"],
        "n64_vs_1": bmean["sampler-64"] / bmean["sampler-1"],
        "n64_vs_compute_ceiling": bmean["sampler-64"] / ceiling_n64,
        "bare_n64_vs_1": bmean["bare-64"] / bmean["bare-1"],
    }
    machine = describe()
    result = {"machine": machine, "checkpoint": source, "model": f"{mc.cell.upper()} {mc.num_layers} x {mc.hidden_size}",
              "length": length, "rounds": rounds, "bytes_per_step": {"float32": bytes_f32, "int8": bytes_int8},
              "bandwidth_in_cache": in_cache, "bandwidth_from_memory": from_memory,
              "peak_flops": flops,
              "ceiling_chars_per_sec": {"float32": ceiling_f32, "int8": ceiling_int8, "n64_compute": ceiling_n64},
              "chars_per_sec": mean, "per_round": rates, "batch": bmean, "ratios": ratios}
    print(f"machine: {line(machine)}")
    print(f"model: {result['model']} from {source}; {length:,} characters per single-stream run, mean of {rounds} "
          f"round(s), each route in its own process")
    print(f"read bandwidth over {bytes_f32 / 1e6:.1f} MB (in cache): "
          + ", ".join(f"{k} {v / 1e9:.0f} GB/s" for k, v in in_cache.items())
          + "; over 512 MB (from memory): " + ", ".join(f"{k} {v / 1e9:.0f} GB/s" for k, v in from_memory.items()))
    print(f"bytes read per step: float32 {bytes_f32 / 1e6:.2f} MB, int8 {bytes_int8 / 1e6:.2f} MB; "
          f"ceiling at {cache_bw / 1e9:.0f} GB/s: float32 {ceiling_f32:,.0f}, int8 {ceiling_int8:,.0f} chars/s")
    print("| single-stream sampling | chars/s |\n|---|---:|")
    names = {"float32": "charrnn float32", "int8": "charrnn int8 (--quantize)", "onnxruntime": "onnxruntime float32",
             "torch-step": "charrnn over CharRNN.step (the former route)"}
    for route in ROUTES:
        print(f"| {names[route]} | {mean[route]:,.0f} |")
    print(f"| 64 samples at once (-N 64), all streams | {bmean['sampler-64']:,.0f} |")
    print(f"| bare stepper + draw, 1 / 64 streams | {bmean['bare-1']:,.0f} / {bmean['bare-64']:,.0f} |")
    print(f"charrnn float32 / onnxruntime: {ratios['float32_vs_onnxruntime']:.2f}x; float32 / roofline: "
          f"{ratios['float32_vs_roofline']:.2f}; int8 / roofline: {ratios['int8_vs_roofline']:.2f}; int8 / float32: "
          f"{ratios['int8_vs_float32']:.2f}x; float32 / former route: {ratios['float32_vs_torch_step']:.2f}x")
    print(f"-N 64 / 1 stream: {ratios['n64_vs_1']:.1f}x (bare loop: {ratios['bare_n64_vs_1']:.1f}x); at 64 rows a "
          f"step is bound by arithmetic: {flops / 1e9:.0f} GFLOP/s (numpy's BLAS, a 2048 x 2048 product) allow "
          f"{ceiling_n64:,.0f} chars/s ({ceiling_n64 / ceiling_f32:.1f}x the single-stream roofline); -N 64 reaches "
          f"{ratios['n64_vs_compute_ceiling']:.2f} of it")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
