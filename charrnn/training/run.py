"""One training run from start to finish: `Run`, and `train()`, its public face.

A `Run` is a context manager that owns everything about one run: the lock on its folder,
the `Plan` (what will be trained, on what, from where), and the `Trainer`. This is where
the rules that protect earlier work live: one process per run folder, no silent overwrite
of an existing run (and with --overwrite, nothing is removed before every check has
passed), and a resume that refuses a different corpus or an option that would change the
model or the data it was trained on.

    with Run("corpus.txt", out="checkpoints/x", train_options={"max_time": 60}) as run:
        for event in run.events():
            ...
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Collection, Iterator

from .. import paths
from ..checkpoint import store as checkpoint
from ..checkpoint.store import Checkpoint
from ..config import CorpusOptions, ModelConfig, TrainConfig, field_names
from ..errors import ConfigError, Interrupted
from ..events import LN2, Note, Status
from ..paths import DEFAULT_ROOT, ROOT_ENV, RunDir
from .sizing import Sizing

DEFAULT_MAX_TIME = 600.0  # seconds, when a new run is given no budget at all
MODEL_OPTIONS = tuple(n for n in field_names(ModelConfig) if n != "vocab_size")
TRAIN_OPTIONS = field_names(TrainConfig)
CORPUS_OPTIONS = field_names(CorpusOptions)
AUTO = ("hidden_size", "dropout", "weight_drop")  # sized to the corpus and budget unless given
REGULARISATION = ("dropout", "weight_drop")  # sized together: naming one sets the other to 0


def split_options(options: dict) -> tuple[dict, dict, dict]:
    """`charrnn.train()`'s keyword options as (model, corpus, training) options, by the
    configuration fields that declare them; any other name is refused. The corpus options'
    `vocab_size` is sentencepiece's: a model's vocabulary size comes from its corpus."""
    refuse_unknown(options, (*MODEL_OPTIONS, *CORPUS_OPTIONS, *TRAIN_OPTIONS))
    pick = lambda names: {k: v for k, v in options.items() if k in names}  # noqa: E731
    return pick(MODEL_OPTIONS), pick(CORPUS_OPTIONS), pick(TRAIN_OPTIONS)


def refuse_unknown(options: Collection[str], known: Collection[str]) -> None:
    """The one check of option names: any name no configuration field declares is refused."""
    unknown = set(options) - set(known)
    if unknown:
        raise TypeError(f"train() got unknown option(s): {', '.join(sorted(unknown))}")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def corpus_name(source: str) -> str:
    """The run name a corpus gets by default: its file stem, folder name, or 'stdin'."""
    if source == "-":
        return "stdin"
    path = Path(source).resolve()
    return (path.name if path.is_dir() else path.stem) or "corpus"


@dataclass(frozen=True)
class Request:
    """What the user asked for, before any file is read."""

    corpus: str | None
    run_dir: RunDir
    model_options: dict
    train_options: dict
    resume: bool = False
    init_from: str | None = None
    overwrite: bool = False
    explicit: frozenset = frozenset()  # options the user set; on resume only these are compared
    corpus_options: CorpusOptions = CorpusOptions()
    init_path: Path | None = None  # the checkpoint init_from names, found once by `Run` (`finetune.base_checkpoint`)


@dataclass(frozen=True)
class Plan:
    """Everything checked and read: the run is ready to be built."""

    run_dir: RunDir
    model_config: ModelConfig
    train_config: TrainConfig
    corpus: object  # charrnn.text.corpus.EncodedCorpus
    resume_from: Checkpoint | None = None
    init_from: Checkpoint | None = None
    sizing: Sizing | None = None  # what charrnn.training.sizing chose, when it chose
    clear_first: bool = False  # --overwrite: remove the old run once the new one is built


def _differences(given: dict, stored: dict, names: Collection[str], explicit: Collection[str]) -> list[str]:
    out = []
    for name in names:
        if name in explicit and name in stored and given.get(name) != stored[name]:
            out.append(f"{flag(name)} {given[name]} (the run has {stored[name]})")
    return out


def _stored_checkpoint(req: Request) -> Checkpoint | None:
    if req.resume:
        if not req.run_dir.latest.is_file():
            raise ConfigError(f"Nothing to resume: {req.run_dir.path} has no {paths.LATEST}.")
        stored = checkpoint.load(req.run_dir.latest)
        if not stored.resumable:
            raise ConfigError(f"{stored.path} holds weights only (an exported model), so it cannot be resumed.")
        return stored
    if req.init_path is not None:
        return checkpoint.load(req.init_path)
    return None


def _merged_options(req: Request, stored: Checkpoint | None) -> tuple[dict, dict]:
    """Model and training options of the run: the user's, or on resume / fine-tuning the
    stored ones where the user did not set them (a different explicit value is refused)."""
    model_options, train_options = dict(req.model_options), dict(req.train_options)
    if stored is not None:
        stored_model = stored.model_config.to_dict()
        problems = _differences(model_options, stored_model, model_options.keys(), req.explicit)
        kind = stored.vocab.get("kind")
        if "tokenizer" in req.explicit and req.corpus_options.tokenizer != kind:
            problems.append(f"--tokenizer {req.corpus_options.tokenizer} (the run has {kind})")
        if req.resume:
            stored_train = stored.train_config.to_dict()
            fixed = [f for f in stored_train if f not in TrainConfig.RESUMABLE]
            problems += _differences(train_options, stored_train, fixed, req.explicit)
        if problems:
            what, which = ("resume", req.run_dir.path) if req.resume else ("fine-tune from", req.init_from)
            raise ConfigError(f"Cannot {what} {which} with different settings: {'; '.join(problems)}.")
        model_options = {k: v for k, v in stored_model.items() if k != "vocab_size"}
        if req.resume:
            merged = stored.train_config.to_dict()
            for name in TrainConfig.RESUMABLE:
                if name in req.explicit and name in train_options:
                    merged[name] = train_options[name]
            if any(b in req.explicit for b in TrainConfig.BUDGETS):  # a new budget replaces the old one whole
                for b in TrainConfig.BUDGETS:
                    merged[b] = train_options.get(b)
            train_options = merged
    if all(train_options.get(b) is None for b in TrainConfig.BUDGETS):
        train_options["max_time"] = DEFAULT_MAX_TIME
    return model_options, {k: v for k, v in train_options.items() if k in TRAIN_OPTIONS and v is not None}


def _ignore(event) -> None:
    pass


def make_plan(req: Request, stdin: io.BufferedIOBase | None = None, *, main: bool = True, vocab=None,
              sized: tuple[dict, Sizing | None] | None = None, report: Callable[[object], None] = _ignore) -> Plan:
    """Every check and every choice of the run, each made once and in this order:

    1. what the run continues from: the checkpoint to resume or fine-tune from, if any;
    2. the run folder: an existing run is never replaced without --overwrite;
    3. the options: the user's, merged with the stored ones on resume or fine-tuning, and
       checked (`TrainConfig`) before the corpus is read, so a bad value costs nothing;
    4. the corpus: read and encoded once into the run's id cache;
    5. the size and regularisation of a new model (`size_model`: the sizing rule, with the
       widths timed on this machine under the update the cell would get);
    6. the update (optimizer, peak rate and weight decay, `sizing.choose_update`): the user's or the
       stored one, else the cell's, which for a text the budget passes over many times is
       AdamW rather than Muon; this needs the passes, so it comes after step 5;
    7. memory: a model whose training state cannot fit is refused before it is built.

    `main` is False on processes other than 0, which leave checks of the run folder to
    process 0 and take its vocabulary and its model size (`sized`). `report` receives
    `Status` and `Note` events as the stages begin."""
    from ..text.corpus import encode_corpus

    # 1. What the run continues from.
    stored = _stored_checkpoint(req)
    if stored is not None and vocab is None:
        vocab = stored.vocabulary()
    # 2. The run folder.
    if main and not req.resume and not req.overwrite and req.run_dir.has_run():
        raise ConfigError(
            f"{req.run_dir.path} already holds a training run; continue it with --resume, start over with "
            f"--overwrite, or choose another folder with --out."
        )
    corpus = req.corpus
    if corpus is None:
        corpus = stored.corpus.get("source") if stored is not None else None
        if corpus in (None, "-"):
            raise ConfigError(f"The run in {req.run_dir.path} was trained on standard input; pipe the same text and pass - as the corpus.")
    # 3. The options, checked. The update is step 6's; until then the configuration
    #    carries the user's, the stored one, or the cell's for timing.
    model_options, train_options = _merged_options(req, stored)
    cell = model_options.get("cell") or "lstm"
    config = _with_update(TrainConfig(**train_options), cell, None, train_options)

    # 4. The corpus.
    def same_text(sha256: str) -> None:  # checked before the run's corpus cache is touched
        was = stored.corpus.get("sha256") if req.resume else None
        if was is not None and was != sha256:
            raise ConfigError(
                f"The corpus {corpus} differs from the text the run in {req.run_dir.path} was trained on; "
                f"resume with the same text, or start a new run on it with --init-from {req.run_dir.path}."
            )

    report(Status(f"Reading {'standard input' if corpus == '-' else corpus}"))
    encoded = encode_corpus(corpus, cache_dir=req.run_dir.path, vocab=vocab, options=req.corpus_options, stdin=stdin,
                            verify=same_text, extend=req.init_from is not None)  # fine-tuning grows the base's
    if encoded.byte_fallback[0]:  # sentencepiece's rare characters
        from ..text.sentencepiece_vocab import rare_chars_note

        report(Note(rare_chars_note(*encoded.byte_fallback, encoded.chars, encoded.vocab.size)))
    if req.init_from is not None:
        from .finetune import added_chars, growth_note

        added = added_chars(vocab, encoded.vocab)
        if added:
            report(Note(growth_note(added)))
    # 5. The size of a new model (other processes take process 0's: `sized`).
    sizing = None
    if sized is not None:
        model_options, sizing = sized
    elif stored is None:
        model_options, sizing = size_model(model_options, config, encoded, report)
    # 6. The update, now that the passes are known.
    if sizing is not None:
        before = config.optimizer  # step 3's: the cell's, the user's or the stored one
        config = _with_update(config, cell, sizing.epochs, train_options)
        sizing = dataclasses.replace(sizing, optimizer=config.optimizer, adamw_for_passes=config.optimizer != before)
    # 7. Memory.
    model_config = ModelConfig(vocab_size=encoded.vocab.size, **model_options)
    _check_memory(model_config, config)
    return Plan(req.run_dir, model_config, config, encoded, stored if req.resume else None,
                stored if req.init_from is not None else None, sizing, main and req.overwrite and not req.resume)


def _with_update(config: TrainConfig, cell: str, passes: float | None, options: dict) -> TrainConfig:
    """`config` with the run's update (`sizing.choose_update`): the optimizer, peak rate and
    weight decay in `options` (the user's, or a resumed run's), else the cell's for
    `passes` (None: not yet known)."""
    from .sizing import choose_update

    optimizer, lr, weight_decay = choose_update(cell, passes, options.get("optimizer"), options.get("lr"),
                                                options.get("weight_decay"))
    return dataclasses.replace(config, optimizer=optimizer, lr=lr, weight_decay=weight_decay)


def _available_memory(device_name: str) -> int | None:
    """Bytes the run can use: free GPU memory for CUDA, else MemAvailable (Linux)."""
    if device_name.startswith("cuda") or device_name == "auto":
        import torch

        if torch.cuda.is_available():
            return torch.cuda.mem_get_info()[0]
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _check_memory(model: ModelConfig, config: TrainConfig) -> None:
    """Refuse, before anything is allocated, a model whose weights, gradients and AdamW
    moments (4 float32 copies) alone would not fit in memory."""
    from .sizing import count_parameters

    params = count_parameters(model.cell, model.hidden_size, model.num_layers, model.input_size, model.vocab_size,
                              embedding=not model.one_hot, tied=model.tie_weights)
    needed = 16 * params
    available = _available_memory(config.device)
    if available is not None and needed > available:
        raise ConfigError(
            f"A {model.num_layers} x {model.hidden_size} {model.cell.upper()} has {params:,} parameters and needs at "
            f"least {needed / 1e9:,.1f} GB to train, but {available / 1e9:,.1f} GB are available; lower --hidden-size."
        )


def size_model(model_options: dict, config: TrainConfig, encoded,
               report: Callable[[object], None] = _ignore) -> tuple[dict, Sizing | None]:
    """Fill in the options of `AUTO` that are missing or None with `sizing.choose` (dropout
    and weight drop are one choice: a user who names either gets 0 for the other), and
    say what was chosen (None when the user gave them all)."""
    from ..devices import autocast, local_device, use_bf16
    from ..model.network import CharRNN
    from ..text.corpus import split_ids
    from . import sizing
    from .distributed import world_from_env

    options = {k: v for k, v in model_options.items() if v is not None}
    if any(name in options for name in REGULARISATION):  # the user chose the regularisation
        options = {name: 0.0 for name in REGULARISATION} | options
    if all(name in options for name in AUTO):
        return options, None
    # Every given value checked before it is used to time candidate models.
    probe = {"hidden_size": options.get("embedding_size", 64) if options.get("tie_weights") else 1, **options}
    _check_memory(ModelConfig(vocab_size=encoded.vocab.size, **probe), config)  # before timing a given size
    defaults = ModelConfig(vocab_size=1)
    get = lambda name: options.get(name, getattr(defaults, name))  # noqa: E731
    world = world_from_env()
    if get("tie_weights") and "hidden_size" not in options:
        options["hidden_size"] = get("embedding_size")  # tied weights fix the width
    auto = [name for name in AUTO if name not in options]
    vocab_size = encoded.vocab.size
    one_hot = get("one_hot")
    train_tokens = len(split_ids(encoded.ids, config.val_fraction)[0])
    local_batch = max(1, config.batch_size // world.size)

    rates = []  # [hidden_size, tokens/s] of every width timed
    if config.max_time is not None:
        device = local_device(config.device, world.local_rank if world.active else None)
        bf16 = use_bf16(device, config.precision)

        def factory(hidden: int):
            return CharRNN(ModelConfig(vocab_size=vocab_size, **{**options, "hidden_size": hidden}))

        from .optim import build as build_optimizer

        update = lambda model: build_optimizer(model, config)[0]  # noqa: E731  the run's own update
        timed = sizing.measure_throughput(factory, local_batch, config.seq_len, vocab_size, device,
                                          autocast=(lambda: autocast(device, True)) if bf16 else None,
                                          optimizer=update)
        timed_fp32 = sizing.measure_throughput(factory, local_batch, config.seq_len, vocab_size, device,
                                               optimizer=update)

        def timed_rate(hidden: int) -> float:  # all processes together
            report(Status(f"Sizing the model: timing {hidden} units per layer on this machine"))
            try:
                rate = world.size * timed(hidden)
            except RuntimeError:  # no bf16 recurrent kernels in this cuDNN: training runs float32 too
                rate = world.size * timed_fp32(hidden)
            if rates and rates[-1][0] == hidden:  # timed again (a narrow miss): the faster rate is the one used
                rates[-1][1] = max(rates[-1][1], rate)
            else:
                rates.append([hidden, rate])
            return rate

    throughput = timed_rate if config.max_time is not None else None
    choice = sizing.choose(
        cell=get("cell"), num_layers=get("num_layers"), input_size=vocab_size if one_hot else get("embedding_size"),
        vocab_size=vocab_size, train_tokens=train_tokens, tokens_per_step=config.batch_size * config.seq_len,
        max_steps=config.max_steps, max_epochs=config.max_epochs, max_time=config.max_time,
        throughput=throughput, embedding=not one_hot,
        ladder=(options["hidden_size"],) if "hidden_size" in options else sizing.LADDER)
    options.setdefault("hidden_size", choice.hidden_size)
    options.setdefault("dropout", choice.dropout)
    options.setdefault("weight_drop", choice.weight_drop)
    return options, dataclasses.replace(choice, auto=tuple(auto), timed=tuple((h, r) for h, r in rates))


class Run:
    """One training run: takes the run folder's lock, plans, builds the trainer; the lock
    is released when the `with` block ends, however it ends.

    `explicit` names the options the user actually set (all given ones when None): on
    resume only those are compared with the checkpoint, the rest are taken from it.
    """

    def __init__(
        self,
        corpus: str | os.PathLike | None,
        *,
        out: str | os.PathLike | None = None,
        model_options: dict | None = None,
        train_options: dict | None = None,
        resume: bool = False,
        init_from: str | os.PathLike | None = None,
        overwrite: bool = False,
        explicit: Collection[str] | None = None,
        corpus_options: CorpusOptions = CorpusOptions(),
        root: str | os.PathLike = DEFAULT_ROOT,
        stdin: io.BufferedIOBase | None = None,
        on_event: Callable[[object], None] | None = None,
    ):
        from ..text.corpus import check_source, shipped_corpus

        model_options = {k: v for k, v in (model_options or {}).items() if v is not None}
        train_options = {k: v for k, v in (train_options or {}).items() if v is not None}
        refuse_unknown(model_options, MODEL_OPTIONS)
        refuse_unknown(train_options, TRAIN_OPTIONS)
        if resume and init_from is not None:
            raise ConfigError("Use either --resume or --init-from, not both.")
        corpus = None if corpus is None else str(corpus)
        self.report = on_event or _ignore  # set-up Status and Note events
        shipped = None if corpus is None else shipped_corpus(corpus)
        if shipped is not None:
            self.report(Note(f"{corpus} is not here; using the copy that ships with charrnn ({shipped})."))
            corpus = str(shipped)
        if corpus is None and not (resume and out is not None):
            raise ConfigError("Name a corpus to train on (a file, a folder, or - for stdin).")
        if corpus is not None and corpus != "-":
            check_source(corpus)  # a missing corpus is reported before any folder is created
        init_path = None
        if init_from is not None:  # a path, a run's name under root, or "bundled"; checked as early
            from .finetune import base_checkpoint

            init_path = base_checkpoint(init_from, root)
        if out is not None and not os.fspath(out):  # an unset shell variable, not the current folder
            raise ConfigError("The run folder path is empty; name a folder with --out.")
        run_dir = RunDir(out if out is not None else Path(root) / corpus_name(corpus))
        explicit = set(model_options) | set(train_options) if explicit is None else set(explicit)
        self.request = Request(corpus, run_dir, model_options, train_options, resume,
                               None if init_from is None else str(init_from), overwrite, frozenset(explicit), corpus_options,
                               init_path)
        self.stdin = stdin
        self.plan: Plan | None = None
        self.trainer = None
        self._lock = None
        self._kept: frozenset[str] = frozenset()
        from .distributed import world_from_env

        self.world = world_from_env()

    @property
    def run_dir(self) -> RunDir:
        return self.request.run_dir

    def __enter__(self) -> "Run":
        try:
            if self.world.main:
                self._refuse_foreign_folder()
            if self.world.active:
                self._enter_distributed()
            else:
                self._take_lock()
                self.plan = make_plan(self.request, self.stdin, report=self.report)
                self.trainer = self._build()
        except BaseException:
            # A run that never started leaves nothing behind: not the files its set-up wrote
            # (a corpus cache, the lock file) and not the folders it made for them.
            if self._lock is not None:
                self.run_dir.discard_setup_files(self._kept)
                self._lock.remove()
                self._lock.remove_folders()
            self.__exit__(None, None, None)
            raise
        return self

    def _take_lock(self) -> None:
        """Lock the run folder (process 0 only), note charrnn's files already there (a failed
        set-up removes only what it wrote) and tidy what a killed save left."""
        from .lock import RunLock

        self._lock = RunLock(self.run_dir.path).acquire()
        self._kept = self.run_dir.own_files()
        self.run_dir.remove_stale_temp_files()
        if not self.request.overwrite:  # (--overwrite removes them with the old run)
            self.run_dir.refuse_links()

    def _refuse_foreign_folder(self) -> None:
        """A new run goes only into a folder that is empty or holds charrnn's own files,
        unless --overwrite says to use it anyway (and then only charrnn's files go)."""
        if self.request.resume or self.request.overwrite or self.run_dir.has_run():
            return  # (a folder with a run gets "already holds a training run" from the plan)
        path = self.run_dir.path
        if path.exists() and not path.is_dir():
            raise ConfigError(f"Cannot use {path} as a run folder: it is a file.")
        foreign = self.run_dir.foreign()
        if foreign:
            listed = ", ".join(p.name for p in foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise ConfigError(
                f"{path} holds files charrnn did not write ({listed}); choose another folder with --out, "
                f"or pass --overwrite to use it anyway (charrnn replaces only its own files)."
            )

    def __exit__(self, *exc) -> bool:
        if self._lock is not None:
            self._lock.release()
            self._lock = None
        if self.world.active:
            import gc

            from .distributed import shutdown

            # DistributedDataParallel's reducer holds the process group and gloo work; freed
            # at interpreter exit, after the group was destroyed, it aborted a torchrun rank
            # in C++ now and then ("terminate called without an active exception").
            self.trainer = None
            gc.collect()
            shutdown()
        return False

    def _enter_distributed(self) -> None:
        """Process 0 checks the run and encodes the corpus into the shared cache first; the
        others then read the cache (and process 0's vocabulary and model size)."""
        import torch.distributed as dist

        from ..devices import resolve_device
        from ..text.characters import vocab_from_dict
        from . import distributed as dist_utils

        if self.request.corpus == "-":
            raise ConfigError("Distributed training cannot read the corpus from stdin; pass a file or folder.")
        dist_utils.init(self.world, resolve_device(self.request.train_options.get("device", "auto")))
        error = None
        if self.world.main:
            try:
                self._take_lock()
                self.plan = make_plan(self.request, report=self.report)
            except BaseException as exc:  # shared below so that no process waits for ever
                error = exc
        plan = self.plan
        shared = [None if error is None else str(error),
                  None if plan is None else plan.corpus.vocab.to_dict(),
                  None if plan is None else ({k: v for k, v in plan.model_config.to_dict().items() if k != "vocab_size"}, plan.sizing)]
        dist.broadcast_object_list(shared, src=0)
        if error is not None:
            raise error
        if shared[0] is not None:
            raise ConfigError(f"Process 0 could not start: {shared[0]}")
        if not self.world.main:
            self.plan = make_plan(self.request, main=False, vocab=vocab_from_dict(shared[1]), sized=shared[2])
        self.trainer = self._build()

    def _build(self):
        """The trainer of the plan; only once it is built (every option checked against the
        corpus and the device) does --overwrite remove the previous run."""
        from ..text.corpus import split_ids
        from .trainer import Trainer

        plan = self.plan
        self.report(Status(f"Building a {plan.model_config.num_layers} x {plan.model_config.hidden_size} "
                           f"{plan.model_config.cell.upper()}"))
        train_ids, val_ids = split_ids(plan.corpus.ids, plan.train_config.val_fraction)
        corpus = plan.corpus.info()
        if plan.resume_from is not None:  # what the run was sized to and started from stays on record
            corpus = {**plan.resume_from.corpus, **corpus}
        if plan.init_from is not None:
            from .finetune import added_chars

            corpus["init_from"] = self.request.init_from
            corpus["added_chars"] = "".join(added_chars(plan.init_from.vocabulary(), plan.corpus.vocab))
        trainer = Trainer(plan.model_config, plan.train_config, plan.corpus.vocab, train_ids, val_ids,
                          plan.run_dir, corpus, self.world, plan.sizing)
        if plan.resume_from is not None:
            trainer.restore(plan.resume_from)
        elif plan.init_from is not None:  # grown to the run's vocabulary (the base's ids first)
            from .finetune import extend_weights

            trainer.model.load_state_dict(extend_weights(plan.init_from.weights, plan.init_from.model_config,
                                                         plan.model_config.vocab_size))
        if plan.clear_first:
            plan.run_dir.clear_run()
        return trainer

    def events(self) -> Iterator:
        """The trainer's events (`charrnn.training.trainer.Started`, `Progress`, `Evaluated`, `Saved`, `Finished`)."""
        if self.trainer is None:
            raise RuntimeError("Run.events() is used inside `with Run(...) as run:`")
        yield from self.trainer.run()

    def request_stop(self, reason: str) -> None:
        if self.trainer is not None:
            self.trainer.request_stop(reason)


class StopOnSignal:
    """First SIGINT/SIGTERM/SIGHUP: finish the step, save, and report the signal. A signal
    before training has started raises `Interrupted` (nothing to save yet). A second signal
    exits at once (checkpoints are written atomically, so nothing on disk is half-written)."""

    SIGNALS = tuple(s for s in (getattr(signal, n, None) for n in ("SIGINT", "SIGTERM", "SIGHUP")) if s is not None)

    def __init__(self):
        self.signum: int | None = None
        self.run: Run | None = None
        self._previous = {}

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> bool:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        return False

    def _handle(self, signum, frame):
        if self.signum is not None:
            os._exit(128 + signum)
        self.signum = signum
        name = signal.Signals(signum).name
        if self.run is None or self.run.trainer is None:
            raise Interrupted(signum, f"Interrupted by {name} while setting up; no run was started or changed.")
        self.run.request_stop(f"interrupted by {name}")


@dataclass(frozen=True)
class TrainResult:
    """What a finished `train()` call produced."""

    out_dir: Path
    best_path: Path
    best_val_loss: float  # nats per character
    final_val_loss: float
    steps: int
    epochs: float
    elapsed: float  # seconds
    chars_per_sec: float
    reason: str
    saved: tuple[str, ...] = ()  # kinds of checkpoint this call wrote
    source: str | None = None  # the corpus, as a resume command names it
    signal: int | None = None  # the signal that stopped the run (it was saved first)

    @property
    def best_val_bits_per_char(self) -> float:
        return self.best_val_loss / LN2

    def load(self, device: str = "cpu"):
        from ..api import load

        return load(self.best_path, device=device)


def train(
    corpus: str | os.PathLike | None,
    *,
    out: str | os.PathLike | None = None,
    resume: bool = False,
    init_from: str | os.PathLike | None = None,
    overwrite: bool = False,
    root: str | os.PathLike | None = None,
    on_event: Callable[[object], None] | None = None,
    handle_signals: bool = False,
    explicit: Collection[str] | None = None,
    stdin: io.BufferedIOBase | None = None,
    **options,
) -> TrainResult:
    """Train a model exactly as `charrnn train` does (the command is this call), without
    printing anything.

    `options` are the model and training settings by their PyTorch-style names
    (`hidden_size`, `num_layers`, `cell`, `dropout`, `weight_drop`, `batch_size`, `seq_len`, `lr`,
    `max_steps`, `max_epochs`, `max_time` — seconds or a string like "2m" —, `seed`,
    `device`, ...) and the corpus options of `CorpusOptions` (`tokenizer`, `vocab_size` of a
    sentencepiece vocabulary, `encoding`, ...). `on_event` receives every event of `charrnn.events`: `Status` and `Note`
    while the run is set up, then the trainer's `Started`, `Progress`, `Evaluated`, `Saved`
    and `Finished`. With `handle_signals`, SIGINT, SIGTERM
    and SIGHUP stop the run after the current step and save it (`TrainResult.signal` says
    which); a signal during set-up raises `charrnn.errors.Interrupted`.

        run = train("corpus.txt", hidden_size=256, max_time="2m", out="checkpoints/x")
        print(run.best_val_bits_per_char)
        model = run.load()
    """
    from ..durations import parse_duration

    model_options, corpus_options, train_options = split_options(options)
    if isinstance(train_options.get("max_time"), str):
        try:
            train_options["max_time"] = parse_duration(train_options["max_time"])
        except ValueError as exc:
            raise ConfigError(f"max_time: {exc}.") from None
    root = root if root is not None else os.environ.get(ROOT_ENV, DEFAULT_ROOT)
    corpus_options = CorpusOptions(**corpus_options)
    stopper = StopOnSignal() if handle_signals else None
    done = None
    with stopper or contextlib.nullcontext():
        with Run(corpus, out=out, model_options=model_options, train_options=train_options,
                 resume=resume, init_from=init_from, overwrite=overwrite, explicit=explicit,
                 corpus_options=corpus_options, root=root, stdin=stdin, on_event=on_event) as run:
            if stopper is not None:
                stopper.run = run
            for event in run.events():
                if on_event is not None:
                    on_event(event)
                done = event
            source = run.trainer.corpus.get("source")
    run_dir = run.run_dir
    best = run_dir.best if run_dir.best.exists() else run_dir.latest
    return TrainResult(run_dir.path, best, done.best_val_loss, done.final_val_loss, done.step, done.epoch,
                       done.elapsed, done.chars_per_sec, done.reason, done.saved, source,
                       None if stopper is None else stopper.signum)
