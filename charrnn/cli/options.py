"""Options of the command line that are declared once: those several commands share
(llm's way: decorators), the parameter types that keep bad values to one sentence, and
`config_option`, which makes a command's option from a configuration field
(`charrnn.config.setting`), so that its name, default, help and check are the field's."""

from __future__ import annotations

import math
import os
import re
from dataclasses import MISSING
from pathlib import Path

import rich_click as click

from ..config import DURATION, settings
from ..durations import parse_duration
from ..paths import DEFAULT_ROOT, ROOT_ENV


def complete_checkpoints(ctx: click.Context, param, incomplete: str):
    """TAB completion for a checkpoint argument: the names of the runs under the checkpoints
    folder and "bundled" (the shipped model), then files and folders (the shell completes
    those)."""
    from click.shell_completion import CompletionItem

    from ..paths import BUNDLED_NAME, run_folders

    root = Path(ctx.params.get("checkpoints_dir") or os.environ.get(ROOT_ENV) or DEFAULT_ROOT)
    names = [run.path.name for run in run_folders(root)] + [BUNDLED_NAME]
    return [CompletionItem(n) for n in names if n.startswith(incomplete)] + [CompletionItem(incomplete, type="file")]


checkpoints_option = click.option(
    "--checkpoints-dir", default=DEFAULT_ROOT, envvar=ROOT_ENV, show_envvar=True, show_default=True,
    type=click.Path(file_okay=False), help="Folder that holds runs (new runs go to <folder>/<corpus name>).")

# Options several commands share, declared once (llm's way).
DEVICES = ["auto", "cpu", "cuda", "mps"]
checkpoint_option = click.option(
    "-c", "--checkpoint", "ckpt", shell_complete=complete_checkpoints,
    help="Checkpoint file, run folder, run name, or bundled [default: newest best.pt under ./checkpoints].")
quiet_checkpoint_option = click.option("-q", "--quiet", is_flag=True,
                                       help="Do not say on stderr which checkpoint is used.")


def device_option(default: str = "cpu", help: str = "Where to run the model."):
    """--device, read from CHARRNN_DEVICE too."""
    return click.option("--device", type=click.Choice(DEVICES), default=default, show_default=True,
                        envvar="CHARRNN_DEVICE", show_envvar=True, help=help)


def _short_numbers(message: str) -> str:
    """A message with every run of more than 30 digits quoted in short: a value of
    hundreds of digits is one sentence, not a screenful."""
    return re.sub(r"\d{31,}", lambda m: f"{m.group()[:6]}... ({len(m.group()):,} digits)", message)


class IntRange(click.IntRange):
    """click's IntRange, quoting a value of many digits in short."""

    def fail(self, message, param=None, ctx=None):
        super().fail(_short_numbers(message), param, ctx)


class FiniteFloat(click.FloatRange):
    """click's FloatRange, except that NaN and infinities are refused: they are never a
    number a user meant (FloatRange lets NaN through every bound)."""

    def convert(self, value, param, ctx):
        number = super().convert(value, param, ctx)
        if not math.isfinite(number):
            self.fail(f"{value!r} is not a finite number.", param, ctx)
        return number

    def fail(self, message, param=None, ctx=None):
        super().fail(_short_numbers(message), param, ctx)


class Duration(click.ParamType):
    """90s, 10m, 1h30m, or plain seconds."""

    name = "duration"

    def convert(self, value, param, ctx):
        if isinstance(value, (int, float)):
            return float(value)
        try:
            return parse_duration(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def config_option(cls, name: str, *aliases: str, dest: str | None = None, extra_choices: tuple = (), **overrides):
    """The option of the configuration field `cls.name`: `--name-with-dashes` (or the
    field's own flag and short form), its check as a click type (so a bad value is a usage
    error naming the option), its default (none when the field says what happens unset,
    which the help then shows as the default), and its help sentence. `aliases` are more
    names for the option, `dest` the command's parameter when it is not the field's name,
    and `overrides` click's own keywords (a metavar, say)."""
    f = settings(cls)[name]
    meta = f.metadata
    decls = [meta["flag"] or "--" + name.replace("_", "-"), *aliases, *([meta["short"]] if meta["short"] else []),
             dest or name]
    kind, help = meta["kind"], meta["help"]
    kw: dict = {}
    if kind is bool:
        kw["is_flag"] = True
    elif meta["choices"] is not None:
        kw["type"] = click.Choice([*meta["choices"], *extra_choices])
    elif kind is int:
        kw["type"] = IntRange(meta["lo"], meta["hi"], min_open=meta["lo_open"], max_open=meta["hi_open"])
    elif kind is float:
        kw["type"] = FiniteFloat(meta["lo"], meta["hi"], min_open=meta["lo_open"], max_open=meta["hi_open"])
    elif kind == DURATION:
        kw["type"] = Duration()
    if meta["unset"] is not None:
        help = f"{help} [default: {meta['unset']}]"
    elif kind is not bool and f.default not in (MISSING, None):
        kw.update(default=f.default, show_default=True)
    return click.option(*decls, help=help, **kw, **overrides)
