"""`charrnn export`: a sampling-only copy of a checkpoint, as a `.pt`, a safetensors file,
an ONNX step graph or a web page (the formats are `charrnn.checkpoint.formats`').

The source is found the way `-c` finds it (`charrnn.paths.find`); the destination is
checked before anything is read (`charrnn.paths.check_destination`), and written atomically.
"""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

from ..errors import CheckpointError, ConfigError
from ..paths import DEFAULT_ROOT, RunDir, check_destination, checked_path, find
from . import formats
from .store import load, save, write_atomic


def export(src: str | os.PathLike, dst: str | os.PathLike, half: bool = False, force: bool = False,
           format: str | None = None, precision: str | None = None, quantize: bool = False,
           root: str | os.PathLike = DEFAULT_ROOT) -> Path:
    """Write a sampling-only copy of a checkpoint (`src` as `-c` takes it: a file, a run
    folder, a run's name under `root`, or "bundled"): no optimizer, hidden or RNG state (so it
    cannot be resumed), and with `half`, float16 weights (half the size; loading turns
    them back into float32). An existing destination is replaced only with `force`, and
    then a symbolic link itself is replaced, never the file it points to.

    `format` ("pt", "safetensors" or "onnx"; default: from the extension of `dst`) is
    described in `charrnn.checkpoint.formats`: a safetensors file loads like a `.pt` export, an ONNX
    file holds the single-step graph for onnxruntime (float32 only), an html file is a web
    page that generates in the browser (`charrnn.checkpoint.webpage`), its weights stored at
    `precision` ("float16", the default, or "float32") or as int8 with `quantize`."""
    dst = checked_path(dst, "destination", "a file to write")
    check_destination(dst, force)
    format = formats.choose_format(dst, format)
    if format == "onnx":
        from . import onnx_export

        if half:
            raise ConfigError("--half applies to .pt and .safetensors exports; an ONNX export keeps float32 weights.")
        onnx_export.require_onnx()
    if format == "html":
        from . import webpage

        if half:
            raise ConfigError("--half applies to .pt and .safetensors exports; a web page stores float16 by default.")
        page_precision = webpage.check_options(precision, quantize)
    elif precision is not None or quantize:
        raise ConfigError(f"--precision and --quantize apply to web page (.html) exports, not {format}.")
    source = find(src, root).path  # a file, a run folder, a run's name under `root`, or "bundled"
    try:
        same = dst.parent.resolve() / dst.name == source.resolve()  # (a link to it is replaced, not followed)
    except RuntimeError:  # Python 3.11 reports a symbolic-link loop this way
        raise CheckpointError(f"Cannot use {dst}: its path runs through a loop of symbolic links.") from None
    if same:
        raise CheckpointError(f"{dst} is the checkpoint being exported; choose another destination.")
    if RunDir.is_checkpoint_name(dst.name) and dst.is_file() and not dst.is_symlink() and RunDir(dst.parent).is_run():
        # an export cannot be resumed: written over a run's own checkpoint it would end the run
        raise CheckpointError(f"{dst} is a training run's own checkpoint; export to another file.")
    ckpt = load(source)
    weights = ckpt.weights
    if half:
        weights = {k: v.half() if v.is_floating_point() else v for k, v in weights.items()}
    slim = replace(ckpt, weights=weights, resume=None, exported_from=str(src))
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise CheckpointError(f"Cannot create the folder of {dst}: {exc.strerror or exc}.") from None
    if format == "safetensors":
        return write_atomic(dst, formats.safetensors_bytes(slim.to_payload()), "export")
    if format == "onnx":
        return write_atomic(dst, onnx_export.onnx_bytes(slim, str(src)), "export")
    if format == "html":
        return write_atomic(dst, webpage.page_bytes(slim, page_precision, str(src)), "export")
    return save(slim, dst)
