"""Corpus reading, the id cache, and the truncated-BPTT stream layout.

One reader turns a file, a folder or standard input into decoded text blocks of bounded
size (`_blocks`): `read_corpus` joins them, and `encode_corpus` streams them through any
vocabulary into a memory-mapped id cache, so both see the same text by construction.

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
import functools
import hashlib
import io
import itertools
import os
import select
import shutil
import stat
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence, TypeVar

import numpy as np
import torch

from .. import jsonio, paths
from ..config import TOKENIZERS, CorpusOptions, TrainConfig
from ..errors import CharrnnError, ConfigError, CorpusError
from ..paths import RunDir
from .characters import CharCounter
from .vocabulary import Vocabulary, VocabularyBuilder, vocab_from_dict

_SNIFF_BYTES = 8192
_READ_BYTES = 1 << 24  # streaming reads: 16 MB of the corpus at a time
_CACHE_VERSION = 3  # 2: raw ids written through the file, any vocabulary kind; 3: bytes as {"$base64"} (charrnn.jsonio)
VAL_FRACTION = TrainConfig.val_fraction  # the default validation tail (one fact, in charrnn.config)
# Codecs in which a pure-ASCII byte string decodes to the same code points: no decoding needed.
_ASCII_CODECS = frozenset({"utf-8-sig", "ascii", "iso8859-1", "cp1252"})
_ASCII_SPACE = bytes(c for c in range(128) if chr(c).isspace())  # what str.isspace() calls space

Blocks = Iterator["str | bytes"]  # decoded text; a block of pure ASCII may come as bytes


@dataclass(frozen=True)
class Corpus:
    """Decoded text and a short name for it (the file or folder stem, or 'stdin')."""

    text: str
    name: str
    source: str
    files: int = 1


@dataclass(frozen=True)
class _Source:
    """A corpus source resolved once: what to read and what to call it."""

    spec: str  # as given: a path, or "-" for standard input
    name: str
    files: tuple[Path, ...]  # () for standard input
    folder: bool
    pipe: bool = False  # a named pipe (FIFO): read once, as a stream, like standard input

    @property
    def stdin(self) -> bool:
        return self.spec == "-"

    @property
    def stream(self) -> bool:
        """Whether the source can be read only once (standard input or a named pipe)."""
        return self.stdin or self.pipe

    @property
    def count(self) -> int:
        return max(1, len(self.files))

    def described(self) -> str:
        return "from stdin" if self.stdin else self.spec


def is_run_folder(folder: Path) -> bool:
    """Whether `folder` is a charrnn run folder: its checkpoints, metrics and id cache are
    never part of a corpus, even when the run lives inside the folder it trains on."""
    return RunDir(folder).is_run()


def text_files(folder: Path) -> list[Path]:
    """Regular, non-hidden files under `folder` that look like text, in sorted path order.

    Named pipes, devices and sockets are skipped (reading one could wait for ever), and so
    are charrnn's own run folders."""
    found = []
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and not is_run_folder(Path(root) / d))
        if is_run_folder(Path(root)):
            continue
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = Path(root) / name
            if not path.is_file():  # follows links; False for a FIFO, a device or a socket
                continue
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


def _source_files(source: str) -> tuple[list[Path], str]:
    if not source:  # an unset shell variable: never read the current folder in its place
        raise CorpusError("The corpus path is empty; name a file, a folder, or - for standard input.")
    path = Path(source)
    if not path.exists():
        raise CorpusError(f"Corpus {source} does not exist.")
    if not path.is_dir() and not path.is_file() and not path.is_fifo():
        raise CorpusError(f"Corpus {source} is a device or socket, not a text file or folder.")
    if path.is_dir():
        files = text_files(path)
        if not files and is_run_folder(path):
            raise CorpusError(f"Folder {source} is a charrnn run folder, whose files are never read as a corpus; "
                              f"keep the run elsewhere (--out) or name the text files to train on.")
        if not files:
            raise CorpusError(f"Folder {source} contains no text files.")
        return files, path.resolve().name or "corpus"
    return [path], path.resolve().stem or "corpus"


SHIPPED = Path(__file__).resolve().parent.parent / "corpora"  # corpora installed with the package


def shipped_corpus(source: str | os.PathLike) -> Path | None:
    """The copy installed with charrnn of a corpus that is not at `source`: the README's
    `charrnn train corpora/tinyshakespeare.txt` then works from any folder after `pip
    install`. A file that exists is always the user's own; only the name is matched."""
    spec = str(source)
    if spec == "-" or os.path.lexists(spec):
        return None
    name = Path(spec).name
    for candidate in (SHIPPED / name, SHIPPED / f"{name}.txt"):
        if candidate.is_file():
            return candidate
    return None


def check_source(source: str | os.PathLike) -> None:
    """Raise `CorpusError` now for a corpus path that cannot be read at all (missing, or a
    folder without text files), before a caller creates anything for it."""
    if str(source) != "-":
        _source_files(str(source))


def _resolve(source: str | os.PathLike) -> _Source:
    spec = str(source)
    if spec == "-":
        return _Source(spec, "stdin", (), False)
    files, name = _source_files(spec)
    return _Source(spec, name, tuple(files), Path(spec).is_dir(), Path(spec).is_fifo())


# -- the one reader ---------------------------------------------------------------------------
def _codec(encoding: str) -> codecs.CodecInfo:
    try:
        info = codecs.lookup(encoding)
    except (LookupError, TypeError):  # TypeError: not a string at all (from the API)
        info = None
    if info is None or not getattr(info, "_is_text_encoding", True):  # e.g. rot13, base64
        raise CorpusError(f"Unknown text encoding {encoding!r}.")
    if info.name == "utf-8":
        return codecs.lookup("utf-8-sig")  # a BOM is metadata, not text: never put it in the vocabulary
    return info


def stream_reads(stream, where: str, size: int = 0) -> Iterator[bytes]:
    """`_reads` for other readers of files and pipes (the sampler's prime): reads of up
    to `size` bytes (default `_READ_BYTES`)."""
    return _reads(stream, where, size or _READ_BYTES)


def _reads(stream, where: str, size: int = _READ_BYTES) -> Iterator[bytes]:
    """Raw reads of up to `size` bytes; a text stream's str is taken as UTF-8.

    A pipe, terminal or socket is read with `read1` once `select` says data is there, so
    the main thread never sits in a read that only data can end: the kernel may hand
    Ctrl-C to any of the process's threads (torch's and OpenBLAS's workers among them),
    and only a main thread that returns to Python runs the handler."""
    waiting = _is_stream(stream)
    read = getattr(stream, "read1", stream.read) if waiting else stream.read
    while True:
        try:
            if waiting:
                while not select.select([stream], [], [], _POLL_SECONDS)[0]:
                    pass  # back in Python between waits: a pending signal's handler runs here
            data = read(size)
        except OSError as exc:
            raise CorpusError(f"Cannot read {where}: {exc.strerror or exc}.") from None
        if isinstance(data, str):
            data = data.encode("utf-8")
        if not data:
            return
        yield data


_POLL_SECONDS = 0.2


def _is_stream(stream) -> bool:
    """Whether reading `stream` can wait for data for ever (a pipe, terminal or socket, as
    opposed to a regular file or an in-memory buffer)."""
    try:
        mode = os.fstat(stream.fileno()).st_mode
    except (AttributeError, OSError, ValueError):
        return False
    return not stat.S_ISREG(mode) and not stat.S_ISBLK(mode)


def _decoded(reads: Iterable[bytes], where: str, codec: codecs.CodecInfo, errors: str, newline: str) -> Blocks:
    """The text of one file (or of standard input) in blocks: the binary check on its
    head, decoding with byte offsets in errors, and newline normalisation that holds a
    final CR back until the next read shows whether an LF follows it."""
    decoder = codec.incrementaldecoder(errors)
    ascii_fast = codec.name in _ASCII_CODECS
    wide = codec.name.startswith(("utf-16", "utf-32"))  # NUL bytes are part of their text
    offset = 0  # bytes read so far
    held = ""  # with newline="lf": a CR that ended the previous block
    for data in itertools.chain(reads, [b""]):
        final = not data
        if offset < _SNIFF_BYTES and errors == "strict" and not wide:
            nul = data.find(b"\x00", 0, _SNIFF_BYTES - offset)
            if nul >= 0:
                what = "binary data" if where == "Standard input" else "a binary file"
                raise CorpusError(
                    f"{where} looks like {what} (NUL byte at byte offset {offset + nul}); pass "
                    f"--encoding to name its encoding or --errors replace to read it anyway."
                )
        pending, flag = decoder.getstate()  # bytes held back from the previous read
        if ascii_fast and data and not pending and data.isascii():
            # Pure ASCII needs no decoding: its bytes are its code points (and, holding no
            # BOM, it settles that the text does not start with one).
            decoder.setstate((b"", 0))
            offset += len(data)
            if newline == "keep" or (not held and b"\r" not in data):
                yield data
                continue
            text = data.decode("ascii")
        else:
            try:
                if final and pending and flag and codec.name == "utf-8-sig":
                    text = pending.decode("utf-8", errors)  # a text of 1-2 bytes that start a BOM
                else:
                    text = decoder.decode(data, final=final)
            except UnicodeDecodeError as exc:
                bom = 3 if codec.name == "utf-8-sig" and flag and (pending + data).startswith(codecs.BOM_UTF8) else 0
                raise CorpusError(
                    f"{where} is not valid {exc.encoding.upper()} text (byte offset "
                    f"{offset - len(pending) + bom + max(exc.start, 0)}); pass --encoding to name "
                    f"its encoding or --errors replace to substitute bad bytes."
                ) from None
            offset += len(data)
        if newline == "lf":
            text, held = held + text, ""
            if not final and text.endswith("\r"):
                text, held = text[:-1], "\r"  # its LF may start the next block
            text = normalise_newlines(text, newline)
        if text:
            yield text


def _blocks(src: _Source, encoding: str, errors: str, newline: str, stdin: io.BufferedIOBase | None) -> Blocks:
    """The decoded, normalised text of a source in blocks of bounded size. Each file is
    normalised on its own; the files of a folder are joined with a newline added after
    any whose text does not end in one."""
    codec = _codec(encoding)
    if src.stdin:
        stream = stdin if stdin is not None else sys.stdin.buffer
        yield from _decoded(_reads(stream, "standard input"), "Standard input", codec, errors, newline)
        return
    for path in src.files:
        try:
            fh = path.open("rb")
        except PermissionError:
            raise CorpusError(f"Cannot read {path}: permission denied.") from None
        except OSError as exc:
            raise CorpusError(f"Cannot read {path}: {exc.strerror or exc}.") from None
        last = ""
        with fh:
            for block in _decoded(_reads(fh, str(path)), str(path), codec, errors, newline):
                last = block[-1:] if isinstance(block, str) else chr(block[-1])
                yield block
        if src.folder and last not in ("", "\n"):
            yield "\n"  # files of a folder are joined on line boundaries


def _blank(block: str | bytes) -> bool:
    return block.isspace() if isinstance(block, str) else not block.strip(_ASCII_SPACE)


def _check_text(chars: int, has_text: bool, src: _Source) -> None:
    if chars == 0:
        raise CorpusError(f"Corpus {src.described()} is empty.")
    if not has_text:
        raise CorpusError(f"Corpus {src.described()} contains only whitespace.")


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
    src = _resolve(source)
    blocks = _blocks(src, encoding, errors, newline, stdin)
    text = "".join(b.decode("ascii") if isinstance(b, bytes) else b for b in blocks)
    _check_text(len(text), not text.isspace(), src)
    return Corpus(text, src.name, src.spec, src.count)


# -- encoding into the id cache ---------------------------------------------------------------
@dataclass(frozen=True)
class EncodedCorpus:
    """A corpus as ids (an in-memory array or a read-only memory map) plus what describes it."""

    ids: np.ndarray
    vocab: Vocabulary
    name: str
    source: str
    chars: int
    files: int
    sha256: str  # of the decoded, normalised text (UTF-8), so it identifies the training data

    @functools.cached_property
    def byte_fallback(self) -> tuple[int, int]:
        """Distinct characters spelled as UTF-8 byte pieces (sentencepiece's rare characters)
        and their occurrences; (0, 0) for characters. Counted once, from the ids."""
        return self.vocab.byte_fallback(self.ids)

    def info(self) -> dict:
        info = {"name": self.name, "source": self.source, "chars": self.chars, "files": self.files, "sha256": self.sha256}
        chars, occurrences = self.byte_fallback
        if chars:
            info["byte_fallback"] = {"chars": chars, "occurrences": occurrences}
        return info


def _builder(options: CorpusOptions) -> VocabularyBuilder:
    """What builds a new vocabulary of `options.tokenizer` from the first streaming pass."""
    if options.tokenizer == "char":
        return CharCounter()
    if options.tokenizer == "sentencepiece":
        from .sentencepiece_vocab import SentencePieceBuilder

        return SentencePieceBuilder(options.vocab_size, options.sp_model_type)
    raise ConfigError(f"Unknown tokenizer {options.tokenizer!r}; choose one of {', '.join(TOKENIZERS)}.")


def _tokenizer_key(options: CorpusOptions) -> dict:
    """The options that decide which vocabulary a corpus gets (the cache's, without `vocab`)."""
    if options.tokenizer == "sentencepiece":
        return {"tokenizer": options.tokenizer, "vocab_size": options.vocab_size, "sp_model_type": options.sp_model_type}
    return {"tokenizer": options.tokenizer}


def _vocab_sha256(vocab: Vocabulary) -> str:
    return hashlib.sha256(jsonio.dumps(vocab.to_dict(), sort_keys=True).encode("ascii")).hexdigest()


def _fingerprint(files: Sequence[Path], options: CorpusOptions) -> dict:
    """Cheap identity of the corpus files (size, mtime and hashes of head and tail) and of
    how they are read; which vocabulary encoded them is checked separately (`_load_cache`)."""
    entries = []
    for path in files:
        try:
            st = path.stat()
            with path.open("rb") as fh:
                head = fh.read(1 << 16)
                fh.seek(max(0, st.st_size - (1 << 16)))
                tail = fh.read()
        except OSError as exc:
            raise CorpusError(f"Cannot read {path}: {exc.strerror or exc}.") from None
        entries.append([str(path.resolve()), st.st_size, st.st_mtime_ns,
                        hashlib.sha256(head + tail).hexdigest()])
    return {"version": _CACHE_VERSION, "files": entries, "encoding": options.encoding,
            "errors": options.errors, "newline": options.newline}


def _load_cache(cache: Path, fingerprint: dict, vocab: Vocabulary | None,
                options: CorpusOptions) -> tuple[np.ndarray, Vocabulary, dict] | None:
    """The cached ids, memory-mapped copy-on-write (writable for torch, the file untouched),
    if they were made from the same files, read the same way, with the given vocabulary
    (or, without one, by the same tokenizer options); None otherwise."""
    try:
        meta = jsonio.loads((cache / RunDir.CORPUS_META).read_text(encoding="utf-8"))
        if {k: meta.get(k) for k in fingerprint} != fingerprint:
            return None
        if vocab is not None and meta.get("vocab_sha256") != _vocab_sha256(vocab):
            return None
        if vocab is None and meta.get("tokenizer") != _tokenizer_key(options):
            return None
        vocab = vocab if vocab is not None else vocab_from_dict(meta["vocab"])
        dtype, count = np.dtype(meta["dtype"]), int(meta["count"])
        path = cache / RunDir.CORPUS_IDS
        if dtype != vocab.dtype or count <= 0 or path.stat().st_size != count * dtype.itemsize:
            return None
        ids = np.memmap(path, dtype=dtype, mode="c", shape=(count,))
        if int(ids.max()) >= vocab.size:  # damaged or edited: an id the vocabulary lacks
            return None
        return ids, vocab, meta
    except (OSError, ValueError, KeyError, TypeError, AttributeError, CharrnnError):
        return None  # unreadable, stale or foreign: rebuilt


def _check_space(cache: Path, needed: int) -> None:
    """Refuse before writing when the cache cannot fit (with room to spare for checkpoints)."""
    folder = cache
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        return
    if free < needed:
        raise CorpusError(f"Could not write the corpus cache in {cache}: it needs {needed / 1e6:,.1f} MB and "
                          f"{free / 1e6:,.1f} MB are free.")


def _write_ids(cache: Path, parts: Iterable[np.ndarray]) -> int:
    """Write the ids through the file into a temporary file, then move it into place, and
    return how many there are. Not through a writable memory map: the count is not known
    in advance, and a full disk must raise OSError (here `CorpusError`), not SIGBUS."""
    count = 0
    try:
        cache.mkdir(parents=True, exist_ok=True)
        (cache / RunDir.CORPUS_META).unlink(missing_ok=True)  # never let old metadata describe new ids
    except OSError as exc:
        raise CorpusError(f"Could not write the corpus cache in {cache}: {exc.strerror or exc}.") from None
    with paths.atomic_file(cache / RunDir.CORPUS_IDS, "the corpus cache", CorpusError) as fh:
        for part in parts:
            fh.write(np.ascontiguousarray(part).data)
            count += len(part)
    return count


def _write_meta(cache: Path, meta: dict) -> None:
    paths.write_atomic(cache / RunDir.CORPUS_META, jsonio.dumps(meta).encode("utf-8"), "the corpus cache", CorpusError)


def encode_corpus(
    source: str | os.PathLike,
    *,
    cache_dir: str | os.PathLike | None = None,
    vocab: Vocabulary | None = None,
    options: CorpusOptions = CorpusOptions(),
    stdin: io.BufferedIOBase | None = None,
    verify: Callable[[str], None] | None = None,
    extend: bool = False,
) -> EncodedCorpus:
    """Read and encode a corpus with any vocabulary kind, never holding more than a block
    of its text (beyond what a tokenizer trains on).

    A first streaming pass counts and hashes the text and, without `vocab`, builds one by
    `options.tokenizer` (characters are counted; sentencepiece trains on the text, or an
    evenly spread sample of its lines). A second pass encodes it: into memory, or with
    `cache_dir` through the file `cache_dir/corpus.ids`, which is then memory-mapped and
    reused while the files keep their size, mtime and head/tail hashes and the reading and
    tokenizer options (or the given vocabulary) stay the same. Standard input is read
    once into memory and goes through the same passes, without a cache.

    `verify` is called with the text's sha256 after the first pass, before anything is
    encoded or written (a resumed run refuses another text there, its cache untouched).

    With `extend` (fine-tuning), `vocab` is a base: characters of the text it lacks are
    appended to it (`vocab.extender()`, counted in the first pass) instead of refused. A
    kind without `extender` (sentencepiece, whose byte pieces encode any text) stays as it is.
    """
    src = _resolve(source)
    if vocab is None:
        builder = _builder(options)  # an unknown tokenizer fails before any reading
    else:
        builder = vocab.extender() if extend and hasattr(vocab, "extender") else None

    def read() -> Blocks:
        return _blocks(src, options.encoding, options.errors, options.newline, stdin)

    if src.stream:
        held = list(read())  # standard input or a pipe can be read only once
        read = lambda: iter(held)  # noqa: E731
        cache_dir = None
    sizes = _sizes(src)
    cache = fingerprint = None
    if cache_dir is not None:
        cache = Path(cache_dir)
        fingerprint = _fingerprint(src.files, options)
        cached = _load_cache(cache, fingerprint, vocab, options)
        if cached is not None:
            ids, vocab, meta = cached
            if verify is not None:
                verify(meta["sha256"])
            return EncodedCorpus(ids, vocab, src.name, src.spec, meta["chars"], src.count, meta["sha256"])
    encoded = _encode(src, read, vocab, builder, options, cache, fingerprint, verify)
    if _sizes(src) != sizes:
        changed = next(p for p, a, b in zip(src.files, sizes, _sizes(src)) if a != b)
        raise CorpusError(f"{changed} changed while it was being read; train on a copy that nothing is writing to.")
    return encoded


def _sizes(src: _Source) -> list[int]:
    """Sizes of the source's files (to notice a file that grows while it is read)."""
    if src.stream:
        return []
    out = []
    for path in src.files:
        try:
            out.append(path.stat().st_size)
        except OSError:
            out.append(-1)
    return out


def _encode(src: _Source, read: Callable[[], Blocks], vocab: Vocabulary | None, builder: VocabularyBuilder | None,
            options: CorpusOptions, cache: Path | None, fingerprint: dict | None,
            verify: Callable[[str], None] | None = None) -> EncodedCorpus:
    """The one `EncodedCorpus` builder. The first pass over `read()` checks, counts and
    hashes the text (and feeds `builder`, which makes the vocabulary when none is given);
    the second writes the ids, into memory or through the cache file."""
    digest, chars, has_text = hashlib.sha256(), 0, False
    for block in read():
        digest.update(block if isinstance(block, bytes) else block.encode("utf-8", "surrogatepass"))
        chars += len(block)
        has_text = has_text or not _blank(block)
        if builder is not None:
            builder.add(block)
    _check_text(chars, has_text, src)
    if verify is not None:
        verify(digest.hexdigest())
    tokenizer = _tokenizer_key(options) if vocab is None else None  # a vocabulary made from these options alone
    if builder is not None:
        vocab = builder.build(read)
    if cache is None:
        parts = list(vocab.encode_blocks(read()))
        ids = np.concatenate(parts) if parts else np.zeros(0, dtype=vocab.dtype)
        return EncodedCorpus(ids, vocab, src.name, src.spec, chars, src.count, digest.hexdigest())
    if (vocab.char_lengths() == 1).all():  # one id per character: the size is known before writing
        _check_space(cache, chars * vocab.dtype.itemsize)
    count = _write_ids(cache, vocab.encode_blocks(read()))
    _write_meta(cache, {**fingerprint, "tokenizer": tokenizer,
                        "vocab_sha256": _vocab_sha256(vocab), "vocab": vocab.to_dict(),
                        "dtype": vocab.dtype.str, "count": count, "chars": chars, "sha256": digest.hexdigest()})
    ids = np.memmap(cache / RunDir.CORPUS_IDS, dtype=vocab.dtype, mode="c", shape=(count,))
    return EncodedCorpus(ids, vocab, src.name, src.spec, chars, src.count, digest.hexdigest())


# -- split and stream layout ------------------------------------------------------------------
S = TypeVar("S", np.ndarray, str)


def _split_tail(seq: S, fraction: float) -> tuple[S, S]:
    n_val = int(len(seq) * fraction)
    return seq[: len(seq) - n_val], seq[len(seq) - n_val :]


def split_ids(ids: np.ndarray, val_fraction: float = VAL_FRACTION) -> tuple[np.ndarray, np.ndarray]:
    """Contiguous split: the last `val_fraction` of the ids is validation (nanoGPT's split)."""
    return _split_tail(ids, val_fraction)


def split_text(text: str, fraction: float = VAL_FRACTION) -> tuple[str, str]:
    """The same contiguous split of a text (same rounding as `split_ids`): what benchmarks
    score as held-out text when they read a corpus themselves."""
    return _split_tail(text, fraction)


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


def eval_windows(streams: torch.Tensor, seq_len: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Windows covering every target column once, the last one possibly shorter than T."""
    last = streams.size(1) - 1
    for t in range(0, last, seq_len):
        end = min(t + seq_len, last)
        yield streams[:, t:end], streams[:, t + 1 : end + 1]
