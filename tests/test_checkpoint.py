import os

import pytest
import torch

from charrnn import checkpoint, load
from charrnn.errors import CheckpointError
from charrnn.model import CharRNN, ModelConfig
from charrnn.vocab import CharVocab


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
    assert checkpoint.resolve(tmp_path) == tmp_path / "latest.pt"
    save_model(tmp_path / "best.pt")
    assert checkpoint.resolve(tmp_path) == tmp_path / "best.pt"


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
