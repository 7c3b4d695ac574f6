"""Export formats besides charrnn's own `.pt`: safetensors, ONNX and a web page.

- **safetensors** holds the same checkpoint as a sampling-only `.pt` export, without
  pickle: the weights are safetensors tensors, and every other section of the checkpoint
  payload (model configuration, vocabulary, corpus, training summary) is one JSON string
  in the file's metadata, under the payload's own key. Bytes (a sentencepiece model) are
  written as `{"$base64": "..."}` (charrnn.jsonio). Reading builds the same payload back and hands it to
  `checkpoint.from_payload`, so it goes through the one validation and the migrations.
- **ONNX** holds the single-step graph of `CharRNN.step` (charrnn.checkpoint.onnx_export).
- **html** is a self-contained web page that generates in the browser (charrnn.checkpoint.webpage).

This module owns which formats exist and how a file name maps to one; `charrnn.checkpoint.export`
decides what is written and writes it atomically. It imports torch and safetensors only
inside the functions that need them (the CLI reads `FORMATS` for `--help`).
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..errors import CheckpointError, ConfigError
from ..jsonio import decode_bytes, encode_bytes

FORMATS = {"pt": ".pt", "safetensors": ".safetensors", "onnx": ".onnx", "html": ".html"}  # format -> file extension

# safetensors metadata keys of their own; every other key is a section of the checkpoint payload
ST_MARKER = "charrnn_format"  # value: checkpoint.FORMAT
ST_LAYOUT = "charrnn_layout"  # how the payload is laid out in the metadata (this module's version)
ST_LAYOUT_VERSION = 1
ST_VERSION = "checkpoint_version"  # the payload's schema version (checkpoint.VERSION when written)
ST_ALIASES = "tensor_aliases"  # {"head.weight": "embedding.weight"}: tied weights are stored once
_ST_OWN = {"format", ST_MARKER, ST_LAYOUT, ST_VERSION, ST_ALIASES, "charrnn_version"}



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

    from .. import __version__

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
