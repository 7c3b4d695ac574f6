import math

import pytest
import torch

from charrnn.checkpoint import store as checkpoint
from charrnn.errors import ConfigError
from charrnn.model.network import ModelConfig
from charrnn.text.characters import CharVocab
from charrnn.text.corpus import split_ids
from charrnn.training.trainer import Evaluated, Finished, Progress, TrainConfig, Trainer

TEXT = "the cat sat on the mat. " * 200


def run(tmp_path, steps=60, seed=3, text=TEXT, **kw):
    vocab = CharVocab.from_text(text)
    train_ids, val_ids = split_ids(vocab.encode(text), 0.1)
    mc = ModelConfig(vocab_size=vocab.size, hidden_size=48, num_layers=1, embedding_size=16, dropout=0.0)
    tc = TrainConfig(batch_size=4, seq_len=16, lr=1e-2, warmup_steps=5, max_steps=steps, eval_every=20,
                     log_every=5, seed=seed, device="cpu", **kw)
    trainer = Trainer(mc, tc, vocab, train_ids, val_ids, tmp_path / "run")
    events = list(trainer.run())
    return trainer, events


def test_tiny_corpus_is_learned_far_below_uniform(tmp_path):
    trainer, events = run(tmp_path)
    uniform = math.log(trainer.vocab.size)
    progress = [e for e in events if isinstance(e, Progress)]
    assert progress[0].train_loss > 0.6 * uniform
    assert progress[-1].train_loss < 0.2 * uniform
    done = events[-1]
    assert isinstance(done, Finished) and done.step == 60
    assert done.best_val_loss < 0.2 * uniform
    assert (tmp_path / "run" / "best.pt").is_file() and (tmp_path / "run" / "latest.pt").is_file()


def test_same_seed_same_losses_and_different_seed_differs(tmp_path):
    def losses(seed, sub):
        _, events = run(tmp_path / sub, steps=20, seed=seed)
        return [e.train_loss for e in events if isinstance(e, Progress)]

    a, b, c = losses(1, "a"), losses(1, "b"), losses(2, "c")
    assert a == b
    assert a != c


def test_evaluations_and_best_checkpoint_track_validation(tmp_path):
    trainer, events = run(tmp_path)
    evals = [e for e in events if isinstance(e, Evaluated)]
    assert [e.step for e in evals] == [20, 40, 60]
    best = checkpoint.load(tmp_path / "run" / "best.pt")
    assert best.progress.best_val_loss == pytest.approx(min(e.val_loss for e in evals))
    latest = checkpoint.load(tmp_path / "run" / "latest.pt")
    assert latest.progress.step == 60
    assert [s for s, _ in latest.progress.history_val] == [20, 40, 60]


def test_state_is_carried_between_windows(tmp_path, monkeypatch):
    """The state fed into window k+1 is the detached state window k produced."""
    from charrnn.model.network import CharRNN

    seen = []
    original = CharRNN.forward

    def spy(self, ids, state=None):
        logits, new = original(self, ids, state)
        if self.training:
            seen.append((state, new))
        return logits, new

    monkeypatch.setattr(CharRNN, "forward", spy)
    run(tmp_path, steps=4)
    assert all(float(s[0].abs().sum()) == 0 for s in [seen[0][0]])  # zero state at the start
    for (_, produced), (fed, _) in zip(seen, seen[1:]):
        assert torch.equal(fed[0], produced[0].detach()) and not fed[0].requires_grad


def test_epoch_budget_and_too_short_corpus(tmp_path):
    vocab = CharVocab.from_text(TEXT)
    ids = vocab.encode(TEXT)
    mc = ModelConfig(vocab_size=vocab.size, hidden_size=8, num_layers=1, embedding_size=4)
    tc = TrainConfig(batch_size=4, seq_len=16, max_epochs=1, device="cpu", eval_every=1000)
    trainer = Trainer(mc, tc, vocab, ids[:4000], ids[4000:], tmp_path / "e")
    done = list(trainer.run())[-1]
    assert done.step == trainer.windows_per_epoch and done.epoch == pytest.approx(1.0)
    with pytest.raises(ConfigError, match="too short"):
        Trainer(mc, tc, vocab, ids[:7], ids[50:], tmp_path / "short")


def test_a_budget_is_required():
    with pytest.raises(ConfigError):
        TrainConfig()


@pytest.mark.parametrize(
    "options",
    [
        {"cell": "lstm"},
        {"cell": "gru"},
        {"cell": "rnn"},
        {"cell": "rnn", "nonlinearity": "relu"},
        {"cell": "lstm", "one_hot": True},
        {"cell": "gru", "embedding_size": 48, "tie_weights": True},
    ],
    ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()),
)
def test_every_cell_overfits_a_tiny_corpus(tmp_path, options):
    vocab = CharVocab.from_text(TEXT)
    train_ids, val_ids = split_ids(vocab.encode(TEXT), 0.1)
    base = {"hidden_size": 48, "num_layers": 2, "embedding_size": 16, "dropout": 0.0}
    mc = ModelConfig(vocab_size=vocab.size, **{**base, **options})
    lr = 3e-3 if options["cell"] == "rnn" else 1e-2
    tc = TrainConfig(batch_size=4, seq_len=16, lr=lr, warmup_steps=5, max_steps=120, eval_every=120,
                     log_every=10, seed=3, device="cpu")
    trainer = Trainer(mc, tc, vocab, train_ids, val_ids, tmp_path / "run")
    done = list(trainer.run())[-1]
    assert done.best_val_loss < 0.25 * math.log(vocab.size), done.best_val_loss
    if options.get("tie_weights"):
        assert trainer.model.head.weight is trainer.model.embedding.weight


def test_metrics_jsonl_has_a_row_per_log_step_and_evaluation(tmp_path):
    import json

    run(tmp_path, steps=20)
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in rows if r["event"] == "train"]
    eval_rows = [r for r in rows if r["event"] == "eval"]
    assert [r["step"] for r in train_rows] == [5, 10, 15, 20]
    assert [r["step"] for r in eval_rows] == [20]
    for key in ("epoch", "train_loss", "lr", "grad_norm", "chars_per_sec", "elapsed"):
        assert isinstance(train_rows[-1][key], float), key
    assert train_rows[0]["val_loss"] is None and eval_rows[0]["val_loss"] > 0


def test_every_target_is_trained_once_per_epoch_including_the_last_partial_window(tmp_path, monkeypatch):
    """(L - 1) is not a multiple of T here: the last window of each pass is shorter, and
    the windows of one epoch cover each stream's targets exactly once."""
    from charrnn.model.network import CharRNN

    vocab = CharVocab.from_text(TEXT)
    ids = vocab.encode(TEXT)[:4 * 50]  # 4 streams of 50: 49 targets each, T = 16 -> 16 + 16 + 16 + 1
    mc = ModelConfig(vocab_size=vocab.size, hidden_size=8, num_layers=1, embedding_size=4, dropout=0.0)
    tc = TrainConfig(batch_size=4, seq_len=16, max_epochs=2, device="cpu", eval_every=1000)
    lengths = []
    original = CharRNN.forward

    def spy(self, x, state=None):
        if self.training:
            lengths.append(x.size(1))
        return original(self, x, state)

    monkeypatch.setattr(CharRNN, "forward", spy)
    trainer = Trainer(mc, tc, vocab, ids, vocab.encode(TEXT)[:200], tmp_path / "p")
    assert trainer.windows_per_epoch == 4
    list(trainer.run())
    assert lengths == [16, 16, 16, 1] * 2


def test_carried_state_is_float32_even_when_the_model_returns_bf16(tmp_path, monkeypatch):
    """Under CUDA bf16 autocast cuDNN hands back (h, c) in 16 bits; the trainer must carry
    and save them in float32 so that a resume on the CPU or in fp32 works."""
    original = torch.nn.LSTM.forward

    def bf16_state(self, x, hx=None):
        out, (h, c) = original(self, x, hx)
        return out, (h.to(torch.bfloat16), c.to(torch.bfloat16))  # what cuDNN gives under bf16 autocast

    monkeypatch.setattr(torch.nn.LSTM, "forward", bf16_state)
    trainer, _ = run(tmp_path, steps=20)
    assert all(s.dtype == torch.float32 for s in trainer.state)
    saved = checkpoint.load(tmp_path / "run" / "latest.pt")
    assert all(s.dtype == torch.float32 for s in saved.resume.state)
    raw = torch.load(tmp_path / "run" / "latest.pt", weights_only=True)
    assert all(s.dtype == torch.float32 for s in raw["state"])
