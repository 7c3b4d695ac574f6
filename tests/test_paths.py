"""charrnn.paths: every file charrnn writes goes through a temporary file and a rename."""

import errno
import io

import pytest

from charrnn import paths
from charrnn.errors import CharrnnError


def test_a_write_replaces_the_file_whole_and_leaves_no_temporary_file(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    paths.write_atomic(path, b"new")
    assert path.read_bytes() == b"new" and [p.name for p in tmp_path.iterdir()] == ["out.bin"]


def test_a_name_as_long_as_the_file_system_allows_is_written(tmp_path):
    path = tmp_path / ("x" * 250 + ".png")
    paths.write_atomic(path, b"png")
    assert path.read_bytes() == b"png" and len(list(tmp_path.iterdir())) == 1


def test_a_failure_keeps_the_old_file_and_says_so_in_one_sentence(tmp_path, monkeypatch):
    path = tmp_path / "corpus.json"
    path.write_bytes(b"old")

    class Full(io.FileIO):
        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(paths, "open", lambda p, mode: Full(p, mode), raising=False)
    with pytest.raises(CharrnnError, match=r"^Could not write the corpus cache .*corpus\.json: no space left in .* \(the "
                                           r"corpus cache needs 0\.0 MB, [\d,.]+ MB are free\); the previous corpus cache "
                                           r"is untouched\.$"):
        paths.write_atomic(path, b"new", "the corpus cache")
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["corpus.json"]


def test_an_error_inside_the_block_removes_the_temporary_file(tmp_path):
    path = tmp_path / "x.pt"
    with pytest.raises(KeyboardInterrupt):
        with paths.atomic_file(path) as fh:
            fh.write(b"half")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []
