import pytest
import torch

from charrnn.model import CELLS, CharRNN, ModelConfig


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
