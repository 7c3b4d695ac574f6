import os
import shutil
import time
from pathlib import Path

import pytest
import torch

# Small LSTMs on a 2-core machine run many times faster on one thread.
torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "corpora"
REPO = Path(__file__).resolve().parents[1]

# The tiny configuration the command and API tests train: one layer of 48 units learns
# CAT_TEXT in 150 steps of 4 x 16 characters, in a second or two on one thread.
TINY = dict(hidden_size=48, num_layers=1, embedding_size=8, batch_size=4, seq_len=16, lr=1e-2, warmup_steps=5,
            dropout=0.0)
CAT_TEXT = "the cat sat on the mat. " * 200


def tiny_args(**changes) -> list[str]:
    """TINY (with `changes`; None leaves an option out) as `charrnn train` options, on one thread."""
    options = {**TINY, **changes}
    args = []
    for name, value in options.items():
        if value is not None:
            args += ["--" + name.replace("_", "-"), str(value)]
    return args + ["--threads", "1"]


@pytest.fixture(autouse=True)
def checkpoints_root(tmp_path_factory, monkeypatch) -> Path:
    """Every test's default checkpoints folder is a temporary one of its own, so no test
    reads or writes ./checkpoints (a test that needs the built-in default removes it)."""
    root = tmp_path_factory.mktemp("checkpoints-root")
    monkeypatch.setenv("CHARRNN_CHECKPOINTS", str(root))
    return root


@pytest.fixture(scope="session")
def cat_run(tmp_path_factory):
    """The tiny model trained for 150 steps on CAT_TEXT (evaluated every 50) through
    `charrnn.train`, the call `charrnn train` makes: (folder holding cat.txt and run/,
    TrainResult, events). Shared by the command and API tests, which only read it."""
    from charrnn import train

    root = tmp_path_factory.mktemp("cat")
    corpus = root / "cat.txt"
    corpus.write_text(CAT_TEXT, encoding="utf-8")
    events = []
    result = train(corpus, out=root / "run", max_steps=150, eval_every=50, on_event=events.append, device="cpu",
                   **TINY)
    return root, result, events


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


@pytest.fixture(scope="session")
def random_checkpoint(tmp_path_factory) -> Path:
    """A checkpoint with random weights and made-up progress, written through the schema:
    for the commands that read checkpoints (sample, eval, info, export), no training needed."""
    from charrnn.checkpoint import store as checkpoint
    from charrnn.config import ModelConfig, TrainConfig
    from charrnn.model.network import CharRNN
    from charrnn.text.characters import CharVocab

    torch.manual_seed(0)
    vocab = CharVocab.from_text("abcdefg \n")
    config = ModelConfig(vocab_size=vocab.size, hidden_size=12, num_layers=2, embedding_size=6, dropout=0.0, cell="gru")
    net = CharRNN(config)
    progress = checkpoint.RunState(step=7, epoch=0.5, elapsed=3.0, best_val_loss=2.0, val_loss=2.1,
                                   history_train=[[1, 2.2], [7, 2.05]], history_val=[[7, 2.0]])
    ckpt = checkpoint.Checkpoint(config, {k: v.detach().clone() for k, v in net.state_dict().items()}, vocab.to_dict(),
                                 TrainConfig(max_steps=7), {"name": "letters", "source": "letters.txt", "chars": 9},
                                 progress, device="cpu", num_parameters=net.num_parameters())
    path = tmp_path_factory.mktemp("random") / "random.pt"
    return checkpoint.save(ckpt, path)


def find_browser() -> tuple[str, str]:
    """Chromium's binary and its chromedriver, or skip."""
    driver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if os.path.exists(p)), None)
    browser = next((p for p in ("/usr/lib/chromium/chromium", shutil.which("chromium"),
                                shutil.which("chromium-browser"), shutil.which("google-chrome")) if p and os.path.exists(p)),
                   None)
    if driver is None or browser is None:
        pytest.skip("Chromium and chromedriver are needed (apt-get install chromium chromium-driver)")
    return browser, driver


def start_chromium(*args: str, logs: bool = False):
    """A headless Chromium through selenium (with the browser's and the network log when
    `logs`), or skip the test with the reason."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    binary, driver = find_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--force-device-scale-factor=1", "--hide-scrollbars", *args):
        options.add_argument(arg)
    if logs:
        options.set_capability("goog:loggingPrefs", {"performance": "ALL", "browser": "ALL"})
    try:
        return webdriver.Chrome(options=options, service=Service(driver))
    except WebDriverException as exc:
        pytest.skip(f"Chromium did not start: {exc.msg}")


def wait_until(condition, seconds: float = 10.0, interval: float = 0.01) -> bool:
    """Poll `condition` until it holds or `seconds` pass; its last answer."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(interval)
    return bool(condition())
