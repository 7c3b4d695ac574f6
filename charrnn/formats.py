"""Export formats besides charrnn's own `.pt`: safetensors, ONNX and a web page.

- **safetensors** holds the same checkpoint as a sampling-only `.pt` export, without
  pickle: the weights are safetensors tensors, and every other section of the checkpoint
  payload (model configuration, vocabulary, corpus, training summary) is one JSON string
  in the file's metadata, under the payload's own key. Bytes (a sentencepiece model) are
  written as `{"$base64": "..."}` (charrnn.jsonio). Reading builds the same payload back and hands it to
  `checkpoint.from_payload`, so it goes through the one validation and the migrations.
- **ONNX** holds the single-step graph of `CharRNN.step`, for onnxruntime and other
  runtimes without Python or torch: inputs `input_ids` (int64, (B,)) and the state (`h`,
  and `c` for an LSTM, float32, (num_layers, B, hidden_size) each), outputs `logits`
  ((B, V)) and the new state (`h_out`, `c_out`); B is dynamic. The model's metadata_props
  carry the vocabulary (`vocab`, see `onnx_vocab`) and what a runtime needs to drive the
  graph (`start_ids`, `banned_ids`, `state_inputs`, ...).
- **html** is a self-contained web page that generates in the browser (charrnn.webpage).

This module owns which formats exist and how a file name maps to one; `checkpoint.export`
decides what is written and writes it atomically. It imports torch, safetensors and onnx
only inside the functions that need them (the CLI reads `FORMATS` for `--help`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from .errors import CharrnnError, CheckpointError, ConfigError
from .jsonio import decode_bytes, encode_bytes

FORMATS = {"pt": ".pt", "safetensors": ".safetensors", "onnx": ".onnx", "html": ".html"}  # format -> file extension

# safetensors metadata keys of their own; every other key is a section of the checkpoint payload
ST_MARKER = "charrnn_format"  # value: checkpoint.FORMAT
ST_LAYOUT = "charrnn_layout"  # how the payload is laid out in the metadata (this module's version)
ST_LAYOUT_VERSION = 1
ST_VERSION = "checkpoint_version"  # the payload's schema version (checkpoint.VERSION when written)
ST_ALIASES = "tensor_aliases"  # {"head.weight": "embedding.weight"}: tied weights are stored once
_ST_OWN = {"format", ST_MARKER, ST_LAYOUT, ST_VERSION, ST_ALIASES, "charrnn_version"}

ONNX_FORMAT = "charrnn-onnx-step"
ONNX_FORMAT_VERSION = 1


def choose_format(path: Path, format: str | None = None) -> str:
    """The format to write `path` in: `format` if given, else the one its extension names.
    An explicit format contradicting a known extension, or no format and an unknown
    extension, is one `ConfigError` sentence."""
    by_extension = {ext: name for name, ext in FORMATS.items()}
    implied = by_extension.get(path.suffix.lower())
    if format is not None:
        if format not in FORMATS:
            raise ConfigError(f"Unknown export format {format!r}; choose one of {', '.join(FORMATS)}.")
        if implied is not None and implied != format:
            raise ConfigError(f"{path.name} has the {path.suffix} extension but --format is {format}; "
                              f"name the output {path.stem}{FORMATS[format]} or drop --format.")
        return format
    if implied is None:
        raise ConfigError(f"Cannot tell the format of {path.name} from its extension; name it "
                          f"{', '.join(FORMATS.values())} or pass --format {'|'.join(FORMATS)}.")
    return implied


# -- safetensors ---------------------------------------------------------------------------
def safetensors_bytes(payload: dict) -> bytes:
    """A checkpoint payload (`Checkpoint.to_payload()` of a sampling-only checkpoint) as the
    bytes of a safetensors file.

    safetensors refuses tensors that share memory, so tied weights (the head using the
    embedding's table) are stored once and named in `tensor_aliases`; every stored tensor
    is a contiguous copy."""
    from safetensors.torch import save

    from . import __version__

    tensors, aliases, seen = {}, {}, {}
    for name, tensor in payload["model"].items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape),
               tuple(tensor.stride()), tensor.dtype)
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            tensors[name] = tensor.detach().clone().contiguous()
    metadata = {"format": "pt",  # the safetensors convention: tensors in PyTorch's layout
                ST_MARKER: payload["format"], ST_LAYOUT: str(ST_LAYOUT_VERSION),
                ST_VERSION: str(payload["version"]), "charrnn_version": __version__}
    if aliases:
        metadata[ST_ALIASES] = json.dumps(aliases)
    for key, value in payload.items():
        if key not in ("format", "version", "model"):
            # ASCII JSON: a file name that is not valid UTF-8 (kept by Python as lone surrogates)
            # is escaped and reads back exactly, where raw it could not be stored at all
            metadata[key] = json.dumps(value, default=encode_bytes, ensure_ascii=True, allow_nan=False)
    return save(tensors, metadata=metadata)


def is_safetensors(path: Path) -> bool:
    """Whether the file starts like a safetensors file: an 8-byte little-endian header
    length that fits the file, then the JSON header's "{". (A `.pt` file is a zip
    archive, starting "PK".)"""
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
        size = os.path.getsize(path)
    except OSError:
        return False
    return len(head) == 9 and head[8:9] == b"{" and 2 <= int.from_bytes(head[:8], "little") <= size - 8


def read_safetensors(path: Path, device="cpu") -> dict:
    """The checkpoint payload stored in a safetensors export, for `checkpoint.from_payload`.

    Only safetensors' own reader touches the file (a JSON header and raw tensor bytes):
    nothing is unpickled."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt", device=str(device)) as fh:
            metadata = fh.metadata() or {}
            tensors = {name: fh.get_tensor(name) for name in fh.keys()}
    except Exception:  # safetensors reports a damaged header or short file with several types
        raise CheckpointError(f"Checkpoint {path} is truncated or corrupt.") from None
    if metadata.get(ST_MARKER) is None:
        raise CheckpointError(f"{path} is a safetensors file but not a charrnn export (it has no charrnn metadata).")
    layout = metadata.get(ST_LAYOUT, "")
    if not re.fullmatch(r"[0-9]{1,9}", layout) or int(layout) > ST_LAYOUT_VERSION:
        raise CheckpointError(f"{path} was written by a newer charrnn (safetensors layout {layout!r}); "
                              f"upgrade charrnn to read it.")
    try:
        payload = {key: json.loads(value, object_hook=decode_bytes)
                   for key, value in metadata.items() if key not in _ST_OWN}
        for name, target in json.loads(metadata.get(ST_ALIASES, "{}")).items():
            tensors[name] = tensors[target]
        version = int(metadata.get(ST_VERSION, ""))
    except (ValueError, TypeError, KeyError, AttributeError, RecursionError):
        raise CheckpointError(f"Checkpoint {path} is damaged or was edited: its metadata is not valid.") from None
    return {**payload, "format": metadata[ST_MARKER], "version": version, "model": tensors}


# -- ONNX -----------------------------------------------------------------------------------
def require_onnx() -> None:
    """Raise one sentence naming the extra to install when the ONNX exporter's packages
    (onnx, and onnxscript for torch's exporter) are missing."""
    missing = []
    for module in ("onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise CharrnnError(f"ONNX export needs {' and '.join(missing)}; install them with "
                           f"`pip install 'charrnn-cli[onnx]'`.")


def onnx_vocab(vocab) -> list:
    """The text of each id, for the ONNX metadata `vocab`: a string, or for an id that
    stands for one byte of a longer UTF-8 character (sentencepiece's byte fallback) that
    byte as an integer 0-255. Joining the UTF-8 bytes of the strings and the integers'
    bytes and decoding gives the text; ids a sampler must never produce (`banned_ids`,
    sentencepiece's control pieces) are ""."""
    out: list = []
    for piece in vocab.piece_bytes():
        try:
            out.append(piece.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(piece[0] if len(piece) == 1 else piece.decode("utf-8", "surrogatepass"))
    return out


def _step_module(net):
    """`CharRNN.step` as a module with one tensor per argument, which torch.export traces:
    (input_ids (B,), h, c) -> (logits (B, V), h_out, c_out) for an LSTM, without c otherwise."""
    import torch

    class LSTMStep(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, input_ids, h, c):
            logits, (h_out, c_out) = self.net.step(input_ids, (h, c))
            return logits, h_out, c_out

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, input_ids, h):
            logits, (h_out,) = self.net.step(input_ids, (h,))
            return logits, h_out

    return (LSTMStep() if net.config.cell == "lstm" else Step()).eval()


def float32_net(ckpt):
    """The checkpoint's network in float32 and eval mode, for an export to trace or fold."""
    from .model import CharRNN

    net = CharRNN(ckpt.model_config)
    try:
        net.load_state_dict({k: v.float() for k, v in ckpt.weights.items()})
    except RuntimeError:
        raise CheckpointError(f"Checkpoint {ckpt.path} has weights that do not fit its model configuration.") from None
    return net.eval()


def onnx_bytes(ckpt, source: str | None = None) -> bytes:
    """The single-step graph of a checkpoint's model as the bytes of an ONNX file, float32,
    with the vocabulary and the graph's interface in its metadata_props.

    Exported with torch's torch.export-based exporter (`dynamo=True`, the default since
    torch 2.9; the TorchScript one is deprecated), which gives a plain graph of
    Gather/Gemm/Sigmoid/Tanh nodes with a symbolic batch dimension. The per-node debugging
    metadata it records (source paths, stack traces) is dropped."""
    import contextlib
    import io
    import logging
    import warnings

    require_onnx()
    import onnx
    import torch

    if torch.__version__ < "2.6":
        raise CharrnnError(f"ONNX export needs torch 2.6 or newer (this is torch {torch.__version__}).")

    from . import __version__
    from .sampling import prime_ids

    config = ckpt.model_config
    net = float32_net(ckpt)
    vocab = ckpt.vocabulary()
    states = ["h", "c"] if config.cell == "lstm" else ["h"]
    batch = torch.export.Dim("batch")
    example_batch = 2  # not 1: torch.export would specialise a size-1 dimension
    example = (torch.zeros(example_batch, dtype=torch.long), *net.init_state(example_batch))
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    try:
        # The exporter logs and warns about things that do not concern this graph (e.g.
        # torchvision not installed); the library never prints.
        logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                _step_module(net), example, dynamo=True, verbose=False, optimize=True,
                input_names=["input_ids", *states], output_names=["logits", *[f"{s}_out" for s in states]],
                dynamic_shapes={"input_ids": {0: batch}, **{s: {1: batch} for s in states}},
            )
    except Exception as exc:  # an exporter failure is charrnn's bug, but still one sentence
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CharrnnError(f"torch could not export the model to ONNX: {reason}") from None
    finally:
        logger.setLevel(level)
    model = program.model_proto
    for node in model.graph.node:
        del node.metadata_props[:]
    p = ckpt.progress
    props = {
        "charrnn_format": ONNX_FORMAT,
        "charrnn_format_version": str(ONNX_FORMAT_VERSION),
        "charrnn_version": __version__,
        "vocab": json.dumps(onnx_vocab(vocab), ensure_ascii=False),
        "vocab_kind": vocab.kind,
        "vocab_size": str(vocab.size),
        "banned_ids": json.dumps(list(vocab.banned_ids)),
        "start_ids": json.dumps(prime_ids(vocab, "").tolist()),  # what charrnn primes with by default
        "cell": config.cell,
        "nonlinearity": config.nonlinearity,
        "num_layers": str(config.num_layers),
        "hidden_size": str(config.hidden_size),
        "state_inputs": json.dumps(states),
        "state_outputs": json.dumps([f"{s}_out" for s in states]),
        "corpus": json.dumps(ckpt.corpus, default=encode_bytes),  # ASCII JSON: file names need not be UTF-8
        "best_val_loss": json.dumps(p.best_val_loss),  # nats per character
        "step": str(p.step),
    }
    if source is not None:
        props["exported_from"] = source.encode("utf-8", "backslashreplace").decode("utf-8")
    onnx.helper.set_model_props(model, props)
    model.doc_string = (
        "charrnn single-step graph: input_ids int64 (B,) and the state "
        + ", ".join(states) + f" float32 ({config.num_layers}, B, {config.hidden_size}) -> logits float32 (B, "
        f"{config.vocab_size}) and the new state {', '.join(s + '_out' for s in states)}. Feed the state outputs "
        "back as the next state inputs (zeros to start). metadata 'vocab' gives the text of each id."
    )
    return model.SerializeToString()
