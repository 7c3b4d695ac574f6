"""One training process per run folder.

An advisory `fcntl.flock` on `<run>/.lock`: the kernel drops it when the owner exits for
any reason (even `kill -9`), so a crashed run never leaves a stale lock behind.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ..errors import ConfigError
from ..paths import RunDir

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: no advisory locks, no protection
    fcntl = None



# Taking the lock starts again when the lock file or its folder is removed under us (by a
# run whose set-up failed, cleaning up); a few times at most.
ATTEMPTS = 5


class RunLock:
    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / RunDir.LOCK
        self._fh = None
        self.created = False  # whether acquire() made the lock file (a new run folder has none)
        self.made_folders: list[Path] = []  # the folders acquire() made, innermost first

    def acquire(self) -> "RunLock":
        """Take the lock or raise `ConfigError` naming the process that holds it."""
        folder = self.path.parent
        for _ in range(ATTEMPTS):
            try:
                self._make_folders()
                self.created = not self.path.exists() and not self.path.is_symlink()
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
                fh = os.fdopen(fd, "r+")
            except FileNotFoundError as exc:
                if not folder.is_dir():  # removed between mkdir and open by a failed run's clean-up
                    continue
                self.remove_folders()
                raise ConfigError(f"Cannot use run folder {folder}: {exc.strerror or exc}.") from None
            except OSError as exc:
                self.remove_folders()
                why = (f"its {RunDir.LOCK} is a symbolic link, which charrnn does not follow" if exc.errno == errno.ELOOP
                       else exc.strerror or str(exc))
                raise ConfigError(f"Cannot use run folder {folder}: {why}.") from None
            if fcntl is not None:
                try:
                    fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    fh.seek(0)
                    owner = fh.read().strip() or "unknown"
                    fh.close()
                    raise ConfigError(
                        f"Another charrnn train (pid {owner}) is using {folder}; wait for it "
                        f"to finish or choose another folder with --out."
                    ) from None
                if not self._is_current(fh):  # locked a file that was removed meanwhile: take the new one
                    fh.close()
                    continue
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
            self._fh = fh
            return self
        self.remove_folders()
        raise ConfigError(f"Cannot take the lock of run folder {folder}: its lock file keeps being removed.")

    def _make_folders(self) -> None:
        """Make the run folder and any missing parents one by one, noting each one made here.
        The kernel resolves every step (`..`, symbolic links), so only folders this process
        really created are noted, whatever the path's spelling."""
        folder = self.path.parent
        for f in (*reversed(folder.parents), folder):
            try:
                os.mkdir(f)
            except OSError as exc:
                if f.is_dir():  # there already (some systems answer EISDIR for "/", not EEXIST)
                    continue
                if f.is_symlink():
                    why = f"{f} is a symbolic link to nothing"
                elif f.exists():
                    why = f"{f} is a file, not a folder"
                else:
                    why = exc.strerror or str(exc)
                self.remove_folders()
                raise ConfigError(f"Cannot use run folder {folder}: {why}.") from None
            self.made_folders.insert(0, f)

    def _is_current(self, fh) -> bool:
        """Whether the open lock file is still the one at the lock's path."""
        try:
            here = os.stat(self.path)
        except OSError:
            return False
        held = os.fstat(fh.fileno())
        return (here.st_dev, here.st_ino) == (held.st_dev, held.st_ino)

    def remove(self) -> None:
        """Delete the lock file made by acquire() while still holding it. Another process
        that opened it meanwhile finds, once it has the lock, that the file is gone and
        takes the lock again on a new one (`_is_current`)."""
        if self._fh is not None and self.created:
            try:
                self.path.unlink()
            except OSError:
                pass

    def remove_folders(self) -> None:
        """Remove the folders acquire() made, innermost first, while they are empty."""
        for f in self.made_folders:
            try:
                f.rmdir()
            except OSError:
                continue  # not empty: it stays (a folder above it then stays too)
        self.made_folders = []

    def release(self) -> None:
        if self._fh is not None:
            self._fh.close()  # closing drops the flock
            self._fh = None

    def __enter__(self):
        return self.acquire()

    def __exit__(self, *exc):
        self.release()
        return False
