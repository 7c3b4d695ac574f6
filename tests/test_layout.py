"""The package layout: imports point down only (docs/architecture.md, "The layout").

Every import inside charrnn is read from the source, lazy ones inside functions too, so a
module that reached up a layer only on some code path is caught as well."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "charrnn"
BASE = {"errors", "durations", "events", "jsonio", "config", "paths", "devices"}
# Lowest first. `serve` may use what `api` does but never the trainer; `cli` may use anything.
LAYERS = ["base", "text", "model", "checkpoint", "api", "training", "serve", "cli"]


def layer(module: str) -> str:
    """charrnn.text.corpus -> "text"; charrnn.config -> "base"."""
    parts = module.split(".")[1:]
    if not parts or parts[0] in BASE:  # `charrnn` itself: its __init__ names the entry points lazily
        return "base"
    if not (ROOT / parts[0]).is_dir() and not (ROOT / f"{parts[0]}.py").is_file():
        return "base"  # a name defined in charrnn/__init__.py (__version__)
    if parts[0] == "__main__":  # python -m charrnn runs the command
        return "cli"
    return parts[0]


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path, name: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module) of every charrnn import in the file of module `name`."""
    name = name or module_name(path)
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package[:len(package) - node.level + 1]
            target = ".".join(base + ([node.module] if node.module else []))
            out += [(node.lineno, f"{target}.{a.name}" if not node.module else target) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("charrnn"):
            out.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names if a.name.startswith("charrnn")]
    return out


SOURCES = sorted(ROOT.rglob("*.py"))


def test_every_module_belongs_to_a_layer():
    unknown = {layer(module_name(p)) for p in SOURCES} - set(LAYERS) - {"api"}
    assert not unknown, f"packages missing from LAYERS: {unknown}"


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: module_name(p))
def test_imports_point_down(path):
    own = layer(module_name(path))
    own_rank = LAYERS.index(own)
    upward = []
    for line, target in imports(path):
        theirs = layer(target)
        if LAYERS.index(theirs) > own_rank or (own == "serve" and theirs == "training"):
            upward.append(f"line {line}: {target}")
    assert not upward, f"{module_name(path)} ({own}) imports upward: {upward}"


def test_api_never_imports_the_trainer():
    targets = [t for _, t in imports(ROOT / "api.py")]
    assert targets and not [t for t in targets if t.startswith("charrnn.training")]


def test_the_reader_sees_lazy_and_relative_imports(tmp_path):
    """The check itself can fail: an import inside a function, two levels up, is found
    and resolved, and a text module importing the model layer ranks as upward."""
    probe = tmp_path / "corpus.py"
    probe.write_text("from ..config import ModelConfig\n\n\ndef _probe():\n    from ..model import network\n",
                     encoding="utf-8")
    found = [t for _, t in imports(probe, "charrnn.text.corpus")]
    assert found == ["charrnn.config", "charrnn.model"]
    assert LAYERS.index(layer("charrnn.model")) > LAYERS.index(layer("charrnn.text.corpus"))
