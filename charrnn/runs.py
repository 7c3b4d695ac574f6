"""Setting up a training run: new, resumed (--resume) or fine-tuned (--init-from).

This is where the rules that protect earlier work live: one process per run folder, no
silent overwrite of an existing run, and a resume that refuses a different corpus or an
option that would change the model or the data it was trained on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Collection

import torch

from . import checkpoint
from .config import CorpusOptions
from .data import EncodedCorpus, encode_corpus, read_corpus, split_ids, _source_files
from .devices import autocast, resolve_device, use_bf16
from .errors import ConfigError
from .model import CharRNN, ModelConfig
from . import sizing
from . import distributed as dist_utils
from .distributed import World, world_from_env
from .runlock import RunLock
from .trainer import TrainConfig, Trainer
from .vocab import vocab_from_dict

DEFAULT_MAX_TIME = 600.0  # seconds, when a new run is given no budget at all
DEFAULT_ROOT = "checkpoints"
BUDGETS = ("max_steps", "max_epochs", "max_time")


def flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def corpus_name(source: str) -> str:
    """The run name a corpus gets by default: its file stem, folder name, or 'stdin'."""
    if source == "-":
        return "stdin"
    path = Path(source).resolve()
    return (path.name if path.is_dir() else path.stem) or "corpus"


def _differences(given: dict, stored: dict, names: Collection[str], explicit: Collection[str]) -> list[str]:
    out = []
    for name in names:
        if name in explicit and name in stored and given.get(name) != stored[name]:
            out.append(f"{flag(name)} {given[name]} (the run has {stored[name]})")
    return out


def _clear_run(out: Path) -> None:
    for path in [out / checkpoint.BEST, out / checkpoint.LATEST, out / "metrics.jsonl", *out.glob("step-*.pt")]:
        path.unlink(missing_ok=True)


def _remove_stale_temp_files(out: Path) -> None:
    """Temporary files left by a process killed mid-save (we hold the run lock now)."""
    for path in out.glob(".*.tmp"):
        path.unlink(missing_ok=True)


def prepare_training(
    corpus: str | None,
    *,
    out_dir: str | os.PathLike | None = None,
    model_options: dict | None = None,
    train_options: dict | None = None,
    resume: bool = False,
    init_from: str | os.PathLike | None = None,
    overwrite: bool = False,
    explicit: Collection[str] | None = None,
    corpus_options: CorpusOptions = CorpusOptions(),
    root: str | os.PathLike = DEFAULT_ROOT,
    stdin: io.BufferedIOBase | None = None,
) -> Trainer:
    """Read the corpus, check it against any existing run, and return a ready `Trainer`.

    `explicit` names the options the user actually set (all given ones when None): on
    resume only those are compared with the checkpoint, the rest are taken from it.
    """
    model_options = dict(model_options or {})
    train_options = dict(train_options or {})
    explicit = set(explicit) if explicit is not None else set(model_options) | set(train_options)
    if resume and init_from is not None:
        raise ConfigError("Use either --resume or --init-from, not both.")
    if corpus is None and not (resume and out_dir is not None):
        raise ConfigError("Name a corpus to train on (a file, a folder, or - for stdin).")
    if corpus is not None and corpus != "-":
        _source_files(corpus)  # a missing corpus is reported before any folder is created
    out = Path(out_dir) if out_dir is not None else Path(root) / corpus_name(corpus)

    args = (corpus, out, model_options, train_options, resume, init_from, overwrite, explicit, corpus_options, stdin)
    world = world_from_env()
    if not world.active:
        lock = RunLock(out).acquire()
        try:
            _remove_stale_temp_files(out)
            trainer = _build(*_plan(*args), world)
        except BaseException:
            lock.release()
            raise
        trainer.lock = lock
        return trainer
    return _prepare_distributed(world, args, train_options)


def _prepare_distributed(world: World, args: tuple, train_options: dict) -> Trainer:
    """Rank 0 checks the run and encodes the corpus into the shared cache first; the other
    ranks then read the cache (and rank 0's vocabulary), and all build their trainers."""
    import torch.distributed as dist

    from .devices import resolve_device

    if args[0] == "-":
        raise ConfigError("Distributed training cannot read the corpus from stdin; pass a file or folder.")
    dist_utils.init(world, resolve_device(train_options.get("device") or "auto"))
    lock, plan, error = None, None, None
    if world.main:
        try:
            lock = RunLock(args[1]).acquire()
            _remove_stale_temp_files(args[1])
            plan = _plan(*args)
        except BaseException as exc:  # shared below so that no rank waits for ever
            error = exc
    shared = [None if error is None else str(error), None if plan is None else plan[3].vocab.to_dict(),
              None if plan is None else plan[1]]
    dist.broadcast_object_list(shared, src=0)
    if error is not None:
        if lock is not None:
            lock.release()
        raise error
    if shared[0] is not None:
        raise ConfigError(f"Process 0 could not start: {shared[0]}")
    if not world.main:
        plan = _plan(*args, main=False, vocab=vocab_from_dict(shared[1]), sized=shared[2])
    trainer = _build(*plan, world)
    trainer.lock = lock
    return trainer


def _encode(corpus, out, vocab, opts: CorpusOptions, stdin) -> EncodedCorpus:
    """Character corpora stream through the memory-mapped cache; a sentencepiece corpus is
    read into memory, its tokenizer trained (unless given) and the text encoded."""
    kind = vocab.kind if vocab is not None else opts.tokenizer
    if kind == "char":
        return encode_corpus(corpus, cache_dir=out, vocab=vocab, encoding=opts.encoding, errors=opts.errors,
                             newline=opts.newline, stdin=stdin)
    from .subword import SentencePieceVocab

    data = read_corpus(corpus, encoding=opts.encoding, errors=opts.errors, newline=opts.newline, stdin=stdin)
    if vocab is None:
        vocab = SentencePieceVocab.train(data.text, opts.vocab_size, opts.sp_model_type)
    digest = hashlib.sha256(data.text.encode("utf-8", "surrogatepass")).hexdigest()
    return EncodedCorpus(vocab.encode(data.text), vocab, data.name, data.source, len(data.text), data.files, digest)


def _plan(corpus, out, model_options, train_options, resume, init_from, overwrite, explicit,
          opts: CorpusOptions, stdin, main: bool = True, vocab=None, sized: dict | None = None):
    """Every check and the corpus encoding; `main` is False on ranks other than 0, which
    leave checks and changes of the run folder to rank 0 and take its vocabulary and its
    model size (`sized`)."""
    stored = None
    if resume:
        latest = out / checkpoint.LATEST
        if not latest.is_file():
            raise ConfigError(f"Nothing to resume: {out} has no {checkpoint.LATEST}.")
        stored = checkpoint.load(latest)
        if corpus is None:
            corpus = stored.get("corpus", {}).get("source")
            if corpus in (None, "-"):
                raise ConfigError(f"The run in {out} was trained on standard input; pipe the same text and pass - as the corpus.")
        vocab = vocab_from_dict(stored["vocab"])
    elif init_from is not None:
        stored = checkpoint.load(checkpoint.resolve(init_from))
        vocab = vocab or vocab_from_dict(stored["vocab"])
    if main and not resume and not overwrite and ((out / checkpoint.LATEST).exists() or (out / checkpoint.BEST).exists()):
        raise ConfigError(
            f"{out} already holds a training run; continue it with --resume, start over with "
            f"--overwrite, or choose another folder with --out."
        )

    if stored is not None:
        problems = _differences(model_options, stored["model_config"], model_options.keys(), explicit)
        kind = stored["vocab"].get("kind")
        if "tokenizer" in explicit and opts.tokenizer != kind:
            problems.append(f"--tokenizer {opts.tokenizer} (the run has {kind})")
        if resume:
            fixed = [f for f in stored.get("train_config", {}) if f not in TrainConfig.RESUMABLE]
            problems += _differences(train_options, stored["train_config"], fixed, explicit)
        if problems:
            what = "resume" if resume else "fine-tune from"
            raise ConfigError(f"Cannot {what} {out if resume else init_from} with different settings: {'; '.join(problems)}.")
        model_options = {k: v for k, v in stored["model_config"].items() if k != "vocab_size"}
        if resume:
            merged = dict(stored["train_config"])
            for name in TrainConfig.RESUMABLE:
                if name in explicit and name in train_options:
                    merged[name] = train_options[name]
            if any(b in explicit for b in BUDGETS):  # a new budget replaces the old one whole
                for b in BUDGETS:
                    merged[b] = train_options.get(b)
            train_options = merged

    if all(train_options.get(b) is None for b in BUDGETS):
        train_options["max_time"] = DEFAULT_MAX_TIME
    if train_options.get("lr") is None:  # new runs: the cell's own default
        cell = model_options.get("cell") or ModelConfig.__dataclass_fields__["cell"].default
        train_options["lr"] = sizing.LEARNING_RATE[cell]
    known = {f.name for f in dataclasses.fields(TrainConfig)}
    config = TrainConfig(**{k: v for k, v in train_options.items() if k in known})

    encoded = _encode(corpus, out, vocab, opts, stdin)
    if resume:
        was = stored.get("corpus", {}).get("sha256")
        if was is not None and was != encoded.sha256:
            raise ConfigError(
                f"The corpus {corpus} differs from the text the run in {out} was trained on; "
                f"resume with the same text, or start a new run on it with --init-from {out}."
            )
    if sized is not None:
        model_options = sized
    elif stored is None:
        model_options = size_model(model_options, config, encoded)
    if main and overwrite and not resume:
        _clear_run(out)
    return out, model_options, config, encoded, stored, resume, init_from


AUTO = ("hidden_size", "dropout")  # sized to the corpus and budget unless given


def size_model(model_options: dict, config: TrainConfig, encoded: EncodedCorpus) -> dict:
    """Fill in the options of `AUTO` that are missing or None with `sizing.choose`.

    The chosen figures are kept under the private key "_sizing" for the trainer to report.
    """
    options = {k: v for k, v in model_options.items() if v is not None}
    if all(name in options for name in AUTO):
        return options
    fields = ModelConfig.__dataclass_fields__
    get = lambda name: options.get(name, fields[name].default)  # noqa: E731
    world = world_from_env()
    if get("tie_weights") and "hidden_size" not in options:
        options["hidden_size"] = get("embedding_size")  # tied weights fix the width
    auto = [name for name in AUTO if name not in options]
    vocab_size = encoded.vocab.size
    one_hot = get("one_hot")
    input_size = vocab_size if one_hot else get("embedding_size")
    train_tokens = len(split_ids(encoded.ids, config.val_fraction)[0])
    local_batch = max(1, config.batch_size // world.size)

    throughput = None
    if config.max_time is not None:
        device = resolve_device(config.device)
        if world.active and device.type == "cuda":
            device = torch.device("cuda", world.local_rank)
        bf16 = use_bf16(device, config.precision)

        def factory(hidden: int):
            return CharRNN(ModelConfig(vocab_size=vocab_size, **{**options, "hidden_size": hidden}))

        timed = sizing.measure_throughput(factory, local_batch, config.seq_len, vocab_size, device,
                                          autocast=(lambda: autocast(device, True)) if bf16 else None)
        timed_fp32 = sizing.measure_throughput(factory, local_batch, config.seq_len, vocab_size, device)

        def throughput(hidden: int) -> float:  # all processes together
            try:
                return world.size * timed(hidden)
            except RuntimeError:  # no bf16 recurrent kernels in this cuDNN: training runs float32 too
                return world.size * timed_fp32(hidden)

    choice = sizing.choose(
        cell=get("cell"), num_layers=get("num_layers"), input_size=input_size, vocab_size=vocab_size,
        train_tokens=train_tokens, tokens_per_step=config.batch_size * config.seq_len,
        max_steps=config.max_steps, max_epochs=config.max_epochs, max_time=config.max_time,
        throughput=throughput, embedding=not one_hot,
        ladder=(options["hidden_size"],) if "hidden_size" in options else sizing.LADDER)
    options.setdefault("hidden_size", choice.hidden_size)
    options.setdefault("dropout", choice.dropout)
    options["_sizing"] = dataclasses.asdict(choice) | {"epochs": choice.epochs, "auto": auto}
    return options


def _build(out, model_options, config, encoded, stored, resume, init_from, world: World) -> Trainer:
    model_options = dict(model_options)
    chosen = model_options.pop("_sizing", None)
    model_config = ModelConfig(vocab_size=encoded.vocab.size, **model_options)
    train_ids, val_ids = split_ids(encoded.ids, config.val_fraction)
    trainer = Trainer(model_config, config, encoded.vocab, train_ids, val_ids, out, encoded.info(), world)
    if chosen is not None:
        trainer.sizing = chosen
        trainer.corpus_info["sizing"] = chosen
    if resume:
        trainer.restore(stored)
    elif init_from is not None:
        trainer.model.load_state_dict(stored["model"])
        trainer.corpus_info["init_from"] = str(init_from)
    return trainer
