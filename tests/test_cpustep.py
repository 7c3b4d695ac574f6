"""The sampler's CPU step (charrnn.model.cpustep) and its int8 variant (charrnn.model.quantize) against
their references, over long fed-back runs, for every cell and input kind."""

import itertools

import pytest
import torch
import torch.nn.functional as F

from charrnn.config import ModelConfig, SampleConfig
from charrnn.model import cpustep
from charrnn.model.cpustep import CpuStepper
from charrnn.model.network import CharRNN
from charrnn.model.quantize import Int8Stepper, _pack
from charrnn.model.sampling import Sampler, StepLoop
from charrnn.text.characters import CharVocab

STEPS = 1000
KINDS = {  # name: model options
    "lstm": dict(cell="lstm"),
    "gru": dict(cell="gru"),
    "rnn-tanh": dict(cell="rnn", nonlinearity="tanh"),
    "rnn-relu": dict(cell="rnn", nonlinearity="relu"),
    "lstm-one-hot": dict(cell="lstm", one_hot=True),
    "gru-one-hot": dict(cell="gru", one_hot=True),
    "lstm-tied": dict(cell="lstm", tie_weights=True, embedding_size=24),
    "rnn-relu-three-layers": dict(cell="rnn", nonlinearity="relu", num_layers=3),
}


def make_net(seed=0, vocab_size=40, hidden_size=24, **options) -> CharRNN:
    torch.manual_seed(seed)
    config = dict(vocab_size=vocab_size, hidden_size=hidden_size, num_layers=2, embedding_size=10, dropout=0.0)
    net = CharRNN(ModelConfig(**{**config, **options})).eval()
    if options.get("nonlinearity") == "relu":  # keep a relu RNN from growing without bound over 1,000 steps
        with torch.no_grad():
            for layer in range(net.config.num_layers):
                net.layer_weights(layer)[1].mul_(0.3)
    return net


def run_both(reference, fast, net, batch: int, steps: int = STEPS) -> float:
    """Feed both steps the same tokens (the reference's greedy choice, so the run follows
    the model) for `steps` steps; the largest logit difference seen."""
    state_a, state_b = net.init_state(batch), net.init_state(batch)
    ids = torch.arange(batch) % net.config.vocab_size
    worst = 0.0
    for _ in range(steps):
        a, state_a = reference(ids, state_a)
        b, state_b = fast(ids, state_b)
        worst = max(worst, (a - b).abs().max().item())
        ids = a.argmax(dim=-1)
    return worst


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("batch", [1, 3])
def test_fast_step_equals_the_model_step_over_a_long_run(kind, batch):
    net = make_net(**KINDS[kind])
    assert run_both(net.step, CpuStepper(net).step, net, batch) < 1e-4


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_without_the_token_table_layer_zero_multiplies_the_embedding(monkeypatch, cell):
    """A vocabulary too large for layer 0's per-token table takes the product path."""
    net = make_net(cell=cell)
    monkeypatch.setattr(cpustep, "MAX_TABLE_BYTES", 0)
    fast = CpuStepper(net)
    assert fast.table is None
    assert run_both(net.step, fast.step, net, 2) < 1e-4


def test_state_round_trips_through_load_and_state():
    net = make_net(cell="lstm")
    fast = CpuStepper(net)
    state = tuple(torch.randn_like(s) for s in net.init_state(3))
    fast.load(state)
    assert all(torch.equal(a, b) for a, b in zip(fast.state(), state))
    fast.load(net.init_state(1))  # another batch size reallocates
    assert fast.state()[0].shape == (2, 1, 24)


def int8_reference(net: CharRNN):
    """`CharRNN.step` with textbook cells over the same int8 products the stepper uses:
    layer 0's input product in float32 (the stepper's token table), every other matrix
    quantized per row ([W_ih W_hh] together for LSTM and RNN, apart for a GRU), the output
    head in float32. Only the loop and the layout differ from `Int8Stepper`."""
    c = net.config
    def qlinear(x, packed):
        return torch.ops.quantized.linear_dynamic(x, packed, True)  # reduce_range, as the stepper

    def cell_fn(layer):
        w_ih, w_hh, b_ih, b_hh = (t.detach() for t in net.layer_weights(layer))
        if c.cell == "gru":
            q_hh = _pack(w_hh.contiguous().numpy())
            q_ih = None if layer == 0 else _pack(w_ih.contiguous().numpy())

            def gru(x, h):
                gi = (F.linear(x, w_ih) if q_ih is None else qlinear(x, q_ih)) + b_ih
                gh = qlinear(h, q_hh) + b_hh
                r, z, n = gi.chunk(3, 1)
                hr, hz, hn = gh.chunk(3, 1)
                r, z = torch.sigmoid(r + hr), torch.sigmoid(z + hz)
                n = torch.tanh(n + r * hn)
                return (1 - z) * n + z * h
            return gru
        q_hh = _pack(w_hh.contiguous().numpy())
        q_cat = _pack(torch.cat([w_ih, w_hh], 1).contiguous().numpy())

        def gates(x, h):
            if layer == 0:
                return F.linear(x, w_ih) + qlinear(h, q_hh) + b_ih + b_hh
            return qlinear(torch.cat([x, h], 1), q_cat) + b_ih + b_hh

        if c.cell == "lstm":
            def lstm(x, hx):
                h, cx = hx
                i, f, g, o = gates(x, h).chunk(4, 1)
                cy = torch.sigmoid(f) * cx + torch.sigmoid(i) * torch.tanh(g)
                return torch.sigmoid(o) * torch.tanh(cy), cy
            return lstm
        act = torch.relu if c.nonlinearity == "relu" else torch.tanh
        return lambda x, h: act(gates(x, h))

    cells = [cell_fn(layer) for layer in range(c.num_layers)]
    return lambda ids, state: net.step(ids, state, cells=cells)


@pytest.mark.parametrize("kind", ["lstm", "gru", "rnn-tanh", "lstm-one-hot", "lstm-tied"])
def test_int8_step_equals_its_own_reference_over_a_long_run(kind):
    net = make_net(**KINDS[kind])
    assert run_both(int8_reference(net), Int8Stepper(net).step, net, 1) < 1e-4


def test_int8_stays_close_to_float32():
    """int8 weights change the logits a little, not the model."""
    net = make_net(cell="lstm")
    assert run_both(net.step, Int8Stepper(net).step, net, 2, steps=200) < 0.05


def test_sampler_text_is_the_same_through_the_reference_step():
    """Greedy text through the fast CPU step equals greedy text through `CharRNN.step`."""
    vocab = CharVocab.from_text("abcdefghijklmnop \n")
    net = make_net(vocab_size=vocab.size, cell="lstm")
    cfg = SampleConfig(length=300, temperature=0)
    fast = Sampler(net, vocab)
    assert isinstance(fast.stepper, CpuStepper)
    reference = Sampler(net, vocab)
    reference.stepper = StepLoop(net.step)
    text = "".join(c.texts[0] for c in fast.generate("ab", cfg))
    assert len(text) == 300
    assert text == "".join(c.texts[0] for c in reference.generate("ab", cfg))


def test_one_hot_with_a_large_vocabulary_builds_no_square_matrix():
    """The one-hot table is W_ih transposed: its size is W_ih's, whatever the vocabulary."""
    net = make_net(vocab_size=3000, cell="gru", one_hot=True, hidden_size=8)
    fast = CpuStepper(net)
    assert fast.table.shape == (3000, 24)
    assert run_both(net.step, fast.step, net, 2, steps=50) < 1e-4


def test_two_generations_of_one_sampler_run_side_by_side():
    vocab = CharVocab.from_text("abcdefghijklmnop \n")
    net = make_net(vocab_size=vocab.size, cell="lstm")
    sampler = Sampler(net, vocab)
    cfg_a, cfg_b = SampleConfig(length=200, seed=1, chunk_chars=8), SampleConfig(length=200, seed=2, num_samples=3)
    alone_a = "".join(c.texts[0] for c in sampler.generate("ab", cfg_a))
    alone_b = ["".join(t) for t in zip(*(c.texts for c in sampler.generate("cd", cfg_b)))]
    a, b = sampler.generate("ab", cfg_a), sampler.generate("cd", cfg_b)
    got_a, got_b = "", [""] * 3
    for chunk_a, chunk_b in itertools.zip_longest(a, b):  # interleaved, chunk by chunk
        got_a += chunk_a.texts[0] if chunk_a else ""
        got_b = [t + c for t, c in zip(got_b, chunk_b.texts)] if chunk_b else got_b
    assert got_a == alone_a and got_b == alone_b
