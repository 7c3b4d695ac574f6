"""The only code that writes or reads checkpoint files.

A checkpoint is one self-describing `.pt` file holding plain Python types and tensors
only, so it loads with `torch.load(weights_only=True)`: loading never runs code from the
file. Saves go to a temporary file in the same folder that is fsynced and then
`os.replace`d over the target, so a crash at any moment leaves the previous file whole.
"""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError

FORMAT = "charrnn-checkpoint"
VERSION = 1
BEST = "best.pt"
LATEST = "latest.pt"


def save(payload: dict[str, Any], path: str | os.PathLike) -> Path:
    """Write `payload` atomically to `path` (temp file + fsync + rename)."""
    path = Path(path)
    payload = {"format": FORMAT, "version": VERSION, **payload}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as fh:
            torch.save(payload, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise CheckpointError(
            f"Could not write checkpoint {path}: {exc.strerror or exc}; the previous checkpoint is untouched."
        ) from None
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass  # directory fsync is best effort (unsupported on some filesystems)
    return path


def load(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Read and validate a checkpoint; tensors land on `map_location` (CPU by default)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"Refusing to load {path}: it contains Python objects other than plain data "
            f"and tensors, so it is not a charrnn checkpoint and may be unsafe."
        ) from None
    except Exception:  # torch reports damaged archives with many exception types
        raise CheckpointError(f"Checkpoint {path} is truncated or corrupt.") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a charrnn checkpoint.")
    version = data.get("version")
    if not isinstance(version, int) or version > VERSION:
        raise CheckpointError(
            f"Checkpoint {path} has format version {version}, newer than this charrnn "
            f"understands ({VERSION}); upgrade charrnn to read it."
        )
    return data


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run folder's best (else latest) checkpoint."""
    path = Path(path)
    if path.is_dir():
        for name in (BEST, LATEST):
            if (path / name).is_file():
                return path / name
        raise CheckpointError(f"Folder {path} has no {BEST} or {LATEST} checkpoint.")
    if not path.exists():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    return path


def newest_best(root: str | os.PathLike) -> Path | None:
    """The most recently written best checkpoint anywhere under `root`, or None."""
    root = Path(root)
    if not root.is_dir():
        return None
    found = [p for p in root.rglob(BEST) if p.is_file()]
    if not found:
        found = [p for p in root.rglob(LATEST) if p.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns, default=None)


SAMPLING_KEYS = ("model_config", "model", "vocab", "train_config", "corpus", "step", "epoch", "elapsed",
                 "best_val_loss", "val_loss", "history", "device", "num_parameters", "chars_per_token")


def export(src: str | os.PathLike, dst: str | os.PathLike, half: bool = False) -> Path:
    """Write a sampling-only copy of a checkpoint: no optimizer, hidden or RNG state (so it
    cannot be resumed), and with `half`, float16 weights (half the size; loading turns
    them back into float32)."""
    data = load(resolve(src))
    slim = {k: data[k] for k in SAMPLING_KEYS if k in data}
    if half:
        slim["model"] = {k: v.half() if v.is_floating_point() else v for k, v in slim["model"].items()}
    slim["exported_from"] = str(src)
    dst = Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    return save(slim, dst)
