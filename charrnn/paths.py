"""Where charrnn's files live and how it writes them: the one owner of file names.

- **A run folder** (`RunDir`) names every file charrnn writes into one (checkpoints,
  snapshots, metrics, samples, the corpus cache, the lock, temporary files), so the code
  knows which files are its own and never touches one it did not write.
- **The checkpoints root** (`DEFAULT_ROOT`, overridden by `ROOT_ENV` or --checkpoints-dir)
  and **discovery**: which folders under it are runs (`run_folders`), which checkpoint a
  command uses when none is named (`find`), and the bundled model (`BUNDLED`).
- **Atomic writes**: every file charrnn writes goes through a temporary file that is
  fsynced and renamed over it (`atomic_file`).

A crash, a kill or a full disk at any moment leaves either the earlier file or the new one
whole, never a torn one, and no temporary file behind (one left by a killed process is
named by `temp_name`, which `RunDir` recognises and clears). Every file charrnn
writes goes through `atomic_file`: checkpoints and exports, the corpus cache, plots, the
CPU probe's cache. A failure is one sentence naming the file and, when the disk is full,
the space it needed and the space left.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Iterator

from .errors import CharrnnError, CheckpointError, ConfigError

BEST = "best.pt"
LATEST = "latest.pt"
DEFAULT_ROOT = "checkpoints"  # where runs live unless --checkpoints-dir or ROOT_ENV says otherwise
ROOT_ENV = "CHARRNN_CHECKPOINTS"
BUNDLED = Path(__file__).resolve().parent / "models" / "tinyshakespeare.pt"  # installed with the package
BUNDLED_NAME = "bundled"  # `-c bundled`, `--init-from bundled`: the model shipped with charrnn


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


# -- the run folder ---------------------------------------------------------------------
class RunDir:
    """The files of one run folder, named in one place.

    charrnn writes only these names into a run folder and deletes or replaces nothing
    else: a user's own files next to them stay untouched.
    """

    BEST = BEST
    LATEST = LATEST
    METRICS = "metrics.jsonl"
    CORPUS_IDS = "corpus.ids"  # the memory-mapped id cache (charrnn.text.corpus)
    CORPUS_META = "corpus.json"
    SAMPLES = "samples.txt"  # --sample-every: what the model wrote as it learned
    LOCK = ".lock"
    _SNAPSHOT = re.compile(r"step-\d{8}\.pt")
    _TEMP = re.compile(r"\.(best\.pt|latest\.pt|step-\d{8}\.pt|corpus\.ids|corpus\.json)\.\d+\.tmp")

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    best = property(lambda self: self.path / self.BEST)
    latest = property(lambda self: self.path / self.LATEST)
    metrics = property(lambda self: self.path / self.METRICS)
    corpus_ids = property(lambda self: self.path / self.CORPUS_IDS)
    corpus_meta = property(lambda self: self.path / self.CORPUS_META)
    lock = property(lambda self: self.path / self.LOCK)
    samples = property(lambda self: self.path / self.SAMPLES)

    def snapshot(self, step: int) -> Path:
        return self.path / f"step-{step:08d}.pt"

    def checkpoint(self, kind: str | int) -> Path:
        """"best", "latest", or a step number (a kept snapshot)."""
        if isinstance(kind, int):
            return self.snapshot(kind)
        return {"best": self.best, "latest": self.latest}[kind]

    @classmethod
    def is_checkpoint_name(cls, name: str) -> bool:
        """Whether a run folder's checkpoint (best, latest or a snapshot) has this name."""
        return name in (cls.BEST, cls.LATEST) or bool(cls._SNAPSHOT.fullmatch(name))

    @classmethod
    def is_own(cls, name: str) -> bool:
        """Whether charrnn writes files of this name into a run folder."""
        return (name in (cls.BEST, cls.LATEST, cls.METRICS, cls.CORPUS_IDS, cls.CORPUS_META, cls.SAMPLES, cls.LOCK)
                or bool(cls._SNAPSHOT.fullmatch(name)) or bool(cls._TEMP.fullmatch(name)))

    def is_run(self) -> bool:
        """Whether the folder is a training run's (it holds the lock or the corpus cache's
        description, which every run writes first), not merely a folder with a best.pt."""
        return self.lock.exists() or self.corpus_meta.exists()

    def refuse_links(self) -> None:
        """A run appends to its metrics and samples; under those names a symbolic link is not
        charrnn's file, and it is refused before training starts rather than written through."""
        for p in (self.metrics, self.samples):
            if p.is_symlink():
                raise ConfigError(f"{p} is a symbolic link, which charrnn does not write through; "
                                  f"remove it to go on.")

    def has_run(self) -> bool:
        return self.latest.exists() or self.best.exists()

    def foreign(self) -> list[Path]:
        """Entries of the folder that charrnn did not write: other names, and anything under
        one of charrnn's names that is not a plain file (a symbolic link, a folder)."""
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.iterdir()
                      if not self.is_own(p.name) or p.is_symlink() or not p.is_file())

    def clear_run(self) -> None:
        """Remove a previous run's checkpoints, snapshots, metrics and samples (not the corpus
        cache, which is checked against the corpus before it is reused, nor anything else)."""
        for p in [self.best, self.latest, self.metrics, self.samples, *self.path.glob("step-*.pt")]:
            if self.is_own(p.name):
                p.unlink(missing_ok=True)

    def own_files(self) -> frozenset[str]:
        """The names of charrnn's files in the folder now."""
        if not self.path.is_dir():
            return frozenset()
        return frozenset(p.name for p in self.path.iterdir() if self.is_own(p.name))

    def discard_setup_files(self, kept: frozenset[str]) -> None:
        """Remove the corpus cache and temporary files that are not in `kept` (what the
        folder held when the run took its lock): what a run's set-up writes, removed when
        that set-up fails. Checkpoints, metrics and samples are never written before
        training starts, so they are not touched here."""
        for name in self.own_files() - kept:
            if name in (self.CORPUS_IDS, self.CORPUS_META) or self._TEMP.fullmatch(name):
                (self.path / name).unlink(missing_ok=True)

    def remove_stale_temp_files(self) -> None:
        """Temporary files left by a process killed mid-save (the caller holds the run lock)."""
        for p in self.path.glob(".*.tmp"):
            if self._TEMP.fullmatch(p.name):
                p.unlink(missing_ok=True)


# -- discovery --------------------------------------------------------------------------
def checked_path(path, what: str, hint: str = "a checkpoint file or run folder") -> Path:
    """`path` as a Path; an empty string (an unset shell variable) is refused, not taken
    as the current folder."""
    if not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"A {what} is named by a path, not by {type(path).__name__}.")
    if not os.fspath(path):
        raise CheckpointError(f"The {what} path is empty; name {hint}.")
    return Path(path)


def resolve(path: str | os.PathLike) -> Path:
    """A checkpoint file, or a run folder's best (else latest) checkpoint."""
    path = checked_path(path, "checkpoint")
    if path.is_dir():
        run = RunDir(path)
        for candidate in (run.best, run.latest):
            if candidate.is_file():
                return candidate
        raise CheckpointError(f"Folder {path} has no {BEST} or {LATEST} checkpoint.")
    if not path.exists():
        raise CheckpointError(f"Checkpoint {path} does not exist.")
    return path


def run_folders(root: str | os.PathLike) -> list[RunDir]:
    """The runs under `root`: its direct subfolders holding a best or latest checkpoint.
    The one rule for what counts as a run there, shared by `charrnn list` (`list_runs`)
    and the default checkpoint of every command (`newest_best`), so a bare `charrnn
    sample` never picks a run that `charrnn list` does not show."""
    root = Path(root)
    if not root.is_dir():
        return []
    runs = (RunDir(folder) for folder in sorted(root.iterdir()) if folder.is_dir())
    return [run for run in runs if run.best.is_file() or run.latest.is_file()]


def newest_best(root: str | os.PathLike) -> Path | None:
    """The most recently written best checkpoint of the runs under `root` (`run_folders`),
    else their most recent latest checkpoint, or None."""
    runs = run_folders(root)
    found = [run.best for run in runs if run.best.is_file()] or [run.latest for run in runs if run.latest.is_file()]
    return max(found, key=lambda p: p.stat().st_mtime_ns, default=None)


@dataclass(frozen=True)
class Found:
    """Which checkpoint a command uses, and whether it fell back to the bundled model."""

    path: Path
    bundled: bool = False


def find(path: str | os.PathLike | None, root: str | os.PathLike = DEFAULT_ROOT) -> Found:
    """An explicit checkpoint or run folder (or the name of a run under `root`, or
    "bundled"), else the newest best.pt under `root`, else the bundled Tiny Shakespeare
    model. A file or folder of the user's always wins over a name."""
    if path is not None:
        if path == BUNDLED_NAME and not Path(path).exists() and not (Path(root) / path).is_dir():
            if not BUNDLED.is_file():
                raise CheckpointError(f"The bundled model is not installed ({BUNDLED} is missing).")
            return Found(BUNDLED, bundled=True)
        if isinstance(path, str) and path and os.sep not in path and not Path(path).exists() \
                and (Path(root) / path).is_dir():
            return Found(resolve(Path(root) / path))  # a run's name: `-c tinyshakespeare` for checkpoints/tinyshakespeare
        return Found(resolve(path))
    found = newest_best(root)
    if found is not None:
        return Found(found)
    if BUNDLED.is_file():
        return Found(BUNDLED, bundled=True)
    raise CheckpointError(
        f"No checkpoint found under {root}/; train one with `charrnn train corpora/tinyshakespeare.txt` or pass -c PATH."
    )


def stands_for_a_stream(path: Path) -> bool:
    """Whether `path` is a link to a process's open file (/dev/stdout -> /proc/self/fd/1):
    a regular file when output is redirected, but replacing the link itself would break the
    system's /dev, so it is never a destination."""
    try:
        return path.is_symlink() and os.readlink(path).startswith("/proc/")
    except OSError:
        return False


def check_destination(dst: Path, force: bool = False) -> None:
    """Refuse a destination that would lose something: an existing file (unless `force`),
    anything that is not a regular file (a device, a folder), a folder that is a file."""
    dst = checked_path(dst, "destination", "a file to write")
    if dst.is_symlink() or dst.exists():
        if dst.exists() and not dst.is_file() or stands_for_a_stream(dst):  # (/dev/stdout is a link)
            raise CheckpointError(f"{dst} exists and is not a regular file; choose another destination.")
        if not force:
            raise CheckpointError(f"{dst} already exists; pass --force to replace it.")
    parent = dst.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise CheckpointError(f"Cannot write {dst}: {parent} is a file, not a folder.")
