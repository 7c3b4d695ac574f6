"""Streaming generation: warm up on the prime once, then one step per token.

The prime goes through `model.forward` once, a window at a time with the state carried
(`warm_up`), so its memory stays flat however long it is; each generated token then costs
one `model.step` with the carried state, so the cost per character is flat however long
the prime or the output. Several samples are generated together as one batch.
"""

from __future__ import annotations

import codecs
import time
from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np
import torch

from ..config import SampleConfig
from ..errors import ConfigError
from .network import CharRNN, State


@dataclass(frozen=True)
class Chunk:
    """New text of each of the N samples since the previous chunk, and which have finished."""

    texts: list[str]
    done: list[bool]


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Scale by temperature and mask everything outside top-k / the top-p nucleus. # (B, V)"""
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        # Drop a token when the tokens ranked above it already hold top_p of the mass;
        # the most likely token always stays.
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop_sorted[..., 0] = False  # kept even when top_p is below what float32 can tell from 0
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


GREEDY_BELOW = 1e-6


class Uniforms:
    """Uniform numbers in [0, 1), one per stream and step, from a torch generator a block of
    steps at a time: one `torch.rand` call per step would cost a few percent of a batch-1
    step. The numbers, and so the text, depend only on the seed, never on the block size."""

    def __init__(self, generator: torch.Generator, streams: int, block: int = 64):
        self.generator, self.streams, self.block = generator, streams, block
        self._rows: np.ndarray = np.empty((0, streams), np.float32)
        self._next = 0

    def next(self) -> np.ndarray:
        """(N,) float32."""
        if self._next == len(self._rows):
            draws = torch.rand(self.block, self.streams, generator=self.generator, device=self.generator.device)
            self._rows, self._next = draws.cpu().numpy(), 0
        self._next += 1
        return self._rows[self._next - 1]


def choose(logits: torch.Tensor, cfg: SampleConfig, generator: torch.Generator | Uniforms) -> torch.Tensor:
    """Next token per stream: argmax at temperature 0, else a draw from the filtered distribution.

    Temperatures below `GREEDY_BELOW` are greedy too: dividing logits by them overflows to
    infinities (and NaN probabilities), and the distribution is a point mass anyway.

    The draw inverts the cumulative distribution at one uniform number per stream, as
    `torch.multinomial` does for one sample, at a fraction of its cost per call; on a CPU
    without top-k or top-p the arithmetic runs in numpy, whose calls on vectors this small
    cost a third of torch's (at batch 1 the draw is a tenth of a character's time)."""
    if cfg.temperature < GREEDY_BELOW:
        return logits.argmax(dim=-1)
    if isinstance(generator, Uniforms):
        u = generator.next()
    else:
        u = torch.rand(logits.size(0), generator=generator, device=generator.device).cpu().numpy()
    if logits.device.type == "cpu" and cfg.top_k is None and cfg.top_p is None:
        return torch.from_numpy(draw(logits.numpy() * np.float32(1.0 / cfg.temperature), u))
    z = filter_logits(logits, cfg.temperature, cfg.top_k, cfg.top_p)  # (N, V), a new tensor
    return torch.from_numpy(draw(z.cpu().numpy(), u)).to(logits.device)


def draw(z: np.ndarray, u: np.ndarray) -> np.ndarray:
    """One id per row of temperature-scaled logits z (N, V), a new array this changes,
    at the uniform numbers u (N,).

    Logits from a model with enormous weights can be infinite or NaN: NaN counts as
    impossible, +inf as certain (an argmax among the infinite ones), so a hostile model
    still gives ids inside the vocabulary."""
    top = z.max(axis=-1)
    if not np.isfinite(top).all() or np.isnan(z).any():
        np.nan_to_num(z, copy=False, nan=-np.inf, posinf=np.finfo(np.float32).max)
        top = z.max(axis=-1)
        dead = ~np.isfinite(top)  # every logit NaN or -inf: any id, drawn uniformly
        z[dead] = 0.0
        top[dead] = 0.0
    z -= top[:, None]
    np.exp(z, out=z)
    return _invert(np.cumsum(z, axis=-1, out=z), u)


def _invert(cdf: np.ndarray, u: np.ndarray) -> np.ndarray:
    """The id whose interval of the unnormalised cumulative distribution `cdf` (N, V) holds
    u * total, for each stream; u (N,) uniform in [0, 1).

    The point is kept strictly below the total, so the id found is always one whose own
    probability is above zero: its cumulative value is the first to exceed the point.
    Masked ids (probability 0) add nothing to the sum and can never be drawn."""
    total = cdf[:, -1]
    point = np.minimum(u * total, np.nextafter(total, np.float32(0)))  # (N,)
    if len(point) == 1:
        return np.array([cdf[0].searchsorted(point[0], side="right")])
    return (cdf <= point[:, None]).sum(axis=-1)  # (N,)


PRIME_WINDOW = 256  # prime tokens per forward call during warm-up


@torch.no_grad()
def warm_up(model: CharRNN, ids: torch.Tensor, window: int = PRIME_WINDOW) -> tuple[torch.Tensor, State]:
    """Run the prime ids (B, P) through the model, `window` positions per forward call with
    the state carried, and return the logits after its last position (B, V) and the state.

    One call over the whole prime would hold activations and logits for every position at
    once (about 18 GB for a 1 MB prime through a 2 x 512 LSTM); windows keep that to
    `window` positions and give the same result, since the state is all that links them.
    """
    if ids.size(1) == 0:
        raise ValueError("warm_up needs at least one prime id.")
    state = None
    for start in range(0, ids.size(1), window):
        logits, state = model(ids[:, start : start + window], state)  # (B, T, V)
    return logits[:, -1], state  # (B, V)


# -- keeping byte pieces in UTF-8 order ----------------------------------------------------
# A subword vocabulary with byte fallback spells rare characters as UTF-8 byte pieces; drawn
# freely, they could form sequences that are not UTF-8 (a lone continuation byte, a lead
# byte followed by a letter), which a decoder can only show as U+FFFD. The sampler instead
# follows each stream's UTF-8 decoder state and only lets it draw pieces that keep its bytes
# valid. States: 0 = at a character boundary; 1..7 = inside a character, waiting for a
# continuation byte in a range (RFC 3629's table: no overlong forms, no surrogates, nothing
# above U+10FFFF).
_CONTINUATION = {  # state: (lowest and highest continuation byte allowed next, state after it)
    1: (0x80, 0xBF, 0),  # one continuation byte to go
    2: (0x80, 0xBF, 1),  # two to go
    3: (0x80, 0xBF, 2),  # three to go
    4: (0xA0, 0xBF, 1),  # after E0 (no overlong three-byte forms)
    5: (0x80, 0x9F, 1),  # after ED (no surrogates)
    6: (0x90, 0xBF, 2),  # after F0 (no overlong four-byte forms)
    7: (0x80, 0x8F, 2),  # after F4 (nothing above U+10FFFF)
}
UTF8_STATES = 1 + len(_CONTINUATION)


def utf8_next(state: int, byte: int) -> int | None:
    """The UTF-8 decoder state after `byte`, or None if `byte` cannot come next."""
    if state:
        low, high, after = _CONTINUATION[state]
        return after if low <= byte <= high else None
    if byte < 0x80:
        return 0
    if 0xC2 <= byte <= 0xDF:
        return 1
    if 0xE0 <= byte <= 0xEF:
        return {0xE0: 4, 0xED: 5}.get(byte, 2)
    if 0xF0 <= byte <= 0xF4:
        return {0xF0: 6, 0xF4: 7}.get(byte, 3)
    return None  # 80..BF (a continuation), C0, C1 (overlong), F5..FF (beyond Unicode)


class Utf8Guard:
    """Masks the logits of each stream so its bytes stay valid UTF-8, then follows the ids drawn.

    Two small tables over the vocabulary, built once: a penalty per state and id (0 where
    allowed, -inf where not) and the state each allowed id leads to, both (S, V) with S = 8
    states. Each step is then two gathers for the whole batch (index_select, the cheapest
    on a CPU): the states' penalties are added to the logits (N, V) before temperature,
    top-k, top-p or argmax see them, and the ids drawn advance the states (N,). Banned ids
    (control pieces) are blocked in every state. A piece that is valid UTF-8 on its own (any
    whole-character piece) is allowed only at a boundary and leaves the stream there; a
    byte piece is allowed where its byte may come. Generation starts at a boundary: the
    prime is text, so its pieces end with a complete character.
    """

    def __init__(self, piece_bytes: list[bytes], banned: Iterable[int], streams: int, device: torch.device):
        size = len(piece_bytes)
        allowed = np.zeros((UTF8_STATES, size), dtype=bool)
        after = np.zeros((UTF8_STATES, size), dtype=np.int64)
        for i, piece in enumerate(piece_bytes):
            if _is_utf8(piece):
                allowed[0, i] = True  # whole characters: from a boundary to a boundary
                continue
            for start in range(UTF8_STATES):
                state = start
                for byte in piece:
                    state = utf8_next(state, byte)
                    if state is None:
                        break
                if state is not None:
                    allowed[start, i], after[start, i] = True, state
        allowed[:, list(banned)] = False
        # A state no allowed id leaves (a vocabulary lacking some byte pieces) must never be
        # entered, or a stream would have nothing left to draw.
        while True:
            dead = [s for s in range(1, UTF8_STATES) if not allowed[s].any() and (allowed & (after == s)).any()]
            if not dead:
                break
            allowed &= ~np.isin(after, dead)
        penalty = np.where(allowed, 0.0, -np.inf).astype(np.float32)
        self.penalty = torch.from_numpy(penalty).to(device)  # (S, V): 0 where allowed, else -inf
        self.next = torch.from_numpy(after.reshape(-1)).to(device)  # (S * V,): state, id -> state
        self.size = size
        self.state = torch.zeros(streams, dtype=torch.long, device=device)  # (N,)

    @classmethod
    def for_vocab(cls, vocab, streams: int, device: torch.device) -> "Utf8Guard | None":
        """A guard for a vocabulary with byte pieces (a lone byte 80..FF); None for one whose
        every piece is whole characters (a character vocabulary), which needs no masking."""
        pieces = vocab.piece_bytes()
        if not any(len(p) == 1 and p[0] >= 0x80 for p in pieces):
            return None
        return cls(pieces, vocab.banned_ids, streams, device)

    def mask(self, logits: torch.Tensor) -> torch.Tensor:
        """`logits` (N, V) with every id the streams' states forbid set to -inf."""
        return logits + self.penalty.index_select(0, self.state)  # (N, V)

    def advance(self, token: torch.Tensor) -> None:
        """Follow the ids just drawn (N,)."""
        self.state = self.next.index_select(0, self.state * self.size + token)  # (N,)


def _is_utf8(piece: bytes) -> bool:
    try:
        piece.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


class StreamDecoder:
    """Turns one new id per stream into text, holding back partial UTF-8 sequences (a
    subword vocabulary can spell a character as several byte pieces).

    With `Utf8Guard` choosing the ids every sequence is valid, so nothing is ever replaced.
    The bytes of a character still incomplete when a sample ends (only `max_time` can end it
    there: text, and so the length and stop sequences, only ever grows by whole characters)
    are dropped, never shown as U+FFFD: the decoder is never asked to flush them.
    """

    def __init__(self, vocab, streams: int):
        self._bytes = vocab.piece_bytes()
        self._decoders = [codecs.getincrementaldecoder("utf-8")("replace") for _ in range(streams)]

    def push(self, ids: list[int]) -> list[str]:
        """One new id for each stream -> the text each stream gained."""
        return [d.decode(self._bytes[i]) for d, i in zip(self._decoders, ids)]

    def push_one(self, stream: int, ids: list[int]) -> str:
        """Several new ids of one stream -> the text it gained."""
        return self._decoders[stream].decode(b"".join(self._bytes[i] for i in ids))


class StepLoop:
    """The stateful stepping interface the sampler uses (`load` a state, `advance` one token
    per stream, read `state` back), over a pure `step(ids, state) -> logits, state` such as
    `CharRNN.step`. `charrnn.model.cpustep.CpuStepper` implements the same three methods on its
    own buffers."""

    def __init__(self, step):
        self._step = step
        self._state: State | None = None

    def load(self, state: State) -> None:
        self._state = state

    def advance(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B,) -> logits (B, V)."""
        logits, self._state = self._step(ids, self._state)
        return logits

    def state(self) -> State:
        return self._state

    def fork(self) -> "StepLoop":
        return StepLoop(self._step)


def make_stepper(model: CharRNN, device: torch.device, quantize: bool = False):
    """The fastest stepper for the device: `CpuStepper` on a CPU (numpy's BLAS reads the
    weights several times faster at batch 1 than torch's single-threaded product;
    charrnn.model.cpustep says why and how), `Int8Stepper` for int8 weights, else `CharRNN.step`
    through `StepLoop`."""
    if quantize:
        if device.type != "cpu":
            raise ConfigError("--quantize (int8 weights) works on the CPU only.")
        from .quantize import Int8Stepper

        return Int8Stepper(model)
    if device.type == "cpu":
        from .cpustep import CpuStepper

        return CpuStepper(model)
    cells = model.cells()  # bound once: per-step weight look-ups cost a percent or two at batch 1
    return StepLoop(lambda ids, state: model.step(ids, state, cells=cells))


def prime_ids(vocab, prime: str) -> torch.Tensor:
    """The prime's ids (P,); a newline when there is no prime (most corpora begin text
    after one), else id 0 for a vocabulary without one."""
    ids = vocab.encode(prime) if prime else []
    if len(ids) == 0:
        ids = [int(i) for i in vocab.encode("\n")] if not vocab.unknown_chars("\n")[0] else [0]
    return torch.as_tensor(np.asarray(ids, dtype=np.int64))


class Samples:
    """The N samples of one request while they are drawn: their configuration, random
    generator, UTF-8 guard, decoding, length and stop checks, and the text not yet handed
    out. `choose` draws the next token of each sample from its logits, `take` accounts for
    the tokens drawn and returns a `Chunk` when one is due; `finished` says when all N are.

    The sampler drives one `Samples` at a time; the server's batch loop
    (charrnn.model.batching) drives one per request, each over its own rows of a shared batch.
    """

    def __init__(self, vocab, prime: str, cfg: SampleConfig, device: torch.device):
        n = self.n = cfg.num_samples
        self.cfg = cfg
        generator = torch.Generator(device=device)
        if cfg.seed is not None:
            generator.manual_seed(cfg.seed)
        else:
            generator.seed()
        self.uniforms = Uniforms(generator, n)
        self.banned = list(vocab.banned_ids)
        self.decoder = StreamDecoder(vocab, n)
        self.guard = Utf8Guard.for_vocab(vocab, n, device)  # None for characters
        self.deadline = None if cfg.max_time is None else time.monotonic() + cfg.max_time
        self.count = [0] * n  # characters produced per sample
        self.keep = max((len(s) for s in cfg.stop), default=1)
        # The last characters of the text so far, enough to see a stop sequence. It starts
        # with the end of the user's prime, since a stop sequence may begin there ("\n\n"
        # after a prime ending in "\n"); the default newline prime is no text the user
        # sees, so it does not count.
        self.tail = [prime[max(0, len(prime) - (self.keep - 1)) :]] * n
        self.pending = [""] * n  # text not yet handed out
        self.done = [False] * n
        self.steps = 0

    @property
    def finished(self) -> bool:
        return all(self.done)

    @property
    def plain(self) -> bool:
        """Drawn by temperature alone, with no per-sample masking: the batch loop draws such
        samples of many requests in one vectorised `draw` (they need only `banned` masked)."""
        cfg = self.cfg
        return self.guard is None and cfg.top_k is None and cfg.top_p is None and cfg.temperature >= GREEDY_BELOW

    def choose(self, logits: torch.Tensor) -> torch.Tensor:
        """The next token of each sample (N,) from its logits (N, V); banned ids are masked
        in place (with the UTF-8 guard, on a masked copy)."""
        if self.guard is not None:
            logits = self.guard.mask(logits)  # banned ids and bytes that would break UTF-8
        elif self.banned:
            logits[:, self.banned] = float("-inf")
        token = choose(logits, self.cfg, self.uniforms)  # (N,)
        if self.guard is not None:
            self.guard.advance(token)
        return token

    def take(self, token: torch.Tensor) -> Chunk | None:
        """Account for the tokens just drawn; a chunk when one is due (every `chunk_chars`
        steps, at a newline, and at the end), else None."""
        cfg, done = self.cfg, self.done
        for i, piece in enumerate(self.decoder.push(token.tolist())):
            if done[i]:
                continue
            piece, done[i] = _clip(self.count[i], self.tail[i], piece, cfg)
            self.count[i] += len(piece)
            self.tail[i] = (self.tail[i] + piece)[-self.keep :]
            self.pending[i] += piece
        self.steps += 1
        if self.deadline is not None and time.monotonic() >= self.deadline:
            self.done = done = [True] * self.n
        if all(done) or self.steps % cfg.chunk_chars == 0 or any("\n" in p for p in self.pending):
            chunk, self.pending = Chunk(self.pending, list(done)), [""] * self.n
            return chunk
        return None


def _clip(count: int, tail: str, piece: str, cfg: SampleConfig) -> tuple[str, bool]:
    """Cut `piece` at the length limit or right after the first stop sequence."""
    room = cfg.length - count
    finished = len(piece) >= room
    piece = piece[:room]
    if cfg.stop:
        text = tail + piece
        # Only matches that end inside the new piece are new.
        ends = [text.find(s, max(0, len(tail) - len(s) + 1)) for s in cfg.stop]
        ends = [e + len(s) for e, s in zip(ends, cfg.stop) if e >= 0]
        if ends:
            return piece[: min(ends) - len(tail)], True
    return piece, finished


class Sampler:
    """Generates text from a model and its vocabulary."""

    def __init__(self, model: CharRNN, vocab, device: torch.device | str = "cpu", quantize: bool = False):
        self.model = model.eval()
        self.vocab = vocab
        self.device = torch.device(device)
        self.stepper = make_stepper(model, self.device, quantize)

    @torch.no_grad()
    def generate(self, prime: str, cfg: SampleConfig) -> Iterator[Chunk]:
        """Yield chunks holding the new text of each of the N samples.

        A sample that has hit a stop sequence or its length gets "" from then on; the
        generator ends when every sample is finished. With a vocabulary of byte pieces,
        `Utf8Guard` keeps every sample valid UTF-8 (see `StreamDecoder` for its end).
        """
        n = cfg.num_samples
        samples = Samples(self.vocab, prime, cfg, self.device)
        stepper = self.stepper.fork()  # buffers of its own: generations may run side by side
        # The N samples share the prime: warm up one copy and give each sample the result.
        logits, state = warm_up(self.model, prime_ids(self.vocab, prime).to(self.device).unsqueeze(0))  # (1, V)
        logits = logits.expand(n, -1).clone()  # (N, V), writable: banned ids are masked in place
        stepper.load(tuple(s.expand(-1, n, -1).contiguous() for s in state))  # (L, N, H)
        if not cfg.stop and bool((self.vocab.char_lengths() == 1).all()):
            yield from self._fixed_length(logits, samples, stepper)
            return
        while True:
            token = samples.choose(logits)  # (N,)
            chunk = samples.take(token)
            if chunk is not None:
                yield chunk
            if samples.finished:
                return
            logits = stepper.advance(token)

    def _fixed_length(self, logits, samples: Samples, stepper) -> Iterator[Chunk]:
        """Every sample ends after exactly `length` one-character tokens: no per-sample checks
        are needed at each step, so tokens are decoded a chunk at a time."""
        cfg, n, banned, deadline = samples.cfg, samples.n, samples.banned, samples.deadline
        chunk: list[torch.Tensor] = []
        for step in range(cfg.length):
            if banned:
                logits[:, banned] = float("-inf")
            token = choose(logits, cfg, samples.uniforms)  # (N,)
            chunk.append(token)
            last = step == cfg.length - 1 or (deadline is not None and time.monotonic() >= deadline)
            if last or len(chunk) == cfg.chunk_chars:
                rows = torch.stack(chunk, dim=1).tolist()  # (N, k)
                yield Chunk(["".join(samples.decoder.push_one(i, row)) for i, row in enumerate(rows)], [last] * n)
                chunk = []
            if last:
                return
            logits = stepper.advance(token)
        yield Chunk([""] * n, [True] * n)  # length 0
