"""How charrnn writes a file: through a temporary file that is fsynced and renamed over it.

A crash, a kill or a full disk at any moment leaves either the earlier file or the new one
whole, never a torn one, and no temporary file behind (one left by a killed process is
named by `temp_name`, which `checkpoint.RunDir` recognises and clears). Every file charrnn
writes goes through `atomic_file`: checkpoints and exports, the corpus cache, plots, the
CPU probe's cache. A failure is one sentence naming the file and, when the disk is full,
the space it needed and the space left.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import CharrnnError


def temp_name(path: Path) -> Path:
    """The temporary file a write of `path` goes through (hidden, per process). A long
    name is shortened, so that any name a file system takes has a temporary file too."""
    name = path.name if len(path.name.encode("utf-8", "surrogateescape")) <= 200 else path.name[:100]
    return path.with_name(f".{name}.{os.getpid()}.tmp")


def megabytes(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


@contextlib.contextmanager
def atomic_file(path: Path, what: str = "file", error: type[CharrnnError] = CharrnnError,
                size: int | None = None) -> Iterator[BinaryIO]:
    """An open binary file to write `path` through; when the block ends it is fsynced and
    renamed over `path`, and the folder is fsynced (best effort). `what` names the file in
    the one-sentence `error` a failure raises; `size`, when known, is reported with a full disk."""
    path = Path(path)
    noun = what.removeprefix("the ")  # "the corpus cache" -> "the previous corpus cache"
    kept = f"; the previous {noun} is untouched" if path.exists() else ""
    tmp = temp_name(path)
    try:
        with open(tmp, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            try:
                free = f"{megabytes(shutil.disk_usage(path.parent).free)} are free"
            except OSError:
                free = "the free space is unknown"
            needs = f"the {noun} needs {megabytes(size)}, " if size is not None else ""
            reason = f"no space left in {path.parent} ({needs}{free})"
        else:
            reason = exc.strerror or str(exc)
        raise error(f"Could not write {what} {path}: {reason}{kept}.") from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    try:
        dir_fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass  # directory fsync is best effort (unsupported on some filesystems)


def write_atomic(path: Path, data, what: str = "file", error: type[CharrnnError] = CharrnnError) -> Path:
    """Write `data` (bytes or a buffer) to `path` through `atomic_file`."""
    with atomic_file(path, what, error, size=len(data)) as fh:
        fh.write(data)
    return Path(path)
