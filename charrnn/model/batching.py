"""One generation loop per model: every running request steps together as one batch.

A recurrent model's state is a fixed-size tensor per sample, so generations of different
lengths, primes and settings can share each step: the rows of all running requests form
one batch (B, H) and one product per layer serves them all, which costs far less per
character than a matrix-vector product per request (at batch 1 a step reads every weight
for one character; at batch 16 for sixteen).

    loop = BatchLoop(net, vocab, device)
    job = loop.submit(prime, SampleConfig(...), deliver)   # deliver(item) from the loop's thread
    job.cancel()                                           # leaves the batch at the next step
    loop.stop()                                            # ends every job with `Stopped`

A request joins at the next step: its prime is run through the network on its own (the
loop's thread does it between two steps), its state rows are appended to the batch, and
from then on it steps with the rest. It leaves when all its samples are finished or it is
cancelled, and its rows are dropped from the batch at once. Each request keeps its own
`Samples` (charrnn.model.sampling): temperature, top-k/top-p, stop sequences, length and random
generator, so a seeded request draws the same numbers alone or in a batch. Its logits in
a batch equal its logits alone up to float32 summation order (a matrix product instead of
a matrix-vector product), so a seeded request is reproducible alone and best-effort under
load, as OpenAI documents for its own seeds.

`deliver` receives, in order: `Chunk`s, then `END` when the request is finished, or an
exception, or `Stopped` when the loop stops. An exception comes alone when the request
could not start (its prime, say: the others go on), or to every request in the batch when
the batch itself failed. A cancelled request gets nothing more. A request's prime is run
on the loop's thread between two steps, so a long prime holds the batch for that time
(the server bounds primes: `--max-prompt`). Nothing here prints or knows about HTTP.
"""

from __future__ import annotations

import threading
from typing import Callable

import numpy as np
import torch

from ..config import SampleConfig
from .network import CharRNN
from .sampling import Samples, draw, make_stepper, prime_ids, warm_up

END = object()  # delivered after a request's last chunk


class Stopped(Exception):
    """The loop was stopped while the request was running."""


AHEAD = 4  # chunks a request may have delivered and not yet taken before it steps aside


class Job:
    """One request in the batch loop."""

    def __init__(self, loop: "BatchLoop", prime: str, cfg: SampleConfig, deliver: Callable[[object], None]):
        self.loop, self.prime, self.cfg, self.deliver = loop, prime, cfg, deliver
        self.samples: Samples | None = None
        self.cancelled = threading.Event()
        self.parked: tuple | None = None  # (state rows, next logits) while it waits for its reader
        self._outstanding = 0  # chunks delivered and not yet taken
        self._lock = threading.Lock()

    def cancel(self) -> None:
        """Leave the batch at the next step (the client went away)."""
        self.cancelled.set()
        self.loop.wake()

    def taken(self) -> None:
        """The reader took one chunk: a request waiting for its reader may step again."""
        with self._lock:
            self._outstanding -= 1
            behind = self._outstanding
        if self.parked is not None and behind < AHEAD:
            self.loop.wake()

    def _delivered(self, chunk) -> None:
        with self._lock:
            self._outstanding += 1
        self.deliver(chunk)

    @property
    def behind(self) -> int:
        return self._outstanding


class BatchLoop:
    """The generation loop of one model, in a thread of its own started on the first request."""

    def __init__(self, model: CharRNN, vocab, device: torch.device | str = "cpu"):
        self.model = model.eval()
        self.vocab = vocab
        self.device = torch.device(device)
        self.stepper = make_stepper(self.model, self.device)
        self._waiting: list[Job] = []
        self._running: list[Job] = []
        self._parked: list[Job] = []  # running requests whose readers are behind, out of the batch
        self._cond = threading.Condition()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self.steps = 0  # batch steps taken (tests and the health route read it)
        self.rows = 0  # rows in the batch now

    def submit(self, prime: str, cfg: SampleConfig, deliver: Callable[[object], None]) -> Job:
        job = Job(self, prime, cfg, deliver)
        with self._cond:
            if self._stopping:
                raise Stopped()
            self._waiting.append(job)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="charrnn-batch", daemon=True)
                self._thread.start()
            self._cond.notify()
        return job

    def wake(self) -> None:
        """Have the loop look at its requests again (one was cancelled or can go on)."""
        with self._cond:
            self._cond.notify()

    def stop(self, timeout: float | None = 5.0) -> None:
        """End every running and waiting request (each gets `Stopped`) and the thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    # -- the loop's thread ------------------------------------------------------------------
    @torch.no_grad()
    def _run(self) -> None:
        logits = None  # (B, V): the running rows' next-token logits
        try:
            while True:
                with self._cond:
                    while not (self._waiting or self._running or self._stopping or self._ready()):
                        self._cond.wait()
                    if self._stopping:
                        return
                    joining, self._waiting = self._waiting, []
                try:
                    joining += self._unpark()
                    if joining:
                        logits = self._admit(joining, logits)
                    if self._running:
                        logits = self._step(logits)
                except Exception as exc:
                    # The batch itself failed (memory for a larger batch, the step): its state
                    # is gone, so every request in it, joining, running or parked, ends with the
                    # error; the loop goes on with the next requests.
                    failed = list(dict.fromkeys(self._running + self._parked + joining))
                    self._running, self._parked, self.rows, logits = [], [], 0, None
                    for job in failed:
                        if not job.cancelled.is_set():
                            job.deliver(exc)
        finally:
            with self._cond:
                self._stopping = True
                leftover, self._waiting = self._running + self._waiting + self._parked, []
            self._running, self._parked, self.rows = [], [], 0
            for job in leftover:
                job.deliver(Stopped())

    def _ready(self) -> bool:
        """A parked request can step again: its reader caught up, or it was cancelled."""
        return any(job.behind < AHEAD or job.cancelled.is_set() for job in self._parked)

    def _unpark(self) -> list[Job]:
        back = [job for job in self._parked if job.behind < AHEAD or job.cancelled.is_set()]
        self._parked = [job for job in self._parked if job not in back]
        return back

    def _admit(self, joining: list[Job], logits):
        """Append the rows of new requests (warmed up on their primes here) and of parked
        ones (with the state and logits they left with) to the batch."""
        states, firsts, admitted = [], [], []
        for job in joining:
            if job.cancelled.is_set():
                continue
            if job.parked is not None:
                state, first = job.parked
                job.parked = None
            else:
                try:
                    job.samples = Samples(self.vocab, job.prime, job.cfg, self.device)
                    first, state = warm_up(self.model, prime_ids(self.vocab, job.prime).to(self.device).unsqueeze(0))
                except Exception as exc:  # this request cannot run; the others go on
                    job.deliver(exc)
                    continue
                n = job.cfg.num_samples
                first, state = first.expand(n, -1), tuple(s.expand(-1, n, -1) for s in state)  # (n, V), (L, n, H)
            firsts.append(first)
            states.append(state)
            admitted.append(job)
        if not admitted:
            return logits
        if self._running:
            states.insert(0, self.stepper.state())
            firsts.insert(0, logits)
        logits = torch.cat(firsts)  # (B, V), a new tensor: writable
        state = tuple(torch.cat(parts, dim=1).contiguous() for parts in zip(*states))  # (L, B, H)
        self.stepper.load(state)
        self._running += admitted
        self.rows = state[0].size(1)
        return logits

    def _step(self, logits):
        """Draw one token for every row, hand out due chunks, drop the rows of finished and
        cancelled requests, advance the rest, and set aside those whose readers are behind."""
        spans, start = [], 0  # each running request's rows: [start, start + n)
        for job in self._running:
            spans.append((start, start + job.cfg.num_samples))
            start += job.cfg.num_samples
        tokens = self._draw(logits, spans)  # (B,)
        keep, rows = [], []
        for job, (a, b) in zip(self._running, spans):
            chunk = job.samples.take(tokens[a:b])
            if chunk is not None:
                job._delivered(chunk)
            if job.samples.finished:
                job.deliver(END)
            elif not job.cancelled.is_set():
                keep.append(job)
                rows.append((a, b))
        self.steps += 1
        if len(keep) != len(self._running):
            tokens = torch.cat([tokens[a:b] for a, b in rows]) if rows else tokens[:0]
            self._keep(keep, [torch.arange(a, b) for a, b in rows])
        if not keep:
            return None
        logits = self.stepper.advance(tokens)  # (B, V)
        behind = [i for i, job in enumerate(keep) if job.behind >= AHEAD]
        if not behind:
            return logits
        # Readers that have not taken their last chunks: their rows wait outside the batch,
        # with their state and next logits, until the reader catches up (`_unpark`).
        state, logits = self.stepper.state(), logits.clone()
        start, rows, stay = 0, [], []
        for i, job in enumerate(keep):
            n = job.cfg.num_samples
            index = torch.arange(start, start + n)
            if i in behind:
                job.parked = (tuple(s.index_select(1, index.to(s.device)) for s in state), logits[index.to(logits.device)])
                self._parked.append(job)
            else:
                stay.append(job)
                rows.append(index)
            start += n
        self._keep(stay, rows)
        return logits[torch.cat(rows).to(logits.device)] if rows else None

    def _draw(self, logits: torch.Tensor, spans: list[tuple[int, int]]) -> torch.Tensor:
        """The next token of every row (B,). Requests drawn by temperature alone
        (`Samples.plain`) are drawn together in one vectorised `draw` on the CPU, each row
        with its request's temperature and uniform number; the others each by their own
        `Samples.choose` (top-k, top-p, greedy, the UTF-8 guard)."""
        banned = list(self.vocab.banned_ids)
        if banned:
            logits[:, banned] = float("-inf")
        plain = [i for i, job in enumerate(self._running) if job.samples.plain]
        if logits.device.type != "cpu" or len(plain) < 2:
            plain = []
        tokens = torch.empty(logits.size(0), dtype=torch.long, device=logits.device)
        if plain:
            jobs = [self._running[i] for i in plain]
            index = np.concatenate([np.arange(*spans[i]) for i in plain])
            inv_t = np.concatenate([np.full(job.cfg.num_samples, 1.0 / job.cfg.temperature, np.float32) for job in jobs])
            u = np.concatenate([job.samples.uniforms.next() for job in jobs])
            tokens[torch.from_numpy(index)] = torch.from_numpy(draw(logits.numpy()[index] * inv_t[:, None], u))
        rest = set(range(len(self._running))) - set(plain)
        for i in rest:
            a, b = spans[i]
            tokens[a:b] = self._running[i].samples.choose(logits[a:b])
        return tokens

    def _keep(self, jobs: list[Job], rows: list[torch.Tensor]) -> None:
        """Keep only these requests' rows (`rows`, their indices in the batch) in the batch."""
        self._running = jobs
        if not jobs:
            self.rows = 0
            return
        index = torch.cat(rows)
        self.stepper.load(tuple(s.index_select(1, index.to(s.device)) for s in self.stepper.state()))
        self.rows = len(index)
