"""Sizing a new model to its corpus and its training budget.

A fixed default size is wrong at both ends: on a 50 KB corpus a 3M-parameter network
memorises the text within a few epochs, while on a 50 MB corpus the same budget never
sees the text twice and regularisation only slows learning. So, unless the user names
them, the hidden size and the regularisation of a new run are chosen from two numbers:

* the tokens the budget will cover, ``S``: ``--max-steps`` x batch x window,
  ``--max-epochs`` x training tokens, or ``--max-time`` x the measured training
  throughput of each candidate size on the chosen device (the smallest of those given);
* the training tokens ``N``.

The rule takes the widest layer from `LADDER` whose parameter count ``P`` satisfies

    P <= S / TOKENS_PER_PARAM      the budget shows every weight a third of a token or more,
    P <= PARAMS_PER_TOKEN * N      at most 20 weights per training token, and, when the
                                   budget is a time (the width then sets the step count),
    S / (batch x window) >= MIN_STEPS   at least 800 optimizer steps,

and sets the regularisation from the passes over the text the budget allows, ``E = S / N``
(`regularisation_for`). For the LSTM: none up to 4 passes (most tokens are still new, so
there is little to overfit and any regulariser only slows learning), weight drop on the
recurrent matrices from 4 to 16 passes (0.2 more per doubling of E), and dropout beyond 16
(0.1 per doubling from 2 passes: 0.3 at 16, up to 0.5 from 64 on). The GRU and the RNN get
that dropout from 2 passes on. Depth (2 layers), cell and embedding are not sized.

Why both budget limits: under a time budget a wider model sees fewer characters and makes
fewer steps, and the two losses differ. On the 2-core AMD EPYC the project is measured on,
10 minutes on Tiny Shakespeare gave 1.465 nats/char with 2 x 512 (0.75 tokens per weight,
494 steps of 32 x 128) against 1.506 with 2 x 384 (1.9 tokens per weight, 800 steps): the
wider model won with fewer of both. On a Zen 5 EPYC that trains in bfloat16, 2 x 768 (0.40
tokens per weight, 1,443 steps) reached 1.4072 against 1.4221 for the 2 x 512 the limit of
half a token per weight had chosen (2.2 tokens per weight, 3,643 steps), so the limit is a
third of a token. On 49 MB of C in 3 minutes 2 x 384 lost to 2 x 256
both at batch 32 (242 against 491 steps, by 0.11) and at batch 16 (473 against 823
steps, by 0.02), with about the same tokens per weight as the winning 2 x 512 on Tiny
Shakespeare (0.6). Tokens per weight alone cannot tell the cases apart; the step count
can: the rule's prediction (from the timed rates) was 564 steps for the losing 2 x 384
and 1,100-1,180 for the winning 2 x 512 at batch 16, and MIN_STEPS sits between them.
docs/benchmarks.md has the runs behind the constants (and, for the corpus limit, a 50 KB
text where 2 x 96 did worse and 2 x 512 overfitted or, with dropout 0.5, learned too
slowly).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from ..config import TrainConfig, settings

if TYPE_CHECKING:
    import torch


LADDER = (64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048)
TOKENS_PER_PARAM = 0.35
MIN_STEPS = 800
PARAMS_PER_TOKEN = 20.0
MAX_DROPOUT = 0.5
# The LSTM's regularisation between WEIGHT_DROP_MIN_PASSES and WEIGHT_DROP_MAX_PASSES is
# weight drop (DropConnect on the recurrent matrices, one mask per window), +0.2 per
# doubling of the passes from the lower limit; dropout takes over beyond the upper one.
# 3 minutes on 250 KB of C (2 x 256, 11-12 passes): weight drop 0.3 reached 1.1421 nats/char
# against 1.1924 with the old rule's dropout 0.19 and 1.2034 with neither (0.5: 1.1614,
# 0.7: 1.2045; with Muon 0.2: 1.1447, 0.3: 1.1416). At about 4 passes (Tiny Shakespeare,
# 2 x 256, 5 minutes) nothing was best (1.4463 at step 2,000 against 1.4567 with weight drop
# 0.12 and 1.4580 with dropout 0.12); at 35-50 passes weight drop alone overfitted (100 KB
# of C: 1.6874 with 0.35 against 1.5687 with dropout 0.4). docs/benchmarks.md, sixth round.
WEIGHT_DROP_MIN_PASSES = 4.0
WEIGHT_DROP_MAX_PASSES = 16.0
WEIGHT_DROP_PER_DOUBLING = 0.2
# A width that misses a limit by less than this factor of its timed rate is timed once more
# and the faster of the two rates counts. The machine itself varies: on the 2-core EPYC the
# same 2 x 512 LSTM was timed at 2,477 to 4,186 tokens/s in ten runs, and a slow moment
# during the few seconds of timing chose 2 x 384 for a 10-minute run whose loop then ran 14%
# faster than timed (docs/benchmarks.md, fifth round).
RETIME_MARGIN = 1.5
_clock = time.perf_counter  # the timer of measure_throughput (a test replaces it)
GATES = {"lstm": 4, "gru": 3, "rnn": 1}
# Peak learning rate by cell when --lr is not given. Measured at 2 x 512 for 10 minutes on
# Tiny Shakespeare: the LSTM went from 1.540 (3e-3) to 1.436 (1e-2) nats/char, while the
# GRU got 1.455 at 3e-3, 1.452 at 5e-3 and only 1.532 at 1e-2. The vanilla RNN keeps the
# 3e-3 it was measured with at full size (it is the least stable of the three).
LEARNING_RATE = {"lstm": 1e-2, "gru": 5e-3, "rnn": 3e-3}
# The update by cell when --optimizer is not given, and the peak rate that goes with Muon.
# The LSTM trains with Muon on its recurrent matrices: at equal time on the 2-core CPU it
# reached 1.4249 nats/char on Tiny Shakespeare in 10 minutes against AdamW's 1.4424 (lr
# 5e-3; 1e-2 and 2e-2 were worse). The GRU and the RNN keep AdamW (Muon is unmeasured there).
OPTIMIZER = {"lstm": "muon", "gru": "adamw", "rnn": "adamw"}
MUON_LEARNING_RATE = 5e-3
# Muon gains where a budget sees the text a few times and loses where it sees a small text
# many times: 3 minutes on the first 50 KB of linux_c.txt (38 passes, dropout 0.45) gave
# 1.4538 with Muon against AdamW's 1.4152 (1.4436 with weight decay 0.1, worse at lower
# rates), while 0.1-2.2 passes gained 0.01-0.24. Between them: on Tiny Shakespeare Muon won
# by 0.047 at 4 passes (2 x 256, 1.4580 against 1.5049) and by 0.038 at 8 (2 x 192, 1.4578
# against 1.4959); on 250 KB of C at 11-12 passes it won by 0.042 with dropout 0.2 and tied
# with weight drop 0.3 (1.1416 against 1.1421) (an earlier pair there, at 8-10 passes and
# with dropout, had gone to AdamW by 0.013). A sized run expected to make more passes than
# this trains with AdamW.
MUON_MAX_PASSES = 16.0
# Decoupled weight decay by update when --weight-decay is not given. With Muon, on Tiny
# Shakespeare in 10 minutes (2 x 768, about 3 passes, no dropout, Zen 5 EPYC): 0.01 gave
# 1.4022-1.4068 nats/char, 0.1 1.3965, 0.2 1.3821 and 0.4 1.3853 (docs/benchmarks.md).
# Unlike dropout or weight drop it costs nothing per step and does not slow the early
# learning, so it also pays where the budget sees the text only a few times.
# AdamW keeps TrainConfig's 0.01, with which its rates were measured.
MUON_WEIGHT_DECAY = 0.2
WEIGHT_DECAY = settings(TrainConfig)["weight_decay"].default


def choose_update(cell: str, passes: float | None = None, optimizer: str | None = None,
                  lr: float | None = None, weight_decay: float | None = None) -> tuple[str, float, float]:
    """The update, peak learning rate and weight decay of a new run: the user's where
    given; otherwise the cell's (`OPTIMIZER`), except that a run expected to make more than
    MUON_MAX_PASSES passes gets AdamW, with the rate and decay that go with the update.
    `passes` is None before the sizing rule has estimated them (the widths are timed with
    the cell's own update), so a run asks twice: before sizing and after it."""
    if optimizer is None:
        optimizer = OPTIMIZER.get(cell, "adamw")
        if optimizer == "muon" and passes is not None and passes > MUON_MAX_PASSES:
            optimizer = "adamw"
    if weight_decay is None:
        weight_decay = MUON_WEIGHT_DECAY if optimizer == "muon" else WEIGHT_DECAY
    return optimizer, lr if lr is not None else default_lr(cell, optimizer), weight_decay


def default_lr(cell: str, optimizer: str) -> float:
    """The peak learning rate of a new run that names none."""
    if optimizer == "muon":
        return MUON_LEARNING_RATE
    return LEARNING_RATE.get(cell, LEARNING_RATE["lstm"])


@dataclass(frozen=True)
class Sizing:
    """What the rule chose and the figures it chose from: `choose` fills in the first six,
    the run's plan the rest (`charrnn.training.run.size_model`). A run keeps it whole;
    `to_dict` is the form its checkpoint stores and `charrnn train` shows."""

    hidden_size: int
    dropout: float
    weight_drop: float
    tokens_seen: float  # S, the tokens the budget is expected to cover
    train_tokens: int  # N
    limit: str  # "budget", "steps", "corpus" or "ladder": what stopped the model from growing
    auto: tuple[str, ...] = ()  # the options the rule chose (the user gave the others)
    timed: tuple[tuple[int, float], ...] = ()  # (hidden_size, tokens/s) of every width timed
    optimizer: str | None = None  # the update the run got once the passes were known
    adamw_for_passes: bool = False  # AdamW instead of the cell's Muon: more than MUON_MAX_PASSES passes

    @property
    def epochs(self) -> float:
        return self.tokens_seen / max(self.train_tokens, 1)

    def to_dict(self) -> dict:
        out = {"hidden_size": self.hidden_size, "dropout": self.dropout, "weight_drop": self.weight_drop,
               "tokens_seen": self.tokens_seen, "train_tokens": self.train_tokens, "limit": self.limit,
               "epochs": self.epochs, "auto": list(self.auto), "timed": [list(t) for t in self.timed],
               "optimizer": self.optimizer}
        if self.adamw_for_passes:
            out["adamw_for_passes"] = True
        return out


def count_parameters(cell: str, hidden_size: int, num_layers: int, input_size: int, vocab_size: int,
                     embedding: bool = True, tied: bool = False) -> int:
    """Parameters of a `CharRNN` without building it (embedding, recurrent layers, head)."""
    g = GATES[cell]
    total = 0
    for layer in range(num_layers):
        fan_in = input_size if layer == 0 else hidden_size
        total += g * hidden_size * (fan_in + hidden_size + 2)
    total += hidden_size * vocab_size + vocab_size  # head
    if embedding and not tied:
        total += vocab_size * input_size
    return total


def dropout_for(epochs: float) -> float:
    """None up to two passes, then +0.1 per doubling of the passes: 0.1 at 4, 0.3 at 16,
    0.5 from 64 passes on."""
    if epochs <= 2.0:
        return 0.0
    return round(min(MAX_DROPOUT, 0.1 * math.log2(epochs / 2.0)), 2)


def regularisation_for(cell: str, epochs: float) -> tuple[float, float]:
    """(dropout, weight drop) for a budget of `epochs` passes.

    The LSTM gets none up to WEIGHT_DROP_MIN_PASSES (4), then weight drop, 0.2 more per
    doubling (0.2 at 8 passes, 0.4 at 16), and beyond WEIGHT_DROP_MAX_PASSES the dropout
    of `dropout_for` (0.31 at 17 passes, 0.5 from 64). The GRU and the RNN keep `dropout_for`'s
    dropout throughout (weight drop is unmeasured for them)."""
    if cell != "lstm" or epochs > WEIGHT_DROP_MAX_PASSES:
        return dropout_for(epochs), 0.0
    if epochs <= WEIGHT_DROP_MIN_PASSES:
        return 0.0, 0.0
    return 0.0, round(WEIGHT_DROP_PER_DOUBLING * math.log2(epochs / WEIGHT_DROP_MIN_PASSES), 2)


def choose(
    *,
    cell: str,
    num_layers: int,
    input_size: int,
    vocab_size: int,
    train_tokens: int,
    tokens_per_step: int,
    max_steps: int | None = None,
    max_epochs: float | None = None,
    max_time: float | None = None,
    throughput: Callable[[int], float] | None = None,
    embedding: bool = True,
    ladder: tuple[int, ...] = LADDER,
) -> Sizing:
    """Apply the rule to the sizes in `ladder` (a single given size: only the regularisation
    is chosen). `throughput(hidden_size)` gives training tokens per second and is called,
    smallest size first and only while the budget can still allow the size, when the
    budget is a time; a size that misses a limit by less than RETIME_MARGIN is timed twice
    and the faster rate counts."""
    fixed = []
    if max_steps is not None:
        fixed.append(max_steps * tokens_per_step)
    if max_epochs is not None:
        fixed.append(max_epochs * train_tokens)
    fixed_seen = min(fixed) if fixed else math.inf
    if max_time is not None and throughput is None:
        raise ValueError("a time budget needs a throughput measurement")

    chosen, seen, limit, last_rate = None, None, "ladder", math.inf
    for hidden in ladder:
        params = count_parameters(cell, hidden, num_layers, input_size, vocab_size, embedding)
        if chosen is not None and params > PARAMS_PER_TOKEN * train_tokens:
            limit = "corpus"
            break
        if chosen is not None and params > fixed_seen / TOKENS_PER_PARAM:
            limit = "budget"
            break
        tokens = fixed_seen
        if max_time is not None:
            # A larger network is not faster: if the last rate already rules it out, it is not timed.
            if chosen is not None and (why := _too_large(params, max_time * last_rate, fixed_seen, tokens_per_step)):
                limit = why
                break
            last_rate = throughput(hidden)
            misses = lambda rate: _too_large(params, min(tokens, max_time * rate), fixed_seen, tokens_per_step)  # noqa: E731
            if chosen is not None and misses(last_rate) and not misses(last_rate * RETIME_MARGIN):
                last_rate = max(last_rate, throughput(hidden))  # a narrow miss: a second look
            tokens = min(tokens, max_time * last_rate)
            if chosen is not None and (why := _too_large(params, tokens, fixed_seen, tokens_per_step)):
                limit = why
                break
        chosen, seen = hidden, tokens  # the smallest size is taken whatever the budget
    dropout, weight_drop = regularisation_for(cell, seen / max(train_tokens, 1))
    return Sizing(hidden_size=chosen, dropout=dropout, weight_drop=weight_drop, tokens_seen=seen,
                  train_tokens=train_tokens, limit=limit)


def _too_large(params: int, tokens: float, fixed_seen: float, tokens_per_step: int) -> str | None:
    """Why a time budget that covers `tokens` with this width would not train it well
    ("budget": under TOKENS_PER_PARAM tokens per weight; "steps": under MIN_STEPS optimizer steps,
    unless a step or epoch budget ends the run first anyway, so that the width does not
    change how many steps it makes), or None."""
    if params > tokens / TOKENS_PER_PARAM:
        return "budget"
    if tokens < fixed_seen and tokens / tokens_per_step < MIN_STEPS:
        return "steps"
    return None


def measure_throughput(model_factory: Callable[[int], torch.nn.Module], batch_size: int, seq_len: int,
                       vocab_size: int, device: torch.device, steps: int = 3,
                       autocast=None, optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer] | None = None,
                       ) -> Callable[[int], float]:
    """Returns hidden_size -> training tokens per second, timed on a fresh model of that
    size: one warm-up training step (forward, backward, update by `optimizer(model)`, AdamW
    by default; Muon's update is a measurable part of a CPU step), then `steps` timed ones
    on random tokens, of which the fastest counts.

    The fastest rather than the mean, because another process that wakes up for a second
    while the widths are timed (a compiler, an editor's indexer) slows some steps of some
    widths: averaged in, it made the widths timed during the burst look slower than they
    are and the rule pick a smaller model for the whole run. A load that lasts slows every
    step, and the fastest step still shows it.

    The global RNG state is restored afterwards, so sizing does not change what the run
    itself draws.
    """
    import contextlib

    import torch

    def rate(hidden_size: int) -> float:
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
        try:
            model = model_factory(hidden_size).to(device).train()
            opt = optimizer(model) if optimizer is not None else torch.optim.AdamW(model.parameters(), lr=1e-9)
            ids = torch.randint(0, vocab_size, (batch_size, seq_len + 1), device=device)
            ctx = autocast or contextlib.nullcontext

            def one():
                with ctx():
                    logits, _ = model(ids[:, :-1])
                    loss = torch.nn.functional.cross_entropy(logits.float().flatten(0, 1), ids[:, 1:].flatten())
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            def timed() -> float:
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                start = _clock()
                one()
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                return _clock() - start

            timed()  # warm-up: allocations, kernel selection
            fastest = min(timed() for _ in range(max(1, steps)))
            return batch_size * seq_len / max(fastest, 1e-9)
        finally:
            torch.set_rng_state(cpu_rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state(cuda_rng, device)

    return rate
