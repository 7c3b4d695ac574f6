import hashlib
import io

import numpy as np
import pytest
import torch

from charrnn.config import CorpusOptions
from charrnn.errors import CorpusError
from charrnn.text.corpus import as_streams, eval_windows, read_corpus, split_ids, split_text


def test_windows_continue_exactly_where_the_previous_ended():
    ids = np.arange(3 * 41, dtype=np.int32)
    streams = as_streams(ids, 3)  # (3, 41)
    seen = list(eval_windows(streams, seq_len=8))
    full = seen[: (41 - 1) // 8]  # the windows of a full T (the last one is shorter)
    for (x0, y0), (x1, y1) in zip(seen, seen[1:]):
        # every stream's next window starts at the id following the previous window's end
        assert torch.equal(x1[:, 0], x0[:, -1] + 1)
        assert torch.equal(x1[:, 0], y0[:, -1])
    for x, y in full:
        assert x.shape == y.shape == (3, 8)
    for x, y in seen:
        assert torch.equal(y[:, :-1], x[:, 1:])
        assert torch.equal(y, x + 1)  # ids are consecutive integers: y is x shifted by one
    # streams are contiguous slices of the id sequence
    assert torch.equal(streams[1], torch.arange(41, 82, dtype=torch.int32))


def test_eval_windows_cover_every_target_once():
    streams = as_streams(np.arange(2 * 30, dtype=np.int32), 2)
    targets = torch.cat([y for _, y in eval_windows(streams, 8)], dim=1)
    assert torch.equal(targets, streams[:, 1:])


def test_split_is_contiguous_tail():
    ids = np.arange(1000)
    train, val = split_ids(ids, 0.1)
    assert len(val) == 100 and val[0] == 900 and train[-1] == 899


@pytest.mark.parametrize("n", [0, 1, 9, 10, 11, 999, 1003])
def test_text_split_rounds_as_the_id_split(n):
    text = "".join(chr(97 + i % 26) for i in range(n))
    head, tail = split_text(text, 0.1)
    train, val = split_ids(np.arange(n), 0.1)
    assert head + tail == text and (len(head), len(tail)) == (len(train), len(val))
    assert split_text(text) == (head, tail)  # the default is the training default


def test_folder_is_read_in_sorted_order(tmp_path):
    (tmp_path / "b.txt").write_text("second\n")
    (tmp_path / "a.txt").write_text("first")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "c.md").write_text("third\n")
    (tmp_path / "blob.bin").write_bytes(b"\x00\x01\x02")
    corpus = read_corpus(tmp_path)
    assert corpus.text == "first\nsecond\nthird\n"
    assert corpus.files == 3


def test_stdin_and_bom():
    corpus = read_corpus("-", stdin=io.BytesIO("\ufeffhello".encode("utf-8")))
    assert corpus.text == "hello" and corpus.name == "stdin"


def test_crlf_kept_by_default_and_normalised_on_request(tmp_path):
    path = tmp_path / "crlf.txt"
    path.write_bytes(b"a\r\nb\r\n")
    assert read_corpus(path).text == "a\r\nb\r\n"
    assert read_corpus(path, newline="lf").text == "a\nb\n"


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "is empty"),
        (b"  \n\t\n", "only whitespace"),
        (b"abc\x00def", "NUL byte at byte offset 3"),
        (b"abc\xffdef", "byte offset 3"),
    ],
)
def test_unusable_corpora_give_one_sentence(tmp_path, content, message):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(CorpusError, match=message):
        read_corpus(path)


def test_invalid_utf8_can_be_replaced(tmp_path):
    path = tmp_path / "bad.txt"
    path.write_bytes(b"abc\xffdef")
    assert read_corpus(path, errors="replace").text == "abc\ufffddef"


def test_missing_path_and_empty_folder(tmp_path):
    with pytest.raises(CorpusError, match="does not exist"):
        read_corpus(tmp_path / "nope.txt")
    with pytest.raises(CorpusError, match="no text files"):
        read_corpus(tmp_path)


def test_streaming_encode_equals_in_memory(tmp_path, monkeypatch):
    import charrnn.text.corpus as data
    from charrnn.text.corpus import encode_corpus

    monkeypatch.setattr(data, "_READ_BYTES", 7)  # force blocks that split characters and CRLFs
    text = "Привет, мир!\r\nhello 🙂\r\n" * 20
    (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbf" + text.encode())
    (tmp_path / "b.txt").write_text("tail without newline")
    whole = text + "tail without newline\n"
    enc = encode_corpus(tmp_path)
    assert enc.vocab.decode(enc.ids) == whole
    assert enc.chars == len(whole) and enc.files == 2
    lf = encode_corpus(tmp_path, options=CorpusOptions(newline="lf"))
    assert lf.vocab.decode(lf.ids) == whole.replace("\r\n", "\n")


def test_cache_is_reused_and_invalidated(tmp_path):
    from charrnn.text.corpus import encode_corpus

    corpus = tmp_path / "c.txt"
    corpus.write_text("abcabc\n" * 100)
    first = encode_corpus(corpus, cache_dir=tmp_path / "run")
    assert isinstance(first.ids, np.memmap)
    again = encode_corpus(corpus, cache_dir=tmp_path / "run")
    assert np.array_equal(again.ids, first.ids) and again.sha256 == first.sha256
    corpus.write_text("xyzxyz\n" * 100)
    changed = encode_corpus(corpus, cache_dir=tmp_path / "run")
    assert changed.vocab.chars == ["\n", "x", "y", "z"]
    assert changed.sha256 != first.sha256


def test_streaming_errors_name_the_byte_offset(tmp_path, monkeypatch):
    import charrnn.text.corpus as data
    from charrnn.text.corpus import encode_corpus

    monkeypatch.setattr(data, "_READ_BYTES", 5)
    path = tmp_path / "bad.txt"
    path.write_bytes("ééé".encode() + b"ab\xffcd")
    with pytest.raises(CorpusError, match="byte offset 8"):
        encode_corpus(path)
    path.write_bytes(b"\xef\xbb\xbfab\xff")
    with pytest.raises(CorpusError, match="byte offset 5"):
        encode_corpus(path)
    path.write_text(" \n\t")
    with pytest.raises(CorpusError, match="only whitespace"):
        encode_corpus(path)


@pytest.mark.parametrize("newline", ["keep", "lf"])
def test_ascii_fast_path_mixes_with_decoded_blocks(tmp_path, monkeypatch, newline):
    import charrnn.text.corpus as data
    from charrnn.text.corpus import encode_corpus, normalise_newlines

    monkeypatch.setattr(data, "_READ_BYTES", 16)
    text = ("plain ascii line\r\n" * 3 + "naïve café\r\n") * 5
    (tmp_path / "m.txt").write_text(text, newline="")
    enc = encode_corpus(tmp_path / "m.txt", options=CorpusOptions(newline=newline))
    expected = normalise_newlines(text, newline)
    assert enc.vocab.decode(enc.ids) == expected
    import hashlib

    assert enc.sha256 == hashlib.sha256(expected.encode()).hexdigest()


def test_lf_normalisation_ignores_block_boundaries(tmp_path, monkeypatch):
    """A CRLF split across two reads is one newline, and a file ending in a lone CR gains no
    extra newline when folder files are joined: the ids are those of `read_corpus`."""
    import charrnn.text.corpus as data
    from charrnn.text.corpus import encode_corpus

    monkeypatch.setattr(data, "_READ_BYTES", 3)  # b"ab\r" | b"\ncd" ...: the CRLF is on a boundary
    (tmp_path / "a.txt").write_bytes(b"ab\r\ncd\r")
    (tmp_path / "b.txt").write_bytes(b"x\r\ny")
    expected = read_corpus(tmp_path, newline="lf").text
    assert expected == "ab\ncd\nx\ny\n"
    enc = encode_corpus(tmp_path, options=CorpusOptions(newline="lf"))
    assert enc.vocab.decode(enc.ids) == expected
    assert enc.chars == len(expected)


def test_bom_is_only_stripped_at_the_start(tmp_path, monkeypatch):
    """An ASCII first block settles that a file has no BOM: a U+FEFF later is text."""
    import charrnn.text.corpus as data
    from charrnn.text.corpus import encode_corpus

    monkeypatch.setattr(data, "_READ_BYTES", 3)
    path = tmp_path / "f.txt"
    path.write_bytes(b"abc" + "\ufeffdef\n".encode())
    assert read_corpus(path).text == "abc\ufeffdef\n"
    enc = encode_corpus(path)
    assert enc.vocab.decode(enc.ids) == "abc\ufeffdef\n"


def test_reader_and_encoder_agree_on_every_block_size(tmp_path, monkeypatch):
    import charrnn.text.corpus as data
    from charrnn.text.corpus import encode_corpus

    (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbfone\r\ntwo\r" + "é\r\n🙂".encode())
    (tmp_path / "b.txt").write_bytes(b"\r\nthree\r\r\n")
    (tmp_path / "c.txt").write_bytes(b"")
    for newline in ("keep", "lf"):
        monkeypatch.setattr(data, "_READ_BYTES", 1 << 24)
        whole = read_corpus(tmp_path, newline=newline).text
        for size in range(1, 12):
            monkeypatch.setattr(data, "_READ_BYTES", size)
            assert read_corpus(tmp_path, newline=newline).text == whole, (newline, size)
            enc = encode_corpus(tmp_path, options=CorpusOptions(newline=newline))
            assert enc.vocab.decode(enc.ids) == whole, (newline, size)


def test_errors_give_file_byte_offsets_whatever_the_reads(tmp_path, monkeypatch):
    import charrnn.text.corpus as data

    path = tmp_path / "bad.txt"
    path.write_bytes(b"\xef\xbb\xbf" + "é".encode() * 5 + b"x\xff")  # the bad byte is at offset 14
    for size in (1, 2, 3, 4, 7, 1 << 24):
        monkeypatch.setattr(data, "_READ_BYTES", size)
        with pytest.raises(CorpusError, match=r"is not valid UTF-8 text \(byte offset 14\)"):
            read_corpus(path)
    path.write_bytes(b"a" * 5000 + b"\x00")
    monkeypatch.setattr(data, "_READ_BYTES", 1000)  # the NUL is found across reads of the head
    with pytest.raises(CorpusError, match="NUL byte at byte offset 5000"):
        read_corpus(path)


def test_unknown_and_non_text_encodings_are_one_sentence(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("hello\n")
    for name in ("klingon", "rot13", "base64"):
        with pytest.raises(CorpusError, match=f"^Unknown text encoding '{name}'.$"):
            read_corpus(path, encoding=name)


SP = dict(tokenizer="sentencepiece", vocab_size=400)
MIXED = "Hello, world!\nПривет, мир!\n漢字かな交じり文\n🙂 emoji\tand tabs\r\ncafé e\u0301\n" * 30


def _old_sentencepiece_path(text: str, vocab_size: int):
    """What training did before sentencepiece corpora streamed: the text in memory."""
    from charrnn.text.sentencepiece_vocab import SentencePieceVocab

    vocab = SentencePieceVocab.train(text, vocab_size)
    return vocab, vocab.encode(text), hashlib.sha256(text.encode("utf-8")).hexdigest()


def test_sentencepiece_corpus_streams_through_the_cache(tmp_path, monkeypatch):
    import charrnn.text.corpus as data
    import charrnn.text.sentencepiece_vocab as subword
    from charrnn.text.corpus import encode_corpus

    monkeypatch.setattr(data, "_READ_BYTES", 100)
    monkeypatch.setattr(subword, "_ENCODE_CHARS", 64)  # chunks cut inside blocks and across them
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text(MIXED, encoding="utf-8", newline="")
    (corpus / "b.txt").write_text("no newline at the end ✓", encoding="utf-8")
    text = read_corpus(corpus).text
    vocab, ids, digest = _old_sentencepiece_path(text, 400)

    run = tmp_path / "run"
    enc = encode_corpus(corpus, cache_dir=run, options=CorpusOptions(**SP))
    assert isinstance(enc.ids, np.memmap) and not enc.ids.flags.owndata
    assert enc.vocab.model == vocab.model
    assert np.array_equal(enc.ids, ids) and enc.ids.dtype == ids.dtype
    assert (enc.sha256, enc.chars, enc.files) == (digest, len(text), 2)
    assert sorted(p.name for p in run.iterdir()) == ["corpus.ids", "corpus.json"]

    built = (run / "corpus.ids").stat().st_ino
    again = encode_corpus(corpus, cache_dir=run, options=CorpusOptions(**SP))
    resumed = encode_corpus(corpus, cache_dir=run, vocab=enc.vocab, options=CorpusOptions(**SP))
    assert (run / "corpus.ids").stat().st_ino == built  # both reused the cache
    assert again.vocab.model == vocab.model and np.array_equal(again.ids, ids) and again.sha256 == digest
    assert resumed.vocab is enc.vocab and np.array_equal(resumed.ids, ids)

    other = encode_corpus(corpus, cache_dir=run, options=CorpusOptions(**SP, sp_model_type="bpe"))
    assert (run / "corpus.ids").stat().st_ino != built  # a tokenizer option rebuilds it
    assert other.vocab.model != vocab.model
    chars = encode_corpus(corpus, cache_dir=run)
    assert chars.vocab.kind == "char" and chars.vocab.decode(chars.ids) == text


def test_sentencepiece_on_stdin_equals_the_file(tmp_path):
    from charrnn.text.corpus import encode_corpus

    path = tmp_path / "m.txt"
    path.write_text(MIXED, encoding="utf-8", newline="")
    from_file = encode_corpus(path, options=CorpusOptions(**SP))
    from_stdin = encode_corpus("-", options=CorpusOptions(**SP), stdin=io.BytesIO(MIXED.encode()))
    assert from_stdin.vocab.model == from_file.vocab.model
    assert np.array_equal(from_stdin.ids, from_file.ids) and from_stdin.sha256 == from_file.sha256
    assert (from_stdin.name, from_stdin.source, from_stdin.files) == ("stdin", "-", 1)


def test_large_sentencepiece_corpus_trains_on_a_spread_sample(tmp_path, monkeypatch):
    """Past the training cap the lines are sampled in a second pass, as the in-memory
    training samples them: the same vocabulary, without keeping the text."""
    import charrnn.text.corpus as data
    import charrnn.text.sentencepiece_vocab as subword
    from charrnn.text.corpus import encode_corpus

    monkeypatch.setattr(data, "_READ_BYTES", 256)
    monkeypatch.setattr(subword, "_MAX_TRAIN_CHARS", 700)  # MIXED is ~2400 characters: stride 3
    path = tmp_path / "m.txt"
    path.write_text(MIXED, encoding="utf-8", newline="")
    vocab, ids, _ = _old_sentencepiece_path(MIXED, 400)
    enc = encode_corpus(path, cache_dir=tmp_path / "run", options=CorpusOptions(**SP))
    assert enc.vocab.model == vocab.model and np.array_equal(enc.ids, ids)


def test_a_full_disk_is_one_sentence_and_leaves_no_temporary_file(tmp_path, monkeypatch):
    import errno

    import charrnn.paths as files
    from charrnn.text.corpus import encode_corpus

    corpus = tmp_path / "c.txt"
    corpus.write_text("abcabc\n" * 100)
    run = tmp_path / "run"

    class Full(io.FileIO):
        def write(self, b):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(files, "open", lambda path, mode: Full(path, mode), raising=False)
    for options in (CorpusOptions(), CorpusOptions(**SP)):
        with pytest.raises(CorpusError, match=rf"^Could not write the corpus cache {run / 'corpus.ids'}: no space left in "
                                              rf"{run} \([\d,.]+ MB are free\)\.$"):
            encode_corpus(corpus, cache_dir=run, options=options)
        assert list(run.iterdir()) == []


def test_changed_reading_options_rebuild_the_cache(tmp_path):
    from charrnn.text.corpus import encode_corpus

    corpus = tmp_path / "c.txt"
    corpus.write_bytes(b"ab\r\ncd\r\n" * 10)
    keep = encode_corpus(corpus, cache_dir=tmp_path / "run")
    lf = encode_corpus(corpus, cache_dir=tmp_path / "run", options=CorpusOptions(newline="lf"))
    assert keep.chars == 80 and lf.chars == 60 and keep.sha256 != lf.sha256
    assert lf.vocab.decode(lf.ids) == "ab\ncd\n" * 10
