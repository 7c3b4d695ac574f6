"""Subword vocabularies with sentencepiece, behind the same interface as `CharVocab`.

Design choices that keep the text exact and every loss comparable with a character model:
- identity normalisation, no dummy prefix, whitespace kept as is, so decode(encode(x)) == x;
- byte fallback, so any text encodes (a character never seen becomes its UTF-8 bytes);
- newlines are mapped to a private-use character that is one piece of its own, because
  sentencepiece treats its input as lines and would otherwise drop them.
The trained model's serialized bytes live in the checkpoint, so a run stays one file.
"""

from __future__ import annotations

import io
from typing import Iterable

import numpy as np

from .errors import ConfigError
from .vocab import id_dtype

NEWLINE_MARK = "\ue00a"  # private use: stands for "\n" inside sentencepiece
_ENCODE_CHARS = 1 << 20
_MAX_TRAIN_CHARS = 20_000_000  # sentencepiece is trained on at most this much text


def _lines(text: str) -> Iterable[str]:
    for line in text.split("\n"):
        yield line + NEWLINE_MARK


class SentencePieceVocab:
    kind = "sentencepiece"

    def __init__(self, model: bytes):
        import sentencepiece as spm

        self.model = bytes(model)
        self.sp = spm.SentencePieceProcessor(model_proto=self.model)
        self._char_lengths = None

    @classmethod
    def train(cls, text: str, vocab_size: int = 2000, model_type: str = "unigram") -> "SentencePieceVocab":
        """Train sentencepiece on `text` (on an evenly spread sample of lines if it is large)."""
        import sentencepiece as spm

        if NEWLINE_MARK in text:
            raise ConfigError("The corpus contains the character U+E00A, which the sentencepiece tokenizer reserves for newlines.")
        lines = list(_lines(text))
        if len(text) > _MAX_TRAIN_CHARS:
            step = len(text) / _MAX_TRAIN_CHARS
            lines = lines[:: max(1, int(step))]
        writer = io.BytesIO()
        try:
            spm.SentencePieceTrainer.train(
                sentence_iterator=iter(lines),
                model_writer=writer,
                vocab_size=vocab_size,
                model_type=model_type,
                byte_fallback=True,
                normalization_rule_name="identity",
                add_dummy_prefix=False,
                remove_extra_whitespaces=False,
                allow_whitespace_only_pieces=True,
                user_defined_symbols=[NEWLINE_MARK],
                character_coverage=0.9995 if len(set(text[:1_000_000])) > 1000 else 1.0,
                max_sentence_length=1 << 16,
                hard_vocab_limit=False,
                minloglevel=2,
                num_threads=2,
            )
        except RuntimeError as exc:
            reason = (str(exc).strip().splitlines() or [type(exc).__name__])[-1].rsplit("] ", 1)[-1]
            reason = reason.replace("--character_coverage option", "a larger --vocab-size").rstrip(".")
            raise ConfigError(f"sentencepiece could not build a vocabulary of {vocab_size}: {reason}") from None
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
        marked = text.replace("\n", NEWLINE_MARK)
        parts, start = [], 0
        while start < len(marked):
            end = min(len(marked), start + _ENCODE_CHARS)
            if end < len(marked):
                cut = marked.rfind(NEWLINE_MARK, start, end)
                end = cut + 1 if cut >= start else end
            parts.append(np.asarray(self.sp.encode(marked[start:end]), dtype=self.dtype))
            start = end
        return np.concatenate(parts) if parts else np.zeros(0, dtype=self.dtype)

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
