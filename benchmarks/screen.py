"""Quick screens of training settings: a fixed number of steps on the first 300,000
characters of Tiny Shakespeare, small model, validation loss every --eval-every steps.

    python benchmarks/screen.py --steps 200 --variant lr=0.003 --variant lr=0.01
    python benchmarks/screen.py --steps 200 --variant forget_bias=1 --variant forget_bias=0
    python benchmarks/screen.py --steps 800 --variant lr=0.01 --variant lr=0.01,seq_len=128,steps=400

A variant is comma-separated NAME=VALUE pairs over ModelConfig and TrainConfig fields,
plus `steps` (this variant's step count) and `forget_bias` (set the LSTM's forget-gate
bias to this value after initialisation, by starting the run with `init_from` a checkpoint
of the same initial weights so changed; PyTorch's own initialisation otherwise). Every run
goes through `charrnn.train()` on the text written to a temporary file, whose last
`charrnn.data.VAL_FRACTION` is the validation tail. Base
settings: 2 x 256 LSTM, embedding 64, no dropout, batch 32 x seq 64, lr 1e-2. Runs are
step-bounded, so results do not depend on the machine's speed (only the time taken does).
"""

from __future__ import annotations

import argparse
import ast
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

from machine import describe, line  # noqa: E402

BASE_MODEL = {"hidden_size": 256, "num_layers": 2, "embedding_size": 64, "dropout": 0.0, "cell": "lstm"}
BASE_TRAIN = {"batch_size": 32, "seq_len": 64, "lr": 1e-2, "eval_every": 100, "log_every": 50, "device": "cpu"}


def parse_variant(text: str) -> dict:
    out = {}
    for item in filter(None, text.split(",")):
        name, _, value = item.partition("=")
        try:
            out[name.strip()] = ast.literal_eval(value)
        except (ValueError, SyntaxError):
            out[name.strip()] = value
    return out


def forget_bias_start(path: Path, model_config, vocab, seed: int, value: float) -> Path:
    """A weights-only checkpoint holding the model `charrnn.train()` would build with `seed`,
    its forget-gate bias set to `value`; the run starts from it with `init_from`."""
    import torch

    from charrnn import checkpoint
    from charrnn.model import CharRNN
    from charrnn.trainer import seed_everything

    seed_everything(seed)  # as the trainer does before building its model: same initial weights
    net = CharRNN(model_config)
    h = model_config.hidden_size
    with torch.no_grad():
        for name, param in net.rnn.named_parameters():
            if name.startswith("bias_"):  # both bias vectors: their sum is the gate's bias
                param[h : 2 * h].fill_(value if name.startswith("bias_ih") else 0.0)
    ckpt = checkpoint.Checkpoint(model_config=model_config, weights=net.state_dict(), vocab=vocab.to_dict(),
                                 num_parameters=net.num_parameters())
    return checkpoint.save(ckpt, path)


def main(argv=None) -> int:
    import charrnn
    from charrnn.config import ModelConfig, TrainConfig
    from charrnn.trainer import Evaluated
    from charrnn.vocab import CharVocab

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--corpus", default=str(HERE.parent / "corpora" / "tinyshakespeare.txt"))
    p.add_argument("--chars", type=int, default=300_000)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--variant", action="append", default=[], help="NAME=VALUE[,NAME=VALUE...] (repeatable)")
    args = p.parse_args(argv)

    text = Path(args.corpus).read_text(encoding="utf-8")[: args.chars]
    model_fields = set(ModelConfig.__dataclass_fields__) - {"vocab_size"}
    rows = []
    with tempfile.TemporaryDirectory(prefix="charrnn-screen-") as tmp:
        corpus = Path(tmp) / "corpus.txt"
        corpus.write_text(text, encoding="utf-8")  # train() splits off the validation tail itself
        for i, spec in enumerate(args.variant or [""]):
            v = parse_variant(spec)
            steps = v.pop("steps", args.steps)
            forget = v.pop("forget_bias", None)
            options = {**BASE_MODEL, **BASE_TRAIN, "max_steps": steps, **v}
            init_from = None
            if forget is not None:
                vocab = CharVocab.from_text(text)  # the vocabulary train() builds from this text
                mc = ModelConfig(vocab_size=vocab.size, **{k: x for k, x in options.items() if k in model_fields})
                seed = options.get("seed", TrainConfig.seed)
                init_from = forget_bias_start(Path(tmp) / f"start{i}.pt", mc, vocab, seed, forget)
            curve = []

            def on_event(event, curve=curve):
                if isinstance(event, Evaluated):
                    curve.append((event.step, round(event.val_loss, 3)))

            result = charrnn.train(corpus, out=Path(tmp) / f"run{i}", init_from=init_from, on_event=on_event, **options)
            rows.append((spec or "base", steps, curve, result.elapsed))
            print(f"{spec or 'base'}: " + ", ".join(f"{s}: {x}" for s, x in curve), flush=True)

    print(f"\nmachine: {line(describe())}")
    print(f"corpus: first {args.chars:,} characters of {args.corpus}; base {BASE_MODEL} {BASE_TRAIN}\n")
    print("| variant | steps | final val (nats/char) | time |\n|---|---:|---:|---:|")
    for spec, steps, curve, seconds in rows:
        print(f"| {spec} | {steps} | {curve[-1][1]:.3f} | {seconds:.0f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
