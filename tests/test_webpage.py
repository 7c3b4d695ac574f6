"""`charrnn export RUN model.html`: one self-contained page that generates in the browser.

The export's refusals run everywhere. The page itself is opened from file:// in headless
Chromium (selenium; chromium and chromium-driver from Debian, which CI installs as root),
skipped with the reason where either is missing: it must generate the requested length,
follow seed, stop sequence and the Stop button, fetch nothing, and give charrnn's own
greedy text for every cell, one-hot, tied and sentencepiece models.
"""

from __future__ import annotations

import json
import os
import re
import time
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from conftest import start_chromium

from charrnn.checkpoint import store as checkpoint
from charrnn.checkpoint.export import export
from charrnn.config import ModelConfig, SampleConfig, TrainConfig
from charrnn.errors import CharrnnError
from charrnn.model.network import CharRNN
from charrnn.model.sampling import Sampler
from charrnn.text.characters import CharVocab

REPO = Path(__file__).resolve().parents[1]
BUNDLED = REPO / "charrnn" / "models" / "tinyshakespeare.pt"
SCREENSHOT = os.environ.get("CHARRNN_SCREENSHOT") == "1"
TEXT = "the cat sat on the mat.\nthe dog ran far, far away!\n" * 40 + "naïve café ÆØÅ\n" * 3


def make_checkpoint(folder: Path, name: str, vocab=None, scale: float = 2.5, **model) -> Path:
    """A checkpoint with random weights, scaled up so that greedy choices are decisive."""
    vocab = vocab or CharVocab.from_text(TEXT)
    torch.manual_seed(len(name))
    config = ModelConfig(vocab_size=vocab.size, **{"hidden_size": 20, "num_layers": 2, "embedding_size": 8,
                                                    "dropout": 0.0, **model})
    net = CharRNN(config)
    weights = {k: (v.detach() * scale).clone() for k, v in net.state_dict().items()}
    progress = checkpoint.RunState(step=3, epoch=0.1, elapsed=2.0, best_val_loss=2.5, val_loss=2.5)
    ckpt = checkpoint.Checkpoint(config, weights, vocab.to_dict(), TrainConfig(max_steps=3),
                                 {"name": name, "source": f"{name}.txt", "chars": len(TEXT)}, progress,
                                 device="cpu", num_parameters=net.num_parameters())
    return checkpoint.save(ckpt, folder / f"{name}.pt")


def _sampler(path: Path) -> Sampler:
    ckpt = checkpoint.load(path)
    net = CharRNN(ckpt.model_config)
    net.load_state_dict({k: v.float() for k, v in ckpt.weights.items()})
    return Sampler(net, ckpt.vocabulary())


def charrnn_text(path: Path, prime: str, length: int) -> str:
    """charrnn's own greedy text (the sampler's CPU step), the page's reference."""
    chunks = _sampler(path).generate(prime, SampleConfig(length=length, temperature=0))
    return "".join(chunk.texts[0] for chunk in chunks)


# -- the export, without a browser -------------------------------------------------------
def test_export_writes_one_file_that_needs_nothing_else(tmp_path):
    page = export(BUNDLED, tmp_path / "shakespeare.html")
    text = page.read_text(encoding="utf-8")
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', text).group(1)
    assert "default-src 'none'" in csp and "connect-src 'none'" in csp and "unsafe-inline" not in csp
    # nothing is loaded from elsewhere: no src or href attributes, no URL in the scripts
    assert not re.search(r"\s(src|href)=", text)
    assert "http://" not in text and "https://" not in text.replace("https://pypi", "")
    model = json.loads(re.search(r'id="charrnn-model">(.*?)</script>', text, re.S).group(1))
    assert model["cell"] == "lstm" and model["precision"] == "float16"
    assert {a["dtype"] for a in model["arrays"]} == {"float16"}
    weights = sum(a["shape"][0] * (a["shape"][1] if len(a["shape"]) > 1 else 1) for a in model["arrays"])
    assert weights * 2 < page.stat().st_size < weights * 2 * 1.4 + 200_000  # base64 of float16, and a little page


def test_precision_and_quantize_set_the_weights_types(tmp_path):
    f32 = export(BUNDLED, tmp_path / "f32.html", precision="float32")
    int8 = export(BUNDLED, tmp_path / "int8.html", quantize=True)
    f16 = export(BUNDLED, tmp_path / "f16.html")
    assert int8.stat().st_size < f16.stat().st_size < f32.stat().st_size
    model = json.loads(re.search(r'id="charrnn-model">(.*?)</script>', int8.read_text(), re.S).group(1))
    types = {a["name"]: a["dtype"] for a in model["arrays"]}
    assert types["layers.1.w"] == "int8" and types["head.w"] == "int8" and types["layers.1.b"] == "float16"


@pytest.mark.parametrize("kwargs, message", [
    ({"half": True}, "--half applies to .pt and .safetensors"),
    ({"quantize": True, "precision": "float32"}, "cannot be combined"),
    ({"precision": "float64"}, "Unknown precision"),
])
def test_export_refuses_options_that_make_no_sense(tmp_path, kwargs, message):
    with pytest.raises(CharrnnError, match=message):
        export(BUNDLED, tmp_path / "x.html", **kwargs)
    assert not (tmp_path / "x.html").exists()


def test_page_options_are_refused_for_other_formats(tmp_path):
    with pytest.raises(CharrnnError, match="apply to web page"):
        export(BUNDLED, tmp_path / "x.pt", quantize=True)


def test_existing_page_needs_force_and_a_page_is_not_a_checkpoint(tmp_path):
    out = tmp_path / "page.html"
    out.write_text("mine")
    with pytest.raises(CharrnnError, match="--force"):
        export(BUNDLED, out)
    assert out.read_text() == "mine"
    export(BUNDLED, out, force=True)
    with pytest.raises(CharrnnError, match="web page export"):
        checkpoint.load(out)


def test_a_model_too_large_for_a_page_is_refused_in_one_sentence(tmp_path, monkeypatch):
    from charrnn.checkpoint import webpage

    monkeypatch.setattr(webpage, "MAX_PAGE_FLOATS", 1000)
    with pytest.raises(CharrnnError, match=r"a web page holds at most .* Export it as \.pt or \.onnx"):
        export(BUNDLED, tmp_path / "x.html")


def test_hostile_corpus_name_cannot_break_out_of_the_page(tmp_path):
    path = make_checkpoint(tmp_path, "x")
    ckpt = checkpoint.load(path)
    evil = '</script><script>alert(1)</script>{{script}}<!--'
    hostile = checkpoint.save(replace(ckpt, corpus={**ckpt.corpus, "name": evil}), tmp_path / "evil.pt")
    text = export(hostile, tmp_path / "evil.html").read_text()
    assert "<script>alert(1)" not in text and text.count("<script>") == 1
    assert text.count("const block = (id)") == 1  # "{{script}}" in the name stays text: one pass fills the page


def test_a_vocabulary_the_page_cannot_encode_is_refused_in_one_sentence(tmp_path):
    from charrnn.text.sentencepiece_vocab import SentencePieceVocab

    vocab = SentencePieceVocab.train(TEXT, vocab_size=300, model_type="char")
    path = make_checkpoint(tmp_path, "spchar", vocab)
    with pytest.raises(CharrnnError, match=r"^A web page can encode primes for unigram and BPE sentencepiece "
                                           r"vocabularies, not char\.$"):
        export(path, tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists()


def test_cli_export_html(tmp_path):
    from click.testing import CliRunner

    from charrnn.cli.app import main

    result = CliRunner().invoke(main, ["export", str(BUNDLED), str(tmp_path / "p.html"), "--quantize"])
    assert result.exit_code == 0, result.output
    assert "Wrote" in result.output
    # the names -c takes: "bundled", and a run's name under --checkpoints-dir
    result = CliRunner().invoke(main, ["export", "bundled", str(tmp_path / "b.html"),
                                       "--checkpoints-dir", str(tmp_path / "none")])
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "letters"
    run.mkdir(parents=True)
    (run / "best.pt").write_bytes(make_checkpoint(tmp_path, "letters").read_bytes())
    result = CliRunner().invoke(main, ["export", "letters", str(tmp_path / "l.html"), "--checkpoints-dir",
                                       str(tmp_path / "runs")])
    assert result.exit_code == 0, result.output
    assert "letters · charrnn" in (tmp_path / "l.html").read_text(encoding="utf-8")
    result = CliRunner().invoke(main, ["export", str(BUNDLED), str(tmp_path / "p.pt"), "--precision", "float32"])
    assert result.exit_code != 0 and "apply to web page" in result.output and "Traceback" not in result.output


# -- the page in a browser ---------------------------------------------------------------


@pytest.fixture(scope="module")
def browser():
    chrome = start_chromium("--window-size=1100,900", logs=True)
    try:
        yield chrome
    finally:
        chrome.quit()


def open_page(browser, page: Path):
    browser.get(page.as_uri())
    deadline = time.monotonic() + 30
    while browser.find_element("id", "generate").get_attribute("disabled") is not None:
        status = browser.find_element("id", "status").text
        assert "failed" not in status and "could not" not in status, status
        assert time.monotonic() < deadline, f"the page did not get ready: {status}"
        time.sleep(0.05)


def generate(browser, wait: bool = True, **fields) -> dict:
    """Fill the form (ids: prime, length, temperature, top-k, top-p, seed, stop-seq,
    unknown, echo), press Generate and wait for the end; the page's output and status."""
    fields = {"prime": "", "length": "100", "temperature": "0", "top-k": "", "top-p": "", "seed": "",
              "stop-seq": "", **fields}
    browser.execute_script("""
        const fields = arguments[0];
        for (const [id, value] of Object.entries(fields)) {
          const el = document.getElementById(id);
          if (el.type === 'checkbox') el.checked = value; else el.value = value;
        }
        delete document.body.dataset.done;
        document.getElementById('generate').click();""", {"echo": False, **fields})
    if wait:
        deadline = time.monotonic() + 120
        while not browser.execute_script("return document.body.dataset.done || "
                                         "document.getElementById('status').dataset.kind === 'error'"):
            assert time.monotonic() < deadline, "generation did not end"
            time.sleep(0.02)
    return browser.execute_script("""
        return {text: document.getElementById('output').textContent, status: document.getElementById('status').textContent,
                kind: document.getElementById('status').dataset.kind || '', note: document.getElementById('note').textContent,
                reason: document.body.dataset.reason || '', chars: Number(document.body.dataset.chars || -1)};""")


@pytest.mark.slow  # Chromium
def test_bundled_page_matches_charrnn_greedy_and_fetches_nothing(browser, tmp_path):
    page = export(BUNDLED, tmp_path / "f32.html", precision="float32")
    browser.get_log("performance")  # start the log from here
    open_page(browser, page)
    assert browser.execute_script("return document.body.dataset.engine").startswith("WebAssembly SIMD")
    expected = charrnn_text(BUNDLED, "", 300)
    out = generate(browser, length="300")
    assert out["text"] == expected and out["chars"] == 300
    out = generate(browser, prime="ROMEO:", length="300")
    assert out["text"] == charrnn_text(BUNDLED, "ROMEO:", 300)
    urls = set()
    for entry in browser.get_log("performance"):
        message = json.loads(entry["message"])["message"]
        if message["method"] == "Network.requestWillBeSent":
            urls.add(message["params"]["request"]["url"].split(":", 1)[0])
    assert urls <= {"file", "blob", "data"}, urls
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert not errors, errors


@pytest.mark.slow  # Chromium
def test_float16_page_agrees_with_float32_except_near_ties(browser, tmp_path):
    page = export(BUNDLED, tmp_path / "f16.html")
    open_page(browser, page)
    expected = charrnn_text(BUNDLED, "", 300)
    text = generate(browser, length="300")["text"]
    agree = next((i for i, (a, b) in enumerate(zip(text, expected)) if a != b), 300)
    assert agree >= 100, (agree, text[:agree + 20])  # float16 rounding may flip a near-tie, but not at once


@pytest.mark.slow  # Chromium
def test_seed_length_stop_and_stop_button(browser, tmp_path):
    page = export(BUNDLED, tmp_path / "p.html")
    open_page(browser, page)
    one = generate(browser, temperature="0.8", seed="7", length="500")
    assert one["chars"] == 500 and len(one["text"]) == 500 and one["reason"] == "length"
    assert generate(browser, temperature="0.8", seed="7", length="500")["text"] == one["text"]
    assert generate(browser, temperature="0.8", seed="8", length="500")["text"] != one["text"]
    top = generate(browser, temperature="1.0", seed="3", length="300", **{"top-k": "3", "top-p": "0.9"})
    assert top["chars"] == 300

    stopped = generate(browser, temperature="0.8", seed="1", length="5000", **{"stop-seq": r"\n\n"})
    assert stopped["reason"] == "stop" and stopped["text"].endswith("\n\n") and stopped["text"].count("\n\n") == 1

    generate(browser, wait=False, temperature="0.8", length="1000000")
    deadline = time.monotonic() + 30
    while len(browser.find_element("id", "output").get_attribute("textContent")) < 200:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    browser.find_element("id", "stop").click()
    deadline = time.monotonic() + 10
    while not browser.execute_script("return document.body.dataset.done"):
        assert time.monotonic() < deadline, "Stop did not stop the generation"
        time.sleep(0.02)
    assert browser.execute_script("return document.body.dataset.reason") == "stopped"
    assert 0 < int(browser.execute_script("return document.body.dataset.chars")) < 1_000_000
    assert browser.find_element("id", "generate").get_attribute("disabled") is None


@pytest.mark.slow  # Chromium
def test_unknown_characters_are_refused_or_skipped_with_a_message(browser, tmp_path):
    page = export(BUNDLED, tmp_path / "p.html")
    open_page(browser, page)
    refused = generate(browser, prime="Price: € ✓", length="20")
    assert refused["kind"] == "error" and "2 characters this model never saw" in refused["status"]
    assert '"€"' in refused["status"] and "skip" in refused["status"]
    skipped = generate(browser, prime="Price: €", length="20", unknown="skip")
    assert skipped["chars"] == 20 and "dropped" in skipped["note"]
    assert skipped["text"] == charrnn_text(BUNDLED, "Price: ", 20)
    bad = generate(browser, length="ten")
    assert bad["kind"] == "error" and "Length must be a number" in bad["status"]
    # what was dropped is gone for the stop sequence and the echo too, as with --unknown skip
    expected = "".join(c.texts[0] for c in _sampler(BUNDLED).generate(
        "ROMEO:", SampleConfig(length=300, temperature=0, stop=(":\n",))))
    cut = generate(browser, prime="ROMEO:€", unknown="skip", length="300", echo=True, **{"stop-seq": r":\n"})
    assert cut["text"] == "ROMEO:" + expected and cut["reason"] == "stop"
    literal = generate(browser, length="50", **{"stop-seq": r"C:\path"})  # a backslash that is not an escape
    assert literal["kind"] != "error" and literal["chars"] == 50


def _subword(model_type: str):
    from charrnn.text.sentencepiece_vocab import SentencePieceVocab

    return SentencePieceVocab.train(TEXT, vocab_size=300, model_type=model_type)


@pytest.mark.slow  # Chromium
@pytest.mark.parametrize("name, model", [
    ("lstm", {"cell": "lstm"}),
    ("gru", {"cell": "gru"}),
    ("rnn-tanh", {"cell": "rnn", "nonlinearity": "tanh"}),
    ("rnn-relu", {"cell": "rnn", "nonlinearity": "relu", "num_layers": 3}),
    ("one-hot", {"cell": "lstm", "one_hot": True}),
    ("tied", {"cell": "gru", "tie_weights": True, "embedding_size": 20}),
    ("odd-sizes", {"cell": "lstm", "hidden_size": 13, "embedding_size": 5, "num_layers": 1}),
    ("gru-odd", {"cell": "gru", "hidden_size": 13, "embedding_size": 5, "num_layers": 3}),
    ("one-hot-gru-odd", {"cell": "gru", "hidden_size": 7, "one_hot": True}),
    ("unigram", {"cell": "lstm"}),
    ("bpe", {"cell": "gru"}),
])
def test_every_kind_of_model_gives_charrnn_greedy_text(browser, tmp_path, name, model):
    vocab = _subword(name) if name in ("unigram", "bpe") else None
    if name == "rnn-relu":
        path = make_checkpoint(tmp_path, name, vocab, scale=1.0, **model)
    else:
        path = make_checkpoint(tmp_path, name, vocab, **model)
    page = export(path, tmp_path / f"{name}.html", precision="float32")
    open_page(browser, page)
    primes = ["", "the cat sat\non the mat", "naïve café ÆØÅ"]
    if vocab is not None:
        primes.append("a € sign and a 🐈 the vocabulary spells in bytes")
    for prime in primes:
        expected = charrnn_text(path, prime, 60)
        out = generate(browser, prime=prime, length="60")
        assert out["kind"] != "error", out["status"]
        assert out["text"] == expected, (prime, out["text"], expected)


@pytest.mark.slow  # Chromium
def test_a_long_one_line_prime_encodes_quickly_and_as_sentencepiece_does(browser, tmp_path):
    """A BPE vocabulary merges pairs through a heap: a 20,000-character line is quick,
    and its ids are sentencepiece's (the greedy text after it is charrnn's)."""
    path = make_checkpoint(tmp_path, "bpe-long", _subword("bpe"), cell="gru", hidden_size=8)
    page = export(path, tmp_path / "long.html", precision="float32")
    open_page(browser, page)
    prime = "the dog ran far, far away! the cat sat on the mat. " * 400  # no newline
    started = time.monotonic()
    out = generate(browser, prime=prime, length="40")
    assert time.monotonic() - started < 30 and out["kind"] != "error", out["status"]
    assert out["text"] == charrnn_text(path, prime, 40)


@pytest.mark.slow  # Chromium
@pytest.mark.parametrize("name, model", [("lstm", {"cell": "lstm"}), ("gru-odd", {"cell": "gru", "hidden_size": 13})])
def test_without_webassembly_the_page_runs_in_plain_javascript(browser, tmp_path, name, model):
    """A browser with WebAssembly switched off (iOS Lockdown Mode, some enterprise
    policies): the worker's WebAssembly is taken away before the engine starts."""
    path = make_checkpoint(tmp_path, name, **model)
    page = export(path, tmp_path / f"{name}.html", precision="float32")
    text = page.read_text(encoding="utf-8")
    page.write_text(text.replace('id="charrnn-engine">', 'id="charrnn-engine">self.WebAssembly = undefined;\n', 1),
                    encoding="utf-8")
    open_page(browser, page)
    assert browser.execute_script("return document.body.dataset.engine") == "JavaScript"
    for prime in ("", "the cat"):
        assert generate(browser, prime=prime, length="60")["text"] == charrnn_text(path, prime, 60)


@pytest.mark.slow  # Chromium
def test_screenshot_for_the_readme(browser, tmp_path):
    if not SCREENSHOT:
        pytest.skip("set CHARRNN_SCREENSHOT=1 to write docs/webpage.png")
    page = export(BUNDLED, tmp_path / "shakespeare.html")
    open_page(browser, page)
    generate(browser, prime="ROMEO:\n", temperature="0.7", seed="7", length="600", echo=True)
    browser.execute_script("document.getElementById('output').scrollTop = 0")
    browser.save_screenshot(str(REPO / "docs" / "webpage.png"))
