"""The interface every vocabulary kind implements, and serialisation by kind.

A vocabulary turns text into ids and back. Characters (`charrnn.text.characters.CharVocab`) and
sentencepiece pieces (`charrnn.text.sentencepiece_vocab.SentencePieceVocab`) both implement `Vocabulary`, so
the reader, the trainer and the sampler never ask which kind they hold. Each kind registers
itself under its `kind` name; a stored vocabulary (a checkpoint's `to_dict()`) comes back
through `vocab_from_dict`, which imports the module of a kind only when one is loaded
(importing sentencepiece takes a while, and a character model never needs it).

This module is the one both kinds import, so they never import each other.
"""

from __future__ import annotations

import importlib
from typing import Callable, ClassVar, Iterable, Iterator, Protocol, TypeVar, runtime_checkable

import numpy as np

from ..errors import VocabularyError

# kind -> module defining it, imported on first use by `vocab_from_dict`
_MODULES = {"char": ".characters", "sentencepiece": ".sentencepiece_vocab"}
_KINDS: dict[str, type] = {}

V = TypeVar("V", bound=type)


@runtime_checkable
class Vocabulary(Protocol):
    """Text <-> ids, with what a trainer and a sampler need to know about the ids."""

    kind: ClassVar[str]  # the registry key, stored in `to_dict()` as "kind"

    @property
    def size(self) -> int:
        """Number of ids (V)."""

    @property
    def dtype(self) -> np.dtype:
        """Smallest integer dtype holding every id (`id_dtype(size)`)."""

    def encode(self, text: str) -> np.ndarray:
        """Ids of `text` as an array of `dtype`."""

    def encode_blocks(self, blocks: Iterable[str | bytes]) -> Iterator[np.ndarray]:
        """Ids of text arriving in blocks (ASCII blocks may be `bytes`), equal to `encode`
        of the joined text: the streaming encoder of `charrnn.text.corpus`."""

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a sequence of ids."""

    def unknown_chars(self, text: str) -> tuple[tuple[str, ...], int]:
        """Distinct characters of `text` the vocabulary cannot encode, and their count."""

    def piece_bytes(self) -> list[bytes]:
        """UTF-8 bytes each id stands for (what a streaming decoder emits)."""

    def char_lengths(self) -> np.ndarray:
        """Characters each id stands for, so losses per character compare across kinds. # (V,)"""

    @property
    def banned_ids(self) -> tuple[int, ...]:
        """Ids a sampler must never produce."""

    def byte_fallback(self, ids: np.ndarray) -> tuple[int, int]:
        """Distinct characters `ids` spell as UTF-8 byte pieces because they have no piece of
        their own (sentencepiece's rare characters), and how many times they occur."""

    def to_dict(self) -> dict:
        """Plain types (str, bytes) stored in checkpoints, with "kind" naming the class."""

    @classmethod
    def from_dict(cls, data: dict) -> "Vocabulary":
        """The inverse of `to_dict`."""

    def preview(self, limit: int = ...) -> str:
        """A printable one-line preview for `charrnn info`."""


class VocabularyBuilder(Protocol):
    """Builds a new vocabulary from a corpus read in streaming blocks (`charrnn.text.corpus`)."""

    def add(self, block: str | bytes) -> None:
        """See one block of the corpus (the first pass, which also counts and hashes it)."""

    def build(self, again: Callable[[], Iterable[str | bytes]]) -> Vocabulary:
        """The vocabulary; `again()` reads the corpus once more, for a builder that could not
        keep what it needs from the first pass."""


def register(cls: V) -> V:
    """Class decorator: make `vocab_from_dict` rebuild dicts whose "kind" is `cls.kind`."""
    _KINDS[cls.kind] = cls
    return cls


def vocab_from_dict(data: dict) -> Vocabulary:
    """Rebuild whichever vocabulary kind a checkpoint stored."""
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind not in _KINDS and kind in _MODULES:
        importlib.import_module(_MODULES[kind], __package__)
    if kind not in _KINDS:
        known = ", ".join(sorted(set(_MODULES) | set(_KINDS)))
        raise VocabularyError(f"Unknown vocabulary kind {kind!r} in checkpoint (this charrnn knows {known}).")
    try:
        return _KINDS[kind].from_dict(data)
    except VocabularyError:
        raise
    except Exception as exc:  # whatever bytes a file holds: sentencepiece, a missing key, a wrong type
        raise VocabularyError(f"The checkpoint's {kind} vocabulary cannot be read "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else 'no detail'}).") from None


def id_dtype(vocab_size: int) -> np.dtype:
    """Smallest unsigned integer dtype that holds every id of a vocabulary this size."""
    if vocab_size <= 1 << 8:
        return np.dtype(np.uint8)
    if vocab_size <= 1 << 16:
        return np.dtype(np.uint16)
    return np.dtype(np.int32)


def escape_char(ch: str) -> str:
    """A character as a user can read it in an error message: 'a', '\\n', '\\u00e9'."""
    if ch.isascii() and ch.isprintable():
        return repr(ch)
    code = ord(ch)
    if ch in "\n\r\t":
        return repr(ch)
    return f"'\\u{code:04x}'" if code <= 0xFFFF else f"'\\U{code:08x}'"


def unknown_message(unknown: tuple[str, ...], count: int, limit: int = 10) -> str:
    """One sentence listing the characters a vocabulary cannot encode."""
    listed = ", ".join(escape_char(c) for c in unknown[:limit])
    more = f" and {len(unknown) - limit} more" if len(unknown) > limit else ""
    return (
        f"The text has {count} occurrence{'s' if count != 1 else ''} of "
        f"{len(unknown)} character{'s' if len(unknown) != 1 else ''} outside the model's "
        f"vocabulary: {listed}{more}."
    )


def piece_texts(vocab: Vocabulary) -> list:
    """The text of each id, as exports store it (the ONNX metadata's `vocab`, the web page's pieces): a string, or for an id that
    stands for one byte of a longer UTF-8 character (sentencepiece's byte fallback) that
    byte as an integer 0-255. Joining the UTF-8 bytes of the strings and the integers'
    bytes and decoding gives the text; ids a sampler must never produce (`banned_ids`,
    sentencepiece's control pieces) are ""."""
    out: list = []
    for piece in vocab.piece_bytes():
        try:
            out.append(piece.decode("utf-8"))
        except UnicodeDecodeError:
            out.append(piece[0] if len(piece) == 1 else piece.decode("utf-8", "surrogatepass"))
    return out
