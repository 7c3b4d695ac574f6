import pytest
import torch

from charrnn.config import CELLS, ModelConfig
from charrnn.model.network import CharRNN


def make(cell="lstm", **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=11, hidden_size=16, num_layers=2, embedding_size=8, dropout=0.0, cell=cell, **kw)
    return CharRNN(cfg).eval()


@pytest.mark.parametrize("cell", CELLS)
def test_chunked_equals_whole_sequence_with_carried_state(cell):
    model = make(cell)
    ids = torch.randint(0, 11, (3, 24))
    whole, whole_state = model(ids)
    state, parts = None, []
    for chunk in ids.split(5, dim=1):
        logits, state = model(chunk, state)
        parts.append(logits)
    torch.testing.assert_close(torch.cat(parts, dim=1), whole, rtol=1e-5, atol=1e-5)
    for a, b in zip(state, whole_state):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cell", CELLS)
def test_step_matches_forward(cell):
    model = make(cell)
    ids = torch.randint(0, 11, (2, 9))
    whole, _ = model(ids)
    state = model.init_state(2)
    for t in range(ids.size(1)):
        logits, state = model.step(ids[:, t], state)
        torch.testing.assert_close(logits, whole[:, t], rtol=1e-5, atol=1e-5)


def test_zero_state_differs_from_carried_state():
    """Guards the test above: carrying state must matter, or it would prove nothing."""
    model = make()
    ids = torch.randint(0, 11, (1, 20))
    whole, _ = model(ids)
    fresh, _ = model(ids[:, 10:])
    assert not torch.allclose(fresh, whole[:, 10:], atol=1e-4)


def test_one_hot_and_relu_rnn_variants_run():
    model = make("rnn", nonlinearity="relu", one_hot=True)
    logits, state = model(torch.randint(0, 11, (2, 4)))
    assert logits.shape == (2, 4, 11) and state[0].shape == (2, 2, 16)


@pytest.mark.parametrize("cell,nonlinearity", [("lstm", "tanh"), ("gru", "tanh"), ("rnn", "tanh"), ("rnn", "relu")])
def test_step_runs_given_cells_through_the_same_loop(cell, nonlinearity):
    """`cells` swaps the arithmetic, not the loop: torch.nn cell modules holding the
    model's public per-layer weights give the same logits and state as the default step."""
    model = make(cell, nonlinearity=nonlinearity)
    c = model.config
    cls = {"lstm": torch.nn.LSTMCell, "gru": torch.nn.GRUCell, "rnn": torch.nn.RNNCell}[cell]
    cells = []
    for layer in range(c.num_layers):
        w_ih, w_hh, b_ih, b_hh = model.layer_weights(layer)
        m = cls(w_ih.size(1), c.hidden_size, **({"nonlinearity": nonlinearity} if cell == "rnn" else {}))
        m.load_state_dict({"weight_ih": w_ih, "weight_hh": w_hh, "bias_ih": b_ih, "bias_hh": b_hh})
        cells.append(m)
    calls = []
    def head(x):
        calls.append(x.shape)
        return model.head(x)
    ids = torch.randint(0, 11, (3,))
    state = tuple(torch.randn_like(s) for s in model.init_state(3))
    want, want_state = model.step(ids, state)
    got, got_state = model.step(ids, state, cells=cells, head=head)
    assert calls == [(3, 16)]
    torch.testing.assert_close(got, want)
    for a, b in zip(got_state, want_state):
        torch.testing.assert_close(a, b)


def test_forward_returns_float32_state_when_the_rnn_returns_bfloat16(monkeypatch):
    """Under CUDA bf16 autocast cuDNN hands back (h, c) in bfloat16; the state carried to the
    next window must stay float32. The rnn is wrapped to return bfloat16 state the same way,
    without running bfloat16 arithmetic on the CPU."""
    model = make()
    ids = torch.randint(0, 11, (2, 6))
    rnn_forward = model.rnn.forward
    seen, cast = [], []

    def wrapped(x, hx):
        out, (h, c) = rnn_forward(x, hx)
        seen.append((h, c))
        return (out, (h.bfloat16(), c.bfloat16())) if cast else (out, (h, c))

    monkeypatch.setattr(model.rnn, "forward", wrapped)
    want_logits, (h, c) = model(ids)
    assert h is seen[-1][0] and c is seen[-1][1]  # float32 already: returned as is, no copy
    cast.append(True)
    logits, state = model(ids)
    assert [s.dtype for s in state] == [torch.float32, torch.float32]
    torch.testing.assert_close(state[0], h.bfloat16().float(), rtol=0, atol=0)
    torch.testing.assert_close(logits, want_logits)
    _, state = model(ids, state)  # the float32 state goes straight back in
    assert [s.dtype for s in state] == [torch.float32, torch.float32]


def test_step_returns_float32_state_when_the_cells_return_bfloat16():
    model = make()
    c = model.config

    def bf16_cell(layer):
        def cell(x, hx):
            h, cc = torch.lstm_cell(x.float(), hx, *model.layer_weights(layer))
            return h.bfloat16(), cc.bfloat16()
        return cell

    state = model.init_state(2)
    cells = [bf16_cell(k) for k in range(c.num_layers)]
    for _ in range(3):
        logits, state = model.step(torch.tensor([1, 2]), state, cells=cells, head=lambda x: model.head(x.float()))
        assert [s.dtype for s in state] == [torch.float32, torch.float32]
    assert logits.shape == (2, 11) and logits.dtype == torch.float32


@pytest.mark.parametrize("cell", CELLS)
def test_weight_drop_is_one_mask_per_window_over_the_recurrent_matrices(cell):
    """Training with weight drop equals the plain network whose hidden-to-hidden matrices
    carry the drawn masks (same mask for every stream and step), and only those matrices."""
    model = make(cell, weight_drop=0.5).train()
    plain = make(cell)  # same seed: same initial weights
    ids = torch.randint(0, 11, (3, 7))
    torch.manual_seed(5)
    logits, state = model(ids)
    torch.manual_seed(5)
    with torch.no_grad():
        for layer in range(2):
            w = getattr(plain.rnn, f"weight_hh_l{layer}")
            w.mul_(torch.empty_like(w).bernoulli_(0.5).div_(0.5))
    expected, expected_state = plain(ids)
    torch.testing.assert_close(logits, expected)
    for a, b in zip(state, expected_state):
        torch.testing.assert_close(a, b)
    logits.square().mean().backward()
    grad = model.rnn.weight_hh_l0.grad
    dropped = (grad == 0).float().mean().item()
    assert 0.3 < dropped < 0.7  # the dropped entries get no gradient
    assert (model.rnn.weight_ih_l0.grad != 0).float().mean().item() > 0.9  # the input matrices are whole


def test_weight_drop_leaves_evaluation_and_the_parameters_alone():
    model = make(weight_drop=0.6)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    ids = torch.randint(0, 11, (2, 9))
    evaluated, _ = model(ids)  # eval mode: no mask
    torch.testing.assert_close(evaluated, make()(ids)[0])
    model.train()
    trained_a, _ = model(ids)
    trained_b, _ = model(ids)
    assert not torch.allclose(trained_a, trained_b)  # a new mask per window
    assert not torch.allclose(trained_a, evaluated)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
