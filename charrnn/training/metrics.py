"""metrics.jsonl: one JSON object per training log step and per evaluation.

The one owner of that file's format: the trainer appends rows through `MetricsLog`, and
`charrnn plot` reads them back with `read_rows`. Rows survive resumes (the file is only
appended to), and JSON has no NaN or infinity, so those are written as null.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


def _finite(x):
    return x if not isinstance(x, float) or math.isfinite(x) else None


def open_to_append(path: str | os.PathLike):
    """A run file opened for appending text, never through a symbolic link: a link named
    like charrnn's file is not charrnn's, and what it points to must not change (ELOOP)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | getattr(os, "O_NOFOLLOW", 0), 0o666)
    return os.fdopen(fd, "a", encoding="utf-8")


class MetricsLog:
    """Appends rows to a metrics file; a write that fails (full disk) is dropped, since a
    full disk is reported when the next checkpoint is saved."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = None if path is None else Path(path)

    def write(self, row: dict) -> None:
        if self.path is None:
            return
        try:
            with open_to_append(self.path) as fh:
                fh.write(json.dumps({k: _finite(v) for k, v in row.items()}) + "\n")
        except OSError:
            pass


def read_rows(path: str | os.PathLike) -> tuple[list[dict], int]:
    """The rows of a metrics file and the number of lines that could not be read (a line
    cut short by a crash, or edited by hand)."""
    rows, bad = [], 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except ValueError:
                bad += 1
                continue
            if isinstance(row, dict):
                rows.append(row)
            else:
                bad += 1
    return rows, bad
