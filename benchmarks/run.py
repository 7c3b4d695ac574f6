"""The benchmark suite: one command, a table on stdout, JSON in benchmarks/results/.

    python -m benchmarks.run            # about 6 minutes on a 2-core CPU
    python -m benchmarks.run --quick    # a smoke run, about a minute
    python -m benchmarks.run --device cuda

Parts: training throughput against a bare loop (training.py), sampling speed against
onnxruntime, the roofline and a bare loop, int8 and -N 64 (sampling.py), `charrnn serve`
with 1 client against 16 (serve.py), the exported web page (webpage.py, with --parts webpage), corpus ingest speed and peak memory, peak memory of training on
a 200 MB corpus against a 2 MB one, and CPU threads 1 against all cores.
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

from . import sampling, serve, training, webpage
from .machine import describe, line

SHAKESPEARE = ROOT / "corpora" / "tinyshakespeare.txt"


def make_corpus(path: Path, megabytes: float) -> Path:
    text = SHAKESPEARE.read_bytes()
    reps = max(1, round(megabytes * 1e6 / len(text)))
    with open(path, "wb") as fh:
        for _ in range(reps):
            fh.write(text)
    return path


def child(code: str) -> dict:
    """Run Python code in a fresh interpreter; it prints one JSON object, to which the
    child's own peak RSS (MB) is added."""
    wrapped = code + (
        "\nimport resource as _r, json as _j\n"
        "print(_j.dumps({**globals().get('result', {}), "
        "'peak_rss_mb': _r.getrusage(_r.RUSAGE_SELF).ru_maxrss / 1024}))"
    )
    out = subprocess.run([sys.executable, "-c", wrapped], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def ingest(tmp: Path, megabytes: float) -> dict:
    corpus = make_corpus(tmp / "ingest.txt", megabytes)
    code = (
        "import time; from charrnn.text.corpus import encode_corpus\n"
        f"t = time.perf_counter(); e = encode_corpus({str(corpus)!r}, cache_dir={str(tmp / 'cache')!r})\n"
        "result = {'seconds': time.perf_counter() - t, 'chars': e.chars}"
    )
    baseline = child("import charrnn.text.corpus\nresult = {}")["peak_rss_mb"]
    r = child(code)
    mb = corpus.stat().st_size / 1e6
    return {"megabytes": mb, "mb_per_sec": mb / r["seconds"], "peak_rss_mb": r["peak_rss_mb"],
            "import_rss_mb": baseline}


def train_memory(tmp: Path, megabytes: float) -> float:
    """Peak RSS of a real `charrnn train` run (5 steps, default model) on a corpus this size."""
    corpus = make_corpus(tmp / f"mem{megabytes:g}.txt", megabytes)
    argv = ["charrnn", "train", str(corpus), "--out", str(tmp / f"run{megabytes:g}"), "--max-steps", "5",
            "--eval-every", "5", "-q", "--overwrite"]
    code = (
        "import runpy, sys\n"
        f"sys.argv = {argv!r}\n"
        "try:\n    runpy.run_module('charrnn', run_name='__main__')\nexcept SystemExit as e:\n"
        "    assert not e.code, e.code\n"
        "result = {}"
    )
    return child(code)["peak_rss_mb"]


def threads(quick: bool) -> dict:
    import torch

    out = {}
    s = {**training.shapes("cpu"), "batch_size": 16 if quick else 64}
    for n in sorted({1, torch.get_num_threads()}):
        torch.set_num_threads(n)
        out[n] = training.bare_rate(s, torch.device("cpu"), 3 if quick else 8)
    torch.set_num_threads(max(out))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(HERE / "results"))
    p.add_argument("--parts", default="training,sampling,serve,ingest,memory,threads",
                   help="comma-separated subset of: training, sampling, serve, ingest, memory, threads, "
                        "webpage (the exported page in headless Chromium; not in the default set)")
    args = p.parse_args(argv)
    parts = set(args.parts.split(","))
    quick = ["--quick"] if args.quick else []
    started = time.time()
    report = {"machine": describe(), "quick": args.quick}
    print(f"machine: {line(report['machine'])}\n", flush=True)

    if "training" in parts:
        print("== training throughput ==", flush=True)
        report["training"] = training.main(quick + ["--device", args.device])
    if "sampling" in parts:
        print("\n== sampling speed ==", flush=True)
        report["sampling"] = sampling.main(quick)
    if "serve" in parts:
        print("\n== charrnn serve: 1 client against 16 ==", flush=True)
        report["serve"] = serve.main(quick)
    if "webpage" in parts:
        print("\n== the exported web page against charrnn ==", flush=True)
        report["webpage"] = webpage.main(quick)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        if "ingest" in parts:
            print("\n== corpus ingest ==", flush=True)
            report["ingest"] = r = ingest(tmp, 10 if args.quick else 100)
            print(f"{r['megabytes']:.0f} MB ASCII corpus: {r['mb_per_sec']:.0f} MB/s, peak RSS {r['peak_rss_mb']:.0f} MB "
                  f"(the interpreter with torch imported: {r['import_rss_mb']:.0f} MB)", flush=True)
        if "memory" in parts:
            print("\n== training memory (peak RSS of `charrnn train`, default model, 5 steps) ==", flush=True)
            small, big = (2, 20) if args.quick else (2, 200)
            rss_small = train_memory(tmp, small)
            rss_big = train_memory(tmp, big)
            report["memory"] = {f"{small}MB": rss_small, f"{big}MB": rss_big, "growth_mb": rss_big - rss_small}
            print(f"{small} MB corpus: {rss_small:.0f} MB; {big} MB corpus: {rss_big:.0f} MB; "
                  f"growth {rss_big - rss_small:.0f} MB", flush=True)
    if "threads" in parts:
        print("\n== CPU threads (bare training loop) ==", flush=True)
        report["threads"] = threads(args.quick)
        for n, rate in report["threads"].items():
            print(f"{n} thread(s): {rate:,.0f} chars/s", flush=True)
    report["seconds"] = time.time() - started
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    name = "quick.json" if args.quick else f"{args.device}{'' if len(parts) == 6 else '-' + '-'.join(sorted(parts))}.json"
    (out / name).write_text(json.dumps(report, indent=2, default=str))
    print(f"\nwrote {out / name} in {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
