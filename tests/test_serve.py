"""`charrnn serve`: the OpenAI-compatible API, through Starlette's test client, through a
real uvicorn server on a free port (httpx and the official openai client), and as a
`charrnn serve` process that must stop cleanly on SIGINT and SIGTERM."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from click.testing import CliRunner  # noqa: E402
from conftest import wait_until  # noqa: E402
from starlette.testclient import TestClient  # noqa: E402

from charrnn.cli.app import main  # noqa: E402
from charrnn.errors import ConfigError  # noqa: E402
from charrnn.serve import app as serve  # noqa: E402

NAME = "random"  # random_checkpoint is random.pt outside a run folder: served under its stem
BIG = serve.Limits(max_tokens=10**7, concurrency=1, queue_timeout=0)  # generations that outlast a test


@pytest.fixture(scope="module")
def models(random_checkpoint):
    return serve.load_models([str(random_checkpoint)])


@pytest.fixture
def client(models):
    with TestClient(serve.create_app(models)) as c:
        yield c


@contextlib.contextmanager
def live(models, limits: serve.Limits | None = None, access: serve.Access | None = None):
    """A real uvicorn server on a free port in a thread: yields (base URL, Service)."""
    import uvicorn

    app = serve.create_app(models, limits, access)
    sock = serve.bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="off", timeout_graceful_shutdown=2))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert time.monotonic() < deadline, "the server did not start"
        time.sleep(0.01)
    try:
        yield serve.url(sock).rstrip("/"), app.state.service
    finally:
        app.state.service.stop()
        server.should_exit = True
        thread.join(10)
        sock.close()


def cli_sample(ckpt, *args) -> str:
    result = CliRunner().invoke(main, ["sample", "-c", str(ckpt), "-q", "--no-echo-prime", *args])
    assert result.exit_code == 0, result.output
    return result.stdout


def sse_events(lines) -> list:
    """The data of each server-sent event: dicts, and "[DONE]"."""
    out = []
    for line in lines:
        if line.startswith("data: "):
            data = line[len("data: "):]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


# -- the API through Starlette's test client ------------------------------------------------------
def test_models_are_listed_in_openai_shape(client):
    listed = client.get("/v1/models").json()
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == [NAME]
    card = listed["data"][0]
    assert card["object"] == "model" and card["owned_by"] == "charrnn" and isinstance(card["created"], int)
    assert client.get(f"/v1/models/{NAME}").json() == card
    missing = client.get("/v1/models/nope")
    assert missing.status_code == 404
    assert set(missing.json()["error"]) == {"message", "type", "param", "code"}
    assert "nope" in missing.json()["error"]["message"] and NAME in missing.json()["error"]["message"]


def test_completion_has_openai_shape_and_counts_characters(client):
    r = client.post("/v1/completions", json={"model": NAME, "prompt": "abc", "max_tokens": 40, "seed": 1})
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "text_completion" and body["model"] == NAME and body["id"].startswith("cmpl-")
    [choice] = body["choices"]
    assert len(choice["text"]) == 40 and set(choice["text"]) <= set("abcdefg \n")
    assert choice["finish_reason"] == "length" and choice["index"] == 0 and choice["logprobs"] is None
    assert body["usage"] == {"prompt_tokens": 3, "completion_tokens": 40, "total_tokens": 43}


def test_same_seed_gives_the_text_charrnn_sample_gives(client, random_checkpoint):
    request = {"model": NAME, "prompt": "bad cafe", "max_tokens": 60, "temperature": 0.9, "top_k": 5,
               "top_p": 0.95, "seed": 12}
    first = client.post("/v1/completions", json=request).json()["choices"][0]["text"]
    assert client.post("/v1/completions", json=request).json()["choices"][0]["text"] == first
    assert client.post("/v1/completions", json={**request, "seed": 13}).json()["choices"][0]["text"] != first
    assert first == cli_sample(random_checkpoint, "--prime", "bad cafe", "--length", "60", "--temp", "0.9",
                               "--top-k", "5", "--top-p", "0.95", "--seed", "12")


def test_n_choices_are_the_samples_of_one_batch(client, random_checkpoint):
    body = client.post("/v1/completions", json={"model": NAME, "prompt": "a", "max_tokens": 30, "n": 3,
                                                "temperature": 1.0, "seed": 4}).json()
    texts = [c["text"] for c in body["choices"]]
    assert [c["index"] for c in body["choices"]] == [0, 1, 2] and len(set(texts)) == 3
    lines = cli_sample(random_checkpoint, "--prime", "a", "--length", "30", "--temp", "1", "--seed", "4",
                       "-N", "3", "--jsonl").splitlines()
    assert texts == [json.loads(line)["text"] for line in lines]
    assert body["usage"]["completion_tokens"] == 90


def test_stop_sequence_ends_the_text_and_is_left_out_as_openai_does(client, random_checkpoint):
    request = {"model": NAME, "prompt": "cab", "max_tokens": 300, "temperature": 1.0, "seed": 3, "stop": ["g "]}
    choice = client.post("/v1/completions", json=request).json()["choices"][0]
    assert choice["finish_reason"] == "stop" and "g " not in choice["text"] and len(choice["text"]) < 300
    # charrnn sample keeps the stop sequence; the server cuts it
    sampled = cli_sample(random_checkpoint, "--prime", "cab", "--length", "300", "--temp", "1", "--seed", "3",
                         "--stop", "g ")
    assert sampled == choice["text"] + "g "
    with client.stream("POST", "/v1/completions", json={**request, "stream": True}) as r:
        events = sse_events(r.iter_lines())
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == choice["text"]
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


def test_stream_sends_openai_chunks_that_join_to_the_plain_answer(client):
    request = {"model": NAME, "prompt": "fed", "max_tokens": 100, "n": 2, "seed": 9}
    plain = client.post("/v1/completions", json=request).json()
    with client.stream("POST", "/v1/completions", json={**request, "stream": True,
                                                        "stream_options": {"include_usage": True}}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r.iter_lines())
    assert events[-1] == "[DONE]"
    *chunks, usage = events[:-1]
    assert usage["choices"] == [] and usage["usage"] == plain["usage"]
    for i in range(2):
        mine = [c["choices"][0] for c in chunks if c["choices"][0]["index"] == i]
        assert "".join(c["text"] for c in mine) == plain["choices"][i]["text"]
        assert [c["finish_reason"] for c in mine] == [None] * (len(mine) - 1) + ["length"]
    assert all(c["object"] == "text_completion" and c["id"] == chunks[0]["id"] for c in chunks)


def choices(prompt: str, stop: tuple[str, ...], n: int = 1, echo: bool = False) -> serve.Choices:
    return serve.Choices(serve.CompletionRequest(model=NAME, prompt=prompt, stop=stop, n=n, echo=echo))


def test_streamed_text_that_may_begin_a_stop_sequence_is_held_back_then_cut():
    c = choices("", ("xyz",))
    assert c.push(["hello x"], [False]) == [(0, "hello", None)]  # the last two may begin "xyz"
    assert c.push(["y"], [False]) == [(0, " ", None)]
    assert c.push(["z"], [True]) == [(0, "", "stop")]
    assert c.texts == ["hello "]


def test_a_stop_sequence_that_begins_in_the_prompt_is_cut_only_from_the_text():
    c = choices("ab", ("bc",))
    assert c.push(["c"], [True]) == [(0, "", "stop")] and c.texts == [""]
    c = choices("ab", ("bc",), n=2, echo=True)
    assert c.push(["cd", "x"], [False, True]) == [(0, "abc", None), (1, "abx", "length")]
    assert c.push(["e", ""], [True, True]) == [(0, "de", "length")]


def test_echo_puts_the_prompt_in_front(client):
    request = {"model": NAME, "prompt": "dab", "max_tokens": 10, "seed": 1}
    plain = client.post("/v1/completions", json=request).json()["choices"][0]["text"]
    echoed = client.post("/v1/completions", json={**request, "echo": True}).json()["choices"][0]["text"]
    assert echoed == "dab" + plain


def test_model_may_be_left_out_when_there_is_one(client):
    assert client.post("/v1/completions", json={"max_tokens": 5}).json()["model"] == NAME


@pytest.mark.parametrize("body, status, message", [
    ({"model": "nope"}, 404, "'nope' does not exist"),
    ({"model": 3}, 400, "model must be a string"),
    ([1, 2], 400, "must be a JSON object"),
    ({"temperature": -1}, 400, "temperature must be a number at least 0"),
    ({"temperature": "hot"}, 400, "temperature must be a number"),
    ({"top_p": 0}, 400, "top_p must be a number above 0"),
    ({"top_p": 1.5}, 400, "top_p must be a number above 0 and at most 1"),
    ({"top_k": 0}, 400, "top_k must be an integer at least 1"),
    ({"n": 0}, 400, "n must be an integer at least 1"),
    ({"n": 17}, 400, "n must be at most 16 on this server"),
    ({"n": True}, 400, "n must be an integer"),
    ({"max_tokens": 4097}, 400, "max_tokens must be at most 4,096 on this server"),
    ({"max_tokens": 2.5}, 400, "max_tokens must be an integer"),
    ({"seed": -1}, 400, "seed must be an integer at least 0"),
    ({"prompt": "a" * 10_001}, 400, "The prompt has 10,001 characters; this server takes at most 10,000"),
    ({"prompt": 5}, 400, "prompt must be a string"),
    ({"prompt": "ROMEO: xyz"}, 400, "'R', 'O', 'M', 'E', ':', 'x', 'y', 'z'"),
    ({"stop": 3}, 400, "stop must be a string or a list of strings"),
    ({"stop": ["a", "b", "c", "d", "e"]}, 400, "stop takes at most 4 sequences"),
    ({"stream": "yes"}, 400, "stream must be true or false"),
    ({"logprobs": 2}, 400, "logprobs is not supported"),
    ({"suffix": "x"}, 400, "suffix is not supported"),
    ({"stream_options": 1}, 400, "stream_options must be an object"),
])
def test_bad_requests_get_one_clear_openai_error(client, body, status, message):
    r = client.post("/v1/completions", json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert message in error["message"] and error["message"].endswith(".")
    assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("raw, message", [
    (b"{bad", "not valid JSON"),
    (b'{"temperature": NaN}', "not valid JSON"),
    (b'{"prompt": "\xff"}', "not UTF-8"),
    (b"", "not valid JSON"),
])
def test_bodies_that_are_not_json_are_refused(client, raw, message):
    r = client.post("/v1/completions", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and message in r.json()["error"]["message"]


def test_a_body_over_the_limit_is_refused_unread(models):
    app = serve.create_app(models, serve.Limits(max_prompt_chars=10))
    with TestClient(app) as c:
        r = c.post("/v1/completions", content=b"{" + b" " * 200_000 + b"}", headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "larger than this server takes" in r.json()["error"]["message"]


def test_unknown_endpoints_and_methods_get_json_errors(client):
    assert client.get("/v2/nothing").json()["error"]["code"] == "not_found"
    r = client.get("/v1/completions")
    assert r.status_code == 405 and "GET /v1/completions" in r.json()["error"]["message"]


def test_playground_is_one_self_contained_page(client):
    r = client.get("/")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    page = r.text
    for needed in ('id="prime"', 'id="temperature"', 'id="top-p"', 'id="length"', 'id="model"',
                   'id="generate"', 'id="stop"', "/v1/completions", "/v1/models", "getReader"):
        assert needed in page
    assert "http://" not in page and "https://" not in page and "<link" not in page and "src=" not in page
    assert "default-src 'none'" in r.headers["content-security-policy"]


def test_health_reports_models_slots_and_limits(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["models"] == [NAME]
    assert health["generations"] == {"active": 0, "limit": 8} and health["limits"]["max_tokens"] == 4096


# -- naming and loading ---------------------------------------------------------------------------
def test_models_are_named_after_their_run_folders(tmp_path, random_checkpoint):
    for where in ("x/poems", "y/poems", "z/notes"):
        (tmp_path / where).mkdir(parents=True)
        shutil.copy(random_checkpoint, tmp_path / where / "best.pt")
    served = serve.load_models([str(tmp_path / "x/poems"), str(tmp_path / "y/poems/best.pt"), "notes"],
                               root=tmp_path / "z")
    assert [s.name for s in served] == ["poems", "poems-2", "notes"]
    with pytest.raises(ConfigError, match="given twice"):
        serve.load_models([str(tmp_path / "x/poems"), str(tmp_path / "x/poems/best.pt")])


def test_without_a_checkpoint_the_bundled_model_is_served(tmp_path):
    [served] = serve.load_models([], root=tmp_path / "none")
    assert served.name == "tinyshakespeare" and served.model.bundled


# -- a real server: the openai client, concurrency, disconnects --------------------------------------
def test_official_openai_client_works_against_the_server(models, random_checkpoint):
    openai = pytest.importorskip("openai")
    with live(models) as (base, _):
        client = openai.OpenAI(base_url=f"{base}/v1", api_key="unused", max_retries=0)
        assert [m.id for m in client.models.list()] == [NAME]
        done = client.completions.create(model=NAME, prompt="gag", max_tokens=50, temperature=0.7, seed=8)
        text = done.choices[0].text
        assert len(text) == 50 and done.choices[0].finish_reason == "length" and done.usage.completion_tokens == 50
        assert text == cli_sample(random_checkpoint, "--prime", "gag", "--length", "50", "--temp", "0.7", "--seed", "8")
        stream = client.completions.create(model=NAME, prompt="gag", max_tokens=50, temperature=0.7, seed=8,
                                           stream=True)
        assert "".join(chunk.choices[0].text for chunk in stream) == text
        several = client.completions.create(model=NAME, prompt="a", max_tokens=20, n=2, seed=1, stop=["\n"])
        assert len(several.choices) == 2 and all("\n" not in c.text for c in several.choices)
        with pytest.raises(openai.NotFoundError, match="does not exist"):
            client.completions.create(model="nope", prompt="a")
        with pytest.raises(openai.BadRequestError, match="temperature"):
            client.completions.create(model=NAME, prompt="a", temperature=-1)


def test_many_concurrent_requests_all_complete_with_their_length(models):
    limits = serve.Limits(concurrency=4, queue_timeout=60)
    with live(models, limits) as (base, service):
        def one(i: int) -> tuple[int, int, str]:
            body = {"model": NAME, "prompt": "a", "max_tokens": 100 + i, "seed": i, "stream": i % 2 == 0}
            with httpx.Client(timeout=60) as http:
                if body["stream"]:
                    with http.stream("POST", f"{base}/v1/completions", json=body) as r:
                        events = sse_events(r.iter_lines())
                    return r.status_code, len("".join(e["choices"][0]["text"] for e in events[:-1])), events[-1]
                r = http.post(f"{base}/v1/completions", json=body)
                return r.status_code, len(r.json()["choices"][0]["text"]), "[DONE]"

        started = time.monotonic()
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(one, range(32)))
        assert time.monotonic() - started < 60
        assert results == [(200, 100 + i, "[DONE]") for i in range(32)]
        assert wait_until(lambda: service.slots.active == 0)  # a stream's slot is freed after its last byte


def test_sixteen_concurrent_seeded_streams_are_complete_and_step_as_one_batch(models):
    """Each of 16 streaming clients gets a well-formed stream of its length; they share the
    batch loop's steps; a seeded request alone gives the same text every time."""
    limits = serve.Limits(concurrency=16, queue_timeout=60)
    with live(models, limits) as (base, service):
        def stream(i: int, length: int = 300) -> tuple[str, list]:
            body = {"model": NAME, "prompt": "ab", "max_tokens": length, "seed": i, "temperature": 0.9, "stream": True}
            with httpx.Client(timeout=60) as http, http.stream("POST", f"{base}/v1/completions", json=body) as r:
                assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
                events = sse_events(r.iter_lines())
            return "".join(e["choices"][0]["text"] for e in events[:-1]), events

        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(stream, range(16)))
        for text, events in results:
            assert events[-1] == "[DONE]" and len(text) == 300
            assert [e["choices"][0]["finish_reason"] for e in events[:-1]][-1] == "length"
            assert all(e["choices"][0]["finish_reason"] is None for e in events[:-2])
        loop = service.loops[NAME]
        assert loop.steps < 16 * 300  # the clients shared steps
        assert stream(3, 200)[0] == stream(3, 200)[0]  # alone: the same text every time
        assert wait_until(lambda: loop.rows == 0 and service.slots.active == 0)


def test_a_client_that_disconnects_leaves_the_batch_at_once(models):
    with live(models, serve.Limits(max_tokens=10**7, concurrency=4)) as (base, service):
        with httpx.Client(timeout=10) as http:
            body = {"model": NAME, "prompt": "a", "max_tokens": 10**7, "n": 3, "stream": True}
            with http.stream("POST", f"{base}/v1/completions", json=body) as r:
                lines = r.iter_lines()
                next(lines)
                loop = service.loops[NAME]
                assert wait_until(lambda: loop.rows == 3)
        assert wait_until(lambda: loop.rows == 0 and service.slots.active == 0, 2.0)
        steps = loop.steps
        time.sleep(0.2)
        assert loop.steps == steps


def test_over_the_concurrency_limit_a_request_gets_429_and_a_closed_stream_frees_its_slot(models):
    with live(models, BIG) as (base, service):
        with httpx.Client(timeout=10) as http:
            body = {"model": NAME, "prompt": "a", "max_tokens": 10**7, "stream": True}
            with http.stream("POST", f"{base}/v1/completions", json=body) as r:
                lines = r.iter_lines()  # kept: a dropped line iterator closes the connection
                next(lines)  # generating
                assert service.slots.active == 1
                busy = http.post(f"{base}/v1/completions", json={"model": NAME, "max_tokens": 5})
                assert busy.status_code == 429 and busy.headers["retry-after"] == "1"
                assert busy.json()["error"]["type"] == "rate_limit_error"
            # the client closed the stream: the generation stops and gives its slot back
            assert wait_until(lambda: service.slots.active == 0)
            produced = service.generated_chars
            time.sleep(0.3)
            assert service.generated_chars == produced
            assert http.post(f"{base}/v1/completions", json={"model": NAME, "max_tokens": 5}).status_code == 200


def test_a_client_that_gives_up_on_a_plain_request_stops_its_generation(models):
    with live(models, BIG) as (base, service):
        with httpx.Client(timeout=0.5) as http, pytest.raises(httpx.ReadTimeout):
            http.post(f"{base}/v1/completions", json={"model": NAME, "max_tokens": 10**7})
        assert wait_until(lambda: service.slots.active == 0)
        produced = service.generated_chars
        time.sleep(0.3)
        assert service.generated_chars == produced < 10**7


def test_stopping_the_server_ends_running_streams_with_an_error_event(models):
    with live(models, BIG) as (base, service):
        with httpx.Client(timeout=10) as http:
            body = {"model": NAME, "max_tokens": 10**7, "stream": True}
            with http.stream("POST", f"{base}/v1/completions", json=body) as r:
                lines = r.iter_lines()
                next(lines)
                service.stop()
                started = time.monotonic()
                events = sse_events(lines)
            assert time.monotonic() - started < 2
            assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "shutting_down"
            refused = http.post(f"{base}/v1/completions", json={"model": NAME, "max_tokens": 5})
            assert refused.status_code == 503


# -- the command ---------------------------------------------------------------------------------
def test_a_port_in_use_is_one_sentence_and_exit_1(random_checkpoint):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = CliRunner().invoke(main, ["serve", "-c", str(random_checkpoint), "--port", str(port)])
    assert result.exit_code == 1
    assert result.stderr.strip() == f"Error: Port {port} on 127.0.0.1 is already in use; stop what uses it or " \
                                    f"choose another with --port."


def test_without_the_serve_extra_the_command_names_it(monkeypatch, random_checkpoint):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "uvicorn" else real(name, *a))
    result = CliRunner().invoke(main, ["serve", "-c", str(random_checkpoint)])
    assert result.exit_code == 1
    assert result.stderr.strip() == "Error: charrnn serve needs uvicorn, which is not installed; install it with " \
                                    "`pip install 'charrnn-cli[serve]'`."


def test_bad_limits_are_usage_errors():
    result = CliRunner().invoke(main, ["serve", "--concurrency", "0"])
    assert result.exit_code == 2 and "--concurrency" in result.stderr


@contextlib.contextmanager
def charrnn_serve(*args):
    """A `charrnn serve --port 0` process: yields (process, base URL) once it says where it listens."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with subprocess.Popen([sys.executable, "-m", "charrnn", "serve", "--port", "0", *args], stderr=subprocess.PIPE,
                          stdout=subprocess.DEVNULL, text=True, env=env) as proc:
        try:
            line = proc.stderr.readline()
            assert line.startswith("Serving "), line
            yield proc, line.split(" at ", 1)[1].split(" ", 1)[0].rstrip("/")
        finally:
            proc.kill()
            proc.wait()


@pytest.mark.slow
@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, -signal.SIGTERM)])
def test_a_signal_stops_the_server_within_seconds_during_a_generation(random_checkpoint, signum, code):
    with charrnn_serve("-c", str(random_checkpoint), "--max-tokens", "10000000") as (proc, base):
        assert httpx.get(f"{base}/v1/models").json()["data"][0]["id"] == NAME
        events = []

        def stream():
            body = {"model": NAME, "max_tokens": 10**7, "stream": True}
            with httpx.stream("POST", f"{base}/v1/completions", json=body, timeout=30) as r:
                for line in r.iter_lines():
                    events.extend(sse_events([line]))

        reader = threading.Thread(target=stream, daemon=True)
        reader.start()
        assert wait_until(lambda: len(events) > 2)
        started = time.monotonic()
        proc.send_signal(signum)
        assert proc.wait(timeout=10) == code
        assert time.monotonic() - started < 8  # not the minutes the generation would take; exit ~1-3 s
        reader.join(5)
        assert events[-1] == "[DONE]" and events[-2]["error"]["code"] == "shutting_down"
        assert "Traceback" not in proc.stderr.read()


@pytest.mark.slow
def test_the_command_serves_the_bundled_model_when_there_is_no_run(tmp_path):
    with charrnn_serve("--checkpoints-dir", str(tmp_path / "none")) as (proc, base):
        assert base.startswith("http://127.0.0.1:")
        r = httpx.post(f"{base}/v1/completions", json={"prompt": "ROMEO:", "max_tokens": 20, "seed": 1})
        assert r.json()["model"] == "tinyshakespeare" and len(r.json()["choices"][0]["text"]) == 20
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=10) == 130
