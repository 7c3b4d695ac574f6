"""The playground page in a real browser: headless Chromium driven by selenium against a
real server. Skipped, with the reason, where selenium, Chromium or chromedriver is missing.

With CHARRNN_SCREENSHOT=1 the page is driven on the bundled model and a screenshot is
written to docs/playground.png (the README's picture)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")

from conftest import start_chromium  # noqa: E402
from test_serve import live  # noqa: E402

from charrnn.serve import app as serve  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
SCREENSHOT = os.environ.get("CHARRNN_SCREENSHOT") == "1"
pytestmark = pytest.mark.slow  # a browser process per test


@pytest.fixture
def browser():
    chrome = start_chromium("--window-size=1280,800")
    try:
        yield chrome
    finally:
        chrome.quit()


@pytest.fixture
def page_models(random_checkpoint):
    return serve.load_models([] if SCREENSHOT else [str(random_checkpoint)], root=REPO / "no-such-folder")


def test_playground_streams_text_after_the_prime(browser, page_models):
    from selenium.webdriver.support.ui import Select, WebDriverWait

    name = page_models[0].name
    prime = "ROMEO:" if SCREENSHOT else "bad cab"
    with live(page_models, serve.Limits(max_tokens=100_000)) as (base, service):
        browser.get(base + "/")
        wait = WebDriverWait(browser, 15)
        picker = Select(browser.find_element("id", "model"))
        wait.until(lambda _: len(picker.options) > 0)
        assert [o.text for o in picker.options] == [name]

        browser.find_element("id", "prime").send_keys(prime)
        length = browser.find_element("id", "length")
        length.clear()
        length.send_keys("700" if SCREENSHOT else "100000")
        if SCREENSHOT:
            browser.execute_script(
                "const t = document.getElementById('temperature'); t.value = 0.7; t.dispatchEvent(new Event('input'));"
                "document.getElementById('seed').value = 7;")
        browser.find_element("id", "generate").click()
        output = browser.find_element("id", "out-text")
        wait.until(lambda _: len(output.text) > 20)
        first = len(browser.execute_script("return document.getElementById('out-text').textContent"))
        wait.until(lambda _: len(browser.execute_script(
            "return document.getElementById('out-text').textContent")) > first)  # it grows as it streams
        shown = browser.execute_script("return document.getElementById('output').textContent")
        assert shown.startswith(prime) and len(shown) > len(prime) + first
        assert browser.find_element("id", "generate").get_attribute("disabled") is not None

        if SCREENSHOT:
            wait.until(lambda _: browser.find_element("id", "stop").get_attribute("disabled") is not None)
            time.sleep(0.3)  # the cursor's blink
            browser.save_screenshot(str(REPO / "docs" / "playground.png"))
        else:
            browser.find_element("id", "stop").click()  # the page aborts its fetch: the server stops
            wait.until(lambda _: browser.find_element("id", "status").text == "Stopped.")
            deadline = time.monotonic() + 5
            while service.slots.active and time.monotonic() < deadline:
                time.sleep(0.02)
            assert service.slots.active == 0
        assert browser.find_element("id", "error").text == ""


def test_sliders_show_their_values(browser, page_models):
    with live(page_models) as (base, _):
        browser.get(base + "/")
        assert browser.find_element("id", "temperature-value").text == "0.80"
        browser.execute_script(
            "for (const [id, v] of [['temperature', 0], ['top-p', 0.5]]) {"
            " const e = document.getElementById(id); e.value = v; e.dispatchEvent(new Event('input')); }")
        assert browser.find_element("id", "temperature-value").text == "0.00 (greedy)"
        assert browser.find_element("id", "top-p-value").text == "0.50"


def test_an_error_from_the_server_is_shown_on_the_page(browser, page_models):
    with live(page_models) as (base, _):
        browser.get(base + "/")
        from selenium.webdriver.support.ui import WebDriverWait

        WebDriverWait(browser, 15).until(lambda b: b.execute_script("return document.getElementById('model').options.length"))
        browser.find_element("id", "prime").send_keys("\u00e9t\u00e9")  # outside any vocabulary here
        browser.find_element("id", "generate").click()
        WebDriverWait(browser, 15).until(lambda b: b.find_element("id", "error").text)
        assert "outside the model's vocabulary" in browser.find_element("id", "error").text


def test_with_an_api_key_the_page_asks_for_it_and_then_works(browser, page_models):
    from selenium.webdriver.support.ui import WebDriverWait

    with live(page_models, access=serve.Access(api_key="k3y")) as (base, _):
        browser.get(base + "/")
        wait = WebDriverWait(browser, 15)
        wait.until(lambda b: b.find_element("id", "key-label").is_displayed())
        assert "API key" in browser.find_element("id", "error").text
        key = browser.find_element("id", "key")
        key.send_keys("k3y")
        browser.find_element("id", "prime").click()  # leaving the field commits it
        wait.until(lambda b: b.execute_script("return document.getElementById('model').options.length"))
        length = browser.find_element("id", "length")
        length.clear()
        length.send_keys("30")
        browser.find_element("id", "generate").click()
        wait.until(lambda b: b.find_element("id", "status").text.startswith("Done"))
        assert len(browser.execute_script("return document.getElementById('out-text').textContent")) == 30
        assert browser.find_element("id", "error").text == ""
