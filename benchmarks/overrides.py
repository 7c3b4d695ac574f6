"""`--set NAME=VALUE` options of the benchmark scripts, read as Python literals."""

from __future__ import annotations

import ast


def parse(items: list[str]) -> dict:
    """["hidden_size=512", "schedule=wsd"] -> {"hidden_size": 512, "schedule": "wsd"}:
    a value that is not a Python literal is kept as a string."""
    overrides = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            overrides[name] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            overrides[name] = value
    return overrides
