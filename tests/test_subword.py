import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from charrnn import load
from charrnn.cli.app import main
from charrnn.model.evaluation import evaluate
from charrnn.model.network import CharRNN, ModelConfig
from charrnn.text.characters import CharVocab
from charrnn.text.corpus import as_streams
from charrnn.text.sentencepiece_vocab import SentencePieceVocab

MIXED = "Hello, world!\nПривет, мир!\n漢字かな交じり文\n🙂 emoji\tand tabs  double  spaces\r\ncafé e\u0301\n" * 40


@pytest.fixture(scope="module")
def sp_vocab():
    return SentencePieceVocab.train(MIXED, vocab_size=400)


def test_round_trip_mixed_scripts(sp_vocab):
    assert sp_vocab.decode(sp_vocab.encode(MIXED)) == MIXED
    unseen = "Ωμέγα ∑ never seen 👾\n\n"
    assert sp_vocab.decode(sp_vocab.encode(unseen)) == unseen  # byte fallback
    assert sp_vocab.unknown_chars(unseen) == ((), 0)


def test_char_lengths_count_each_character_once(sp_vocab):
    for text in (MIXED, "👾 Ωμέγα\n"):
        ids = sp_vocab.encode(text)
        assert int(sp_vocab.char_lengths()[ids].sum()) == len(text)
    assert len(sp_vocab.encode(MIXED)) < len(MIXED)  # pieces are longer than one character


def test_checkpoint_dict_round_trip(sp_vocab):
    from charrnn.text.characters import vocab_from_dict

    again = vocab_from_dict(sp_vocab.to_dict())
    assert np.array_equal(again.encode(MIXED), sp_vocab.encode(MIXED))


def test_bits_per_char_uses_the_same_character_count(sp_vocab):
    """A char model and a subword model scored on the same text divide by the same count."""
    text = MIXED[:2000]
    results = []
    for vocab in (CharVocab.from_text(MIXED), sp_vocab):
        torch.manual_seed(0)
        net = CharRNN(ModelConfig(vocab_size=vocab.size, hidden_size=8, num_layers=1, embedding_size=4))
        ids = vocab.encode(text)
        lengths = torch.from_numpy(vocab.char_lengths())
        results.append(evaluate(net, as_streams(ids, 1), 64, torch.device("cpu"), char_lengths=lengths))
    char_result, sp_result = results
    # every token but the first is a target: the count covers all characters but the first token's
    first_sp = int(sp_vocab.char_lengths()[sp_vocab.encode(text)[0]])
    assert char_result.chars == len(text) - 1
    assert sp_result.chars == len(text) - first_sp
    assert sp_result.tokens < char_result.tokens


def test_sentencepiece_end_to_end_through_cli(tmp_path):
    corpus = tmp_path / "mixed.txt"
    corpus.write_text(MIXED * 3, encoding="utf-8")
    run = tmp_path / "sp"
    runner = CliRunner()
    result = runner.invoke(main, ["train", str(corpus), "--out", str(run), "--tokenizer", "sentencepiece",
                                  "--vocab-size", "400", "--max-steps", "40", "--eval-every", "20",
                                  "--hidden-size", "48", "--num-layers", "1", "--embedding-size", "16",
                                  "--batch-size", "4", "--seq-len", "16", "--lr", "0.01", "--threads", "1"])
    assert result.exit_code == 0, result.stderr
    model = load(run)
    assert model.vocab.kind == "sentencepiece"
    sample = runner.invoke(main, ["sample", "-c", str(run), "--prime", "Привет", "--length", "57", "--seed", "1"])
    assert sample.exit_code == 0, sample.stderr
    assert sample.stdout.startswith("Привет") and len(sample.stdout) == len("Привет") + 57
    stop = runner.invoke(main, ["sample", "-c", str(run), "--prime", "Hello", "--length", "500", "--seed", "1",
                                "--stop", "\\n", "--no-echo-prime"])
    assert stop.exit_code == 0 and stop.stdout.endswith("\n") and stop.stdout.count("\n") == 1
    report = json.loads(runner.invoke(main, ["eval", str(corpus), "-c", str(run), "--json"]).stdout)
    assert report["tokenizer"] == "sentencepiece"
    assert report["chars"] > report["tokens"] > 0
    assert report["nats_per_char"] < report["nats_per_token"]
    info = runner.invoke(main, ["info", str(run)])
    assert "sentencepiece" in info.stdout and "nats/token" in info.stdout


@pytest.mark.parametrize("model_type", ["unigram", "bpe"])
def test_encoding_in_blocks_equals_encoding_the_whole(monkeypatch, model_type):
    """Chunks are cut after the last newline of a window of the joined text, wherever the
    blocks end, so streamed ids equal whole-text ids (long lines included)."""
    import charrnn.text.sentencepiece_vocab as subword

    vocab = SentencePieceVocab.train(MIXED, vocab_size=400, model_type=model_type)
    monkeypatch.setattr(subword, "_ENCODE_CHARS", 37)  # shorter than some lines: cut mid-line too
    text = MIXED[:1500] + "x" * 100 + "\n"
    whole = vocab.encode(text)
    assert vocab.decode(whole) == text
    for size in (1, 5, 36, 37, 38, 200, len(text)):
        blocks = [text[i : i + size] for i in range(0, len(text), size)]
        blocks[0] = blocks[0].encode() if blocks[0].isascii() else blocks[0]  # ASCII blocks may be bytes
        assert np.array_equal(np.concatenate(list(vocab.encode_blocks(blocks))), whole), size


@pytest.mark.parametrize("stride", [1, 2, 3, 7])
def test_line_sample_ignores_block_boundaries(stride):
    from charrnn.text.sentencepiece_vocab import NEWLINE_MARK, sample_lines

    text = "".join(f"line {i}{' long' * (i % 5)}\n" for i in range(40)) + "last"
    expected = [line + NEWLINE_MARK for line in text.split("\n")][::stride]
    for size in (1, 4, 13, len(text)):
        blocks = [text[i : i + size] for i in range(0, len(text), size)]
        assert sample_lines(blocks, stride) == expected, size


# -- alphabets larger than the vocabulary ------------------------------------------------------
def zipf_cjk_text(distinct: int = 5000, chars: int = 100_000, seed: int = 0) -> str:
    """A Chinese-like text: `distinct` CJK ideographs drawn with Zipf frequencies (a long
    tail of rare ones), lines of 60, a few ASCII words with spaces among them."""
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, distinct + 1)
    ideographs = np.array([chr(0x4E00 + i) for i in range(distinct)])
    body = "".join(ideographs[rng.choice(distinct, size=chars, p=weights / weights.sum())])
    lines = [body[i : i + 60] for i in range(0, len(body), 60)]
    return "\n".join(line + (" ok go" if i % 7 == 0 else "") for i, line in enumerate(lines)) + "\n"


@pytest.fixture(scope="module")
def cjk_text():
    return zipf_cjk_text()


@pytest.fixture(scope="module")
def cjk_vocab(cjk_text):
    return SentencePieceVocab.train(cjk_text, vocab_size=2000)


def test_alphabet_larger_than_the_vocabulary_trains(cjk_text, cjk_vocab):
    """4,800 distinct characters in 2,000 pieces: sentencepiece's own way (a coverage) cannot
    do it, since it takes no coverage below 0.98 and the 1,740 characters that fit cover less;
    the frequent characters get pieces, the rare ones are spelled as bytes, and the text
    still round-trips exactly."""
    from collections import Counter

    from charrnn.text.sentencepiece_vocab import META_PIECES

    counts = Counter(cjk_text)
    top = np.sort(np.array(list(counts.values())))[::-1]
    assert len(counts) > 4000 and top[: 2000 - META_PIECES].sum() / top.sum() < 0.98
    assert cjk_vocab.size <= 2000
    ids = cjk_vocab.encode(cjk_text)
    assert cjk_vocab.decode(ids) == cjk_text

    sp = cjk_vocab.sp
    spelled = {c for c in counts if c != "\n" and all(sp.is_byte(i) for i in sp.encode(c))}
    assert cjk_vocab.byte_fallback(ids) == (len(spelled), sum(counts[c] for c in spelled))
    assert 2000 < len(spelled) < len(counts) - 1000
    assert not spelled & {c for c, _ in counts.most_common(1000)}  # frequent characters have pieces
    assert " " not in spelled  # a byte-spelled space would decode as U+2581


def test_byte_fallback_counts_characters_across_windows(cjk_vocab, monkeypatch):
    """Characters spelled over a window edge count once, as with one window."""
    import charrnn.text.sentencepiece_vocab as subword

    ids = cjk_vocab.encode(zipf_cjk_text(chars=3000, seed=1))
    whole = cjk_vocab.byte_fallback(ids)
    monkeypatch.setattr(subword, "_ENCODE_CHARS", 7)
    assert cjk_vocab.byte_fallback(ids) == whole and whole[0] > 0
    assert SentencePieceVocab.train(MIXED, vocab_size=400).byte_fallback(np.zeros(0, dtype=np.uint16)) == (0, 0)


def test_kept_chars_rules():
    from charrnn.text.sentencepiece_vocab import LARGE_ALPHABET, kept_chars

    counts = np.zeros(0x110000, dtype=np.int64)
    counts[[ord(c) for c in "abcde "]] = [50, 40, 30, 20, 10, 1]
    assert sorted(map(chr, kept_chars(counts, 100))) == sorted("abcde ")
    assert list(map(chr, kept_chars(counts, 3))) == [" ", "a", "b"]  # the space first, then by count
    large = np.zeros(0x110000, dtype=np.int64)
    large[0x4E00 : 0x4E00 + 2 * LARGE_ALPHABET] = 1
    large[0x4E00] = 10_000_000  # one character holds nearly all the text
    assert len(kept_chars(large, 10_000)) < 2 * LARGE_ALPHABET  # the 0.9995 coverage of a large alphabet


def test_vocabulary_without_room_for_characters_is_one_sentence():
    from charrnn.errors import ConfigError

    with pytest.raises(ConfigError, match="no room for characters"):
        SentencePieceVocab.train(MIXED, vocab_size=260)


def test_chinese_like_corpus_end_to_end_through_cli(tmp_path, cjk_text):
    """`train --tokenizer sentencepiece --vocab-size 2000` on 4,800 distinct characters: a
    note about the rare characters, a line in `info`, samples without U+FFFD."""
    corpus = tmp_path / "novel.txt"
    corpus.write_text(cjk_text, encoding="utf-8")
    run = tmp_path / "novel"
    runner = CliRunner()
    result = runner.invoke(main, ["train", str(corpus), "--out", str(run), "--tokenizer", "sentencepiece",
                                  "--sp-model-type", "bpe", "--vocab-size", "2000", "--max-steps", "3",
                                  "--hidden-size", "16", "--num-layers", "1", "--embedding-size", "8",
                                  "--batch-size", "2", "--seq-len", "16", "--threads", "1"])
    assert result.exit_code == 0, result.stderr
    assert "rare characters (" in result.stderr and "spelled as UTF-8 bytes" in result.stderr
    info = load(run).checkpoint.corpus["byte_fallback"]
    assert info["chars"] > 2000 and 0 < info["occurrences"] < len(cjk_text)
    shown = runner.invoke(main, ["info", str(run)])
    assert shown.exit_code == 0 and "rare characters" in shown.stdout
    sample = runner.invoke(main, ["sample", "-c", str(run), "--length", "300", "--seed", "1", "--temperature", "1.5",
                                  "-N", "3"])
    assert sample.exit_code == 0 and "\ufffd" not in sample.stdout
    assert len(sample.stdout.replace("\n", "")) >= 3 * 250
