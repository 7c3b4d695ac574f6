import numpy as np
import pytest

from charrnn.errors import VocabularyError
from charrnn.text.characters import CharVocab, id_dtype, vocab_from_dict


@pytest.mark.parametrize(
    "text",
    [
        "First Citizen:\nBefore we proceed any further, hear me speak.\n",
        "Анна Каренина. Все счастливые семьи похожи друг на друга.\r\n",
        "emoji 🙂🚀 and combining e\u0301 and CJK 漢字かな",
    ],
)
def test_round_trip(text):
    vocab = CharVocab.from_text(text)
    ids = vocab.encode(text)
    assert ids.dtype == np.uint8
    assert vocab.decode(ids) == text
    assert vocab.size == len(set(text))


def test_vocabulary_order_is_sorted_and_independent_of_text_order():
    a = CharVocab.from_text("banana bread")
    b = CharVocab.from_text("daerb ananab")
    assert a.chars == b.chars == sorted(set("banana bread"))


def test_streaming_build_equals_one_shot():
    text = "абв xyz 🙂" * 10
    assert CharVocab.from_blocks([text[:7], text[7:30], text[30:]]).chars == CharVocab.from_text(text).chars


def test_id_width_grows_with_vocabulary():
    assert id_dtype(256) == np.uint8
    assert id_dtype(257) == np.uint16
    assert id_dtype(65_536) == np.uint16
    assert id_dtype(65_537) == np.int32
    text = "".join(chr(0x4E00 + i) for i in range(300))
    vocab = CharVocab.from_text(text)
    ids = vocab.encode(text)
    assert ids.dtype == np.uint16
    assert vocab.decode(ids) == text


def test_unknown_characters_are_listed_not_crashed_on():
    vocab = CharVocab.from_text("abc")
    with pytest.raises(VocabularyError) as info:
        vocab.encode("abéxé")
    assert info.value.unknown == ("é", "x")
    assert info.value.count == 3
    assert "'\\u00e9'" in str(info.value)


def test_dict_round_trip():
    vocab = CharVocab.from_text("hello\nworld 🙂")
    again = vocab_from_dict(vocab.to_dict())
    assert again.chars == vocab.chars


def test_vocabulary_over_65535_characters_trains(tmp_path):
    from charrnn.training.run import Run

    chars = [chr(c) for c in range(0x4E00, 0x4E00 + 20_000)] + [chr(c) for c in range(0x20000, 0x20000 + 50_000)]
    text = "".join(chars) * 2
    (tmp_path / "huge.txt").write_text(text, encoding="utf-8")
    with Run(
        str(tmp_path / "huge.txt"), out=tmp_path / "run",
        model_options={"hidden_size": 4, "num_layers": 1, "embedding_size": 4},
        train_options={"batch_size": 2, "seq_len": 8, "max_steps": 2, "device": "cpu", "eval_every": 2},
    ) as run:
        trainer = run.trainer
        assert trainer.vocab.size == 70_000 and trainer.vocab.dtype == np.int32
        assert trainer.vocab.decode(trainer.train_streams[0, :5].tolist()) == text[:5]
        done = list(run.events())[-1]
    assert done.step == 2


def test_unknown_kind_is_one_sentence():
    with pytest.raises(VocabularyError, match=r"^Unknown vocabulary kind 'words' in checkpoint [^.]*\.$"):
        vocab_from_dict({"kind": "words"})


def test_every_kind_implements_the_protocol():
    from charrnn.text.sentencepiece_vocab import SentencePieceVocab
    from charrnn.text.vocabulary import Vocabulary

    members = {"kind", "size", "dtype", "encode", "encode_blocks", "decode", "unknown_chars", "piece_bytes",
               "char_lengths", "banned_ids", "to_dict", "from_dict", "preview"}
    assert members <= set(dir(Vocabulary)) | set(Vocabulary.__annotations__)
    for cls in (CharVocab, SentencePieceVocab):
        assert all(hasattr(cls, name) for name in members), cls
    assert isinstance(CharVocab.from_text("ab"), Vocabulary)


def test_vocabulary_modules_do_not_import_each_other():
    """text/characters.py and text/sentencepiece_vocab.py meet only in text/vocabulary.py
    (no import cycle), and loading a character vocabulary never imports the sentencepiece
    module."""
    import ast
    import subprocess
    import sys
    from pathlib import Path

    package = Path(__file__).resolve().parents[1] / "charrnn"
    for name, other in (("characters", "sentencepiece_vocab"), ("sentencepiece_vocab", "characters")):
        tree = ast.parse((package / "text" / f"{name}.py").read_text(encoding="utf-8"))
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert imported and other not in imported and f"charrnn.text.{other}" not in imported, name
    # a bare package object skips charrnn/__init__.py (and its torch import): only the
    # modules named here and what they import get loaded
    code = (f"import sys, types; pkg = types.ModuleType('charrnn'); pkg.__path__ = [{str(package)!r}]; "
            "sys.modules['charrnn'] = pkg; import charrnn.text.vocabulary as v; "
            "assert v.vocab_from_dict({'kind': 'char', 'chars': 'ab'}).chars == ['a', 'b']; "
            "assert 'charrnn.text.sentencepiece_vocab' not in sys.modules and 'sentencepiece' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True)


def test_an_extended_vocabulary_encodes_characters_below_the_bases_largest():
    """Fine-tuning appends new characters after the base's ids, so the last entry is not
    the largest code point: '(' (40) added to a vocabulary ending in 'z' (122)."""
    base = CharVocab.from_text("abc xyz\n")
    grown = base.extended("(x + 1)\n")
    assert grown.chars[: base.size] == base.chars and grown.chars[-1] != max(grown.chars)
    ids = grown.encode("(x + 1)\nabc")
    assert grown.decode(ids) == "(x + 1)\nabc"
    assert list(ids[:1]) == [grown.chars.index("(")]
