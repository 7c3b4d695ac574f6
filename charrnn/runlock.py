"""One training process per run folder.

An advisory `fcntl.flock` on `<run>/.lock`: the kernel drops it when the owner exits for
any reason (even `kill -9`), so a crashed run never leaves a stale lock behind.
"""

from __future__ import annotations

import os
from pathlib import Path

from .errors import ConfigError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, no protection
    fcntl = None

LOCK_NAME = ".lock"


class RunLock:
    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_NAME
        self._fh = None
        self.created = False  # whether acquire() made the lock file (a new run folder has none)

    def acquire(self) -> "RunLock":
        """Take the lock or raise `ConfigError` naming the process that holds it."""
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.created = not self.path.exists()
            fh = open(self.path, "a+")
        except OSError as exc:
            raise ConfigError(f"Cannot use run folder {self.path.parent}: {exc.strerror or exc}.") from None
        if fcntl is not None:
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                fh.seek(0)
                owner = fh.read().strip() or "unknown"
                fh.close()
                raise ConfigError(
                    f"Another charrnn train (pid {owner}) is using {self.path.parent}; wait for it "
                    f"to finish or choose another folder with --out."
                ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._fh = fh
        return self

    def remove(self) -> None:
        """Delete the lock file while still holding the lock (so no other process can have
        taken it in between): a run whose set-up failed leaves no lock file behind."""
        if self._fh is not None:
            try:
                self.path.unlink()
            except OSError:
                pass

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing drops the flock
            self._fh = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
