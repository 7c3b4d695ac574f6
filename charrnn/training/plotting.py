"""Loss curves of a run, as data and as a PNG (matplotlib is an optional extra)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from .. import paths
from ..checkpoint import store as checkpoint
from ..errors import CharrnnError
from ..events import LN2
from ..paths import RunDir, stands_for_a_stream
from .metrics import read_rows


@dataclass(frozen=True)
class Curves:
    """Loss curves in bits per character by step, and how many damaged metrics lines
    were left out."""

    train: list[tuple[float, float]]
    validation: list[tuple[float, float]]
    skipped: int = 0

    def as_dict(self) -> dict[str, list[tuple[float, float]]]:
        return {"train": self.train, "validation": self.validation}


def loss_curves(run: str | os.PathLike) -> Curves:
    """Train and validation loss in bits per character by step, from a run folder's
    metrics file, or from a checkpoint's stored history."""
    if not os.fspath(run):  # an unset shell variable, not the current folder
        raise CharrnnError("The run path is empty; name a run folder or a checkpoint file.")
    run = Path(run)
    metrics = RunDir(run).metrics if run.is_dir() else None
    train, val, skipped = [], [], 0
    if metrics is not None and metrics.is_file():
        try:
            rows, skipped = read_rows(metrics)
        except OSError as exc:
            raise CharrnnError(f"Cannot read {metrics}: {exc.strerror or exc}.") from None
        for row in rows:
            step, event = row.get("step"), row.get("event")
            loss = row.get("train_loss" if event == "train" else "val_loss")
            if not isinstance(step, (int, float)) or not isinstance(loss, (int, float)):
                continue
            if event == "train":
                train.append((step, loss / LN2))
            elif event == "eval":
                val.append((step, loss / LN2))
    else:
        progress = checkpoint.load(paths.resolve(run)).progress
        train = [(s, v / LN2) for s, v in progress.history_train]
        val = [(s, v / LN2) for s, v in progress.history_val]
    if not train and not val:
        raise CharrnnError(f"{run} has no recorded losses to plot.")
    return Curves(train, val, skipped)


def save_png(curves: Curves, path: str | os.PathLike, title: str = "", force: bool = False) -> Path:
    """Draw the curves with matplotlib (headless) into `path`; its extension names the
    format (png, svg, pdf, ...). An existing file is replaced only with `force`, and then
    through a temporary file renamed over it: a symbolic link there is replaced itself,
    never the file it points to."""
    if not os.fspath(path):
        raise CharrnnError("The picture's path is empty; name a file such as loss.png.")
    path = Path(path)
    if path.exists() and not path.is_file() or stands_for_a_stream(path):  # (/dev/stdout is a link)
        raise CharrnnError(f"{path} exists and is not a regular file; choose another file for the picture.")
    if (path.exists() or path.is_symlink()) and not force:
        raise CharrnnError(f"{path} already exists; pass --force to replace it.")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise CharrnnError(
            "Writing a picture needs matplotlib: pip install 'charrnn-cli[plot]', or use --terminal."
        ) from None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    formats = fig.canvas.get_supported_filetypes()
    if path.suffix.lower().lstrip(".") not in formats:
        plt.close(fig)
        raise CharrnnError(f"Cannot write a picture as {path.name}: use one of the extensions {', '.join('.' + f for f in sorted(formats))}.")
    curves = curves.as_dict()
    for name, style in (("train", dict(lw=1, alpha=0.7)), ("validation", dict(lw=2, marker="o", ms=3))):
        pts = curves.get(name) or []
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], label=name, **style)
    ax.set_xlabel("step")
    ax.set_ylabel("bits per character")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    try:
        with paths.atomic_file(path, "the plot", CharrnnError) as fh:
            fig.savefig(fh, format=path.suffix.lower().lstrip("."))
    finally:
        plt.close(fig)
    return path
