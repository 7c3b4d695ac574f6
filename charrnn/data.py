"""Corpus reading and the truncated-BPTT stream layout.

The training ids are cut into B contiguous streams, one per batch row, and read in
consecutive windows of T characters, so the hidden state left by window k is exactly the
state window k+1 needs (char-rnn / pytorch examples `batchify`)::

    ids:      a b c d e f g h i j k l m n o p q r s t u v w x   (N = 24, B = 3)
    stream 0: a b c d e f g h          window 0 = cols 0..T-1, window 1 = cols T..2T-1
    stream 1: i j k l m n o p          y is x shifted one to the left (the next char)
    stream 2: q r s t u v w x
"""

from __future__ import annotations

import io
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .errors import CorpusError

_SNIFF_BYTES = 8192


@dataclass(frozen=True)
class Corpus:
    """Decoded text and a short name for it (the file or folder stem, or 'stdin')."""

    text: str
    name: str
    source: str
    files: int = 1


def _decode(data: bytes, where: str, encoding: str, errors: str) -> str:
    if encoding.lower().replace("_", "-") in ("utf-8", "utf8"):
        encoding = "utf-8-sig"  # a BOM is metadata, not text: never put it in the vocabulary
    try:
        return data.decode(encoding, errors)
    except UnicodeDecodeError as exc:
        raise CorpusError(
            f"{where} is not valid {exc.encoding.replace('-sig', '').upper()} text "
            f"(byte offset {exc.start}); pass --encoding to name its encoding or "
            f"--errors replace to substitute bad bytes."
        ) from None
    except LookupError:
        raise CorpusError(f"Unknown text encoding {encoding!r}.") from None


def _looks_binary(data: bytes) -> int:
    """Offset of the first NUL byte in the head of `data`, or -1 for text."""
    return data.find(b"\x00", 0, _SNIFF_BYTES)


def _read_file(path: Path, encoding: str, errors: str) -> str:
    try:
        data = path.read_bytes()
    except PermissionError:
        raise CorpusError(f"Cannot read {path}: permission denied.") from None
    except OSError as exc:
        raise CorpusError(f"Cannot read {path}: {exc.strerror or exc}.") from None
    nul = _looks_binary(data)
    if nul >= 0 and errors == "strict":
        raise CorpusError(
            f"{path} looks like a binary file (NUL byte at byte offset {nul}); pass "
            f"--encoding to name its encoding or --errors replace to read it anyway."
        )
    return _decode(data, str(path), encoding, errors)


def text_files(folder: Path) -> list[Path]:
    """Regular, non-hidden files under `folder` that look like text, in sorted path order."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if name.startswith("."):
                continue
            path = Path(root) / name
            try:
                with path.open("rb") as fh:
                    head = fh.read(_SNIFF_BYTES)
            except OSError:
                continue
            if b"\x00" not in head:
                found.append(path)
    return sorted(found, key=lambda p: p.relative_to(folder).parts)


def normalise_newlines(text: str, newline: str) -> str:
    """'keep' leaves line endings alone; 'lf' turns CRLF and lone CR into LF."""
    if newline == "lf":
        return text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def read_corpus(
    source: str | os.PathLike,
    *,
    encoding: str = "utf-8",
    errors: str = "strict",
    newline: str = "keep",
    stdin: io.BufferedIOBase | None = None,
) -> Corpus:
    """Read a corpus from a file, a folder (its text files, sorted, joined) or '-' (stdin).

    Raises `CorpusError` with a one-sentence explanation for anything unusable: missing
    path, binary or undecodable data, a folder without text files, empty or blank text.
    """
    src = str(source)
    if src == "-":
        stream = stdin if stdin is not None else sys.stdin.buffer
        data = stream.read()
        if isinstance(data, str):
            data = data.encode("utf-8")
        nul = _looks_binary(data)
        if nul >= 0 and errors == "strict":
            raise CorpusError(f"Standard input looks binary (NUL byte at byte offset {nul}).")
        text, name, files = _decode(data, "Standard input", encoding, errors), "stdin", 1
    else:
        path = Path(src)
        if not path.exists():
            raise CorpusError(f"Corpus {src} does not exist.")
        if path.is_dir():
            paths = text_files(path)
            if not paths:
                raise CorpusError(f"Folder {src} contains no text files.")
            parts = []
            for p in paths:
                part = _read_file(p, encoding, errors)
                if part and not part.endswith("\n"):
                    part += "\n"
                parts.append(part)
            text, files = "".join(parts), len(paths)
        else:
            text, files = _read_file(path, encoding, errors), 1
        name = path.resolve().stem or "corpus"
    if not text:
        raise CorpusError(f"Corpus {'from stdin' if src == '-' else src} is empty.")
    if not text.strip():
        raise CorpusError(f"Corpus {'from stdin' if src == '-' else src} contains only whitespace.")
    return Corpus(normalise_newlines(text, newline), name, src, files)


def split_ids(ids: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous split: the last `val_fraction` of the ids is validation (nanoGPT's split)."""
    n_val = int(len(ids) * val_fraction)
    return ids[: len(ids) - n_val], ids[len(ids) - n_val :]


def as_streams(ids: np.ndarray, batch_size: int) -> torch.Tensor:
    """Lay `ids` out as B contiguous streams, dropping the remainder. # (B, L)

    No copy is made: the result is a view of `ids` (which may be a memory map).
    """
    length = len(ids) // batch_size
    if length < 2:
        raise CorpusError(
            f"The text has {len(ids)} tokens, too few for {batch_size} streams; "
            f"lower --batch-size or use a longer corpus."
        )
    arr = np.asarray(ids[: batch_size * length])
    if arr.dtype == np.uint16:  # torch has no uint16 arithmetic on every build; widen lazily
        arr = arr.astype(np.int32)
    return torch.from_numpy(arr).view(batch_size, length)


def num_windows(streams: torch.Tensor, seq_len: int) -> int:
    """Windows of T in one pass over the streams (each needs T+1 columns for its targets)."""
    return (streams.size(1) - 1) // seq_len


def windows(
    streams: torch.Tensor, seq_len: int, start: int = 0
) -> Iterator[tuple[int, torch.Tensor, torch.Tensor]]:
    """Yield (k, x, y) for consecutive windows k >= start; x, y are (B, T) views, y = x shifted by one."""
    for k in range(start, num_windows(streams, seq_len)):
        t = k * seq_len
        yield k, streams[:, t : t + seq_len], streams[:, t + 1 : t + seq_len + 1]


def eval_windows(streams: torch.Tensor, seq_len: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Windows covering every target column once, the last one possibly shorter than T."""
    last = streams.size(1) - 1
    for t in range(0, last, seq_len):
        end = min(t + seq_len, last)
        yield streams[:, t:end], streams[:, t + 1 : end + 1]
