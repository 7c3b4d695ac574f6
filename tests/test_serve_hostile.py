"""Hostile requests against a real `charrnn serve` on 127.0.0.1, table-driven.

Every row is a request an attacker or a careless client might send; each gets its status
and an OpenAI-shaped error. Then clients that never read, send their headers a byte at a
time or never finish their body: none of them keeps the server from answering others.
Throughout, the server's log holds no traceback, and a normal request is answered
correctly at the end.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

pytestmark = pytest.mark.slow

KEY = "s3cret-key"
BIG = "1" + "0" * 400


@pytest.fixture(scope="module")
def server(random_checkpoint, tmp_path_factory):
    """`charrnn serve` as a user starts it, with a key and short timeouts: yields (base URL,
    port, path of its log)."""
    log = tmp_path_factory.mktemp("serve") / "server.log"
    env = {**os.environ, "CHARRNN_API_KEY": KEY, "PYTHONUNBUFFERED": "1"}
    args = [sys.executable, "-m", "charrnn", "serve", "--port", "0", "-c", str(random_checkpoint), "--concurrency", "2",
            "--queue-timeout", "0", "--read-timeout", "1", "--write-timeout", "1", "--max-tokens", "10000000"]
    with open(log, "w") as fh:
        proc = subprocess.Popen(args, stderr=fh, stdout=subprocess.DEVNULL, env=env, text=True)
    deadline = time.monotonic() + 60
    while "Serving" not in log.read_text():
        assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
        time.sleep(0.05)
    first = log.read_text().splitlines()[0]
    assert "Requests need the API key." in first
    base = first.split(" at ", 1)[1].split(" ", 1)[0].rstrip("/")
    yield base, int(base.rsplit(":", 1)[1]), log
    proc.send_signal(signal.SIGINT)
    proc.wait(30)


AUTH = {"Authorization": f"Bearer {KEY}"}
JSON = {**AUTH, "Content-Type": "application/json"}


def body(**fields) -> bytes:
    return json.dumps({"model": "random", "max_tokens": 5, **fields}).encode()


# (id, method, path, headers, raw body, status, a piece of the error message or None)
REQUESTS = [
    ("no-key", "POST", "/v1/completions", {"Content-Type": "application/json"}, body(), 401, "needs an API key"),
    ("wrong-key", "POST", "/v1/completions", {"Authorization": "Bearer nope", "Content-Type": "application/json"},
     body(), 401, "not valid"),
    ("basic-auth", "GET", "/v1/models", {"Authorization": "Basic " + KEY}, None, 401, "not valid"),
    ("models-no-key", "GET", "/v1/models", {}, None, 401, "needs an API key"),
    ("health-no-key", "GET", "/health", {}, None, 200, None),
    ("page-no-key", "GET", "/", {}, None, 200, None),
    ("text-plain", "POST", "/v1/completions", {**AUTH, "Content-Type": "text/plain"}, body(), 415, "application/json"),
    ("form", "POST", "/v1/completions", {**AUTH, "Content-Type": "application/x-www-form-urlencoded"}, b"prompt=a",
     415, "application/json"),
    ("no-content-type", "POST", "/v1/completions", AUTH, body(), 415, "application/json"),
    ("rebinding-host", "GET", "/v1/models", {**AUTH, "Host": "evil.example:8000"}, None, 400, "does not answer for"),
    ("rebinding-host-health", "GET", "/health", {"Host": "attacker.test"}, None, 400, "does not answer for"),
    ("localhost-host", "GET", "/v1/models", {**AUTH, "Host": "localhost:1234"}, None, 200, None),
    ("host-v6-with-suffix", "GET", "/v1/models", {**AUTH, "Host": "[::1]evil.com"}, None, 400, "does not answer for"),
    ("host-port-not-a-number", "GET", "/v1/models", {**AUTH, "Host": "localhost:abc"}, None, 400,
     "does not answer for"),
    ("max-tokens-4000-digits", "POST", "/v1/completions", JSON, body(max_tokens=10**3999), 400, "(an integer of 4,000"),
    ("max-tokens-400-digits", "POST", "/v1/completions", JSON, body(max_tokens=10**400), 400, "max_tokens must be"),
    ("temperature-400-digits", "POST", "/v1/completions", JSON, body(temperature=10**400), 400, "(an integer of 401"),
    ("seed-400-digits", "POST", "/v1/completions", JSON, body(seed=10**400), 400, "seed must be"),
    ("n-400-digits", "POST", "/v1/completions", JSON, body(n=10**400), 400, "n must be"),
    ("temperature-1e400", "POST", "/v1/completions", JSON, b'{"model": "random", "temperature": 1e400}', 400,
     "temperature must be"),
    ("digits-beyond-json-limit", "POST", "/v1/completions", JSON, b'{"max_tokens": ' + b"9" * 5000 + b"}", 400,
     "not valid JSON"),
    ("nested-50k", "POST", "/v1/completions", JSON, b"[" * 50_000 + b"]" * 50_000, 400, "nested too deeply"),
    ("nested-in-field", "POST", "/v1/completions", JSON, b'{"stop": ' + b"[" * 20_000 + b"]" * 20_000 + b"}", 400,
     "nested too deeply"),
    ("top-p-denormal", "POST", "/v1/completions", JSON, body(top_p=5e-324, max_tokens=20), 200, None),
    ("top-p-tiny", "POST", "/v1/completions", JSON, body(top_p=1e-300, max_tokens=20), 200, None),
    ("stream-top-p-tiny", "POST", "/v1/completions", JSON, body(top_p=1e-300, max_tokens=20, stream=True), 200, None),
    ("body-too-large", "POST", "/v1/completions", JSON, b'{"prompt": "' + b"a" * 400_000 + b'"}', 413, "larger than"),
    ("unknown-model", "POST", "/v1/completions", JSON, body(model="../../etc/passwd"), 404, "does not exist"),
    ("not-json", "POST", "/v1/completions", JSON, b"{oops", 400, "not valid JSON"),
    ("not-utf8", "POST", "/v1/completions", JSON, b'{"prompt": "\xff"}', 400, "not UTF-8"),
    ("prompt-outside-vocabulary", "POST", "/v1/completions", JSON, body(prompt="\x1b[2J"), 400, "outside"),
    ("cors-preflight", "OPTIONS", "/v1/completions", {"Origin": "https://evil.example",
                                                       "Access-Control-Request-Method": "POST"}, None, 401, None),
    ("wrong-method", "DELETE", "/v1/models", AUTH, None, 405, "does not take that method"),
    ("unknown-route", "GET", "/admin", AUTH, None, 404, "no such endpoint"),
]


@pytest.mark.parametrize("method, path, headers, raw, status, message", [r[1:] for r in REQUESTS],
                         ids=[r[0] for r in REQUESTS])
def test_hostile_request(server, method, path, headers, raw, status, message):
    base, _, log = server
    with httpx.Client(timeout=30) as http:
        r = http.request(method, base + path, headers=headers, content=raw)
    assert r.status_code == status, r.text[:300]
    assert r.headers["x-content-type-options"] == "nosniff" and r.headers["x-frame-options"] == "DENY"
    assert "access-control-allow-origin" not in r.headers  # CORS stays off
    if message is not None:
        error = r.json()["error"]
        assert message in error["message"] and "\n" not in error["message"], error
        assert set(error) == {"message", "type", "param", "code"}
    if status == 200 and raw and b'"stream": true' in raw:
        assert r.text.rstrip().endswith("data: [DONE]")
    assert "Traceback" not in log.read_text()


def test_the_request_table_is_wide():
    assert len(REQUESTS) >= 30


def test_a_key_that_headers_cannot_carry_alike_is_refused_at_start():
    from charrnn.errors import ConfigError
    from charrnn.serve.app import Access

    with pytest.raises(ConfigError, match="printable ASCII"):
        Access(api_key="clé")


def normal_request(base: str) -> str:
    with httpx.Client(timeout=30) as http:
        r = http.post(f"{base}/v1/completions", headers=JSON, content=body(prompt="ab", max_tokens=40, seed=3))
    assert r.status_code == 200, r.text
    return r.json()["choices"][0]["text"]


def test_clients_that_never_read_lose_their_slots_and_others_are_served(server):
    """Two streaming clients (the whole concurrency) that send a request and never read:
    within the write timeout their streams end and their slots are free again."""
    base, port, log = server
    sockets = []
    request = (f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {KEY}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {{n}}\r\n\r\n{{b}}")
    payload = body(prompt="a", max_tokens=10_000_000, n=16, stream=True).decode()
    try:
        for _ in range(2):
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.connect(("127.0.0.1", port))
            s.sendall(request.format(n=len(payload), b=payload).encode())
            sockets.append(s)
        busy_seen = False
        deadline = time.monotonic() + 60
        while True:
            with httpx.Client(timeout=30) as http:
                r = http.post(f"{base}/v1/completions", headers=JSON, content=body(prompt="ab", max_tokens=40, seed=3))
            if r.status_code == 200:
                break
            assert r.status_code == 429, r.text
            busy_seen = True
            assert time.monotonic() < deadline, "the silent clients kept their slots"
            time.sleep(0.2)
        assert busy_seen  # the silent clients held the slots for a while, then lost them
        health = httpx.get(f"{base}/health").json()
        assert health["generations"]["active"] == 0
    finally:
        for s in sockets:
            s.close()
    assert len(normal_request(base)) == 40
    assert "Traceback" not in log.read_text()


def read_reply(s: socket.socket) -> str:
    """Reads one whole HTTP reply: its head and the body its Content-Length announces.

    The server may send the head and the body in separate segments, so one recv() can
    hold the head alone.
    """
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            return data.decode("latin-1")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    while length and len(body) < int(length.group(1)):
        chunk = s.recv(4096)
        if not chunk:
            break
        body += chunk
    return (head + b"\r\n\r\n" + body).decode("latin-1")


def test_slow_headers_and_slow_bodies_time_out(server):
    base, port, log = server
    # headers a byte at a time: the connection is closed once the read timeout (1 s) passes
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(10)
    started = time.monotonic()
    closed = False
    try:
        for byte in b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 100:
            s.send(bytes([byte]))
            time.sleep(0.1)
    except OSError:
        closed = True
    if not closed:
        closed = s.recv(1024) == b""
    s.close()
    assert closed and time.monotonic() - started < 8
    # a body announced and never sent: 408 after the read timeout
    s = socket.create_connection(("127.0.0.1", port))
    s.settimeout(10)
    s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {KEY}\r\n"
              f"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n{{\"prompt\"".encode())
    reply = read_reply(s)
    s.close()
    assert reply.startswith("HTTP/1.1 408") and "did not arrive within 1 seconds" in reply
    assert len(normal_request(base)) == 40
    assert "Traceback" not in log.read_text()


def test_a_seeded_request_is_answered_the_same_after_the_attacks(server):
    base, _, log = server
    assert normal_request(base) == normal_request(base)
    assert "Traceback" not in log.read_text()
