"""A model as one self-contained web page: `charrnn export RUN model.html`.

The page holds everything it needs: the weights (float16 by default, float32, or int8 with
one scale per row), the vocabulary, a model card, and an engine that generates in a Web
Worker (charrnn/static/webpage: the worker's JavaScript, its WebAssembly SIMD kernels and
the page's controls). Opened from disk or from any static host it works with no network:
its Content-Security-Policy allows only its own inline script and style (by hash), the
worker it makes from a Blob, and WebAssembly; nothing is ever fetched.

The weights are the ones charrnn's own CPU step uses (`charrnn.model.cpustep.CpuStepper`): gate
rows reordered and sigmoid rows halved, layer 0's input product folded into a per-token
table (or, where that table would be larger, the embedding and W_ih as they are), so the
page repeats the step's arithmetic rather than a second description of the cells. At
float32 its greedy text equals `charrnn sample --temp 0` except where summation order
flips a near-tie.

This module decides what the page holds and renders it; `charrnn.checkpoint.export` writes it.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import html
import json
import math
import re
from importlib import resources

import numpy as np

from ..errors import ConfigError
from ..events import LN2

PRECISIONS = ("float16", "float32")
FORMAT = "charrnn-webpage"
FORMAT_VERSION = 1
MAX_PAGE_FLOATS = 256 * 2**20  # weights the page's engine holds as float32 (1 GiB), within a browser's memory
FLOAT16_MAX = 65504.0


def _asset(name: str) -> str:
    return resources.files("charrnn").joinpath("static", "webpage", name).read_text(encoding="utf-8")


def _asset_bytes(name: str) -> bytes:
    return resources.files("charrnn").joinpath("static", "webpage", name).read_bytes()


def check_options(precision: str | None, quantize: bool) -> str:
    """The precision to store weights in; one sentence for a combination that makes no sense."""
    if precision is not None and precision not in PRECISIONS:
        raise ConfigError(f"Unknown precision {precision!r} for a web page; choose one of {', '.join(PRECISIONS)}.")
    if quantize and precision == "float32":
        raise ConfigError("--quantize stores the weights as int8; it cannot be combined with --precision float32.")
    return "int8" if quantize else precision or "float16"


def _sp_model_type(model: bytes) -> str:
    """"unigram" or "bpe": field 3 of the TrainerSpec (field 2) of a sentencepiece
    ModelProto, read from the protobuf wire format (varints and length-delimited fields)."""

    def fields(buf: bytes):
        i = 0
        while i < len(buf):
            key, i = _varint(buf, i)
            number, wire = key >> 3, key & 7
            if wire == 0:
                value, i = _varint(buf, i)
            elif wire == 2:
                size, i = _varint(buf, i)
                value, i = buf[i : i + size], i + size
            elif wire == 1:
                value, i = None, i + 8
            elif wire == 5:
                value, i = None, i + 4
            else:
                raise ValueError("unsupported wire type")
            yield number, value

    for number, value in fields(model):
        if number == 2:
            for inner, kind in fields(value):
                if inner == 3:
                    return {1: "unigram", 2: "bpe", 3: "word", 4: "char"}.get(kind, f"type {kind}")
    return "unigram"  # sentencepiece's default


def _varint(buf: bytes, i: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        byte = buf[i]
        i += 1
        value |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return value, i


def _vocab_section(vocab) -> dict:
    from ..model.sampling import prime_ids
    from ..text.vocabulary import piece_texts

    out = {"kind": vocab.kind, "pieces": piece_texts(vocab), "banned": list(vocab.banned_ids),
           "start": prime_ids(vocab, "").tolist()}
    if vocab.kind == "sentencepiece":
        from ..text.sentencepiece_vocab import NEWLINE_MARK

        try:
            model_type = _sp_model_type(vocab.model)
        except (ValueError, IndexError):
            raise ConfigError("This sentencepiece vocabulary's model could not be read; export it as .pt or .onnx.") from None
        if model_type not in ("unigram", "bpe"):
            raise ConfigError(f"A web page can encode primes for unigram and BPE sentencepiece vocabularies, "
                              f"not {model_type}.")
        sp = vocab.sp
        pieces = []
        for i in range(vocab.size):
            kind = ("control" if sp.is_control(i) else "unknown" if sp.is_unknown(i) else "byte" if sp.is_byte(i)
                    else "unused" if sp.is_unused(i) else "user" if sp.id_to_piece(i) == NEWLINE_MARK else "normal")
            pieces.append([sp.id_to_piece(i), float(sp.get_score(i)), kind])
        out["sentencepiece"] = {"model_type": model_type, "newline_mark": NEWLINE_MARK, "pieces": pieces}
    elif vocab.kind != "char":
        raise ConfigError(f"A web page cannot encode text for a {vocab.kind} vocabulary; export it as .pt or .onnx.")
    return out


def _arrays(stepper) -> list[tuple[str, np.ndarray]]:
    """The folded weights of a `CpuStepper`, named as the page's engine reads them."""
    out = []
    if stepper.table is not None:
        out.append(("table", stepper.table))
    if stepper.embedding is not None:
        out.append(("embedding", stepper.embedding))
    for layer, parts in enumerate(stepper.layers):
        for name, array in zip(("w", "b", "w_hh", "b_hh"), parts):
            if array is not None:
                out.append((f"layers.{layer}.{name}", array))
    out += [("head.w", stepper.head_weight), ("head.b", stepper.head_bias)]
    return out


def _encode(arrays, precision: str) -> tuple[list[dict], bytes]:
    """Each array in the weights blob: its spec (name, shape, dtype, offsets) and the blob.
    int8 applies to matrices (one symmetric scale per row); an array with values beyond
    float16's range stays float32."""
    specs, parts, offset = [], [], 0

    def put(data: bytes) -> int:
        nonlocal offset
        start = offset
        parts.append(data)
        offset += len(data)
        pad = -offset % 8
        parts.append(b"\0" * pad)
        offset += pad
        return start

    for name, array in arrays:
        array = np.ascontiguousarray(array, dtype=np.float32)
        spec = {"name": name, "shape": list(array.shape)}
        matrix = array.ndim == 2 and name not in ("table", "embedding")
        if precision == "int8" and matrix:
            scale = np.abs(array).max(axis=1) / 127.0  # (rows,)
            scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
            q = np.clip(np.rint(array / scale[:, None]), -127, 127).astype(np.int8)
            spec.update(dtype="int8", offset=put(q.tobytes()), scale_offset=put(scale.tobytes()))
        elif precision != "float32" and np.abs(array).max(initial=0.0) <= FLOAT16_MAX:
            spec.update(dtype="float16", offset=put(array.astype("<f2").tobytes()))
        else:
            spec.update(dtype="float32", offset=put(array.astype("<f4").tobytes()))
        specs.append(spec)
    return specs, b"".join(parts)


def _card(ckpt, precision: str, params: int) -> list[tuple[str, str]]:
    config, p, corpus = ckpt.model_config, ckpt.progress, ckpt.corpus or {}
    rows = [("Model", f"{config.num_layers} × {config.hidden_size} {config.cell.upper()}"
             + (f" ({config.nonlinearity})" if config.cell == "rnn" else "") + f", {params:,} parameters")]
    vocab = ckpt.vocabulary()
    rows.append(("Vocabulary", f"{vocab.size:,} {'characters' if vocab.kind == 'char' else vocab.kind + ' pieces'}"))
    name = corpus.get("name")
    if name:
        chars = corpus.get("chars")
        rows.append(("Trained on", f"{name}" + (f" ({chars:,} characters)" if isinstance(chars, int) else "")))
    if p.best_val_loss is not None and math.isfinite(p.best_val_loss):
        rows.append(("Validation loss", f"{p.best_val_loss / LN2:.3f} bits/char ({p.best_val_loss:.4f} nats/char)"))
    rows.append(("Training", f"{p.step:,} steps, {p.elapsed / 60:.1f} minutes"))
    if ckpt.path is not None:
        try:
            when = datetime.datetime.fromtimestamp(ckpt.path.stat().st_mtime, datetime.timezone.utc)
            rows.append(("Saved", when.strftime("%Y-%m-%d")))
        except OSError:
            pass
    rows.append(("Weights", {"float16": "float16", "float32": "float32", "int8": "int8, one scale per row"}[precision]))
    rows.append(("Exported", datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")))
    return rows


def _script_json(value) -> str:
    """JSON safe inside a <script> element: no "</" or "<!--" can end or confuse it."""
    return json.dumps(value, ensure_ascii=True, separators=(",", ":")).replace("<", "\\u003c")


def _csp_hash(text: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(text.encode("utf-8")).digest()).decode() + "'"


def page_bytes(ckpt, precision: str = "float16", source: str | None = None) -> bytes:
    """The exported page for a loaded checkpoint, as UTF-8 bytes. `precision` is "float16",
    "float32" or "int8" (see `check_options`)."""
    import torch

    from .. import __version__
    from ..model.cpustep import CpuStepper

    config = ckpt.model_config
    if config.cell not in ("lstm", "gru", "rnn"):
        raise ConfigError(f"A web page cannot run a {config.cell} cell.")
    vocab_section = _vocab_section(ckpt.vocabulary())
    net = ckpt.network()
    G = net.layer_weights(0)[0].size(0)
    # Layer 0 reads the smaller of a (V, G) table and the embedding with W_ih.
    inputs = config.vocab_size if config.one_hot else config.embedding_size
    table_limit = 4 * (config.vocab_size * inputs + G * inputs)
    with torch.no_grad():
        stepper = CpuStepper(net, table_limit=table_limit)
    arrays = _arrays(stepper)
    floats = sum(a.size for _, a in arrays)
    if floats > MAX_PAGE_FLOATS:
        raise ConfigError(f"This model has {floats / 1e6:,.0f} million weights; a web page holds at most "
                          f"{MAX_PAGE_FLOATS / 1e6:,.0f} million. Export it as .pt or .onnx instead.")
    specs, blob = _encode(arrays, precision)
    params = sum(t.numel() for t in net.parameters())
    model = {
        "format": FORMAT, "version": FORMAT_VERSION, "charrnn_version": __version__,
        "cell": config.cell, "relu": config.cell == "rnn" and config.nonlinearity == "relu",
        "num_layers": config.num_layers, "hidden_size": config.hidden_size, "vocab_size": config.vocab_size,
        "input_size": max(inputs, config.hidden_size), "precision": precision,
        "arrays": specs, "vocab": vocab_section,
    }
    name = (ckpt.corpus or {}).get("name") or "charrnn model"
    title = f"{name} · charrnn" if isinstance(name, str) else "charrnn model"
    card = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in _card(ckpt, precision, params))
    script, style, engine = _asset("page.js"), _asset("page.css"), _asset("engine.js")
    if "</script" in engine.lower():
        raise AssertionError("engine.js must not contain a closing script tag")
    csp = "; ".join([
        "default-src 'none'", f"script-src {_csp_hash(script)} 'wasm-unsafe-eval'", f"style-src {_csp_hash(style)}",
        "worker-src blob:", "img-src 'none'", "connect-src 'none'", "base-uri 'none'", "form-action 'none'",
    ])
    fill = {
        "csp": csp, "version": html.escape(__version__), "title": html.escape(title), "style": style,
        "cell": html.escape({"lstm": "LSTM", "gru": "GRU", "rnn": "RNN"}[config.cell]), "prime": "",
        "card": card, "model": _script_json(model), "weights": base64.b64encode(blob).decode("ascii"),
        "wasm_fma": base64.b64encode(_asset_bytes("engine-fma.wasm")).decode("ascii"),
        "wasm": base64.b64encode(_asset_bytes("engine.wasm")).decode("ascii"), "engine": engine, "script": script,
    }
    # one pass, so that a value holding "{{...}}" (a corpus name) is never filled in again
    page = re.sub(r"\{\{(\w+)\}\}", lambda m: fill[m.group(1)], _asset("page.html"))
    return page.encode("utf-8")
