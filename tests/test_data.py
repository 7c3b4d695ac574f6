import io

import numpy as np
import pytest
import torch

from charrnn.data import as_streams, eval_windows, read_corpus, split_ids, windows
from charrnn.errors import CorpusError


def test_windows_continue_exactly_where_the_previous_ended():
    ids = np.arange(3 * 41, dtype=np.int32)
    streams = as_streams(ids, 3)  # (3, 41)
    seen = list(windows(streams, seq_len=8))
    assert len(seen) == (41 - 1) // 8
    for (k0, x0, y0), (k1, x1, y1) in zip(seen, seen[1:]):
        assert k1 == k0 + 1
        # every stream's next window starts at the id following the previous window's end
        assert torch.equal(x1[:, 0], x0[:, -1] + 1)
        assert torch.equal(x1[:, 0], y0[:, -1])
    for _, x, y in seen:
        assert x.shape == y.shape == (3, 8)
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
    import charrnn.data as data
    from charrnn.data import encode_corpus

    monkeypatch.setattr(data, "_READ_BYTES", 7)  # force blocks that split characters and CRLFs
    text = "Привет, мир!\r\nhello 🙂\r\n" * 20
    (tmp_path / "a.txt").write_bytes(b"\xef\xbb\xbf" + text.encode())
    (tmp_path / "b.txt").write_text("tail without newline")
    whole = text + "tail without newline\n"
    enc = encode_corpus(tmp_path)
    assert enc.vocab.decode(enc.ids) == whole
    assert enc.chars == len(whole) and enc.files == 2
    lf = encode_corpus(tmp_path, newline="lf")
    assert lf.vocab.decode(lf.ids) == whole.replace("\r\n", "\n")


def test_cache_is_reused_and_invalidated(tmp_path):
    from charrnn.data import encode_corpus

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
    import charrnn.data as data
    from charrnn.data import encode_corpus

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
    import charrnn.data as data
    from charrnn.data import encode_corpus, normalise_newlines

    monkeypatch.setattr(data, "_READ_BYTES", 16)
    text = ("plain ascii line\r\n" * 3 + "naïve café\r\n") * 5
    (tmp_path / "m.txt").write_text(text, newline="")
    enc = encode_corpus(tmp_path / "m.txt", newline=newline)
    expected = normalise_newlines(text, newline)
    assert enc.vocab.decode(enc.ids) == expected
    import hashlib

    assert enc.sha256 == hashlib.sha256(expected.encode()).hexdigest()
