"""Fine-tuning onto a text with characters the base model lacks: which checkpoint
`--init-from` names, and growing the weights indexed by the vocabulary.

A character vocabulary grown for fine-tuning keeps the base's ids and appends the new
characters (`charrnn.text.characters.CharVocab.extended`). The weights follow so that the base model
is untouched at step 0: for any text made of old characters, the old ids' logits are the
base model's, and the new characters start improbable but learnable::

    embedding.weight (V, E)       + new rows: the mean of the old rows (an "average" character),
                                    zeros when tied to the head (see below)
    rnn.weight_ih_l0 (G*H, V)     + new columns, the same rule (one-hot input feeds column id)
    head.weight      (V, H)       + new rows: zeros
    head.bias        (V,)         + new entries: NEW_BIAS

A new row of the head with zero weights and a very negative bias gives its character a
probability of about e^NEW_BIAS whatever the state, and the old logits do not depend on
the new rows at all. The gradient still reaches them: d loss / d logit is p - y, about -1
wherever the new character is the target, so the bias gets -1 and the weights -h there.
With tied weights the head's rows are the embedding's, so the new rows are zeros for both:
a zero input vector for a new character, and the invariant above for the output.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

from .. import paths
from ..errors import CheckpointError

if TYPE_CHECKING:
    import torch

    from ..config import ModelConfig

# Logit of a new character at step 0: with the base's logits in their usual range (the
# largest is seldom below -5), its probability starts below 1e-6.
NEW_BIAS = -20.0


def base_checkpoint(name: str | os.PathLike, root: str | os.PathLike) -> Path:
    """The checkpoint `--init-from NAME` names: a checkpoint file, a run folder, a run's
    name under `root`, or "bundled" (`paths.find`, the rule `-c` follows)."""
    return paths.find(name, root).path


def added_chars(base, vocab) -> tuple[str, ...]:
    """Characters `vocab` appended to the base vocabulary (its ids from `base.size` on);
    none when it did not grow (or is not a character vocabulary)."""
    if vocab.size <= base.size or not hasattr(vocab, "chars"):
        return ()
    return tuple(vocab.chars[base.size:])


def shown(chars: tuple[str, ...], limit: int = 24) -> str:
    """Characters as a user can read them in one line: printable ones as they are, the
    others escaped ('\\t', '\\u00a0'), the rest after `limit` as an ellipsis."""
    from ..text.vocabulary import escape_char  # (numpy: not for the CLI's completion, which imports this module)

    out = [c if c.isprintable() and not c.isspace() else escape_char(c) for c in chars[:limit]]
    return " ".join(out) + (" …" if len(chars) > limit else "")


def growth_note(added: tuple[str, ...]) -> str:
    """The Note a fine-tuning run gives when its vocabulary grows."""
    n = len(added)
    return f"the vocabulary grows by {n} character{'s' if n != 1 else ''} the base model lacks: {shown(added)}"


def extend_weights(weights: dict[str, "torch.Tensor"], config: "ModelConfig",
                   vocab_size: int) -> dict[str, "torch.Tensor"]:
    """The base model's weights (`config`'s) for a vocabulary of `vocab_size` ids whose
    first `config.vocab_size` are the base's, grown as the module docstring says; the
    weights themselves when the vocabulary did not grow. Each tensor keeps its dtype."""
    import torch

    grow = vocab_size - config.vocab_size
    if grow < 0:
        raise CheckpointError(f"A vocabulary of {vocab_size} entries cannot hold the base model's {config.vocab_size}.")
    if grow == 0:
        return weights

    def rows(table: torch.Tensor, new: torch.Tensor) -> torch.Tensor:  # (V, ...) + (grow, ...)
        return torch.cat([table, new.to(table.dtype)], dim=0)

    def mean_rows(table: torch.Tensor) -> torch.Tensor:  # (grow, ...), computed in float32
        return table.float().mean(dim=0, keepdim=True).expand(grow, *table.shape[1:])

    out = dict(weights)
    head = weights["head.weight"]  # (V, H)
    out["head.weight"] = rows(head, torch.zeros(grow, *head.shape[1:]))
    out["head.bias"] = rows(weights["head.bias"], torch.full((grow,), NEW_BIAS))  # (V,)
    if config.one_hot:
        w = weights["rnn.weight_ih_l0"]  # (G*H, V): one-hot id i selects column i
        out["rnn.weight_ih_l0"] = rows(w.t(), mean_rows(w.t())).t().contiguous()
    elif config.tie_weights:
        out["embedding.weight"] = out["head.weight"]  # one table: zero rows serve both ends
    else:
        emb = weights["embedding.weight"]  # (V, E)
        out["embedding.weight"] = rows(emb, mean_rows(emb))
    return out
