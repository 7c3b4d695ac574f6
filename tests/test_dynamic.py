"""Dynamic evaluation (`charrnn eval --dynamic`) and adapting to a prime (`sample --adapt`)."""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from click.testing import CliRunner

from charrnn import load
from charrnn.cli.app import main
from charrnn.config import DynamicConfig
from charrnn.model.dynamic import adapt, dynamic_loss
from charrnn.model.evaluation import evaluate

TEXT = "abcabd cab dab abba cad gag\n" * 30


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def model(random_checkpoint):
    return load(random_checkpoint)


def test_without_learning_the_dynamic_pass_is_the_static_one(model):
    ids = torch.from_numpy(model.vocab.encode(TEXT).astype("int64"))
    r = dynamic_loss(model.net, ids, DynamicConfig(segment=16, lr=0.0, decay=0.0), torch.device("cpu"))
    assert r.dynamic_nats == pytest.approx(r.static_nats, rel=1e-6)
    # and the static pass is charrnn's own evaluation of one stream in windows of the segment
    plain = evaluate(model.net, ids.unsqueeze(0), 16, torch.device("cpu"))
    assert r.static_nats == pytest.approx(plain.nats, rel=1e-6) and r.tokens == plain.tokens


def test_learning_from_the_text_lowers_its_loss_and_leaves_the_model_alone(model):
    before = {k: v.clone() for k, v in model.net.state_dict().items()}
    report = model.dynamic_loss(TEXT, DynamicConfig(segment=20, lr=3e-3))
    assert report.dynamic.nats_per_char < report.static.nats_per_char - 0.05
    assert report.static.chars == report.dynamic.chars == len(TEXT) - 1
    assert all(torch.equal(before[k], v) for k, v in model.net.state_dict().items())


def test_dynamic_eval_is_reproducible_and_never_writes_the_checkpoint(random_checkpoint, tmp_path):
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    before = digest(random_checkpoint)
    runs = [invoke("eval", text, "-c", random_checkpoint, "--dynamic", "--json", "--segment", "25") for _ in range(2)]
    assert all(r.exit_code == 0 for r in runs), runs[0].output
    first, second = (json.loads(r.stdout) for r in runs)
    assert first == {**second, "seconds": first["seconds"]}
    assert first["dynamic"]["nats_per_char"] < first["static"]["nats_per_char"]
    assert digest(random_checkpoint) == before
    plain = invoke("eval", text, "-c", random_checkpoint, "--dynamic", "-q")
    assert plain.exit_code == 0 and "static" in plain.stdout and "dynamic" in plain.stdout


def test_adapted_copy_learns_and_the_original_stays(model):
    ids = torch.from_numpy(model.vocab.encode(TEXT).astype("int64"))
    adapted = adapt(model.net, ids, DynamicConfig(segment=20, lr=3e-3), torch.device("cpu"))
    changed = [k for k, v in adapted.state_dict().items() if not torch.equal(v, model.net.state_dict()[k])]
    assert changed and not any(p.requires_grad for p in adapted.parameters())
    again = adapt(model.net, ids, DynamicConfig(segment=20, lr=3e-3), torch.device("cpu"))
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in adapted.state_dict().items())


def test_adapt_samples_are_seeded_reproducible(random_checkpoint, tmp_path):
    prime = tmp_path / "prime.txt"
    prime.write_text(TEXT)
    args = ["sample", "-c", random_checkpoint, "--prime-file", prime, "--no-echo-prime", "--length", "80",
            "--seed", "3"]
    one, two, plain = invoke(*args, "--adapt"), invoke(*args, "--adapt"), invoke(*args)
    assert one.exit_code == 0, one.output
    assert one.stdout == two.stdout and len(one.stdout) == 80
    assert one.stdout != plain.stdout
    assert "Adapted the model to the prime" in one.stderr


def test_adapt_needs_a_prime(random_checkpoint):
    result = invoke("sample", "-c", random_checkpoint, "--adapt")
    assert result.exit_code == 2 and "--adapt learns from the prime" in result.stderr
    assert "Traceback" not in result.output


@pytest.mark.parametrize("option, value", [("--segment", "0"), ("--dynamic-lr", "nan"), ("--dynamic-decay", "2")])
def test_bad_dynamic_options_are_one_sentence(random_checkpoint, tmp_path, option, value):
    text = tmp_path / "t.txt"
    text.write_text(TEXT)
    result = invoke("eval", text, "-c", random_checkpoint, "--dynamic", option, value)
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_an_adapted_model_adapts_and_scores_again(model):
    """The copy `adapted` returns has its gradients off; adapting or scoring it again
    works on a private copy all the same."""
    once = model.adapted(TEXT, DynamicConfig(segment=20, lr=3e-3))
    twice = once.adapted(TEXT, DynamicConfig(segment=20, lr=3e-3))
    assert any(not torch.equal(a, b) for a, b in zip(once.net.parameters(), twice.net.parameters()))
    report = once.dynamic_loss(TEXT, DynamicConfig(segment=20))
    assert report.dynamic.chars == len(TEXT) - 1


def test_dropout_models_adapt_without_dropout_and_keep_their_settings(tmp_path):
    from charrnn.config import ModelConfig
    from charrnn.model.network import CharRNN
    from charrnn.text.characters import CharVocab

    vocab = CharVocab.from_text(TEXT)
    for extra in ({"dropout": 0.5}, {"weight_drop": 0.5, "dropout": 0.0}):
        torch.manual_seed(0)
        net = CharRNN(ModelConfig(vocab_size=vocab.size, hidden_size=16, num_layers=2, embedding_size=8, **extra))
        ids = torch.from_numpy(vocab.encode(TEXT).astype("int64"))
        cfg = DynamicConfig(segment=20, lr=1e-3)
        a = adapt(net, ids, cfg, torch.device("cpu"))
        b = adapt(net, ids, cfg, torch.device("cpu"))
        assert all(torch.equal(x, y) for x, y in zip(a.parameters(), b.parameters()))  # no random masks drawn
        assert a.config == net.config and a.drop.p == net.drop.p and not a.training
        r = dynamic_loss(net, ids, cfg, torch.device("cpu"))
        assert r.dynamic_nats == dynamic_loss(net, ids, cfg, torch.device("cpu")).dynamic_nats
