"""The ONNX export: the single-step graph of `CharRNN.step`, for onnxruntime and other
runtimes without Python or torch.

Inputs `input_ids` (int64, (B,)) and the state (`h`, and `c` for an LSTM, float32,
(num_layers, B, hidden_size) each); outputs `logits` ((B, V)) and the new state (`h_out`,
`c_out`); B is dynamic. The model's metadata_props carry the vocabulary (`vocab`, see
`charrnn.text.vocabulary.piece_texts`) and what a runtime needs to drive the graph
(`start_ids`, `banned_ids`, `state_inputs`, ...). onnx and torch are imported only inside
the functions, since the CLI imports this module's callers for `--help`.
"""

from __future__ import annotations

import json

from ..errors import CharrnnError
from ..jsonio import encode_bytes
from ..text.vocabulary import piece_texts

ONNX_FORMAT = "charrnn-onnx-step"
ONNX_FORMAT_VERSION = 1


def require_onnx() -> None:
    """Raise one sentence naming the extra to install when the ONNX exporter's packages
    (onnx, and onnxscript for torch's exporter) are missing."""
    missing = []
    for module in ("onnx", "onnxscript"):
        try:
            __import__(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise CharrnnError(f"ONNX export needs {' and '.join(missing)}; install them with "
                           f"`pip install 'charrnn-cli[onnx]'`.")


def _step_module(net):
    """`CharRNN.step` as a module with one tensor per argument, which torch.export traces:
    (input_ids (B,), h, c) -> (logits (B, V), h_out, c_out) for an LSTM, without c otherwise."""
    import torch

    class LSTMStep(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, input_ids, h, c):
            logits, (h_out, c_out) = self.net.step(input_ids, (h, c))
            return logits, h_out, c_out

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.net = net

        def forward(self, input_ids, h):
            logits, (h_out,) = self.net.step(input_ids, (h,))
            return logits, h_out

    return (LSTMStep() if net.config.cell == "lstm" else Step()).eval()


def onnx_bytes(ckpt, source: str | None = None) -> bytes:
    """The single-step graph of a checkpoint's model as the bytes of an ONNX file, float32,
    with the vocabulary and the graph's interface in its metadata_props.

    Exported with torch's torch.export-based exporter (`dynamo=True`, the default since
    torch 2.9; the TorchScript one is deprecated), which gives a plain graph of
    Gather/Gemm/Sigmoid/Tanh nodes with a symbolic batch dimension. The per-node debugging
    metadata it records (source paths, stack traces) is dropped."""
    import contextlib
    import io
    import logging
    import warnings

    require_onnx()
    import onnx
    import torch

    if torch.__version__ < "2.6":
        raise CharrnnError(f"ONNX export needs torch 2.6 or newer (this is torch {torch.__version__}).")

    from .. import __version__
    from ..model.sampling import prime_ids

    config = ckpt.model_config
    net = ckpt.network()
    vocab = ckpt.vocabulary()
    states = ["h", "c"] if config.cell == "lstm" else ["h"]
    batch = torch.export.Dim("batch")
    example_batch = 2  # not 1: torch.export would specialise a size-1 dimension
    example = (torch.zeros(example_batch, dtype=torch.long), *net.init_state(example_batch))
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    try:
        # The exporter logs and warns about things that do not concern this graph (e.g.
        # torchvision not installed); the library never prints.
        logger.setLevel(logging.ERROR)
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            program = torch.onnx.export(
                _step_module(net), example, dynamo=True, verbose=False, optimize=True,
                input_names=["input_ids", *states], output_names=["logits", *[f"{s}_out" for s in states]],
                dynamic_shapes={"input_ids": {0: batch}, **{s: {1: batch} for s in states}},
            )
    except Exception as exc:  # an exporter failure is charrnn's bug, but still one sentence
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise CharrnnError(f"torch could not export the model to ONNX: {reason}") from None
    finally:
        logger.setLevel(level)
    model = program.model_proto
    for node in model.graph.node:
        del node.metadata_props[:]
    p = ckpt.progress
    props = {
        "charrnn_format": ONNX_FORMAT,
        "charrnn_format_version": str(ONNX_FORMAT_VERSION),
        "charrnn_version": __version__,
        "vocab": json.dumps(piece_texts(vocab), ensure_ascii=False),
        "vocab_kind": vocab.kind,
        "vocab_size": str(vocab.size),
        "banned_ids": json.dumps(list(vocab.banned_ids)),
        "start_ids": json.dumps(prime_ids(vocab, "").tolist()),  # what charrnn primes with by default
        "cell": config.cell,
        "nonlinearity": config.nonlinearity,
        "num_layers": str(config.num_layers),
        "hidden_size": str(config.hidden_size),
        "state_inputs": json.dumps(states),
        "state_outputs": json.dumps([f"{s}_out" for s in states]),
        "corpus": json.dumps(ckpt.corpus, default=encode_bytes),  # ASCII JSON: file names need not be UTF-8
        "best_val_loss": json.dumps(p.best_val_loss),  # nats per character
        "step": str(p.step),
    }
    if source is not None:
        props["exported_from"] = source.encode("utf-8", "backslashreplace").decode("utf-8")
    onnx.helper.set_model_props(model, props)
    model.doc_string = (
        "charrnn single-step graph: input_ids int64 (B,) and the state "
        + ", ".join(states) + f" float32 ({config.num_layers}, B, {config.hidden_size}) -> logits float32 (B, "
        f"{config.vocab_size}) and the new state {', '.join(s + '_out' for s in states)}. Feed the state outputs "
        "back as the next state inputs (zeros to start). metadata 'vocab' gives the text of each id."
    )
    return model.SerializeToString()
