"""The `charrnn` command: a thin click layer over the library.

stdout carries only generated text or requested machine-readable output; everything else
(progress, notes, errors) goes to stderr. Library errors (`CharrnnError`) become one-line
`Error: ...` messages with exit status 1; bad option values are click usage errors (exit 2).
"""

from __future__ import annotations

import errno
import json
import os
import signal
import sys
import time
from pathlib import Path

import click as classic_click
import rich_click as click

from .. import __version__
from ..checkpoint.formats import FORMATS as EXPORT_FORMATS
from ..config import (
    MAX_BATCH,
    MAX_PRIME_BYTES,
    MAX_SAMPLES,
    MAX_SEQ_LEN,
    CorpusOptions,
    DynamicConfig,
    ModelConfig,
    SampleConfig,
    TrainConfig,
)
from ..errors import CharrnnError, Interrupted
from ..events import LN2
from ..serve.app import Limits as ServeLimits  # neither torch nor starlette: --help stays fast
from .options import (
    FiniteFloat,
    IntRange,
    checkpoint_option,
    checkpoints_option,
    complete_checkpoints,
    config_option,
    device_option,
    quiet_checkpoint_option,
)
from .terminal import safe_text

CONTEXT = {"help_option_names": ["-h", "--help"], "max_content_width": 100}


def stderr_console():
    """rich's console on stderr. When stderr is a pipe that closes (`2>&1 | head`), it
    goes quiet instead of ending the program: a training run must not die of it."""
    from rich.console import Console

    class StderrConsole(Console):
        def on_broken_pipe(self) -> None:
            self.quiet = True

    return StderrConsole(stderr=True, soft_wrap=True)


def fail_on_library_errors(fn):
    """Turn library exceptions into click errors: one sentence, exit 1, no traceback."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except KeyboardInterrupt:
            raise SystemExit(130) from None  # Ctrl-C while sampling or scoring: stop quietly
        except Interrupted as exc:
            click.echo(f"Error: {safe_text(str(exc))}", err=True)
            raise SystemExit(128 + exc.signum) from None
        except CharrnnError as exc:
            raise click.ClickException(safe_text(str(exc))) from None
        except OSError as exc:
            # A path the file system cannot take at all, wherever it is first touched.
            if exc.errno in (errno.ENAMETOOLONG, errno.ELOOP) and exc.filename is not None:
                raise click.ClickException(safe_text(f"Cannot use {os.fsdecode(exc.filename)}: {exc.strerror}.")) from None
            raise

    return wrapper


class StdoutWriter:
    """Writes to stdout as text arrives. A closed pipe (`| head`) ends the program quietly;
    stdout that is closed or full is one sentence and exit 1. On a terminal, control
    characters are shown as escapes (lines and tabs kept): a model, like any file, may
    hold escape sequences, and they must not drive the terminal; piped or redirected
    output holds exactly the generated characters."""

    def __init__(self):
        self.stream = sys.stdout
        if self.stream is None:  # started with stdout closed (`>&-`)
            raise click.ClickException("Standard output is closed; there is nowhere to write the result.")
        try:
            self.terminal = self.stream.isatty()
        except (OSError, ValueError):
            self.terminal = False

    def write(self, text: str) -> None:
        if not text:
            return
        if self.terminal:
            text = safe_text(text, keep_lines=True)
        try:
            self.stream.write(text)
            self.stream.flush()
        except BrokenPipeError:
            quiet_exit_on_broken_pipe()
        except OSError as exc:
            _silence_stdout()
            raise click.ClickException(f"Cannot write to standard output: {exc.strerror or exc}.") from None

    def end_line_on_terminal(self, last: str) -> None:
        """Leave the shell prompt on a line of its own, but only on a terminal: piped
        output holds exactly the generated characters."""
        if self.terminal and last and not last.endswith("\n"):
            self.write("\n")


def echo(text: str) -> None:
    """One line (or block) of requested output on stdout, with StdoutWriter's rules."""
    StdoutWriter().write(text + "\n")


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass


def quiet_exit_on_broken_pipe():
    _silence_stdout()
    raise SystemExit(0)


click.rich_click.TEXT_MARKUP = "ansi"  # help texts are plain: "[default: ...]" is not markup
click.rich_click.TEXT_PARAGRAPH_LINEBREAKS = "\n\n"
click.rich_click.MAX_WIDTH = 100
click.rich_click.PADDING_HELPTEXT_FIRST_LINE = (0, 0, 1, 0)  # a blank line after the summary


def plain_usage(command, ctx) -> str:
    """click's one-line usage, for error messages (rich-click pads it into a panel)."""
    formatter = classic_click.HelpFormatter(width=ctx.terminal_width, max_width=ctx.max_content_width)
    classic_click.Command.format_usage(command, ctx, formatter)
    return formatter.getvalue().rstrip("\n")


class CharrnnCommand(click.RichCommand):
    get_usage = plain_usage


class CharrnnGroup(click.RichGroup):
    """rich-click draws the help (option panels grouped by purpose); errors keep click's
    plain `Error: ...` line, one sentence that logs and pipelines can read."""

    command_class = CharrnnCommand
    main = classic_click.Group.main
    get_usage = plain_usage


@click.group(cls=CharrnnGroup, context_settings=CONTEXT, invoke_without_command=True)
@click.version_option(__version__, "--version", prog_name="charrnn")
@click.pass_context
def main(ctx):
    """Train character-level RNNs on any text and stream samples from them.

    Every command has -h with its options and examples; `charrnn COMMAND -h`.

    \b
    Examples:
      charrnn train corpora/tinyshakespeare.txt --max-time 10m
      charrnn sample --temp 0.8 --length 500
      charrnn sample --prime "ROMEO:" | head -5
      cat notes/*.txt | charrnn train - --out checkpoints/notes
      charrnn serve      # OpenAI-compatible API and playground on http://127.0.0.1:8000
    """
    if ctx.invoked_subcommand is None:  # plain `charrnn`: the overview, not a usage error
        click.echo(ctx.get_help())



# -- train ----------------------------------------------------------------------------------
def explicit_options(ctx: click.Context, names) -> set[str]:
    """Options the user set on the command line or through the environment."""
    from click.core import ParameterSource

    given = {ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT}
    return {n for n in names if ctx.get_parameter_source(n) in given}


@main.command(context_settings=CONTEXT)
@click.option_panel("Data", options=["corpus", "--encoding", "--errors", "--newline", "--tokenizer", "--vocab-size",
                                     "--sp-model-type", "--val-fraction"])
@click.option_panel("Run folder", options=["--out", "--resume", "--init-from", "--overwrite", "--checkpoints-dir",
                                           "--eval-every", "--keep-every"])
@click.option_panel("Model", options=["--cell", "--hidden-size", "--num-layers", "--embedding-size", "--nonlinearity",
                                      "--one-hot", "--tie-weights", "--dropout", "--weight-drop"])
@click.option_panel("Optimisation", options=["--batch-size", "--seq-len", "--lr", "--optimizer", "--weight-decay", "--warmup-steps",
                                             "--grad-clip", "--seed"])
@click.option_panel("Budget", options=["--max-time", "--max-steps", "--max-epochs", "--patience"])
@click.option_panel("Device and precision", options=["--device", "--precision", "--threads"])
@click.option_panel("Output", options=["--log-every", "--sample-every", "--sample-length", "--sample-temp", "--quiet",
                                       "--help"])
@click.argument("corpus", required=False, type=click.Path(allow_dash=True))
@click.option("--out", "out_dir", type=click.Path(file_okay=False), help="Run folder for checkpoints [default: checkpoints/<corpus name>].")
@click.option("--resume", "resume", is_flag=False, flag_value=".", default=None, metavar="[RUN]",
              help="Continue the run in --out (or in RUN) from its latest.pt exactly where it stopped.")
@click.option("--init-from", metavar="CKPT", shell_complete=complete_checkpoints, help="Start a new run from a checkpoint's weights: a file, a run folder, a run's name, or bundled (the shipped model); characters the model lacks are added to its vocabulary.")
@click.option("--overwrite", is_flag=True, help="Replace an existing run in the output folder instead of refusing.")
@config_option(ModelConfig, "cell")
@config_option(ModelConfig, "hidden_size")
@config_option(ModelConfig, "num_layers")
@config_option(ModelConfig, "embedding_size")
@config_option(ModelConfig, "nonlinearity")
@config_option(ModelConfig, "one_hot")
@config_option(ModelConfig, "tie_weights")
@config_option(ModelConfig, "dropout")
@config_option(ModelConfig, "weight_drop")
@config_option(CorpusOptions, "tokenizer")
@config_option(CorpusOptions, "vocab_size")
@config_option(CorpusOptions, "sp_model_type")
@config_option(TrainConfig, "batch_size")
@config_option(TrainConfig, "seq_len")
@config_option(TrainConfig, "lr")
@config_option(TrainConfig, "optimizer")
@config_option(TrainConfig, "weight_decay")
@config_option(TrainConfig, "warmup_steps")
@config_option(TrainConfig, "grad_clip")
@config_option(TrainConfig, "max_steps")
@config_option(TrainConfig, "max_epochs")
@config_option(TrainConfig, "max_time")
@config_option(TrainConfig, "eval_every")
@config_option(TrainConfig, "log_every")
@config_option(TrainConfig, "sample_every", metavar="N")
@config_option(TrainConfig, "sample_length")
@config_option(TrainConfig, "sample_temp")
@config_option(TrainConfig, "val_fraction")
@config_option(TrainConfig, "patience")
@config_option(TrainConfig, "keep_every")
@config_option(TrainConfig, "seed")
@device_option("auto", "Where to train; auto prefers cuda, then mps, then cpu.")
@config_option(TrainConfig, "precision", extra_choices=("fp32",))
@click.option("--threads", type=IntRange(min=1), help="CPU threads for PyTorch [default: PyTorch's choice].")
@config_option(CorpusOptions, "encoding")
@config_option(CorpusOptions, "errors")
@config_option(CorpusOptions, "newline")
@click.option("-q", "--quiet", is_flag=True, help="No progress output.")
@checkpoints_option
@click.pass_context
@fail_on_library_errors
def train(ctx, corpus, out_dir, resume, init_from, overwrite, threads, encoding, errors, newline, quiet,
          tokenizer, vocab_size, sp_model_type, checkpoints_dir, **options):
    """Train a model on CORPUS: a text file, a folder of text files, or - for stdin.

    The last --val-fraction of the text is held out for validation. Training stops at
    the first of --max-steps, --max-epochs and --max-time (10m when none is given); the
    learning rate warms up and then follows a cosine over that budget. The run folder
    gets latest.pt (every evaluation) and best.pt (lowest validation loss).

    Ctrl-C (or SIGTERM) finishes the current step, saves latest.pt and prints the
    command that resumes; a second Ctrl-C exits at once.

    Started by torchrun, it trains data-parallel over the processes (NCCL on GPUs, gloo
    on CPUs), each taking --batch-size / processes of the streams; only the first process
    prints and writes checkpoints.

    \b
    Examples:
      charrnn train corpora/tinyshakespeare.txt
      charrnn train corpora/tinyshakespeare.txt --max-time 30m --hidden-size 768
      charrnn train corpora/tinyshakespeare.txt --resume --max-time 20m
      charrnn train --resume checkpoints/tinyshakespeare
      charrnn train my_notes/ --out checkpoints/notes --max-epochs 20 --sample-every 5
      charrnn train more.txt --init-from checkpoints/tinyshakespeare --out checkpoints/more
      charrnn train french.txt --init-from bundled --out checkpoints/fr --max-time 5m
      cat *.txt | charrnn train - --out checkpoints/stdin --max-steps 2000
      torchrun --nproc-per-node 8 -m charrnn train big.txt --batch-size 512
    """
    from ..training.distributed import world_from_env
    from ..training.run import MODEL_OPTIONS, TRAIN_OPTIONS
    from ..training.run import train as train_run
    from .live import TrainView

    if resume is not None and resume != ".":
        if corpus is None and (resume == "-" or Path(resume).is_file()):
            corpus = resume  # `--resume corpus.txt`: the flag took the corpus as its value
        elif Path(resume).is_file():
            raise click.UsageError(f"--resume takes a run folder, and {resume} is a file; name the folder that holds its latest.pt.")
        elif out_dir is not None and Path(out_dir) != Path(resume):
            raise click.UsageError("--resume RUN and --out name different folders.")
        else:
            out_dir = resume
    explicit = explicit_options(ctx, MODEL_OPTIONS + TRAIN_OPTIONS + ("tokenizer",))
    main_process = world_from_env().main
    with TrainView(stderr_console(), quiet=quiet or not main_process) as view:  # its status line shows at once
        try:
            if threads:
                import torch

                torch.set_num_threads(threads)
            result = train_run(
                corpus, out=out_dir, resume=resume is not None, init_from=init_from, overwrite=overwrite,
                tokenizer=tokenizer, vocab_size=vocab_size, sp_model_type=sp_model_type, encoding=encoding,
                errors=errors, newline=newline, root=checkpoints_dir, on_event=view.handle, handle_signals=True,
                explicit=explicit, **{k: v for k, v in options.items() if k in explicit},
            )
        except KeyboardInterrupt:  # Ctrl-C before train() had installed its own handler
            raise Interrupted(signal.SIGINT, "Interrupted by SIGINT while setting up; no run was started or changed.") from None
    if not main_process:
        ctx.exit(128 + result.signal if result.signal else 0)
    if result.signal is not None and result.reason.startswith("interrupted"):
        import shlex

        source = result.source if result.source is not None else corpus
        click.echo(
            f"Interrupted at step {result.steps}; saved {result.out_dir / 'latest.pt'}. Resume with: "
            f"charrnn train {shlex.quote(str(source))} --out {shlex.quote(str(result.out_dir))} --resume",
            err=True,
        )
        ctx.exit(128 + result.signal)


# -- sample ---------------------------------------------------------------------------------
def load_model(ckpt: str | None, checkpoints_dir: str, device: str = "cpu", quiet: bool = False):
    """The model a command uses: -c, else the newest run, else the bundled model (noted)."""
    from ..api import load

    model = load(ckpt, device=device, root=checkpoints_dir)
    if ckpt is not None or quiet:
        pass  # the user named it
    elif model.bundled:
        click.echo(f"Note: no checkpoint under {checkpoints_dir}/; using the bundled Tiny Shakespeare model.", err=True)
    else:  # chosen for the user: say which
        click.echo(f"Using {model.path}.", err=True)
    return model


def unescape(text: str) -> str:
    """Let `--stop '\\n\\n'` mean two newlines: \\n, \\t, \\r and \\\\ are decoded."""
    out, i = [], 0
    table = {"n": "\n", "t": "\t", "r": "\r", "\\": "\\"}
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text) and text[i + 1] in table:
            out.append(table[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def read_prime(prime: str, prime_file: str | None) -> str:
    if prime_file is not None:
        if prime:
            raise click.UsageError("Use either --prime or --prime-file, not both.")
        if not prime_file:
            raise click.ClickException("The --prime-file path is empty; name a file, or - for standard input.")
        where = "standard input" if prime_file == "-" else prime_file
        try:
            with click.open_file(prime_file, "rb") as fh:
                data = _bounded(fh, where)
        except OSError as exc:
            raise click.ClickException(f"Cannot read the prime from {where}: {exc.strerror or exc}.") from None
        return _utf8(data, where)
    if prime == "-":
        return _utf8(_bounded(sys.stdin.buffer, "standard input"), "standard input")
    return prime


def _bounded(fh, where: str) -> bytes:
    """At most MAX_PRIME_BYTES from `fh`: /dev/zero or an endless pipe is one sentence,
    not a process growing until the machine runs out of memory. (Read through the corpus
    reader's stream reads, so that Ctrl-C while it waits for a pipe always stops it.)"""
    from ..text.corpus import stream_reads

    data = bytearray()
    for block in stream_reads(fh, where, MAX_PRIME_BYTES + 1 - len(data)):
        data += block
        if len(data) > MAX_PRIME_BYTES:
            break
    if len(data) > MAX_PRIME_BYTES:
        raise click.ClickException(f"The prime in {where} is longer than {MAX_PRIME_BYTES // 2**20} MiB, charrnn's "
                                   f"limit on a prime; pass a shorter one.")
    return bytes(data)


def _utf8(data: bytes, where: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise click.ClickException(f"The prime in {where} is not valid UTF-8 text (byte offset {exc.start}).") from None


@main.command(context_settings=CONTEXT)
@checkpoint_option
@config_option(SampleConfig, "temperature", "--temperature")
@config_option(SampleConfig, "top_k")
@config_option(SampleConfig, "top_p")
@config_option(SampleConfig, "length")
@click.option("--prime", default="", help="Text the model continues; - reads it from stdin.")
@click.option("--prime-file", type=click.Path(dir_okay=False, allow_dash=True), help="Read the prime from a file (- for stdin).")
@click.option("--echo-prime/--no-echo-prime", default=True, show_default=True, help="Write the prime to stdout before its continuation.")
@click.option("--unknown", type=click.Choice(["error", "skip"]), default="error", show_default=True, help="Prime characters outside the vocabulary: fail, or drop them with a note.")
@click.option("--stop", multiple=True, help="Stop right after this text appears (repeatable; \\n and \\t are understood).")
@config_option(SampleConfig, "max_time")
@config_option(SampleConfig, "num_samples")
@click.option("--separator", default="\\n\\n", show_default=True, help="Written between samples (\\n understood).")
@click.option("--jsonl", is_flag=True, help='One JSON object per sample: {"sample": i, "prime": ..., "text": ...}.')
@config_option(SampleConfig, "seed")
@quiet_checkpoint_option
@click.option("--quantize", is_flag=True, help="int8 weights for the per-character steps (CPU): faster single-stream sampling.")
@click.option("--adapt", is_flag=True, help="Before generating, let a copy of the model learn from the prime (dynamic evaluation), so a long prime steers the style more.")
@device_option()
@checkpoints_option
@fail_on_library_errors
def sample(ckpt, temperature, top_k, top_p, length, prime, prime_file, echo_prime, unknown, stop, max_time,
           num_samples, separator, jsonl, seed, quiet, quantize, adapt, device, checkpoints_dir):
    """Stream generated text to stdout.

    Only the generated text goes to stdout, written as it is produced, so the command
    composes with pipes; closing the pipe early (e.g. `| head`) ends it quietly. With
    --num-samples the samples are generated together and written one after another.

    \b
    Examples:
      charrnn sample --temp 0.8
      charrnn sample -c checkpoints/tinyshakespeare --prime "ROMEO:" --length 300 --seed 1
      charrnn sample --temp 0.8 --length 2000 | grep -c KING
      echo "JULIET:" | charrnn sample --prime - --stop '\\n\\n'
      charrnn sample -N 4 --length 200 --jsonl | jq -r .text
    """
    from ..text.characters import unknown_message

    model = load_model(ckpt, checkpoints_dir, device, quiet=quiet)
    prime = read_prime(prime, prime_file)
    bad, count = model.vocab.unknown_chars(prime)
    if bad:
        if unknown == "error":
            raise click.ClickException(unknown_message(bad, count) + " Use --unknown skip to drop them.")
        prime = prime.translate({ord(c): None for c in bad})
        click.echo(f"Note: dropped {count} prime character{'s' if count != 1 else ''} outside the vocabulary.", err=True)
    if adapt:
        if len(prime) < 2:
            raise click.UsageError("--adapt learns from the prime; give one of two characters or more "
                                   "(the model knows) with --prime or --prime-file.")
        if not quiet:
            click.echo(f"Adapting the model to the prime ({len(prime):,} characters)…", err=True)
        started = time.monotonic()
        model = model.adapted(prime)
        if not quiet:
            weights = sum(p.numel() * p.element_size() for p in model.net.parameters())
            click.echo(f"Adapted the model to the prime ({len(prime):,} characters) in "
                       f"{time.monotonic() - started:.1f} s, with {3 * weights / 1e6:,.0f} MB for the weights' "
                       f"copy and their statistics.", err=True)
    chunks = model.stream(prime, temperature=temperature, length=length, seed=seed, top_k=top_k, top_p=top_p,
                          stop=tuple(unescape(s) for s in stop if s), max_time=max_time,
                          num_samples=num_samples, quantize=quantize)
    out = StdoutWriter()
    texts = [""] * num_samples
    current = 0  # the sample being streamed; later ones are buffered until it finishes
    shown = 0
    lead = prime if echo_prime else ""
    if not jsonl:
        out.write(lead)
    for chunk in chunks:
        for i, t in enumerate(chunk.texts):
            texts[i] += t
        while current < num_samples:
            if not jsonl:
                out.write(texts[current][shown:])
                shown = len(texts[current])
            if not chunk.done[current]:
                break
            if jsonl:
                out.write(json.dumps({"sample": current, "prime": prime, "text": texts[current]}, ensure_ascii=False) + "\n")
            current += 1
            shown = 0
            if current < num_samples and not jsonl:
                out.write(unescape(separator) + lead)
    if not jsonl:
        out.end_line_on_terminal(lead + texts[-1])


# -- eval -------------------------------------------------------------------------------------
@main.command("eval", context_settings=CONTEXT)
@click.argument("file", type=click.Path(allow_dash=True))
@checkpoint_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a sentence.")
@click.option("--seq-len", type=IntRange(1, MAX_SEQ_LEN), default=256, show_default=True, help="Window length; the state is carried across windows.")
@click.option("--streams", type=IntRange(1, MAX_BATCH), default=16, show_default=True, help="Parallel streams the file is cut into.")
@device_option()
@click.option("--encoding", default="utf-8", show_default=True, help="Text encoding of FILE.")
@click.option("--dynamic", is_flag=True, help="Also score FILE by dynamic evaluation: the model learns from each segment after scoring it (the checkpoint is not changed).")
@config_option(DynamicConfig, "segment")
@config_option(DynamicConfig, "lr", dest="dynamic_lr")
@config_option(DynamicConfig, "decay", dest="dynamic_decay")
@quiet_checkpoint_option
@checkpoints_option
@fail_on_library_errors
def evaluate(file, ckpt, as_json, seq_len, streams, device, encoding, dynamic, segment, dynamic_lr, dynamic_decay,
             quiet, checkpoints_dir):
    """Report a model's loss on FILE (- for stdin): nats and bits per character, perplexity.

    The text is cut into a few long streams and read in windows with the state carried
    across them, so memory does not grow with the file. Characters outside the model's
    vocabulary are counted and left out.

    With --dynamic the text is read once more, in order as one stream, and scored twice:
    with the weights as trained (static) and by dynamic evaluation, where a copy of the
    model takes a gradient step on each segment after scoring it, so it follows the text's
    own style (Krause et al., 2018). Both figures of that pass are reported.

    \b
    Examples:
      charrnn eval held_out.txt -c checkpoints/tinyshakespeare
      charrnn eval notes.txt --json | jq .bits_per_char
      charrnn eval chapter.txt --dynamic
    """
    from ..text.corpus import read_corpus
    model = load_model(ckpt, checkpoints_dir, device, quiet=quiet)
    path = model.path
    text = read_corpus(file, encoding=encoding).text
    if dynamic:
        if not quiet:
            click.echo("Dynamic evaluation: scoring the text and learning from it, segment by segment…", err=True)
        both = model.dynamic_loss(text, DynamicConfig(segment=segment, lr=dynamic_lr, decay=dynamic_decay))
        s, d = both.static, both.dynamic
        result = {
            "file": file, "checkpoint": str(path), "chars": s.chars, "excluded_chars": s.excluded,
            "tokens": s.tokens, "tokenizer": model.vocab.kind, "seconds": both.seconds,
            "segment": segment, "dynamic_lr": dynamic_lr, "dynamic_decay": dynamic_decay,
            "static": {"nats_per_char": s.nats_per_char, "bits_per_char": s.bits_per_char, "perplexity": s.perplexity},
            "dynamic": {"nats_per_char": d.nats_per_char, "bits_per_char": d.bits_per_char, "perplexity": d.perplexity},
        }
        if as_json:
            echo(json.dumps(result))
        else:
            excluded = f" ({s.excluded:,} characters outside the vocabulary excluded)" if s.excluded else ""
            echo(f"{file}: static {s.nats_per_char:.4f} nats/char ({s.bits_per_char:.4f} bits/char), dynamic "
                 f"{d.nats_per_char:.4f} nats/char ({d.bits_per_char:.4f} bits/char), "
                 f"{d.bits_per_char - s.bits_per_char:+.4f} bits/char, over {s.chars:,} characters in "
                 f"{both.seconds:.1f} s{excluded}")
        return
    report = model.loss(text, seq_len=seq_len, streams=streams)
    result = {
        "file": file, "checkpoint": str(path), "nats_per_char": report.nats_per_char,
        "bits_per_char": report.bits_per_char, "perplexity": report.perplexity,
        "chars": report.chars, "excluded_chars": report.excluded,
        "nats_per_token": report.nats_per_token, "tokens": report.tokens, "tokenizer": model.vocab.kind,
    }
    if as_json:
        echo(json.dumps(result))
    else:
        excluded = f" ({report.excluded:,} characters outside the vocabulary excluded)" if report.excluded else ""
        if model.vocab.kind != "char":
            excluded += f"; {report.nats_per_token:.4f} nats/token over {report.tokens:,} tokens"
        echo(
            f"{file}: {report.nats_per_char:.4f} nats/char, {report.bits_per_char:.4f} bits/char, "
            f"perplexity {report.perplexity:.3f} over {report.chars:,} characters{excluded}"
        )


# -- info -------------------------------------------------------------------------------------
@main.command(context_settings=CONTEXT)
@click.argument("ckpt", required=False, metavar="[CHECKPOINT]", shell_complete=complete_checkpoints)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a report.")
@checkpoints_option
@fail_on_library_errors
def info(ckpt, as_json, checkpoints_dir):
    """Describe a checkpoint: model, vocabulary, corpus, training and its loss curve.

    CHECKPOINT is a .pt file or a run folder [default: newest best.pt under ./checkpoints].

    \b
    Examples:
      charrnn info checkpoints/tinyshakespeare
      charrnn info checkpoints/tinyshakespeare/latest.pt --json | jq .best_val_loss
    """
    from .termplot import line_plot

    model = load_model(ckpt, checkpoints_dir, quiet=as_json)
    summary = model.checkpoint.summary()
    if as_json:
        echo(json.dumps(summary))
        return
    ln2 = LN2
    corpus, best, cpt = summary["corpus"], summary["best_val_loss"], summary["chars_per_token"]
    mc = model.checkpoint.model_config
    lines = [
        f"checkpoint   {model.path} (format {summary['format']} v{summary['version']})",
        f"model        {mc.cell.upper()}{f' ({mc.nonlinearity})' if mc.cell == 'rnn' else ''} "
        f"{mc.num_layers} x {mc.hidden_size}, "
        + ("one-hot input" if mc.one_hot else f"embedding {mc.embedding_size}")
        + (", output layer tied to the embedding" if mc.tie_weights else "")
        + f", dropout {mc.dropout}" + (f", weight drop {mc.weight_drop}" if mc.weight_drop else "")
        + f", {model.net.num_parameters():,} parameters",
        f"vocabulary   {model.vocab.kind}, {model.vocab.size} entries: {model.vocab.preview()}",
    ]
    if corpus:
        lines.append(f"corpus       {corpus.get('name')} ({corpus.get('chars', 0):,} characters from {corpus.get('source')})")
    fallback = corpus.get("byte_fallback")
    if isinstance(fallback, dict) and all(isinstance(fallback.get(k), int) for k in ("chars", "occurrences")):
        from ..text.sentencepiece_vocab import rare_chars_phrase

        lines.append(f"byte pieces  {rare_chars_phrase(fallback['chars'], fallback['occurrences'], corpus.get('chars', 0))} "
                     f"spelled as UTF-8 bytes")
    if corpus.get("sizing"):
        from .live import sizing_line

        try:
            lines.append(f"sizing       {sizing_line(corpus['sizing'])}")
        except (KeyError, TypeError, ValueError):  # a note from another version, or edited: not shown
            pass
    if summary["step"]:
        lines.append(f"training     {summary['step']:,} steps, {summary['epoch']:.2f} epochs, "
                     f"{summary['train_time_s'] or 0:,.0f} s on {summary['device']}")
    if best is not None:
        lines.append(f"best val     {best / ln2:.4f} bits/char ({best:.4f} nats/char)")
        if model.vocab.kind != "char":
            lines.append(f"             {best * cpt:.4f} nats/token ({cpt:.2f} characters per token)")
    echo("\n".join(safe_text(line) for line in lines))  # names, sources and pieces come from the file
    history = summary["history"]
    if history["train"] or history["val"]:
        echo("\nloss (bits/char) by step:")
        plot = line_plot({"train": [(s, v / ln2) for s, v in history["train"]],
                          "validation": [(s, v / ln2) for s, v in history["val"]]})
        echo("\n".join(plot))


# -- plot -------------------------------------------------------------------------------------
@main.command(context_settings=CONTEXT)
@click.argument("run", required=False, metavar="[RUN]", shell_complete=complete_checkpoints)
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), help="Write a PNG picture here (needs matplotlib).")
@click.option("--terminal", is_flag=True, help="Draw the curves as text on stdout (the default without -o).")
@click.option("--force", is_flag=True, help="Replace an existing picture file (a symbolic link is replaced itself).")
@checkpoints_option
@fail_on_library_errors
def plot(run, output, terminal, force, checkpoints_dir):
    """Plot a run's training and validation loss (bits per character) by step.

    RUN is a run folder (its metrics.jsonl) or a checkpoint file (its stored history)
    [default: the run of the newest best.pt under the checkpoints folder]. With -o the
    curves are drawn with matplotlib (`pip install 'charrnn-cli[plot]'`); otherwise, or
    with --terminal, as text on stdout.

    \b
    Examples:
      charrnn plot checkpoints/tinyshakespeare
      charrnn plot checkpoints/tinyshakespeare -o loss.png
      charrnn plot checkpoints/tinyshakespeare -o loss.png --force   # redraw it
    """
    from ..training.plotting import loss_curves, save_png
    from .termplot import line_plot

    if run is not None:
        target = run
    else:
        from ..paths import find

        found = find(None, checkpoints_dir)
        target = found.path if found.bundled else found.path.parent
    curves = loss_curves(target)
    if curves.skipped:
        click.echo(f"Note: skipped {curves.skipped} damaged line{'s' if curves.skipped != 1 else ''} of the metrics file.", err=True)
    if output is not None:
        target = Path(target)
        path = save_png(curves, output, title=f"charrnn: {target.name if target.is_dir() else target.parent.name}",
                        force=force)
        click.echo(f"Wrote {path}", err=True)
    if terminal or not output:
        echo("bits per character by step:\n" + "\n".join(line_plot(curves.as_dict())))


# -- list -------------------------------------------------------------------------------------
@main.command("list", context_settings=CONTEXT)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per model, one per line.")
@checkpoints_option
@fail_on_library_errors
def list_models(as_json, checkpoints_dir):
    """List the runs under the checkpoints folder and the bundled model.

    Each run is shown by its best checkpoint: name, model, best validation loss in bits per
    character, corpus, steps and when it last changed; the newest first.

    \b
    Examples:
      charrnn list
      charrnn list --json | jq -r .name
    """
    import datetime

    from ..checkpoint.store import list_runs

    rows = [item.row() for item in list_runs(checkpoints_dir)]
    if as_json:
        echo("\n".join(json.dumps(r) for r in rows))
        return
    table = [("name", "model", "best val bpc", "corpus", "steps", "changed")]
    for r in rows:
        changed = datetime.datetime.fromtimestamp(r["modified"]).strftime("%Y-%m-%d %H:%M") if r["modified"] else ""
        if r["error"]:
            table.append((r["name"], "unreadable", "", "", "", changed))
            continue
        bpc = "" if r["best_val_bits_per_char"] is None else f"{r['best_val_bits_per_char']:.4f}"
        name = r["name"] + (" (bundled)" if r["bundled"] else "")
        table.append((name, f"{r['cell'].upper()} {r['num_layers']} x {r['hidden_size']}", bpc, r["corpus"] or "",
                      f"{r['steps']:,}", changed))
    table = [tuple(safe_text(cell) for cell in row) for row in table]  # names and corpora come from files
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    echo("\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table))


# -- export -----------------------------------------------------------------------------------
@main.command(context_settings=CONTEXT)
@click.argument("ckpt", metavar="CHECKPOINT", shell_complete=complete_checkpoints)
@click.argument("output", type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(list(EXPORT_FORMATS)),
              help="File format [default: from OUTPUT's extension: .pt, .safetensors, .onnx or .html].")
@click.option("--half", is_flag=True, help="Store the weights as float16 (half the size; .pt and .safetensors).")
@click.option("--precision", type=click.Choice(["float16", "float32"]), default=None,
              help="How a web page stores its weights [default: float16].")
@click.option("--quantize", is_flag=True, help="Store a web page's weight matrices as int8, one scale per row (a quarter of float32).")
@click.option("--force", is_flag=True, help="Replace OUTPUT if it exists.")
@checkpoints_option
@fail_on_library_errors
def export(ckpt, output, fmt, half, precision, quantize, force, checkpoints_dir):
    """Write a small sampling-only copy of CHECKPOINT to OUTPUT.

    CHECKPOINT is what -c takes: a file, a run folder, a run's name, or bundled.

    The copy keeps the model, vocabulary, corpus and training summary, and drops the
    optimizer, hidden and RNG state, so it samples, evaluates and shows info like the
    original but cannot be resumed. This is how the bundled model is made.

    OUTPUT's extension (or --format) chooses the format: .pt is charrnn's own; .safetensors
    holds the same without pickle and loads with -c like a .pt; .onnx holds the single-step
    graph with the vocabulary in its metadata, for onnxruntime (it needs
    `pip install 'charrnn-cli[onnx]'`); .html is one self-contained web page that
    generates in any browser, offline, with no server: send it or put it on any static host.

    \b
    Examples:
      charrnn export checkpoints/tinyshakespeare small.pt --half
      charrnn sample -c small.pt
      charrnn export checkpoints/tinyshakespeare shakespeare.safetensors
      charrnn export checkpoints/tinyshakespeare shakespeare.onnx
      charrnn export checkpoints/tinyshakespeare shakespeare.html
    """
    from ..checkpoint.export import export as export_checkpoint

    path = export_checkpoint(ckpt, output, half=half, force=force, format=fmt, precision=precision, quantize=quantize,
                             root=checkpoints_dir)
    click.echo(f"Wrote {path} ({path.stat().st_size / 1e6:.1f} MB)", err=True)


# -- serve ------------------------------------------------------------------------------------

@main.command(context_settings=CONTEXT)
@click.option("-c", "--checkpoint", "ckpts", multiple=True, shell_complete=complete_checkpoints, help="Checkpoint file, run folder or run name to serve (repeatable) [default: newest best.pt under ./checkpoints, else the bundled model].")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on; 0.0.0.0 lets other machines connect.")
@click.option("--port", type=IntRange(0, 65535), default=8000, show_default=True, help="Port to listen on (0 picks a free one).")
@click.option("--max-prompt", type=IntRange(min=1), default=ServeLimits.max_prompt_chars, show_default=True, help="Longest prompt a request may send, in characters.")
@click.option("--max-tokens", type=IntRange(min=1), default=ServeLimits.max_tokens, show_default=True, help="Most characters a request may ask for per choice.")
@click.option("--max-n", type=IntRange(1, MAX_SAMPLES), default=ServeLimits.max_n, show_default=True, help="Most choices (n) per request.")
@click.option("--concurrency", type=IntRange(1, 1024), default=ServeLimits.concurrency, show_default=True, help="Generations running at once; further requests wait.")
@click.option("--queue-timeout", type=FiniteFloat(min=0), default=ServeLimits.queue_timeout, show_default=True, help="Seconds a request waits for a free slot before it gets 429.")
@device_option(help="Where to run the models.")
@click.option("--read-timeout", type=FiniteFloat(min=0, min_open=True), default=ServeLimits.read_timeout, show_default=True, help="Seconds a client may take to send a request's headers, and its body.")
@click.option("--write-timeout", type=FiniteFloat(min=0, min_open=True), default=ServeLimits.write_timeout, show_default=True, help="Seconds a client may take to accept the next piece of a stream; then the stream ends and frees its slot.")
@click.option("--api-key", envvar="CHARRNN_API_KEY", show_envvar=True, help="Require Authorization: Bearer KEY on every route but /health and the playground page.")
@click.option("--allow-host", "allow_hosts", multiple=True, metavar="NAME", help="Also answer requests whose Host header names NAME (repeatable); others get 400 [default: the address bound to, and localhost].")
@click.option("--cors-origin", "cors_origins", multiple=True, metavar="ORIGIN", help="Let web pages from ORIGIN call the API from a browser (repeatable) [default: none].")
@click.option("--access-log", is_flag=True, help="Log every request on stderr.")
@checkpoints_option
@fail_on_library_errors
def serve(ckpts, host, port, max_prompt, max_tokens, max_n, concurrency, queue_timeout, device, read_timeout,
          write_timeout, api_key, allow_hosts, cors_origins, access_log, checkpoints_dir):
    """Serve models over an OpenAI-compatible HTTP API, with a playground page at /.

    POST /v1/completions takes OpenAI's fields (model, prompt, max_tokens counted in
    characters, temperature, top_p, stop, n, seed, stream) and top_k; GET /v1/models lists
    the models, each named after its run folder. Models are loaded once at start-up. Ctrl-C
    or SIGTERM stops running generations and exits within seconds. Needs
    `pip install 'charrnn-cli[serve]'`.

    \b
    Examples:
      charrnn serve
      charrnn serve -c checkpoints/tinyshakespeare -c checkpoints/notes --port 8080
      curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' -d '{"prompt": "ROMEO:"}'
      CHARRNN_API_KEY=secret charrnn serve --host 0.0.0.0
    """
    from ..serve import app as server

    missing = server.missing_extra()
    if missing:
        raise click.ClickException(missing)
    limits = server.Limits(max_prompt_chars=max_prompt, max_tokens=max_tokens, max_n=max_n,
                           concurrency=concurrency, queue_timeout=queue_timeout, read_timeout=read_timeout,
                           write_timeout=write_timeout)
    access = server.Access.bound_to(host, api_key or None, allow_hosts, cors_origins)
    models = server.load_models(ckpts, checkpoints_dir, device)
    sock = server.bind(host, port)  # after loading: a slow load does not hold the port
    app = server.create_app(models, limits, access)
    names = ", ".join(f"{s.name} ({'bundled' if s.model.bundled else s.model.path})" for s in models)
    line = f"Serving {names} at {server.url(sock)} (OpenAI API at {server.url(sock)}v1); Ctrl-C stops."
    if access.api_key is not None:
        line += " Requests need the API key."
    elif not server.is_loopback(host):
        line += (f" Warning: {host} is reachable from other machines and no --api-key is set: anyone who can "
                 f"reach it can use the models.")
    click.echo(safe_text(line), err=True)
    server.serve(app, sock, access_log=access_log)


if __name__ == "__main__":  # pragma: no cover
    main()
