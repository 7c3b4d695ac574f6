"""Character vocabularies: text <-> integer ids (the interface is `charrnn.text.vocabulary`).

A character vocabulary is the sorted set of distinct code points of the corpus, so the
same text always gives the same ids. A vocabulary grown for fine-tuning (`extended`) keeps
its base's ids and appends the new characters after them, sorted: ids are unique, but only
the two parts are each in code point order. Encoding goes through numpy (UTF-32 code points and
a code point -> id lookup table) rather than a Python dict lookup per character: a 100 MB
corpus encodes in seconds and ends up as a compact uint8/uint16/int32 array, never a list
of ints.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

import numpy as np

from ..errors import VocabularyError
from .vocabulary import escape_char, id_dtype, register, unknown_message, vocab_from_dict

__all__ = ["CharCounter", "CharVocab", "escape_char", "id_dtype", "unknown_message", "vocab_from_dict"]

# Code points are processed in blocks so a large text never needs 4 bytes/char at once.
_BLOCK_CHARS = 1 << 22


def _code_points(text: str | bytes) -> np.ndarray:
    """Code points of `text`; ASCII `bytes` are taken as they are (no decoding needed)."""
    if isinstance(text, bytes):
        return np.frombuffer(text, dtype=np.uint8)
    return np.frombuffer(text.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)


@register
class CharVocab:
    """Character-level vocabulary: id i is the i-th smallest code point seen in the corpus
    (or, for a vocabulary grown by `extended`, in the base and then among the additions)."""

    kind = "char"

    def __init__(self, chars: Iterable[str]):
        chars = list(chars)
        if not chars:
            raise VocabularyError("The vocabulary is empty: the corpus has no characters.")
        if len(set(chars)) != len(chars) or not all(isinstance(c, str) and len(c) == 1 for c in chars):
            raise VocabularyError("A character vocabulary must hold single characters without repeats.")
        self.chars: list[str] = chars
        self._points = np.array([ord(c) for c in chars], dtype=np.uint32)
        # code point -> id, -1 for characters outside the vocabulary (one slot past the
        # largest code point catches everything bigger after clipping)
        # (an `extended` vocabulary appends after the base's ids, so the last is not always the largest)
        self._lut = np.full(int(self._points.max()) + 2, -1, dtype=np.int32)
        self._lut[self._points] = np.arange(len(chars), dtype=np.int32)
        self._known = self._lut >= 0
        self._lut_ids = np.maximum(self._lut, 0).astype(self.dtype)  # same table in the id dtype

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_text(cls, text: str) -> "CharVocab":
        """Build the vocabulary of one text (sorted distinct characters)."""
        return cls.from_blocks([text])

    @classmethod
    def from_blocks(cls, blocks: Iterable[str]) -> "CharVocab":
        """Build the vocabulary from text arriving in pieces (a streaming pass)."""
        counter = CharCounter()
        for block in blocks:
            counter.add(block)
        return counter.vocab()

    def extended(self, chars: Iterable[str]) -> "CharVocab":
        """This vocabulary with the characters of `chars` it lacks appended in code point
        order. Every id keeps its character, so a model trained on this vocabulary can be
        grown to the new one (`charrnn.training.finetune`) without disturbing what it predicts."""
        new = sorted(set(chars) - set(self.chars))
        return CharVocab(self.chars + new) if new else self

    def extender(self) -> "CharCounter":
        """A builder that counts a corpus and returns this vocabulary `extended` by the
        characters seen: how fine-tuning takes a text its base model cannot encode."""
        return CharCounter(base=self)

    # -- the interface shared by every vocabulary kind ---------------------------------------
    @property
    def size(self) -> int:
        return len(self.chars)

    @property
    def dtype(self) -> np.dtype:
        return id_dtype(self.size)

    def _index(self, points: np.ndarray) -> np.ndarray:
        """Code points clipped into the lookup tables (anything larger maps to an unknown slot)."""
        top = len(self._lut) - 1
        if top > np.iinfo(points.dtype).max:
            return points  # every value of this dtype is a valid index
        return np.minimum(points, points.dtype.type(top))

    def _lookup(self, points: np.ndarray) -> np.ndarray:
        """Ids of code points, -1 where a code point is outside the vocabulary."""
        return self._lut[self._index(points)]

    def unknown_chars(self, text: str) -> tuple[tuple[str, ...], int]:
        """Distinct characters of `text` outside the vocabulary (in order of first use) and
        how many occurrences there are in total."""
        points = _code_points(text)
        bad = self._lookup(points) < 0
        if not bad.any():
            return (), 0
        bad_points = points[bad]
        _, first = np.unique(bad_points, return_index=True)
        ordered = bad_points[np.sort(first)]
        return tuple(chr(int(c)) for c in ordered), int(bad.sum())

    def encode(self, text: str | bytes) -> np.ndarray:
        """Ids of `text` (or of ASCII `bytes`) as a compact array; unknown characters raise
        `VocabularyError`."""
        out = np.empty(len(text), dtype=self.dtype)
        for i in range(0, len(text), _BLOCK_CHARS):
            index = self._index(_code_points(text[i : i + _BLOCK_CHARS]))
            if not self._known[index].all():
                unknown, count = self.unknown_chars(text)
                raise VocabularyError(unknown_message(unknown, count), unknown, count)
            out[i : i + len(index)] = self._lut_ids[index]
        return out

    def encode_blocks(self, blocks: Iterable[str | bytes]) -> Iterator[np.ndarray]:
        """Ids of text arriving in blocks: characters encode one by one, so block by block."""
        for block in blocks:
            yield self.encode(block)

    def decode(self, ids: Iterable[int]) -> str:
        """Text of a sequence of ids."""
        chars = self.chars
        return "".join(chars[int(i)] for i in ids)

    def piece_bytes(self) -> list[bytes]:
        """UTF-8 bytes each id stands for (what a streaming decoder emits)."""
        return [c.encode("utf-8", "surrogatepass") for c in self.chars]

    def char_lengths(self) -> np.ndarray:
        """Characters each id stands for: all ones for a character vocabulary. # (V,)"""
        return np.ones(self.size, dtype=np.int64)

    @property
    def banned_ids(self) -> tuple[int, ...]:
        """Ids a sampler must never produce (control symbols); none for characters."""
        return ()

    def byte_fallback(self, ids: np.ndarray) -> tuple[int, int]:
        """Characters spelled as byte pieces: none, every character is an id of its own."""
        return 0, 0

    def to_dict(self) -> dict:
        """Plain-types form stored in checkpoints."""
        return {"kind": self.kind, "chars": "".join(self.chars)}

    @classmethod
    def from_dict(cls, data: dict) -> "CharVocab":
        return cls(list(data["chars"]))

    def preview(self, limit: int = 80) -> str:
        """A printable one-line preview of the vocabulary for `charrnn info`."""
        shown = "".join(c if c.isprintable() and c != " " else escape_char(c)[1:-1] for c in self.chars[:limit])
        return shown + ("…" if self.size > limit else "")


class CharCounter:
    """Counts code points over text blocks: the streaming pass that builds a vocabulary
    (a `VocabularyBuilder`). With a `base`, the vocabulary built is the base `extended` by
    the characters seen, not the characters seen alone."""

    def __init__(self, base: CharVocab | None = None):
        self.counts = np.zeros(256, dtype=np.int64)
        self.chars = 0
        self.base = base

    def add(self, block: str | bytes) -> None:
        for i in range(0, len(block), _BLOCK_CHARS):
            points = _code_points(block[i : i + _BLOCK_CHARS])
            if not points.size:
                continue
            counts = np.bincount(points)
            if len(counts) > len(self.counts):
                self.counts = np.pad(self.counts, (0, len(counts) - len(self.counts)))
            self.counts[: len(counts)] += counts
            self.chars += len(points)

    def vocab(self) -> "CharVocab":
        seen = [chr(int(c)) for c in np.flatnonzero(self.counts)]
        return CharVocab(seen) if self.base is None else self.base.extended(seen)

    def build(self, again: Callable[[], Iterable[str | bytes]]) -> "CharVocab":
        """The vocabulary of the blocks seen; counting needs no second pass (`again` unused)."""
        return self.vocab()
