"""charrnn: train character-level recurrent networks on any text and stream samples from them.

Library entry points (no printing, no click or rich):

    from charrnn import load, train
    run = train("corpus.txt", hidden_size=256, max_time="2m", out="checkpoints/x")
    model = load("checkpoints/x")                   # run folder or .pt file, any device
    for chunk in model.generate(prime="ROMEO:", temperature=0.8, length=200, seed=1):
        print(chunk, end="")
    model.loss("some held-out text").bits_per_char

Errors a user can cause raise `CharrnnError` (a subclass per kind) with a one-sentence message.
"""

__version__ = "0.1.0"

from .errors import CharrnnError  # noqa: E402

_LAZY = {"LossReport": "api", "Model": "api", "load": "api", "TrainResult": "training.run", "train": "training.run"}


def __getattr__(name: str):
    """The entry points are imported on first use: `import charrnn` (and so `charrnn --help`)
    does not pay for torch."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["CharrnnError", "LossReport", "Model", "TrainResult", "load", "train", "__version__"]
