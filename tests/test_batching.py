"""The batch loop behind `charrnn serve`: requests of different settings step together,
each as it would alone; they join and leave at any step."""

import queue
import threading
import time

import pytest
import torch
from conftest import wait_until

from charrnn.config import ModelConfig, SampleConfig
from charrnn.model.batching import AHEAD, END, BatchLoop, Job, Stopped
from charrnn.model.network import CharRNN
from charrnn.model.sampling import Sampler, Samples
from charrnn.text.characters import CharVocab

VOCAB = CharVocab.from_text("abcdefghij \n")


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return CharRNN(ModelConfig(vocab_size=VOCAB.size, hidden_size=32, num_layers=2, embedding_size=8)).eval()


class Reader:
    """One request's consumer: `read` takes its chunks until the end; with `background`, a
    thread reads them as they come (`result` then holds the texts or what was raised)."""

    def __init__(self, loop: BatchLoop, prime: str, cfg: SampleConfig, background: bool = False):
        self.items: queue.Queue = queue.Queue()
        self.job = loop.submit(prime, cfg, self.items.put)
        self.result = None
        if background:
            self.thread = threading.Thread(target=self._drain, daemon=True)
            self.thread.start()

    def _drain(self) -> None:
        try:
            self.result = self.read()
        except BaseException as exc:
            self.result = exc

    def read(self, timeout: float = 30) -> list[str]:
        """Every sample's whole text; raises what the loop delivered instead of END."""
        texts = None
        while True:
            item = self.items.get(timeout=timeout)
            if item is END:
                return texts
            if isinstance(item, BaseException):
                raise item
            self.job.taken()
            texts = item.texts if texts is None else [t + c for t, c in zip(texts, item.texts)]


def alone(net, prime: str, cfg: SampleConfig) -> list[str]:
    texts = [""] * cfg.num_samples
    for chunk in Sampler(net, VOCAB).generate(prime, cfg):
        texts = [t + c for t, c in zip(texts, chunk.texts)]
    return texts


CONFIGS = [  # (prime, settings): different lengths, temperatures, filters, stops, n
    ("ab", dict(length=120, temperature=0.9, seed=1)),
    ("", dict(length=40, temperature=0, seed=2)),
    ("cab", dict(length=200, temperature=1.3, top_k=3, seed=3)),
    ("j", dict(length=90, temperature=0.7, top_p=0.8, seed=4, num_samples=3)),
    ("hi ", dict(length=150, temperature=1.0, stop=("\n",), seed=5)),
    ("a", dict(length=1, temperature=1.0, seed=6)),
    ("bb", dict(length=60, temperature=0.5, seed=7, num_samples=2)),
    ("abc", dict(length=300, temperature=1.0, seed=8, stop=("ja", "ii"))),
]


def test_a_seeded_request_alone_gives_the_sampler_s_text_every_time(net):
    loop = BatchLoop(net, VOCAB)
    try:
        cfg = SampleConfig(length=200, temperature=0.9, seed=11)
        first = Reader(loop, "ab", cfg).read()
        assert first == Reader(loop, "ab", cfg).read() == alone(net, "ab", cfg)
        assert len(first[0]) == 200
    finally:
        loop.stop()


def test_requests_in_one_batch_see_their_alone_logits(net, monkeypatch):
    """Sixteen requests of different settings run at once: each one's logits, step by step,
    equal its logits alone within 1e-4, and each text keeps its own length and stops."""
    seen: dict[int, list[torch.Tensor]] = {}
    real_draw = BatchLoop._draw

    def recording(self, logits, spans):
        for job, (a, b) in zip(self._running, spans):
            seen.setdefault(job.cfg.seed, []).append(logits[a:b].clone())
        return real_draw(self, logits, spans)

    monkeypatch.setattr(BatchLoop, "_draw", recording)
    specs = [(prime, SampleConfig(**{**settings, "seed": settings["seed"] + 100 * k}))
             for k in range(2) for prime, settings in CONFIGS]
    alone_logits = {}
    for prime, cfg in specs:
        Reader_loop = BatchLoop(net, VOCAB)
        try:
            Reader(Reader_loop, prime, cfg).read()
        finally:
            Reader_loop.stop()
        alone_logits[cfg.seed] = seen.pop(cfg.seed)
    loop = BatchLoop(net, VOCAB)
    try:
        readers = [Reader(loop, prime, cfg) for prime, cfg in specs]
        texts = [r.read() for r in readers]
        assert loop.rows == 0 and loop.steps < sum(len(alone_logits[cfg.seed]) for _, cfg in specs)  # shared steps
    finally:
        loop.stop()
    for (prime, cfg), got in zip(specs, texts):
        a, b = alone_logits[cfg.seed], seen[cfg.seed]
        assert len(a) == len(b)
        assert max((x - y).abs().max().item() for x, y in zip(a, b)) < 1e-4
        assert len(got) == cfg.num_samples
        for text in got:
            if cfg.stop:
                assert len(text) <= cfg.length and (len(text) == cfg.length or text.endswith(cfg.stop))
            else:
                assert len(text) == cfg.length


def test_a_cancelled_request_leaves_the_batch_at_once(net):
    loop = BatchLoop(net, VOCAB)
    try:
        long = Reader(loop, "a", SampleConfig(length=10**6, seed=1, num_samples=3), background=True)
        other = Reader(loop, "b", SampleConfig(length=10**6, seed=2), background=True)
        assert wait_until(lambda: loop.rows == 4)
        long.job.cancel()
        assert wait_until(lambda: loop.rows == 1)
        other.job.cancel()
        assert wait_until(lambda: loop.rows == 0)
        steps = loop.steps
        time.sleep(0.1)
        assert loop.steps == steps  # nothing left to step: the loop sleeps
    finally:
        loop.stop()


def test_a_reader_that_falls_behind_steps_aside_and_resumes_where_it_was(net):
    """A request whose reader takes nothing stops after `AHEAD` chunks without holding the
    others back, and once read it finishes with the text it would have had."""
    cfg = SampleConfig(length=400, seed=9, temperature=1.0)
    loop = BatchLoop(net, VOCAB)
    try:
        stalled = Reader(loop, "ab", cfg)
        assert wait_until(lambda: stalled.items.qsize() >= AHEAD and loop.rows == 0)
        time.sleep(0.05)
        assert stalled.items.qsize() == AHEAD  # stepped aside: nothing more was generated
        other = Reader(loop, "c", SampleConfig(length=300, seed=3))
        assert len(other.read()[0]) == 300  # ran while the first stood aside
        assert stalled.read() == alone(net, "ab", cfg)
    finally:
        loop.stop()


def test_stopping_the_loop_ends_running_and_waiting_requests(net):
    loop = BatchLoop(net, VOCAB)
    running = Reader(loop, "a", SampleConfig(length=10**6, seed=1), background=True)
    assert wait_until(lambda: loop.rows == 1)
    loop.stop()
    running.thread.join(10)
    assert isinstance(running.result, Stopped)
    with pytest.raises(Stopped):
        loop.submit("a", SampleConfig(length=5), lambda item: None)


def test_a_request_that_cannot_start_fails_alone(net, monkeypatch):
    loop = BatchLoop(net, VOCAB)
    try:
        good = Reader(loop, "a", SampleConfig(length=10**6, seed=1), background=True)
        assert wait_until(lambda: loop.rows == 1)
        def bad(vocab, prime):
            raise ValueError("bad prime")

        monkeypatch.setattr("charrnn.model.batching.prime_ids", bad)
        with pytest.raises(ValueError, match="bad prime"):
            Reader(loop, "b", SampleConfig(length=5)).read()
        steps = loop.steps
        assert wait_until(lambda: loop.steps > steps) and loop.rows == 1  # the running request went on
        good.job.cancel()
    finally:
        loop.stop()


def test_readers_in_threads_all_complete(net):
    """Sixteen requests submitted from sixteen threads at once all finish with their length."""
    loop = BatchLoop(net, VOCAB)
    results = [None] * 16
    try:
        def one(i):
            results[i] = Reader(loop, "a", SampleConfig(length=100 + i, seed=i)).read()

        threads = [threading.Thread(target=one, args=(i,)) for i in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert [len(r[0]) for r in results] == [100 + i for i in range(16)]
    finally:
        loop.stop()


def test_the_vectorised_draw_equals_each_request_s_own_choice(net):
    """Requests drawn by temperature alone share one numpy draw in the batch loop; on the
    same logits it picks exactly what each request's own `Samples.choose` picks."""
    configs = [SampleConfig(temperature=t, seed=s, num_samples=n)
               for t, s, n in ((0.5, 1, 1), (1.0, 2, 3), (1.7, 3, 1), (0, 4, 2), (0.9, 5, 1))]
    configs.append(SampleConfig(temperature=1.0, top_k=3, seed=6))
    loop = BatchLoop(net, VOCAB)
    jobs = []
    for cfg in configs:  # jobs made by hand: no thread is started
        job = Job(loop, "", cfg, lambda item: None)
        job.samples = Samples(VOCAB, "", cfg, torch.device("cpu"))
        jobs.append(job)
    loop._running = jobs
    spans, start = [], 0
    for cfg in configs:
        spans.append((start, start + cfg.num_samples))
        start += cfg.num_samples
    own = [Samples(VOCAB, "", cfg, torch.device("cpu")) for cfg in configs]
    gen = torch.Generator().manual_seed(0)
    for _ in range(200):
        logits = torch.randn(start, VOCAB.size, generator=gen) * 3
        together = loop._draw(logits.clone(), spans)
        alone_tokens = torch.cat([s.choose(logits[a:b].clone()) for s, (a, b) in zip(own, spans)])
        assert torch.equal(together, alone_tokens)


def test_a_batch_that_fails_ends_every_request_in_it_and_the_loop_goes_on(net, monkeypatch):
    """A failure while merging a new request into the batch (memory, say) reaches the
    joining request and the running one: neither waits for ever; the next request runs."""
    loop = BatchLoop(net, VOCAB)
    try:
        running = Reader(loop, "a", SampleConfig(length=10**6, seed=1), background=True)
        assert wait_until(lambda: loop.rows == 1)
        real_load = loop.stepper.load
        calls = []

        def failing_load(state):
            if not calls:
                calls.append(1)
                raise MemoryError("no room for a larger batch")
            return real_load(state)

        monkeypatch.setattr(loop.stepper, "load", failing_load)
        with pytest.raises(MemoryError):
            Reader(loop, "b", SampleConfig(length=50, seed=2)).read(timeout=10)
        running.thread.join(10)
        assert isinstance(running.result, MemoryError)
        assert len(Reader(loop, "c", SampleConfig(length=50, seed=3)).read(timeout=10)[0]) == 50
    finally:
        loop.stop()
