import os

import pytest
import torch

from charrnn import load, paths
from charrnn.checkpoint import store as checkpoint
from charrnn.errors import CheckpointError
from charrnn.model.network import CharRNN, ModelConfig
from charrnn.text.characters import CharVocab


def save_model(path, cell="lstm"):
    torch.manual_seed(0)
    vocab = CharVocab.from_text("abcdefg \n")
    cfg = ModelConfig(vocab_size=vocab.size, hidden_size=12, num_layers=2, embedding_size=6, cell=cell)
    net = CharRNN(cfg).eval()
    checkpoint.save({"model_config": cfg.to_dict(), "model": net.state_dict(), "vocab": vocab.to_dict()}, path)
    return net


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_round_trip_gives_identical_logits(tmp_path, cell):
    net = save_model(tmp_path / "m.pt", cell)
    raw = torch.load(tmp_path / "m.pt", weights_only=True)  # plain types and tensors only
    assert raw["format"] == checkpoint.FORMAT and raw["version"] == checkpoint.VERSION
    loaded = load(tmp_path / "m.pt")
    ids = torch.randint(0, 9, (2, 13))
    with torch.no_grad():
        assert torch.equal(net(ids)[0], loaded.net(ids)[0])


def test_run_folder_resolves_to_best(tmp_path):
    save_model(tmp_path / "latest.pt")
    assert paths.resolve(tmp_path) == tmp_path / "latest.pt"
    save_model(tmp_path / "best.pt")
    assert paths.resolve(tmp_path) == tmp_path / "best.pt"


def test_save_replaces_atomically_and_leaves_no_temp_files(tmp_path):
    save_model(tmp_path / "m.pt")
    first = (tmp_path / "m.pt").read_bytes()
    save_model(tmp_path / "m.pt")
    assert (tmp_path / "m.pt").read_bytes() == first
    assert os.listdir(tmp_path) == ["m.pt"]


def test_failed_write_keeps_previous_checkpoint(tmp_path, monkeypatch):
    save_model(tmp_path / "m.pt")
    before = (tmp_path / "m.pt").read_bytes()

    def broken_save(obj, fh):
        fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(CheckpointError, match="No space left"):
        save_model(tmp_path / "m.pt")
    assert (tmp_path / "m.pt").read_bytes() == before
    assert os.listdir(tmp_path) == ["m.pt"]


class Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_malicious_pickle_is_refused_and_does_not_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open("evil.pt", "wb") as fh:
        torch.save({"format": checkpoint.FORMAT, "x": Payload()}, fh)
    with pytest.raises(CheckpointError, match="Refusing to load"):
        checkpoint.load("evil.pt")
    assert not (tmp_path / "PWNED").exists()


def test_corrupt_foreign_and_future_files(tmp_path):
    save_model(tmp_path / "m.pt")
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        checkpoint.load(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a charrnn checkpoint"):
        checkpoint.load(tmp_path / "other.pt")
    torch.save({"format": checkpoint.FORMAT, "version": checkpoint.VERSION + 1}, tmp_path / "future.pt")
    with pytest.raises(CheckpointError, match="newer than this charrnn"):
        checkpoint.load(tmp_path / "future.pt")
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError):
        checkpoint.load(tmp_path / "text.pt")


def _payload(tmp_path):
    save_model(tmp_path / "m.pt")
    return torch.load(tmp_path / "m.pt", weights_only=True)


@pytest.mark.parametrize("tamper, message", [
    (lambda d: d["model_config"].update(hidden_size=-5), "hidden_size must be an integer"),
    (lambda d: d["model_config"].update(dropout=5.0), "dropout must be a number"),
    (lambda d: d["model_config"].update(cell="transformer"), "Unknown cell"),
    (lambda d: d.update(model_config=[1, 2]), "model_config section"),
    (lambda d: d["vocab"].update(chars="abc"), "vocabulary has 3 entries but the model expects 9"),
    (lambda d: d["vocab"].update(kind="bogus"), "vocabulary kind"),
    (lambda d: d.update(epoch=None), "epoch is not"),
    (lambda d: d.update(step="ten"), "step is not a count"),
    (lambda d: d["model"]["head.bias"].fill_(float("nan")), "not all finite"),
    (lambda d: d.update(history={"train": [[1, "x"]]}), "history"),
], ids=["hidden", "dropout", "cell", "config-list", "short-vocab", "vocab-kind", "epoch-none", "step-str", "nan",
        "history"])
def test_tampered_checkpoints_get_one_sentence(tmp_path, tamper, message):
    data = _payload(tmp_path)
    tamper(data)
    torch.save(data, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match=message) as info:
        load(tmp_path / "bad.pt")
    assert "\n" not in str(info.value) and str(info.value).startswith("Checkpoint ")


def test_weights_that_do_not_fit_the_config_are_refused(tmp_path):
    data = _payload(tmp_path)
    data["model_config"]["hidden_size"] = 13
    torch.save(data, tmp_path / "bad.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load(tmp_path / "bad.pt")


def test_version_1_files_are_migrated(tmp_path):
    data = _payload(tmp_path)
    data.update(version=1, optimizer={"state": {}, "param_groups": []}, rng={"torch": torch.get_rng_state()},
                state=[torch.zeros(2, 3, 12, dtype=torch.bfloat16)] * 2, train_config={"max_steps": 5})
    torch.save(data, tmp_path / "v1.pt")
    ckpt = checkpoint.load(tmp_path / "v1.pt")
    assert ckpt.version == checkpoint.VERSION and ckpt.resumable
    assert isinstance(ckpt.resume.rng, list) and len(ckpt.resume.rng) == 1
    assert all(s.dtype == torch.float32 for s in ckpt.resume.state)
    assert ckpt.train_config.optimizer == "adamw"


def test_version_2_runs_were_trained_with_adamw(tmp_path):
    """Before version 3 the optimizer was not named: those runs must resume with AdamW (their
    optimizer state is AdamW's), whatever the current default is; a named one is kept."""
    data = _payload(tmp_path)
    data.update(version=2, train_config={"max_steps": 5})
    torch.save(data, tmp_path / "v2.pt")
    assert checkpoint.load(tmp_path / "v2.pt").train_config.optimizer == "adamw"
    data.update(version=3, train_config={"max_steps": 5, "optimizer": "muon"})
    torch.save(data, tmp_path / "v3.pt")
    assert checkpoint.load(tmp_path / "v3.pt").train_config.optimizer == "muon"


def test_the_bundled_model_loads_through_the_schema():
    ckpt = checkpoint.load(paths.BUNDLED)
    assert ckpt.model_config.vocab_size == len(ckpt.vocab["chars"]) and not ckpt.resumable
    assert ckpt.summary()["best_val_loss"] == ckpt.progress.best_val_loss


def test_run_dir_knows_its_own_files_and_clears_only_those(tmp_path):
    run = paths.RunDir(tmp_path)
    own = ["best.pt", "latest.pt", "metrics.jsonl", "step-00000100.pt", "corpus.ids", "corpus.json"]
    mine = ["notes.md.tmp", "step-by-step.pt", "best.pt.bak", "model.pt", "step-1.pt"]
    for name in own + mine:
        (tmp_path / name).write_text("x")
    assert [p.name for p in run.foreign()] == sorted(mine)
    assert all(run.is_own(n) for n in own) and not any(run.is_own(n) for n in mine)
    run.clear_run()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(mine + ["corpus.ids", "corpus.json"])
    (tmp_path / f".latest.pt.{os.getpid()}.tmp").write_text("x")
    (tmp_path / ".hidden.tmp").write_text("x")
    run.remove_stale_temp_files()
    assert (tmp_path / ".hidden.tmp").exists() and not (tmp_path / f".latest.pt.{os.getpid()}.tmp").exists()


def test_the_default_checkpoint_is_always_a_run_that_list_shows(tmp_path):
    """A bare `charrnn sample` picks the newest run among those `charrnn list` shows: a
    best.pt nested deeper (a copy kept in a subfolder of a run, an archive) is neither."""
    root = tmp_path / "checkpoints"
    for folder in ("older", "newer", "archive/2025", "newest"):
        (root / folder).mkdir(parents=True)
    save_model(root / "older" / "best.pt")
    os.utime(root / "older" / "best.pt", (1_000_000, 1_000_000))
    save_model(root / "newer" / "latest.pt")  # a run with no best yet: listed, but a best wins
    save_model(root / "archive" / "2025" / "best.pt")  # nested: not a run under root
    listed = {item.name for item in checkpoint.list_runs(root) if not item.bundled}
    assert listed == {"older", "newer"}
    assert paths.find(None, root).path == (root / "older" / "best.pt")
    assert paths.find(None, root).path.parent.name in listed
    save_model(root / "newest" / "best.pt")
    assert paths.find(None, root).path == root / "newest" / "best.pt"
