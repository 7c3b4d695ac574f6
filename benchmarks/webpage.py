"""The exported web page (`charrnn export RUN model.html`) against charrnn itself.

    python -m benchmarks.webpage            # the bundled model, about a minute
    python -m benchmarks.webpage --quick
    python -m benchmarks.webpage -c checkpoints/tinyshakespeare

In one run, on this machine:
- charrnn's own float32 single stream (`Model.stream`, what `charrnn sample` runs), in a
  child process of its own, as benchmarks/sampling.py measures it;
- the page in headless Chromium, opened from file://, exported three ways (float16, the
  default; float32; int8 with --quantize): characters per second of one generation of
  the same length at temperature 1 (the page's own figure: generation time after the
  prime), and the time from opening the file to ready;
- each page's file size against the bytes of its weights;
- greedy agreement: how many of the first 300 characters at temperature 0 equal
  `charrnn sample --temp 0` (300 means all).
Routes alternate round by round; the best round of each is reported (the machine is shared).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

from .machine import describe, line
from .sampling import in_child

PAGES = {"float16": {}, "float32": {"precision": "float32"}, "int8": {"quantize": True}}


def browser():
    import os
    import shutil

    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
    binary = next((p for p in ("/usr/lib/chromium/chromium", shutil.which("chromium") or "") if p and os.path.exists(p)),
                  None)
    if binary is None or not os.path.exists(driver):
        sys.exit("This benchmark needs Chromium and chromedriver (apt-get install chromium chromium-driver).")
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"):
        options.add_argument(arg)
    return webdriver.Chrome(options=options, service=Service(driver))


def open_page(chrome, page: Path) -> float:
    t0 = time.perf_counter()
    chrome.get(page.as_uri())
    while chrome.find_element("id", "generate").get_attribute("disabled") is not None:
        if time.perf_counter() - t0 > 60:
            raise RuntimeError(f"the page did not get ready: {chrome.find_element('id', 'status').text}")
        time.sleep(0.01)
    return time.perf_counter() - t0


def page_run(chrome, length: int, temperature: float, seed: int = 0) -> dict:
    chrome.execute_script("""
        const f = arguments[0];
        for (const [id, v] of Object.entries(f)) { const el = document.getElementById(id);
          if (el.type === 'checkbox') el.checked = v; else el.value = v; }
        delete document.body.dataset.done;
        document.getElementById('generate').click();""",
        {"prime": "", "length": str(length), "temperature": str(temperature), "seed": str(seed), "echo": False,
         "top-k": "", "top-p": "", "stop-seq": ""})
    while not chrome.execute_script("return document.body.dataset.done"):
        time.sleep(0.01)
    return chrome.execute_script("""const d = document.body.dataset;
        return {chars: Number(d.chars), seconds: Number(d.seconds), engine: d.engine,
                text: document.getElementById('output').textContent};""")


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-c", "--checkpoint", default=str(ROOT / "charrnn" / "models" / "tinyshakespeare.pt"))
    p.add_argument("--length", type=int, default=20_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", help="also write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.length, args.rounds = 2000, 1

    import numpy as np

    from charrnn import load
    from charrnn.checkpoint.export import export

    info = describe()
    print(line(info))
    results: dict = {"machine": info, "length": args.length, "pages": {}}
    with tempfile.TemporaryDirectory() as tmp:
        pages = {}
        for name, options in PAGES.items():
            pages[name] = export(args.checkpoint, Path(tmp) / f"{name}.html", **options)
        model = load(args.checkpoint)
        weights = sum(t.numel() for t in model.net.state_dict().values())
        expected = "".join(c.texts[0] for c in model.stream("", temperature=0, length=300))
        chrome = browser()
        try:
            charrnn, speeds, ready, agree = [], {n: [] for n in pages}, {}, {}
            for _ in range(args.rounds):
                charrnn.append(in_child(kind="rate", route="float32", checkpoint=args.checkpoint, onnx="",
                                        length=args.length))
                for name, page in pages.items():
                    ready[name] = open_page(chrome, page)
                    page_run(chrome, 200, 1.0)  # warm the engine up
                    out = page_run(chrome, args.length, 1.0)
                    speeds[name].append(out["chars"] / out["seconds"])
                    greedy = page_run(chrome, 300, 0)["text"]
                    agree[name] = next((i for i, (a, b) in enumerate(zip(greedy, expected)) if a != b),
                                       min(len(greedy), len(expected)))
                    results["engine"] = out["engine"]
        finally:
            chrome.quit()
        best = max(charrnn)
        results["charrnn_float32"] = best
        print(f"charrnn float32, one stream: {best:,.0f} chars/s (rounds: {', '.join(f'{r:,.0f}' for r in charrnn)})")
        print(f"page engine: {results['engine']}")
        print(f"{'page':8} {'chars/s':>9} {'x charrnn':>9} {'ready s':>8} {'file MB':>8} {'weights MB':>10} "
              f"{'greedy 300':>10}")
        for name, page in pages.items():
            rate = max(speeds[name])
            size = page.stat().st_size
            stored = weights * {"float16": 2, "float32": 4, "int8": 1}[name]
            results["pages"][name] = {"chars_per_s": rate, "ratio": rate / best, "ready_s": ready[name],
                                      "file_bytes": size, "weight_bytes_at_precision": stored,
                                      "greedy_agreement_of_300": agree[name], "rounds": speeds[name]}
            print(f"{name:8} {rate:9,.0f} {rate / best:9.2f} {ready[name]:8.2f} {size / 1e6:8.2f} "
                  f"{stored / 1e6:10.2f} {agree[name]:10d}")
        results["median_ratio_float16"] = float(np.median(speeds["float16"])) / float(np.median(charrnn))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    return results


if __name__ == "__main__":
    main()
