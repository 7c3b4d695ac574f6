"""Subword vocabularies with sentencepiece, behind the `charrnn.text.vocabulary.Vocabulary` interface.

Design choices that keep the text exact and every loss comparable with a character model:
- identity normalisation, no dummy prefix, whitespace kept as is, so decode(encode(x)) == x;
- byte fallback, so any text encodes (a character never seen becomes its UTF-8 bytes);
- newlines are mapped to a private-use character that is one piece of its own, because
  sentencepiece treats its input as lines and would otherwise drop them.
The trained model's serialized bytes live in the checkpoint, so a run stays one file.
"""

from __future__ import annotations

import io
from typing import Callable, Iterable, Iterator

import numpy as np

from ..errors import ConfigError
from .vocabulary import id_dtype, register

NEWLINE_MARK = "\ue00a"  # private use: stands for "\n" inside sentencepiece
_ENCODE_CHARS = 1 << 20
_MAX_TRAIN_CHARS = 20_000_000  # sentencepiece is trained on at most this much text


def _as_text(block: str | bytes) -> str:
    return block.decode("ascii") if isinstance(block, bytes) else block  # bytes blocks are ASCII


def training_stride(chars: int) -> int:
    """Train on every n-th line: all lines up to `_MAX_TRAIN_CHARS` characters of text, an
    evenly spread sample of lines beyond."""
    return max(1, int(chars / _MAX_TRAIN_CHARS)) if chars > _MAX_TRAIN_CHARS else 1


def sample_lines(blocks: Iterable[str | bytes], stride: int) -> list[str]:
    """Every `stride`-th line of the text arriving in `blocks`, each ending in NEWLINE_MARK
    (sentencepiece reads lines, and would drop the newlines): the lines of
    `text.split("\n")` of the joined text, lines split across blocks included."""
    kept: list[str] = []
    index, partial = 0, []  # lines seen; the start of a line that continues in the next block
    for block in blocks:
        parts = _as_text(block).split("\n")
        if len(parts) == 1:
            partial.append(parts[0])
            continue
        lines = ["".join(partial) + parts[0], *parts[1:-1]]
        kept += [line + NEWLINE_MARK for line in lines[(-index) % stride :: stride]]
        index += len(lines)
        partial = [parts[-1]]
    if index % stride == 0:
        kept.append("".join(partial) + NEWLINE_MARK)
    return kept


class SentencePieceBuilder:
    """Gathers what sentencepiece training needs from a corpus read in blocks (a
    `VocabularyBuilder`): the text itself while it stays within `_MAX_TRAIN_CHARS`, else
    only its length, and the sample of lines is read by a second pass once the stride is
    known. Either way the lines are those `SentencePieceVocab.train` takes from the whole
    text, so a streamed corpus gets the same vocabulary as one read into memory."""

    def __init__(self, vocab_size: int = 2000, model_type: str = "unigram"):
        self.vocab_size = vocab_size
        self.model_type = model_type
        self.chars = 0
        self.kept: list[str] | None = []  # None once the text outgrew _MAX_TRAIN_CHARS

    def add(self, block: str | bytes) -> None:
        if isinstance(block, str) and NEWLINE_MARK in block:
            raise ConfigError("The corpus contains the character U+E00A, which the sentencepiece tokenizer reserves for newlines.")
        self.chars += len(block)
        if self.kept is not None:
            if self.chars <= _MAX_TRAIN_CHARS:
                self.kept.append(_as_text(block))
            else:
                self.kept = None

    def build(self, again: Callable[[], Iterable[str | bytes]]) -> "SentencePieceVocab":
        blocks = self.kept if self.kept is not None else again()
        lines = sample_lines(blocks, training_stride(self.chars))
        return SentencePieceVocab.train_lines(lines, self.vocab_size, self.model_type)


# -- alphabets larger than the vocabulary -------------------------------------------------
# sentencepiece gives a piece of its own to every "required" character: the most frequent
# characters of the training lines, taken until they cover `character_coverage` of the text.
# It refuses to train ("Vocabulary size is smaller than required_chars") when they and its
# meta pieces (<unk> <s> </s>, the newline mark and, with byte fallback, the 256 byte pieces)
# exceed the vocabulary size, and it accepts no coverage below 0.98, which is not low enough
# for a Chinese novel in 2,000 pieces (its 1,740 most frequent characters may cover 90%).
# So the rare characters are taken out of the lines it trains on instead: each becomes the
# newline mark, a boundary no piece spans, as byte pieces are when the text is encoded.
# sentencepiece never sees them, makes them no pieces, and they fall back to UTF-8 bytes.
META_PIECES = 3 + 1 + 256  # <unk> <s> </s>, NEWLINE_MARK, <0x00>..<0xFF>
LARGE_ALPHABET = 1000  # more distinct characters than this: sentencepiece's CJK advice applies
CJK_COVERAGE = 0.9995  # its recommended coverage for a large alphabet (the rest as bytes)


def char_counts(lines: list[str]) -> np.ndarray:
    """How often each code point occurs in `lines`, the newline mark left out. # (0x110000,)"""
    counts = np.zeros(0x110000, dtype=np.int64)
    start = 0
    while start < len(lines):
        end, size = start, 0
        while end < len(lines) and size < _ENCODE_CHARS:  # about a million characters at a time
            size += len(lines[end])
            end += 1
        points = np.frombuffer("".join(lines[start:end]).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
        counts += np.bincount(points, minlength=0x110000)
        start = end
    counts[ord(NEWLINE_MARK)] = 0
    return counts


def kept_chars(counts: np.ndarray, room: int) -> np.ndarray:
    """The code points that get pieces of their own: every one if they fit in `room` pieces
    (and the alphabet is not large), else the most frequent that fit, and for a large
    alphabet no more than cover `CJK_COVERAGE` of the text; the space always. # (K,)"""
    ranked = np.argsort(-counts, kind="stable")[: int(np.count_nonzero(counts))]  # (D,)
    if counts[0x20]:  # sentencepiece spells a space as U+2581, whose bytes would decode as "\u2581"
        ranked = np.concatenate([[0x20], ranked[ranked != 0x20]])
    keep = len(ranked)
    if keep > LARGE_ALPHABET:
        covered = np.cumsum(counts[ranked]) / counts.sum()  # (D,) share the top 1..D cover
        keep = int(np.searchsorted(covered, CJK_COVERAGE)) + 1
    return ranked[: max(0, min(keep, room))]


def without_rare_chars(lines: list[str], vocab_size: int) -> list[str]:
    """`lines` with each character that gets no piece in a vocabulary of `vocab_size`
    (`kept_chars`) replaced by the newline mark; the same list when every character fits."""
    counts = char_counts(lines)
    rare = np.setdiff1d(np.flatnonzero(counts), kept_chars(counts, vocab_size - META_PIECES))
    if len(rare) == 0:
        return lines
    table = dict.fromkeys(rare.tolist(), NEWLINE_MARK)
    return [line.translate(table) for line in lines]


def rare_chars_phrase(chars: int, occurrences: int, text_chars: int) -> str:
    """'2,811 rare characters (3.1% of the text)': how `charrnn train` and `charrnn info`
    describe the characters spelled as UTF-8 bytes (`SentencePieceVocab.byte_fallback`)."""
    share = occurrences / max(1, text_chars)
    percent = "less than 0.1%" if share < 0.001 else f"{share:.1%}"
    return f"{chars:,} rare character{'s' if chars != 1 else ''} ({percent} of the text)"


def rare_chars_note(chars: int, occurrences: int, text_chars: int, vocab_size: int) -> str:
    """The note `charrnn train` shows when some characters of the corpus have no piece."""
    verb, pronoun = ("is", "it is") if chars == 1 else ("are", "they are")
    return (f"{rare_chars_phrase(chars, occurrences, text_chars)} {verb} not in the {vocab_size:,}-piece vocabulary; "
            f"{pronoun} spelled as UTF-8 bytes.")


@register
class SentencePieceVocab:
    """Subword pieces trained with sentencepiece; the serialized model is the whole state."""

    kind = "sentencepiece"

    def __init__(self, model: bytes):
        import sentencepiece as spm

        self.model = bytes(model)
        self.sp = spm.SentencePieceProcessor(model_proto=self.model)
        self._char_lengths = None
        self._byte_values = None

    @classmethod
    def train(cls, text: str, vocab_size: int = 2000, model_type: str = "unigram") -> "SentencePieceVocab":
        """Train sentencepiece on `text` (on an evenly spread sample of lines if it is large)."""
        builder = SentencePieceBuilder(vocab_size, model_type)
        builder.add(text)
        return builder.build(lambda: [text])

    @classmethod
    def train_lines(cls, lines: list[str], vocab_size: int = 2000, model_type: str = "unigram") -> "SentencePieceVocab":
        """Train sentencepiece on `lines` (each ending in NEWLINE_MARK). A corpus with more
        distinct characters than fit in `vocab_size` (a Chinese novel) trains too: its rare
        characters are kept out of the training lines (`without_rare_chars`) and are
        spelled as UTF-8 bytes when the text is encoded."""
        import sentencepiece as spm

        if vocab_size <= META_PIECES:
            raise ConfigError(f"A sentencepiece vocabulary of {vocab_size} pieces has no room for characters next to its "
                              f"{META_PIECES} byte and special pieces; choose a larger --vocab-size.")
        writer = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(without_rare_chars(lines, vocab_size)),
                model_writer=writer,
                vocab_size=vocab_size,
                model_type=model_type,
                byte_fallback=True,
                normalization_rule_name="identity",
                add_dummy_prefix=False,
                remove_extra_whitespaces=False,
                allow_whitespace_only_pieces=True,
                user_defined_symbols=[NEWLINE_MARK],
                character_coverage=1.0,  # the characters sentencepiece sees are those that fit
                max_sentence_length=1 << 16,
                hard_vocab_limit=False,
                minloglevel=2,
                num_threads=2,
            )
        except RuntimeError as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1].rsplit("] ", 1)[-1]
            reason = reason.replace("--character_coverage option", "a larger --vocab-size").rstrip(".")
            raise ConfigError(f"sentencepiece could not build a vocabulary of {vocab_size}: {reason}.") from None
        return cls(writer.getvalue())

    # -- the vocabulary interface --------------------------------------------------------
    @property
    def size(self) -> int:
        return self.sp.get_piece_size()

    @property
    def dtype(self) -> np.dtype:
        return id_dtype(self.size)

    def unknown_chars(self, text: str) -> tuple[tuple[str, ...], int]:
        return (), 0  # byte fallback: every character can be encoded

    def encode(self, text: str) -> np.ndarray:
        """Ids of `text`, encoded line-aligned in chunks (pieces never span a newline)."""
        parts = list(self.encode_blocks([text]))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=self.dtype)

    def encode_blocks(self, blocks: Iterable[str | bytes]) -> Iterator[np.ndarray]:
        """Ids of text arriving in blocks, in chunks of at most `_ENCODE_CHARS` that end
        after their last newline whenever more text follows (the text after it is carried
        into the next chunk). The chunks depend only on the joined text, not on where the
        blocks end, so the ids equal `encode` of the whole text by construction."""
        buf, start = "", 0  # marked text not yet encoded is buf[start:]
        for block in blocks:
            buf = buf[start:] + _as_text(block).replace("\n", NEWLINE_MARK)
            start = 0
            while len(buf) - start > _ENCODE_CHARS:  # more text follows this chunk
                end = start + _ENCODE_CHARS
                cut = buf.rfind(NEWLINE_MARK, start, end)
                end = cut + 1 if cut >= start else end
                yield np.asarray(self.sp.encode(buf[start:end]), dtype=self.dtype)
                start = end
        if len(buf) > start:
            yield np.asarray(self.sp.encode(buf[start:]), dtype=self.dtype)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([int(i) for i in ids]).replace(NEWLINE_MARK, "\n")

    def piece_bytes(self) -> list[bytes]:
        out = []
        for i in range(self.size):
            if self.sp.is_control(i) or self.sp.is_unknown(i):
                out.append(b"")
            elif self.sp.is_byte(i):
                out.append(bytes([int(self.sp.id_to_piece(i)[3:5], 16)]))  # "<0xE2>"
            else:
                piece = self.sp.id_to_piece(i).replace("\u2581", " ").replace(NEWLINE_MARK, "\n")
                out.append(piece.encode("utf-8"))
        return out

    def char_lengths(self) -> np.ndarray:
        """Characters per id: a UTF-8 lead byte counts one, continuation bytes none, so a
        character spelled as byte pieces still counts exactly once. # (V,)"""
        if self._char_lengths is None:
            self._char_lengths = np.array(
                [sum(1 for b in pb if b & 0xC0 != 0x80) for pb in self.piece_bytes()], dtype=np.int64
            )
        return self._char_lengths

    @property
    def banned_ids(self) -> tuple[int, ...]:
        return tuple(i for i in range(self.size) if self.sp.is_control(i) or self.sp.is_unknown(i))

    def byte_fallback(self, ids: np.ndarray) -> tuple[int, int]:
        """Distinct characters `ids` spell as UTF-8 byte pieces (the characters without a
        piece of their own), and how many times they occur. Each lead byte (or ASCII byte)
        starts one character; the character is its bytes up to the next byte that is not a
        continuation. Read a window at a time, so a memory-mapped corpus stays on disk."""
        if self._byte_values is None:
            values = np.full(self.size, -1, dtype=np.int16)  # (V,) the byte of a byte piece, else -1
            for i in range(self.size):
                if self.sp.is_byte(i):
                    values[i] = int(self.sp.id_to_piece(i)[3:5], 16)  # "<0xE2>"
            self._byte_values = values
        seen: set[int] = set()
        count = 0
        for start in range(0, len(ids), _ENCODE_CHARS):
            window = self._byte_values[np.asarray(ids[start : start + _ENCODE_CHARS + 3])]  # (W + 3,)
            head = window[: min(_ENCODE_CHARS, len(ids) - start)]  # characters starting here
            lead = np.flatnonzero((head >= 0) & ((head & 0xC0) != 0x80))  # (C,)
            key = window[lead].astype(np.int64)  # (C,) the character's bytes as one integer
            going = np.ones(len(lead), dtype=bool)
            for k in (1, 2, 3):
                at = np.minimum(lead + k, len(window) - 1)
                byte = window[at]
                going &= (lead + k < len(window)) & (byte >= 0) & ((byte & 0xC0) == 0x80)
                key = (key << 8) | np.where(going, byte, 0)
            seen.update(np.unique(key).tolist())
            count += len(lead)
        return len(seen), count

    def to_dict(self) -> dict:
        return {"kind": self.kind, "model": self.model}

    @classmethod
    def from_dict(cls, data: dict) -> "SentencePieceVocab":
        return cls(data["model"])

    def preview(self, limit: int = 30) -> str:
        pieces = [self.sp.id_to_piece(i) for i in range(self.size)
                  if not (self.sp.is_control(i) or self.sp.is_byte(i) or self.sp.is_unknown(i))]
        shown = " ".join(p.replace(NEWLINE_MARK, "\\n") for p in pieces[:limit])
        return shown + (" …" if len(pieces) > limit else "")
