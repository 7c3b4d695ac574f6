"""Byte-fallback pieces are drawn only in orders that are valid UTF-8: samples never hold U+FFFD."""

import codecs

import pytest
import torch

import charrnn.model.sampling as sampling
from charrnn.config import SampleConfig
from charrnn.model.network import CharRNN, ModelConfig
from charrnn.model.sampling import UTF8_STATES, Sampler, Utf8Guard, utf8_next
from charrnn.text.characters import CharVocab
from charrnn.text.sentencepiece_vocab import SentencePieceVocab

TEXT = "Hello, world!\nПривет, мир!\n漢字かな交じり文\n🙂 emoji\tand tabs  double  spaces\r\ncafé e\u0301\n" * 40
CONFIGS = {
    "temperature": dict(temperature=1.0),
    "greedy": dict(temperature=0.0),
    "top_k": dict(temperature=1.0, top_k=5),
    "top_p": dict(temperature=1.2, top_p=0.6),
}


def run_dfa(data: bytes) -> int | None:
    state = 0
    for byte in data:
        state = utf8_next(state, byte)
        if state is None:
            return None
    return state


def decodes(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def completable(data: bytes) -> bool:
    """Some continuation makes `data` valid UTF-8: Python's strict decoder finds no error
    but the end of the data (it checks the second byte's range even there: ED A0 is invalid)."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return exc.reason == "unexpected end of data"
    return True


def test_decoder_states_agree_with_pythons_strict_utf8():
    """A state (not None) iff some continuation makes the bytes valid; back at a boundary iff
    they decode completely: overlong forms, surrogates and code points past U+10FFFF refused."""
    seqs = [bytes([a]) for a in range(256)] + [bytes([a, b]) for a in range(256) for b in range(256)]
    seqs += [bytes([a, b, c]) for a in range(0xE0, 0xF5) for b in range(256) for c in (0x7F, 0x80, 0x9F, 0xA0, 0xBF, 0xC0)]
    seqs += [bytes([a, b, 0x80, d]) for a in range(0xF0, 0xF5) for b in range(256) for d in (0x7F, 0x80, 0xBF, 0xC0)]
    for data in seqs:
        state = run_dfa(data)
        assert (state is not None) == completable(data), data.hex()
        assert (state == 0) == decodes(data), data.hex()


def byte_vocab_pieces() -> list[bytes]:
    """A vocabulary shaped like sentencepiece's: 256 byte pieces, a control piece, whole pieces."""
    return [bytes([b]) for b in range(256)] + [b""] + [w.encode() for w in ("ab", "é", "漢字", " the", "\n", "🙂")]


@pytest.mark.parametrize("name", list(CONFIGS))
def test_guard_keeps_every_stream_valid_whatever_the_logits(name):
    """32 streams x 600 draws from random logits (greedy, top-k and top-p included): every
    stream's bytes stay a valid UTF-8 prefix and the banned control piece is never drawn."""
    pieces = byte_vocab_pieces()
    banned = [256]
    guard = Utf8Guard(pieces, banned, 32, torch.device("cpu"))
    cfg = SampleConfig(**CONFIGS[name])
    gen = torch.Generator().manual_seed(0)
    drawn = []
    for _ in range(600):
        logits = torch.randn(32, len(pieces), generator=gen) * 3  # (N, V)
        token = sampling.choose(guard.mask(logits), cfg, gen)  # (N,)
        guard.advance(token)
        drawn.append(token)
    tokens = torch.stack(drawn, dim=1).tolist()  # (N, steps)
    assert not any(256 in row for row in tokens)
    lone_bytes = 0
    for row in tokens:
        data = b"".join(pieces[i] for i in row)
        assert completable(data)
        lone_bytes += sum(i >= 0x80 for i in row if i < 256)
    assert lone_bytes > 3_000  # the byte pieces were drawn, not merely avoided


def test_char_vocabularies_get_no_guard():
    """Characters are whole pieces: no mask, no per-step work (UTF-8 of any character, a
    lone surrogate's surrogatepass bytes included, is never a lone byte)."""
    assert Utf8Guard.for_vocab(CharVocab.from_text("aé漢🙂\n\ud800"), 4, torch.device("cpu")) is None


def test_states_a_vocabulary_cannot_leave_are_never_entered():
    """Without the continuation bytes A0..BF, E0 (which needs one of them next) is banned."""
    pieces = [bytes([b]) for b in range(256) if not 0xA0 <= b <= 0xBF] + [b"a"]
    guard = Utf8Guard(pieces, [], 1, torch.device("cpu"))
    allowed = guard.penalty == 0  # (S, V)
    after = guard.next.view(UTF8_STATES, -1)  # (S, V)
    assert not allowed[0, pieces.index(b"\xe0")] and allowed[0, pieces.index(b"\xe1")]
    for state in range(UTF8_STATES):
        if (allowed & (after == state)).any():  # reachable: something to draw there
            assert allowed[state].any(), state


@pytest.fixture(scope="module")
def sp_vocab():
    return SentencePieceVocab.train(TEXT, vocab_size=400)


def byte_id(vocab, byte: int) -> int:
    return vocab.sp.piece_to_id(f"<0x{byte:02X}>")


@pytest.fixture(scope="module")
def byte_loving_net(sp_vocab):
    """A random model whose head favours the non-ASCII byte pieces: drawn freely, they would
    mostly form invalid sequences."""
    torch.manual_seed(0)
    net = CharRNN(ModelConfig(vocab_size=sp_vocab.size, hidden_size=16, num_layers=1, embedding_size=8))
    with torch.no_grad():
        net.head.bias[[byte_id(sp_vocab, b) for b in range(0x80, 0x100)]] += 4.0
    return net


def sample(net, vocab, cfg, quantize=False, monkeypatch=None) -> tuple[list[str], list[list[int]]]:
    """The texts of the N samples and every id drawn for each stream."""
    drawn = []
    real_choose = sampling.choose

    def recording_choose(logits, cfg, generator):
        token = real_choose(logits, cfg, generator)
        drawn.append(token.clone())
        return token

    monkeypatch.setattr(sampling, "choose", recording_choose)
    texts = [""] * cfg.num_samples
    for chunk in Sampler(net, vocab, quantize=quantize).generate("Привет", cfg):
        texts = [t + c for t, c in zip(texts, chunk.texts)]
    return texts, torch.stack(drawn, dim=1).tolist()


@pytest.mark.parametrize("name", list(CONFIGS))
@pytest.mark.parametrize("seed", [1, 2])
def test_samples_hold_no_replacement_character(sp_vocab, byte_loving_net, monkeypatch, name, seed):
    """1,200 characters over 4 streams per case: no U+FFFD, and each text is exactly what the
    ids drawn decode to as strict UTF-8 (cut at the length)."""
    cfg = SampleConfig(length=300, seed=seed, num_samples=4, **CONFIGS[name])
    texts, drawn = sample(byte_loving_net, sp_vocab, cfg, monkeypatch=monkeypatch)
    pieces = sp_vocab.piece_bytes()
    multibyte = 0
    for text, ids in zip(texts, drawn):
        assert len(text) == 300 and "\ufffd" not in text
        strict = codecs.getincrementaldecoder("utf-8")("strict").decode(b"".join(pieces[i] for i in ids))
        assert strict.startswith(text), next(i for i, (a, b) in enumerate(zip(strict, text)) if a != b)
        multibyte += sum(1 for i in ids if byte_id(sp_vocab, 0x80) <= i <= byte_id(sp_vocab, 0xFF))
    assert multibyte > 300  # the rig works: byte pieces were drawn a lot


def test_without_the_guard_the_rig_produces_replacement_characters(sp_vocab, byte_loving_net, monkeypatch):
    """The same rig, unguarded, writes U+FFFD: the tests above would catch a broken guard."""
    monkeypatch.setattr(Utf8Guard, "for_vocab", classmethod(lambda cls, *args: None))
    texts, _ = sample(byte_loving_net, sp_vocab, SampleConfig(length=200, seed=1, temperature=1.0), monkeypatch=monkeypatch)
    assert "\ufffd" in texts[0]


def test_int8_sampling_is_guarded_too(sp_vocab, byte_loving_net, monkeypatch):
    cfg = SampleConfig(length=300, seed=3, temperature=1.0, num_samples=2)
    texts, _ = sample(byte_loving_net, sp_vocab, cfg, quantize=True, monkeypatch=monkeypatch)
    assert all(len(t) == 300 and "\ufffd" not in t for t in texts)


@pytest.fixture
def e4_net(sp_vocab):
    """Logits from the bias alone: byte E4 best, then B8, then 80; every other piece 0."""
    net = CharRNN(ModelConfig(vocab_size=sp_vocab.size, hidden_size=8, num_layers=1, embedding_size=4))
    with torch.no_grad():
        net.head.weight.zero_()
        net.head.bias.zero_()
        for byte, value in ((0xE4, 50.0), (0xB8, 40.0), (0x80, 30.0)):
            net.head.bias[byte_id(sp_vocab, byte)] = value
    return net


def test_greedy_spells_whole_characters_from_byte_pieces(sp_vocab, e4_net):
    """Greedy would repeat E4 forever; masked, it completes E4 B8 B8 = U+4E38 each time."""
    out = "".join(c.texts[0] for c in Sampler(e4_net, sp_vocab).generate("", SampleConfig(length=5, temperature=0)))
    assert out == "\u4e38" * 5


def test_a_character_cut_by_max_time_is_dropped(sp_vocab, e4_net):
    """The first draw is the lead byte E4 and the time is up after it: the incomplete
    character is dropped, not written as U+FFFD."""
    cfg = SampleConfig(length=100, temperature=0, max_time=1e-9, num_samples=2)
    chunks = list(Sampler(e4_net, sp_vocab).generate("", cfg))
    assert [t for c in chunks for t in c.texts if t] == [] and chunks[-1].done == [True, True]
