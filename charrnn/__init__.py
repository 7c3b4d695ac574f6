"""charrnn: train character-level recurrent networks on any text and stream samples from them.

Library entry points (no printing, no click or rich):

    from charrnn import load
    model = load("checkpoints/tinyshakespeare")     # run folder or .pt file
    for chunk in model.generate(prime="ROMEO:", temperature=0.8, length=200, seed=1):
        print(chunk, end="")
    model.loss("some held-out text").bits_per_char
"""

__version__ = "0.1.0"

from .api import LossReport, Model, load  # noqa: E402
from .errors import CharrnnError  # noqa: E402

__all__ = ["CharrnnError", "LossReport", "Model", "load", "__version__"]
