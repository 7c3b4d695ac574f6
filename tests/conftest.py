from pathlib import Path

import pytest
import torch

# Small LSTMs on a 2-core machine run many times faster on one thread.
torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpora"
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def tiny_corpus(tmp_path) -> Path:
    """A short repetitive text a small model can learn in a few dozen steps."""
    path = tmp_path / "tiny.txt"
    path.write_text("the cat sat on the mat. " * 200, encoding="utf-8")
    return path


@pytest.fixture
def shakespeare_head(tmp_path) -> Path:
    path = tmp_path / "shakes.txt"
    text = (REPO / "corpora" / "tinyshakespeare.txt").read_text(encoding="utf-8")[:60_000]
    path.write_text(text, encoding="utf-8")
    return path
