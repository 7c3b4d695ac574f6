"""Characters per second through `charrnn serve`: 1 client and 16 concurrent clients,
streaming and not, against the same model sampled directly in-process.

    python -m benchmarks.serve                   # the bundled model
    python -m benchmarks.serve --quick
    python -m benchmarks.serve -c checkpoints/tinyshakespeare --length 2000

All clients' requests run in the model's one batch loop (charrnn.model.batching), so the
concurrent rounds measure how much a shared step gains over one stream at a time.
The server runs as its own process (`python -m charrnn serve --port 0`), as a user would
start it, so the clients' threads here do not share its interpreter. Each client sends
requests one after another; a rate is all characters received divided by the wall time
of the whole round. Streaming rows also give the median time to the first text chunk.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent

from .machine import describe, line


def start_server(checkpoint: str, clients: int, length: int) -> tuple[subprocess.Popen, str]:
    args = [sys.executable, "-m", "charrnn", "serve", "--port", "0", "-c", checkpoint, "--concurrency", str(clients),
            "--queue-timeout", "600", "--max-tokens", str(max(length, 4096))]
    proc = subprocess.Popen(args, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=HERE.parent,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    first = proc.stderr.readline()
    if not first.startswith("Serving "):
        proc.kill()
        raise SystemExit(f"the server did not start: {first.strip()}")
    return proc, first.split(" at ", 1)[1].split(" ", 1)[0].rstrip("/")


def request(http, base: str, model: str, length: int, seed: int, stream: bool) -> tuple[int, float]:
    """One completion: (characters received, seconds to the first text)."""
    body = {"model": model, "prompt": "\n", "max_tokens": length, "temperature": 1.0, "seed": seed, "stream": stream}
    t0 = time.perf_counter()
    if not stream:
        r = http.post(f"{base}/v1/completions", json=body)
        r.raise_for_status()
        return len(r.json()["choices"][0]["text"]), time.perf_counter() - t0
    chars, first = 0, None
    with http.stream("POST", f"{base}/v1/completions", json=body) as r:
        r.raise_for_status()
        for raw in r.iter_lines():
            if raw.startswith("data: {"):
                text = json.loads(raw[6:])["choices"][0]["text"]
                if text and first is None:
                    first = time.perf_counter() - t0
                chars += len(text)
    return chars, first or 0.0


def round_of(base: str, model: str, clients: int, per_client: int, length: int, stream: bool) -> dict:
    import httpx

    def client(k: int) -> list[tuple[int, float]]:
        with httpx.Client(timeout=600) as http:
            return [request(http, base, model, length, 1000 * k + i, stream) for i in range(per_client)]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = [r for rs in pool.map(client, range(clients)) for r in rs]
    seconds = time.perf_counter() - t0
    chars = sum(c for c, _ in results)
    assert chars == clients * per_client * length, "a response came back short"
    return {"chars_per_sec": chars / seconds, "first_chunk_s": statistics.median(f for _, f in results)}


def direct_rate(checkpoint: str, length: int) -> float:
    """The same sampling with no server: charrnn.load(...).stream, one stream."""
    from charrnn import load

    model = load(checkpoint)
    t0 = time.perf_counter()
    chars = sum(len(c.texts[0]) for c in model.stream("\n", temperature=1.0, length=length, seed=0))
    return chars / (time.perf_counter() - t0)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--checkpoint", help="model to serve [default: the bundled one]")
    p.add_argument("--length", type=int, default=1000, help="characters per request")
    p.add_argument("--requests", type=int, default=2, help="requests per client per round")
    p.add_argument("--clients", type=int, default=16, help="clients of the concurrent rounds")
    p.add_argument("--quick", action="store_true", help="short requests, one per client")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    length, per_client = (200, 1) if args.quick else (args.length, args.requests)

    import httpx

    from charrnn.paths import BUNDLED

    checkpoint = args.checkpoint or str(BUNDLED)
    proc, base = start_server(checkpoint, args.clients, length)
    try:
        model = httpx.get(f"{base}/v1/models", timeout=60).json()["data"][0]["id"]
        with httpx.Client(timeout=60) as http:
            request(http, base, model, 50, 0, False)  # warm-up
        rows = {}
        for clients in (1, args.clients):
            for stream in (False, True):
                rows[f"{clients}_{'stream' if stream else 'plain'}"] = round_of(base, model, clients, per_client,
                                                                                length, stream)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
    direct = direct_rate(checkpoint, length)
    result = {"machine": describe(), "model": model, "length": length, "requests_per_client": per_client,
              "direct_chars_per_sec": direct, "rounds": rows}
    print(f"machine: {line(result['machine'])}; model {model}, {length} characters per request")
    print("| through charrnn serve | chars/s | first chunk (median) |\n|---|---:|---:|")
    for key, row in rows.items():
        clients, kind = key.split("_")
        first = f"{row['first_chunk_s'] * 1000:,.0f} ms" if kind == "stream" else ""
        print(f"| {clients} client{'s' if clients != '1' else ''}, {'streaming' if kind == 'stream' else 'plain'} "
              f"| {row['chars_per_sec']:,.0f} | {first} |")
    print(f"| in-process Model.stream, 1 stream (no server) | {direct:,.0f} | |")
    many, one = rows[f"{args.clients}_stream"], rows["1_stream"]
    result["ratios"] = {"clients_vs_1": many["chars_per_sec"] / one["chars_per_sec"],
                        "first_chunk_median_ms": many["first_chunk_s"] * 1000,
                        "one_client_vs_direct": one["chars_per_sec"] / direct}
    print(f"{args.clients} streaming clients / 1: {result['ratios']['clients_vs_1']:.1f}x; first chunk at "
          f"{args.clients} clients (median): {result['ratios']['first_chunk_median_ms']:,.0f} ms; 1 client through "
          f"the server / in-process: {result['ratios']['one_client_vs_direct']:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
