"""An OpenAI-compatible HTTP API over loaded models, and the playground page that uses it.

`create_app(models, limits)` builds a Starlette (ASGI) application; `charrnn serve` runs it
with uvicorn. The routes:

    GET  /                    the playground (charrnn/static/playground.html)
    GET  /health              status, models, busy generation slots and limits
    GET  /v1/models           OpenAI's model list; /v1/models/{id} one model
    POST /v1/completions      OpenAI's legacy completions, streamed as server-sent events
                              with "stream": true; "tokens" are characters

Each model has one generation loop (charrnn.model.batching.BatchLoop) in a thread of its own:
every running request of that model steps with the others as one batch, joining at the
next step and leaving when it finishes or its client goes away. The event loop only
passes chunks (about 32 characters, or a line) from that thread to the clients; a client
that went away or a server that is stopping ends the request's part of the batch. At most `Limits.concurrency`
generations run at once; a request waits up to `Limits.queue_timeout` seconds for a slot
and is then refused with 429.

Starlette and torch are imported inside the functions that need them, so the command
line can read `Limits` for its `--help` without paying for either. Nothing here prints.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import AsyncIterator

from ..config import MAX_SEED, check_number, shown
from ..errors import ConfigError

DEFAULT_MAX_TOKENS = 256  # when a request does not say; OpenAI's own default (16) is too short for text
MAX_STOP_SEQUENCES = 4  # OpenAI's limit
MAX_STOP_CHARS = 256  # each is checked against the text's tail at every step
UNSUPPORTED = {  # OpenAI fields charrnn cannot honour, with the value that asks for nothing
    "logprobs": (None, 0), "suffix": (None, ""), "best_of": (None, 1), "logit_bias": (None, {}),
    "presence_penalty": (None, 0), "frequency_penalty": (None, 0),
}


@dataclass(frozen=True)
class Limits:
    """What one request may ask of the server, and how many generations run at once."""

    max_prompt_chars: int = 10_000
    max_tokens: int = 4_096  # characters generated per choice
    max_n: int = 16  # choices per request (they are sampled together, as one batch)
    concurrency: int = 8  # generations running at once; more wait for a slot
    queue_timeout: float = 10.0  # seconds a request waits for a slot before 429
    read_timeout: float = 10.0  # seconds a client may take to send a request's head, and its body
    write_timeout: float = 30.0  # seconds a client may take to accept the next piece of its answer

    def __post_init__(self):
        check_number(self, "max_prompt_chars", int, 1)
        check_number(self, "max_tokens", int, 1)
        check_number(self, "max_n", int, 1, 100_000)
        check_number(self, "concurrency", int, 1, 1024)
        check_number(self, "queue_timeout", float, 0)
        check_number(self, "read_timeout", float, 0, lo_open=True)
        check_number(self, "write_timeout", float, 0, lo_open=True)

    @property
    def max_body_bytes(self) -> int:
        """A JSON body holding the longest prompt, every character escaped (\\uXXXX\\uXXXX)."""
        return 12 * self.max_prompt_chars + 64 * 1024

    def as_dict(self) -> dict:
        return {"max_prompt_chars": self.max_prompt_chars, "max_tokens": self.max_tokens, "max_n": self.max_n,
                "concurrency": self.concurrency, "queue_timeout": self.queue_timeout,
                "read_timeout": self.read_timeout, "write_timeout": self.write_timeout}


LOOPBACK_NAMES = ("localhost", "127.0.0.1", "::1")
API_KEY_ENV = "CHARRNN_API_KEY"


@dataclass(frozen=True)
class Access:
    """Who may use the server: an API key every route but /health and the playground page
    requires (`Authorization: Bearer KEY`, as OpenAI's clients send it), the Host names it
    answers for (a DNS-rebinding page names its own), and the web origins allowed to call
    it from a browser (CORS; none unless asked for)."""

    api_key: str | None = None
    hosts: tuple[str, ...] = ()  # lower-case names without port; empty: any Host
    cors_origins: tuple[str, ...] = ()

    def __post_init__(self):
        if self.api_key is not None and (not isinstance(self.api_key, str) or not self.api_key.strip()
                                         or not self.api_key.isprintable() or not self.api_key.isascii()):
            raise ConfigError("The API key must be printable ASCII text that is not empty (HTTP headers carry "
                              "other characters differently from client to client).")

    @classmethod
    def bound_to(cls, host: str, api_key: str | None = None, allow_hosts=(), cors_origins=()) -> "Access":
        """The Host names a server bound to `host` answers for: the loopback names for a
        loopback address, that address and the loopback names for another one, any name
        for a wildcard address (0.0.0.0 or ::, reached by whatever name the network
        gives it) unless `allow_hosts` names them; plus `allow_hosts`."""
        host = host.strip("[]").lower()
        extra = tuple(h.strip().strip("[]").lower() for h in allow_hosts if h.strip())
        if host in ("0.0.0.0", "::", ""):
            names = extra
        else:
            names = tuple(dict.fromkeys((host, *LOOPBACK_NAMES, *extra)))
        return cls(api_key, names, tuple(cors_origins))

    def host_allowed(self, header: str) -> bool:
        """Whether a Host header names this server: `name`, `name:port`, `[v6]` or
        `[v6]:port`, exactly (anything else is refused)."""
        if not self.hosts:
            return True
        name, port = header.strip().lower(), ""
        if name.startswith("["):  # [::1]:8000
            close = name.find("]")
            if close < 0:
                return False
            name, rest = name[1:close], name[close + 1 :]
            if rest and not rest.startswith(":"):
                return False
            port = rest[1:]
        elif name.count(":") == 1:
            name, port = name.split(":", 1)
        if port and not (port.isascii() and port.isdigit()):
            return False
        return name in self.hosts

    def key_ok(self, authorization: str | None) -> bool:
        import hmac

        if self.api_key is None:
            return True
        scheme, _, token = (authorization or "").partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(token.strip().encode(), self.api_key.encode())


def is_loopback(host: str) -> bool:
    import ipaddress

    host = host.strip("[]")
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class APIError(Exception):
    """A request the server refuses: HTTP status and OpenAI's error fields."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.kind = status, message, param, code, kind

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


# -- models -------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Served:
    """One model under the name clients ask for."""

    name: str
    model: object  # charrnn.api.Model
    created: int  # the checkpoint file's modification time, as OpenAI's `created`

    def card(self) -> dict:
        return {"id": self.name, "object": "model", "created": self.created, "owned_by": "charrnn"}


def run_name(path: Path, bundled: bool = False) -> str:
    """The name a checkpoint is served under: its run folder's name for a run's best.pt,
    latest.pt or step snapshot, else the file's own name without .pt (the bundled model is
    `tinyshakespeare`)."""
    from ..paths import RunDir

    if not bundled and RunDir.is_checkpoint_name(path.name):
        return path.parent.resolve().name or path.stem
    return path.stem


def load_models(checkpoints=(), root=None, device: str = "cpu") -> list[Served]:
    """Load each checkpoint (file, run folder or run name) once; with none, the newest run
    under `root`, else the bundled model. Two files with the same run name are told apart
    as name-2, name-3; the same file named twice is refused."""
    from ..api import load
    from ..paths import DEFAULT_ROOT

    root = DEFAULT_ROOT if root is None else root
    models: list[Served] = []
    seen: dict[Path, str] = {}
    for spec in list(checkpoints) or [None]:
        model = load(spec, device=device, root=root)
        path = Path(model.path).resolve()
        if path in seen:
            raise ConfigError(f"Checkpoint {model.path} is given twice (as {seen[path]!r} too); serve it once.")
        base = run_name(Path(model.path), model.bundled)
        name, k = base, 2
        while any(s.name == name for s in models):
            name, k = f"{base}-{k}", k + 1
        seen[path] = spec if spec is not None else name
        models.append(Served(name, model, int(path.stat().st_mtime)))
    return models


# -- requests -----------------------------------------------------------------------------------
@dataclass(frozen=True)
class CompletionRequest:
    """A POST /v1/completions body, checked field by field with the API's own names."""

    model: str
    prompt: str = ""
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 1.0  # OpenAI's default
    top_p: float | None = None
    top_k: int | None = None  # an extension: OpenAI's API has no top_k
    n: int = 1
    stop: tuple[str, ...] = ()
    seed: int | None = None
    stream: bool = False
    echo: bool = False
    include_usage: bool = False  # stream_options.include_usage: a last chunk with the usage

    @classmethod
    def parse(cls, body, served: dict[str, Served], limits: Limits) -> "CompletionRequest":
        """Check a decoded JSON body; raise APIError (400, or 404 for an unknown model).
        Unknown fields are ignored, as OpenAI's other options (`user`, ...) change nothing
        here; options that would change the result and that charrnn cannot honour are
        refused."""
        if not isinstance(body, dict):
            raise APIError(400, "The request body must be a JSON object.")
        for name, (absent, neutral) in UNSUPPORTED.items():
            if body.get(name, absent) not in (absent, neutral):
                raise APIError(400, f"{name} is not supported by charrnn; leave it out.", name, "unsupported_parameter")
        model = body.get("model")
        if model is None:
            model = next(iter(served))  # lenient: the first model the server was started with
        if not isinstance(model, str):
            raise APIError(400, f"model must be a string, not {_json_type(model)}.", "model")
        if model not in served:
            raise model_not_found(model, served)
        prompt = body.get("prompt", "")
        if isinstance(prompt, list) and len(prompt) == 1:
            prompt = prompt[0]  # OpenAI's batch form, with one prompt
        if prompt is None:
            prompt = ""
        if not isinstance(prompt, str):
            raise APIError(400, f"prompt must be a string, not {_json_type(prompt)}.", "prompt")
        if len(prompt) > limits.max_prompt_chars:
            raise APIError(400, f"The prompt has {len(prompt):,} characters; this server takes at most "
                                f"{limits.max_prompt_chars:,}.", "prompt", "prompt_too_long")
        stop = body.get("stop")
        stop = () if stop is None else (stop,) if isinstance(stop, str) else stop
        if not isinstance(stop, (list, tuple)) or not all(isinstance(s, str) for s in stop):
            raise APIError(400, "stop must be a string or a list of strings.", "stop")
        stop = tuple(s for s in stop if s)  # an empty stop sequence would end every sample at once
        if len(stop) > MAX_STOP_SEQUENCES or any(len(s) > MAX_STOP_CHARS for s in stop):
            raise APIError(400, f"stop takes at most {MAX_STOP_SEQUENCES} sequences of at most "
                                f"{MAX_STOP_CHARS} characters each.", "stop")
        options = body.get("stream_options") or {}
        if not isinstance(options, dict):
            raise APIError(400, "stream_options must be an object.", "stream_options")
        fields = {"model": model, "prompt": prompt, "stop": stop, "include_usage": options.get("include_usage", False)}
        for name in ("max_tokens", "temperature", "top_p", "top_k", "n", "seed", "stream", "echo"):
            value = body.get(name)
            if value is not None:
                fields[name] = value
        try:
            request = cls(**fields)
        except ConfigError as exc:
            raise APIError(400, str(exc), _param(str(exc))) from None
        request.check_limits(limits)
        return request

    def __post_init__(self):
        """The types and ranges; `sample_config` then applies the sampler's own rules."""
        check_number(self, "max_tokens", int, 0)
        check_number(self, "temperature", float, 0)
        check_number(self, "top_p", float, 0, 1, lo_open=True, optional=True)
        check_number(self, "top_k", int, 1, optional=True)
        check_number(self, "n", int, 1)
        check_number(self, "seed", int, 0, MAX_SEED, optional=True)
        for name in ("stream", "echo", "include_usage"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} must be true or false, not {getattr(self, name)!r}.")

    def check_limits(self, limits: Limits) -> None:
        if self.max_tokens > limits.max_tokens:
            raise APIError(400, f"max_tokens must be at most {limits.max_tokens:,} on this server, not "
                                f"{shown(self.max_tokens)}.", "max_tokens", "limit_exceeded")
        if self.n > limits.max_n:
            raise APIError(400, f"n must be at most {limits.max_n:,} on this server, not {shown(self.n)}.", "n",
                           "limit_exceeded")

    def sample_config(self):
        """The sampler's configuration: its checks are the last word on what can run."""
        from ..config import SampleConfig

        try:
            return SampleConfig(length=self.max_tokens, temperature=float(self.temperature), top_k=self.top_k,
                                top_p=self.top_p, seed=self.seed, num_samples=self.n, stop=self.stop)
        except ConfigError as exc:
            raise APIError(400, str(exc)) from None


def model_not_found(name: str, served: dict[str, Served]) -> APIError:
    names = ", ".join(served)
    return APIError(404, f"The model {name!r} does not exist; this server has {names}.", "model", "model_not_found")


def _json_type(value) -> str:
    names = {dict: "an object", list: "a list", str: "a string", bool: "a boolean", type(None): "null",
             int: "a number", float: "a number"}
    return names.get(type(value), type(value).__name__)


def _param(message: str) -> str | None:
    """The field a check_number message is about (it starts with the field's name)."""
    head = message.split(" ", 1)[0]
    return head if head.isidentifier() else None


# -- generation ---------------------------------------------------------------------------------
class Slots:
    """A count of running generations, safe from any thread and any event loop (the server
    has one loop, but test clients start their own)."""

    def __init__(self, size: int):
        self.size = size
        self.active = 0
        self._lock = threading.Lock()

    def try_acquire(self) -> bool:
        with self._lock:
            if self.active >= self.size:
                return False
            self.active += 1
            return True

    def release(self) -> None:
        with self._lock:
            self.active -= 1

    async def acquire(self, timeout: float) -> bool:
        """Wait up to `timeout` seconds for a slot (polling: slots free up a chunk at a time,
        tens of milliseconds apart, so a finer wake-up buys nothing)."""
        import anyio

        deadline = time.monotonic() + timeout
        while not self.try_acquire():
            if time.monotonic() >= deadline:
                return False
            await anyio.sleep(0.02)
        return True


class Choices:
    """Each choice's text as the sampler streams it, under OpenAI's rule that the stop
    sequence which ended a choice is not part of its text (`charrnn sample` keeps it).
    Text that could still turn out to begin a stop sequence is held back until it is
    known, so streamed text never has to be taken back."""

    def __init__(self, request: CompletionRequest):
        self.prompt, self.stop = request.prompt, request.stop
        n = request.n
        self.texts = [""] * n
        self.finish: list[str | None] = [None] * n
        self._sent = [0] * n
        self._echo = [request.echo] * n
        self._hold = max((len(s) for s in self.stop), default=1) - 1

    def push(self, texts: list[str], done: list[bool]) -> list[tuple[int, str, str | None]]:
        """A sampler chunk -> (choice, text to send, finish reason or None) for each choice
        with something to say."""
        out = []
        for i, (piece, finished) in enumerate(zip(texts, done)):
            if self.finish[i] is not None:
                continue
            self.texts[i] += piece
            if finished:
                self.finish[i], self.texts[i] = self._end(self.texts[i])
                upto = len(self.texts[i])
            else:
                upto = len(self.texts[i]) - self._hold
            delta = self.texts[i][self._sent[i]:upto] if upto > self._sent[i] else ""
            if self._echo[i]:
                delta, self._echo[i] = self.prompt + delta, False
            if delta or finished:
                out.append((i, delta, self.finish[i]))
            self._sent[i] = max(self._sent[i], upto)
        return out

    def _end(self, text: str) -> tuple[str, str]:
        """The finish reason, and the text without the stop sequence that ended it. A stop
        sequence may begin in the prompt; only its part in the text is cut."""
        whole = self.prompt + text
        hits = [s for s in self.stop if text and whole.endswith(s)]
        if hits:
            return "stop", text[: max(0, len(text) - max(map(len, hits)))]
        return "length", text


class Stopping(Exception):
    """The server is shutting down: running generations end at their next chunk."""


@dataclass
class Service:
    """The models, limits and running generations behind the routes."""

    models: list[Served]
    limits: Limits = field(default_factory=Limits)
    slots: Slots = field(init=False)
    stopping: threading.Event = field(default_factory=threading.Event)
    generated_chars: int = 0  # characters sampled since start-up (tests watch it stop)

    def __post_init__(self):
        if not self.models:
            raise ConfigError("The server needs at least one model.")
        names = [s.name for s in self.models]
        if len(set(names)) != len(names):
            raise ConfigError(f"Model names must be unique, not {', '.join(names)}.")
        self.by_name = {s.name: s for s in self.models}
        self.slots = Slots(self.limits.concurrency)
        from ..model.batching import BatchLoop

        # One batch loop per model, made here (each thread starts on its first request): no
        # lock is needed to find one, so `stop` can run from a signal handler at any moment.
        self.loops: dict[str, BatchLoop] = {
            s.name: BatchLoop(s.model.net, s.model.vocab, s.model.device) for s in self.models}

    def stop(self) -> None:
        """Refuse new generations and end the running ones at their next step."""
        self.stopping.set()
        for loop in self.loops.values():
            loop.stop(timeout=0)

    def health(self) -> dict:
        return {"status": "stopping" if self.stopping.is_set() else "ok", "models": list(self.by_name),
                "generations": {"active": self.slots.active, "limit": self.slots.size},
                "limits": self.limits.as_dict()}

    def check_prompt(self, request: CompletionRequest) -> None:
        from ..text.vocabulary import unknown_message

        bad, count = self.by_name[request.model].model.vocab.unknown_chars(request.prompt)
        if bad:
            message = unknown_message(bad, count).replace("The text", "The prompt", 1)
            raise APIError(400, message, "prompt", "unknown_characters")

    async def slot(self) -> None:
        """Take a generation slot, waiting up to the queue timeout; 429 when none frees up."""
        if self.stopping.is_set():
            raise shutting_down()
        if not await self.slots.acquire(self.limits.queue_timeout):
            raise APIError(429, f"The server is busy: {self.slots.size} generations are running; try again "
                                f"shortly.", None, "server_busy", "rate_limit_error")

    async def chunks(self, request: CompletionRequest, cfg, gone=None) -> AsyncIterator[tuple[list[str], list[bool]]]:
        """The request's chunks from its model's batch loop (charrnn.model.batching), where it steps
        together with every other running request; ends early when the server stops
        (raising Stopping) or `gone()` says the client left, and leaves the batch however
        it ends. The caller holds a slot."""
        import asyncio

        from ..model.batching import END, Stopped

        loop = asyncio.get_running_loop()
        queue: asyncio.Queue = asyncio.Queue()

        def deliver(item) -> None:  # called from the batch loop's thread
            try:
                loop.call_soon_threadsafe(queue.put_nowait, item)
            except RuntimeError:  # the event loop is closed: nobody is waiting
                pass

        try:
            job = self.loops[request.model].submit(request.prompt, cfg, deliver)
        except Stopped:
            raise Stopping() from None
        try:
            while True:
                if self.stopping.is_set():
                    raise Stopping()
                item = await queue.get()
                if item is END:
                    return
                if isinstance(item, Stopped):
                    raise Stopping()
                if isinstance(item, BaseException):
                    raise item
                job.taken()
                self.generated_chars += sum(len(t) for t in item.texts)
                yield item.texts, item.done
                if gone is not None and await gone():
                    return
        finally:
            job.cancel()  # leaves the batch at its next step (a finished job has left already)


def generation_failed(exc: Exception) -> APIError:
    from ..errors import CharrnnError

    reason = str(exc) if isinstance(exc, CharrnnError) else f"{type(exc).__name__}"
    return APIError(500, f"The generation failed ({reason[:200]}).", None, "generation_failed", "server_error")


def shutting_down() -> APIError:
    return APIError(503, "The server is shutting down.", None, "shutting_down", "server_error")


# -- the application ----------------------------------------------------------------------------
def create_app(models: list[Served], limits: Limits | None = None, access: Access | None = None):
    """The ASGI application serving `models` (from `load_models`) under `limits`, to the
    clients `access` lets in (default: any Host, no key, no CORS). `app.state.service` is
    its `Service` (`.stop()` ends running generations)."""
    from contextlib import aclosing
    from importlib.resources import files

    import anyio
    from starlette.applications import Starlette
    from starlette.exceptions import HTTPException
    from starlette.requests import ClientDisconnect, Request
    from starlette.responses import HTMLResponse, JSONResponse, StreamingResponse
    from starlette.routing import Route

    service = Service(models, limits or Limits())
    page = files("charrnn").joinpath("static", "playground.html").read_text(encoding="utf-8")

    def error(exc: APIError):
        headers = {"Retry-After": "1"} if exc.status == 429 else None
        return JSONResponse(exc.body(), status_code=exc.status, headers=headers)

    async def playground(request: Request):
        # Everything the page needs is in the page: the policy makes sure of it.
        csp = ("default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
               "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
        return HTMLResponse(page, headers={"Content-Security-Policy": csp})

    async def health(request: Request):
        return JSONResponse(service.health())

    async def list_models(request: Request):
        return JSONResponse({"object": "list", "data": [s.card() for s in models]})

    async def get_model(request: Request):
        name = request.path_params["model"]
        if name not in service.by_name:
            return error(model_not_found(name, service.by_name))
        return JSONResponse(service.by_name[name].card())

    async def read_json(request: Request):
        size = request.headers.get("content-length", "")
        limit = service.limits.max_body_bytes
        too_big = APIError(413, f"The request body is larger than this server takes ({limit:,} bytes).", None,
                           "body_too_large")
        if size.isdigit() and int(size) > limit:
            raise too_big
        body = bytearray()
        try:
            with anyio.fail_after(service.limits.read_timeout):
                async for part in request.stream():
                    body += part
                    if len(body) > limit:
                        raise too_big
        except TimeoutError:
            raise APIError(408, f"The request body did not arrive within {service.limits.read_timeout:g} seconds.",
                           None, "timeout") from None
        try:
            return json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
        except (UnicodeDecodeError, ValueError) as exc:
            raise APIError(400, f"The request body is not valid JSON ({_json_reason(exc)}).") from None
        except RecursionError:
            raise APIError(400, "The request body is not valid JSON (it is nested too deeply).") from None

    async def completions(request: Request):
        try:
            kind = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
            if kind != "application/json":
                # A web page can send text/plain or a form to any address without asking the
                # browser first (no CORS preflight); JSON needs one, which this server denies.
                raise APIError(415, "The request body must be JSON, sent with Content-Type: application/json.",
                               None, "unsupported_media_type")
            body = await read_json(request)
            req = CompletionRequest.parse(body, service.by_name, service.limits)
            service.check_prompt(req)
            cfg = req.sample_config()
            await service.slot()
        except APIError as exc:
            return error(exc)
        except ClientDisconnect:
            return error(APIError(400, "The client went away."))
        head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": req.model}
        if req.stream:
            return Events(sse(req, cfg, head), service.slots.release)
        try:
            choices = Choices(req)
            async with aclosing(service.chunks(req, cfg, gone=request.is_disconnected)) as chunks:
                async for texts, done in chunks:
                    choices.push(texts, done)
            if any(f is None for f in choices.finish):  # the client left: nobody reads an answer
                return JSONResponse({}, status_code=499)
            texts = [(req.prompt if req.echo else "") + t for t in choices.texts]
            return JSONResponse({
                **head,
                "choices": [{"text": t, "index": i, "logprobs": None, "finish_reason": f}
                            for i, (t, f) in enumerate(zip(texts, choices.finish))],
                "usage": usage(req, choices),
            })
        except Stopping:
            return error(shutting_down())
        except Exception as exc:  # the generation failed: one sentence, never a traceback in the log
            return error(generation_failed(exc))
        finally:
            service.slots.release()

    async def sse(req: CompletionRequest, cfg, head: dict) -> AsyncIterator[str]:
        """OpenAI's stream: one `data: {chunk}` event per choice with new text, the finish
        reason on each choice's last, `data: [DONE]` at the end."""
        choices = Choices(req)
        try:
            async with aclosing(service.chunks(req, cfg)) as chunks:
                async for texts, done in chunks:
                    for i, text, finish in choices.push(texts, done):
                        choice = {"text": text, "index": i, "logprobs": None, "finish_reason": finish}
                        yield event({**head, "choices": [choice]})
            if req.include_usage:
                yield event({**head, "choices": [], "usage": usage(req, choices)})
        except Stopping:
            yield event(shutting_down().body())
        except Exception as exc:  # a stream that fails mid-way still ends well-formed
            yield event(generation_failed(exc).body())
        yield "data: [DONE]\n\n"

    class Events(StreamingResponse):
        """An event stream that gives back its generation slot however it ends: finished,
        client gone (Starlette cancels the stream), or never started."""

        def __init__(self, content, on_close):
            super().__init__(content, media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
            self._on_close = on_close

        async def __call__(self, scope, receive, send):
            async def bounded_send(message):
                # A client that stops reading would hold its slot for ever: each piece must
                # be taken within write_timeout, else the stream ends and the slot is freed.
                with anyio.fail_after(service.limits.write_timeout):
                    await send(message)

            try:
                await super().__call__(scope, receive, bounded_send)
            except (ClientDisconnect, OSError, TimeoutError):
                pass  # the client left mid-stream or stopped reading; its generation has stopped
            finally:
                try:
                    await self.body_iterator.aclose()
                finally:
                    self._on_close()

    async def http_error(request: Request, exc: HTTPException):
        what = {404: "There is no such endpoint", 405: "This endpoint does not take that method"}
        message = f"{what.get(exc.status_code, exc.detail)}: {request.method} {request.url.path}."
        return error(APIError(exc.status_code, message, None, "not_found" if exc.status_code == 404 else None))

    routes = [
        Route("/", playground, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", list_models, methods=["GET"]),
        Route("/v1/models/{model:path}", get_model, methods=["GET"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]
    app = Starlette(routes=routes, exception_handlers={HTTPException: http_error})
    app.state.service = service
    access = access or Access()
    outer = KeyCheck(app, access)
    if access.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        outer = CORSMiddleware(outer, allow_origins=list(access.cors_origins), allow_methods=["GET", "POST"],
                               allow_headers=["Authorization", "Content-Type"])
    outer = HostCheck(outer, access)
    outer.state = app.state  # callers reach the service as app.state.service
    return outer


class _Middleware:
    """A pure ASGI layer in front of the application, answering some requests itself."""

    def __init__(self, app, access: Access):
        self.app, self.access = app, access

    @staticmethod
    async def refuse(send, exc: APIError, headers: list | None = None) -> None:
        body = json.dumps(exc.body()).encode()
        await send({"type": "http.response.start", "status": exc.status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *(headers or [])]})
        await send({"type": "http.response.body", "body": body})


SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"), (b"x-frame-options", b"DENY"),
                    (b"referrer-policy", b"no-referrer")]


class HostCheck(_Middleware):
    """Refuses a Host header the server does not answer for (DNS rebinding: a page on an
    attacker's name that resolves to this machine), and adds headers that stop browsers
    from sniffing types or framing the pages, to every response."""

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def with_headers(message):
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), *SECURITY_HEADERS]}
            await send(message)

        headers = dict(scope.get("headers") or [])
        host = headers.get(b"host", b"").decode("latin-1")
        if not self.access.host_allowed(host):
            return await self.refuse(with_headers, APIError(
                400, f"This server does not answer for the host {host[:100]!r}; start it with --allow-host to add one.",
                None, "invalid_host"))
        await self.app(scope, receive, with_headers)


class KeyCheck(_Middleware):
    """With an API key, every route but /health and the playground page (a static file
    that asks for the key itself) needs `Authorization: Bearer KEY`; 401 otherwise."""

    OPEN = ("/health", "/")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or self.access.api_key is None or scope.get("path") in self.OPEN:
            return await self.app(scope, receive, send)
        headers = dict(scope.get("headers") or [])
        authorization = headers.get(b"authorization", b"").decode("latin-1")
        if not self.access.key_ok(authorization):
            message = ("This server needs an API key: send Authorization: Bearer KEY." if not authorization
                       else "The API key is not valid.")
            return await self.refuse(send, APIError(401, message, None, "invalid_api_key", "authentication_error"),
                                     [(b"www-authenticate", b"Bearer")])
        await self.app(scope, receive, send)


def event(data: dict) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False)}\n\n"


def usage(req: CompletionRequest, choices: Choices) -> dict:
    """Tokens are characters, as max_tokens counts them."""
    completion = sum(len(t) for t in choices.texts)
    return {"prompt_tokens": len(req.prompt), "completion_tokens": completion,
            "total_tokens": len(req.prompt) + completion}


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number JSON allows")


def _json_reason(exc: Exception) -> str:
    if isinstance(exc, UnicodeDecodeError):
        return "it is not UTF-8 text"
    return getattr(exc, "msg", None) or str(exc)


# -- running it ---------------------------------------------------------------------------------
def bind(host: str, port: int):
    """A listening socket on host:port, so that a port in use is one clear error before the
    server starts (and port 0 picks a free port the start-up line can name)."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        raise ConfigError(f"Cannot listen on {host!r}: {getattr(exc, 'strerror', None) or exc}.") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # restart right after a stop (TIME_WAIT)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        import errno

        if exc.errno == errno.EADDRINUSE:
            raise ConfigError(f"Port {port} on {host} is already in use; stop what uses it or choose another "
                              f"with --port.") from None
        raise ConfigError(f"Cannot listen on {host} port {port}: {exc.strerror or exc}.") from None
    sock.set_inheritable(True)
    return sock


def url(sock) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


def serve(app, sock, access_log: bool = False, shutdown_timeout: float = 3.0) -> None:
    """Run `app` on the bound socket until SIGINT or SIGTERM. Running generations are told
    to stop at once, and connections get `shutdown_timeout` seconds to finish; uvicorn then
    raises the signal again, so the process ends as the signal asks (KeyboardInterrupt for
    SIGINT)."""
    import uvicorn

    service: Service = app.state.service

    class Server(uvicorn.Server):
        def handle_exit(self, sig, frame):
            service.stop()
            super().handle_exit(sig, frame)

    config = uvicorn.Config(app, log_level="warning", access_log=access_log, lifespan="off",
                            timeout_graceful_shutdown=max(1, round(shutdown_timeout)), server_header=False,
                            http=head_timeout_protocol(service.limits.read_timeout))
    Server(config).run(sockets=[sock])


def head_timeout_protocol(seconds: float):
    """uvicorn's h11 protocol with a deadline on each request's head: a client that sends
    its headers a byte at a time (slow-loris) is disconnected after `seconds`, instead of
    holding a connection for as long as it likes. (uvicorn's keep-alive timeout stops at
    the first byte of the next request.)"""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class HeadTimeout(H11Protocol):
        _head_timer = None
        _head_cycle = None

        def connection_made(self, transport):
            super().connection_made(transport)
            self._start_head_timer()

        def data_received(self, data: bytes) -> None:
            if self._head_timer is None and (self.cycle is None or self.cycle.response_complete):
                self._start_head_timer()  # the next request on a kept-alive connection
            super().data_received(data)
            if self._head_timer is not None and self.cycle is not self._head_cycle:
                self._head_timer.cancel()  # a new request's head is complete
                self._head_timer = None

        def _start_head_timer(self) -> None:
            self._head_cycle = self.cycle
            self._head_timer = self.loop.call_later(seconds, self._head_deadline)

        def _head_deadline(self) -> None:
            self._head_timer = None
            if self.cycle is self._head_cycle and not self.transport.is_closing():
                self.transport.close()

        def connection_lost(self, exc):
            if self._head_timer is not None:
                self._head_timer.cancel()
                self._head_timer = None
            super().connection_lost(exc)

    return HeadTimeout


def missing_extra() -> str | None:
    """The sentence to print when the `serve` extra is not installed, else None."""
    import importlib.util

    missing = [m for m in ("starlette", "uvicorn") if importlib.util.find_spec(m) is None]
    if missing:
        which = "which is not installed; install it" if len(missing) == 1 else "which are not installed; install them"
        return f"charrnn serve needs {' and '.join(missing)}, {which} with `pip install 'charrnn-cli[serve]'`."
    return None


__all__ = ["API_KEY_ENV", "APIError", "Access", "CompletionRequest", "Limits", "Served", "Service", "bind", "create_app", "load_models",
           "is_loopback", "missing_extra", "run_name", "serve", "url"]
