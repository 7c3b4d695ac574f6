import pytest
import torch

from charrnn.config import ModelConfig, TrainConfig
from charrnn.model.network import CharRNN
from charrnn.training.optim import QUINTIC, Muon, build, orthogonalise


def newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """Muon's iteration as published, in float64: the reference `orthogonalise` must match."""
    a, b, c = QUINTIC
    x = g.double() if g.size(0) <= g.size(1) else g.double().T
    x = x / x.norm()
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if g.size(0) <= g.size(1) else x.T


@pytest.mark.parametrize("shape", [(96, 24), (24, 96), (40, 40)])
def test_orthogonalise_is_the_newton_schulz_map(shape):
    torch.manual_seed(0)
    # singular values spread over three decades, as in real gradients
    u, _ = torch.linalg.qr(torch.randn(shape[0], min(shape)))
    v, _ = torch.linalg.qr(torch.randn(shape[1], min(shape)))
    g = u @ torch.diag(torch.logspace(-3, 0, min(shape))) @ v.T
    out = orthogonalise(g)
    ref = newton_schulz(g)
    assert out.shape == g.shape and out.dtype == torch.float32
    # float32 eigh resolves the smallest singular values (1e-3, squared in the Gram matrix)
    # to a few percent; one Newton-Schulz step more or less moves the result by ~1e-1
    assert (out.double() - ref).norm() / ref.norm() < 2e-3
    assert (newton_schulz(g, steps=4) - ref).norm() / ref.norm() > 2e-2


def test_orthogonalise_equalises_the_directions():
    torch.manual_seed(1)
    g = torch.randn(64, 16) @ torch.diag(torch.linspace(0.1, 10, 16))  # condition number ~100
    s = torch.linalg.svdvals(orthogonalise(g))
    assert s.max() < 1.3 and s.min() > 0.5  # from 0.1..10 to about one


def _model(cell="lstm"):
    torch.manual_seed(0)
    return CharRNN(ModelConfig(vocab_size=11, hidden_size=8, embedding_size=4, cell=cell))


def test_muon_takes_the_recurrent_matrices_and_adamw_the_rest():
    model = _model()
    opt, fused = build(model, TrainConfig(max_steps=1, optimizer="muon"))
    assert isinstance(opt, Muon) and not fused
    names = {id(p): n for n, p in model.named_parameters()}
    muon = [names[id(p)] for g in opt.param_groups if g["muon"] for p in g["params"]]
    assert sorted(muon) == ["rnn.weight_hh_l0", "rnn.weight_hh_l1"]  # the recurrent matrices only
    decayed = {names[id(p)] for g in opt.param_groups if not g["muon"] and g["weight_decay"] > 0 for p in g["params"]}
    assert decayed == {"head.weight", "rnn.weight_ih_l0", "rnn.weight_ih_l1"}  # not the embedding table, not the biases
    opt, _ = build(model, TrainConfig(max_steps=1, optimizer="adamw"))
    assert isinstance(opt, torch.optim.AdamW)


def test_the_adamw_part_of_muon_is_adamw():
    """Weights outside the Muon group follow torch's AdamW exactly (same betas, eps, decay).
    The recurrent layers are frozen so that both models compute the same gradients."""
    a, b = _model(), _model()
    for model in (a, b):
        model.eval()  # no dropout
        model.rnn.requires_grad_(False)
    config = TrainConfig(max_steps=1, optimizer="muon", lr=3e-3, weight_decay=0.1)
    mine, _ = build(a, config)
    reference = torch.optim.AdamW([{"params": [b.head.weight], "weight_decay": 0.1},
                                   {"params": [b.head.bias, b.embedding.weight], "weight_decay": 0.0}],
                                  lr=3e-3, betas=(0.9, 0.99))
    ids = torch.randint(0, 11, (3, 7))
    for _ in range(4):
        for model, opt in ((a, mine), (b, reference)):
            logits, _ = model(ids[:, :-1])
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), ids[:, 1:].flatten())
            opt.zero_grad()
            loss.backward()
            opt.step()
    for name in ("head.weight", "head.bias", "embedding.weight"):
        assert torch.allclose(a.get_parameter(name), b.get_parameter(name), atol=1e-6), name
    assert not torch.allclose(a.head.weight, _model().head.weight)  # they did move


def test_a_muon_step_has_the_rms_of_an_adamw_step():
    """The 0.2 * sqrt(max dim) scale makes Muon's step about as large as AdamW's, so that both
    parts can share one learning rate."""
    torch.manual_seed(2)
    p = torch.nn.Parameter(torch.zeros(256, 64))
    p.grad = torch.randn(256, 64)
    opt = Muon([{"params": [p], "muon": True}], lr=1.0)
    opt.step()
    rms = p.detach().pow(2).mean().sqrt().item()
    assert 0.15 < rms < 0.3  # AdamW's first step has RMS lr * 1; a typical later one about 0.2 lr


def test_muon_state_round_trips():
    model = _model()
    opt, _ = build(model, TrainConfig(max_steps=1, optimizer="muon"))
    ids = torch.randint(0, 11, (2, 5))
    logits, _ = model(ids)
    logits.sum().backward()
    opt.step()
    again, _ = build(model, TrainConfig(max_steps=1, optimizer="muon"))
    again.load_state_dict(opt.state_dict())
    buffers = [again.state[p]["momentum_buffer"] for p in again.param_groups[0]["params"]]
    assert all(torch.equal(b, opt.state[p]["momentum_buffer"]) for b, p in zip(buffers, opt.param_groups[0]["params"]))
