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

import codecs
import hashlib
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from .errors import CorpusError
from .vocab import CharCounter, CharVocab

_SNIFF_BYTES = 8192
_READ_BYTES = 1 << 24  # streaming reads: 16 MB of the corpus at a time
CACHE_IDS = "corpus.ids"
CACHE_META = "corpus.json"
_CACHE_VERSION = 1


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
        paths, name = _source_files(src)
        if Path(src).is_dir():
            parts = []
            for p in paths:
                part = _read_file(p, encoding, errors)
                if part and not part.endswith("\n"):
                    part += "\n"
                parts.append(part)
            text = "".join(parts)
        else:
            text = _read_file(paths[0], encoding, errors)
        files = len(paths)
    if not text:
        raise CorpusError(f"Corpus {'from stdin' if src == '-' else src} is empty.")
    if not text.strip():
        raise CorpusError(f"Corpus {'from stdin' if src == '-' else src} contains only whitespace.")
    return Corpus(normalise_newlines(text, newline), name, src, files)


# -- streaming ingest ------------------------------------------------------------------------
@dataclass(frozen=True)
class EncodedCorpus:
    """A corpus as ids (an in-memory array or a read-only memory map) plus what describes it."""

    ids: np.ndarray
    vocab: CharVocab
    name: str
    source: str
    chars: int
    files: int
    sha256: str  # of the decoded, normalised text (UTF-8), so it identifies the training data

    def info(self) -> dict:
        return {"name": self.name, "source": self.source, "chars": self.chars, "files": self.files, "sha256": self.sha256}


def _source_files(source: str) -> tuple[list[Path], str]:
    path = Path(source)
    if not path.exists():
        raise CorpusError(f"Corpus {source} does not exist.")
    if path.is_dir():
        files = text_files(path)
        if not files:
            raise CorpusError(f"Folder {source} contains no text files.")
        return files, path.resolve().name or "corpus"
    return [path], path.resolve().stem or "corpus"


def _text_blocks(files: list[Path], encoding: str, errors: str, newline: str, folder: bool) -> Iterator[str | bytes]:
    """Decoded text of the files, joined as `read_corpus` joins them, in blocks of bounded size.

    A block of pure ASCII may come as `bytes` (which the vocabulary reads as code points)."""
    enc = "utf-8-sig" if encoding.lower().replace("_", "-") in ("utf-8", "utf8") else encoding
    try:
        decoder_cls = codecs.getincrementaldecoder(enc)
    except LookupError:
        raise CorpusError(f"Unknown text encoding {encoding!r}.") from None
    ascii_fast = enc in ("utf-8-sig", "ascii", "latin-1", "iso-8859-1", "cp1252")
    for path in files:
        decoder = decoder_cls(errors)
        offset, last, held = 0, "", ""
        try:
            fh = path.open("rb")
        except OSError as exc:
            raise CorpusError(f"Cannot read {path}: {exc.strerror or exc}.") from None
        with fh:
            while True:
                data = fh.read(_READ_BYTES)
                if offset == 0 and errors == "strict":
                    nul = _looks_binary(data)
                    if nul >= 0:
                        raise CorpusError(
                            f"{path} looks like a binary file (NUL byte at byte offset {nul}); pass "
                            f"--encoding to name its encoding or --errors replace to read it anyway."
                        )
                pending = len(decoder.getstate()[0])  # bytes held back from the previous block
                bom = 3 if offset == 0 and enc == "utf-8-sig" and data.startswith(codecs.BOM_UTF8) else 0
                if data and ascii_fast and not pending and not bom and not held and data.isascii():
                    # Pure ASCII needs no decoding: its bytes are its code points.
                    offset += len(data)
                    last = chr(data[-1])
                    yield data if newline == "keep" else normalise_newlines(data.decode("ascii"), newline)
                    continue
                try:
                    text = decoder.decode(data, final=not data)
                except UnicodeDecodeError as exc:
                    raise CorpusError(
                        f"{path} is not valid {encoding.upper()} text (byte offset "
                        f"{offset - pending + bom + max(exc.start, 0)}); pass --encoding to name "
                        f"its encoding or --errors replace to substitute bad bytes."
                    ) from None
                offset += len(data)
                if newline == "lf":
                    text = held + text
                    held = ""
                    if data and text.endswith("\r"):
                        text, held = text[:-1], "\r"  # its \n may start the next block
                    text = normalise_newlines(text, newline)
                if text:
                    last = text[-1]
                    yield text
                if not data:
                    break
        if folder and last and last != "\n":
            yield "\n"  # files of a folder are joined on line boundaries


def _fingerprint(files: list[Path], options: dict) -> dict:
    """Cheap identity of the corpus files: size, mtime and hashes of head and tail."""
    entries = []
    for path in files:
        st = path.stat()
        with path.open("rb") as fh:
            head = fh.read(1 << 16)
            fh.seek(max(0, st.st_size - (1 << 16)))
            tail = fh.read()
        entries.append([str(path.resolve()), st.st_size, st.st_mtime_ns,
                        hashlib.sha256(head + tail).hexdigest()])
    return {"version": _CACHE_VERSION, "files": entries, **options}


def _check_text(chars: int, has_text: bool, source: str) -> None:
    if chars == 0:
        raise CorpusError(f"Corpus {source} is empty.")
    if not has_text:
        raise CorpusError(f"Corpus {source} contains only whitespace.")


def encode_corpus(
    source: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    vocab: CharVocab | None = None,
    encoding: str = "utf-8",
    errors: str = "strict",
    newline: str = "keep",
    stdin: io.BufferedIOBase | None = None,
) -> EncodedCorpus:
    """Read and encode a corpus without ever holding more than a block of its text.

    Files and folders are read in two streaming passes: the first counts characters
    (building the vocabulary) and hashes the text, the second writes the ids into
    `cache_dir/corpus.ids`, which is then memory-mapped. The cache is reused while the
    files keep their size, mtime and head/tail hashes. Standard input is read into memory.
    With `vocab` given (fine-tuning), the text is encoded with it instead of a new one.
    """
    src = str(source)
    if src == "-":
        corpus = read_corpus(src, encoding=encoding, errors=errors, newline=newline, stdin=stdin)
        vocab = vocab or CharVocab.from_text(corpus.text)
        ids = vocab.encode(corpus.text)
        digest = hashlib.sha256(corpus.text.encode("utf-8", "surrogatepass")).hexdigest()
        return EncodedCorpus(ids, vocab, "stdin", "-", len(corpus.text), 1, digest)

    files, name = _source_files(src)
    options = {"encoding": encoding, "errors": errors, "newline": newline,
               "vocab": None if vocab is None else "".join(vocab.chars)}
    ids_path = meta_path = None
    if cache_dir is not None:
        ids_path, meta_path = Path(cache_dir) / CACHE_IDS, Path(cache_dir) / CACHE_META
        fingerprint = _fingerprint(files, options)
        cached = _load_cache(ids_path, meta_path, fingerprint)
        if cached is not None:
            ids, meta = cached
            return EncodedCorpus(ids, CharVocab(list(meta["chars"])), name, src, meta["count"], len(files), meta["sha256"])

    counter, digest, has_text = CharCounter(), hashlib.sha256(), False
    for block in _text_blocks(files, encoding, errors, newline, Path(src).is_dir()):
        counter.add(block)
        digest.update(block if isinstance(block, bytes) else block.encode("utf-8", "surrogatepass"))
        has_text = has_text or not block.isspace()
    _check_text(counter.chars, has_text, src)
    vocab = vocab or counter.vocab()
    count = counter.chars

    if ids_path is None:
        ids = np.empty(count, dtype=vocab.dtype)
    else:
        Path(cache_dir).mkdir(parents=True, exist_ok=True)
        tmp = ids_path.with_name(f".{CACHE_IDS}.{os.getpid()}.tmp")
        ids = np.lib.format.open_memmap(tmp, mode="w+", dtype=vocab.dtype, shape=(count,))
    pos = 0
    for block in _text_blocks(files, encoding, errors, newline, Path(src).is_dir()):
        part = vocab.encode(block)
        ids[pos : pos + len(part)] = part
        pos += len(part)
    if ids_path is None:
        return EncodedCorpus(ids, vocab, name, src, count, len(files), digest.hexdigest())
    ids.flush()
    del ids
    os.replace(tmp, ids_path)
    meta = {**fingerprint, "chars": "".join(vocab.chars), "count": count, "sha256": digest.hexdigest()}
    meta_tmp = meta_path.with_name(f".{CACHE_META}.{os.getpid()}.tmp")
    meta_tmp.write_text(json.dumps(meta), encoding="utf-8")
    os.replace(meta_tmp, meta_path)
    ids, _ = _load_cache(ids_path, meta_path, fingerprint)
    return EncodedCorpus(ids, vocab, name, src, count, len(files), digest.hexdigest())


def _load_cache(ids_path: Path, meta_path: Path, fingerprint: dict):
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if {k: meta.get(k) for k in fingerprint} != fingerprint:
            return None
        ids = np.load(ids_path, mmap_mode="c")  # copy-on-write: writable for torch, file untouched
        if len(ids) != meta["count"]:
            return None
        return ids, meta
    except (OSError, ValueError, KeyError):
        return None


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
    return torch.from_numpy(ids[: batch_size * length]).view(batch_size, length)


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
