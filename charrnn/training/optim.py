"""How the weights are updated: AdamW, or Muon for the recurrent matrices.

The trainer asks `build` for its optimizer and the sizing rule asks it too, so that the
widths are timed with the update the run will make (Muon's costs a measurable share of a
step on a CPU).

Muon (K. Jordan et al., 2024) updates a weight matrix with its orthogonalised momentum:
the momentum M of the gradients, M = U S V^T, is replaced by about U V^T, so that every
direction of the matrix moves by a similar amount instead of the few that dominate the
gradient. Here it updates the recurrent layers' hidden-to-hidden matrices (the gates
stacked, (G*H, H)); the input matrices, the embedding table, the biases and the output
head keep AdamW. Its step is scaled by 0.2 * sqrt(max(rows, cols)), so that its RMS
matches a typical AdamW step (Moonshot AI's "match RMS" rule): both parts then share the
run's learning rate, weight decay and schedule.

On Tiny Shakespeare (2 x 512 LSTM, 10 minutes on the 2-core CPU) Muon on every LSTM matrix
reached after 400 steps the validation loss AdamW reached after 800, but its update made
every step 1.3-1.9 times as long and at equal time it only tied AdamW; on the recurrent
matrices alone a step costs about 1.1 times AdamW's and it won, 1.4249 against 1.4424
nats/char at lr 5e-3 (docs/benchmarks.md). It is the LSTM's default update
(`sizing.choose_update`).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..config import TrainConfig

# The quintic of the Muon write-up, x <- a x + b x^3 + c x^5 on each singular value: steep at
# zero, so that five applications bring every non-negligible singular value into about
# [0.7, 1.2] without converging all the way to 1.
QUINTIC = (3.4445, -4.7750, 2.0315)
QUINTIC_STEPS = 5
BETAS = (0.9, 0.99)  # AdamW's, for every AdamW-updated weight
MOMENTUM = 0.95  # Muon's (Nesterov)
# What Muon updates: the recurrent (hidden-to-hidden) matrices. With the input matrices as
# well (a third more orthogonalisation per step on a 2 x 512 LSTM) it tied AdamW at equal
# time on the 2-core CPU (1.4462 against 1.4459); with these alone it won (1.4249 against
# 1.4424), docs/benchmarks.md. The recurrent matrices are where the gradient's few large
# directions hurt most: every step of the sequence multiplies by them.
MUON_MATRICES = ("rnn.weight_hh",)


def orthogonalise(g: torch.Tensor, steps: int = QUINTIC_STEPS) -> torch.Tensor:
    """About U V^T of a matrix g = U S V^T: Muon's Newton-Schulz map, computed through the
    singular values.

    Each Newton-Schulz iteration x <- (a + b xx^T + c (xx^T)^2) x changes every singular value
    s of x to a s + b s^3 + c s^5 and leaves the singular vectors alone. So one
    eigendecomposition of the small Gram matrix xx^T = V diag(s^2) V^T gives the result of
    `steps` iterations as V diag(f(s) / s) V^T x: two (small x large) products and one
    small `eigh`, instead of three products per iteration. For the four matrices of a
    2 x 512 LSTM on the 2-core CPU: 0.14 s against 0.53 s for five iterations
    (benchmarks/muon.py, kept in the history: `git show da091b9:benchmarks/muon.py`).
    """
    a, b, c = QUINTIC
    wide = g.size(0) <= g.size(1)
    x = g if wide else g.T  # (small, large)
    x = x.float() / (x.norm() + 1e-7)  # every singular value <= 1, as the iteration expects
    gram = x @ x.T  # (small, small), symmetric positive semi-definite
    try:
        lam, v = torch.linalg.eigh(gram)
    except RuntimeError:  # float32 eigh did not converge: float64 does on what float32 cannot
        lam, v = (t.float() for t in torch.linalg.eigh(gram.double()))
    s0 = lam.clamp(min=0).sqrt()
    s = s0
    for _ in range(steps):
        s = a * s + b * s**3 + c * s**5
    gain = torch.where(s0 > 1e-6, s / s0.clamp(min=1e-6), torch.full_like(s0, a**steps))  # f(s)/s; a^steps at 0
    out = ((v * gain) @ v.T) @ x  # (small, large)
    return out if wide else out.T


class Muon(torch.optim.Optimizer):
    """Muon for the parameter groups marked `muon`, AdamW for the others.

    One optimizer rather than two, so that the trainer's schedule (it sets `lr` in every
    group), its checkpoints (`state_dict`) and its skipping of non-finite steps treat it
    like AdamW. Not fused: the trainer skips a bad step itself."""

    def __init__(self, groups, lr: float, momentum: float = MOMENTUM, betas=BETAS, eps: float = 1e-8):
        super().__init__(groups, dict(lr=lr, weight_decay=0.0, muon=False, momentum=momentum, betas=betas, eps=eps))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g, state = p.grad, self.state[p]
                if wd:
                    p.mul_(1 - lr * wd)  # decoupled weight decay, as AdamW
                if group["muon"]:
                    m = state.setdefault("momentum_buffer", torch.zeros_like(p))
                    m.mul_(group["momentum"]).add_(g)
                    update = g.add(m, alpha=group["momentum"])  # Nesterov
                    p.add_(orthogonalise(update).to(p.dtype), alpha=-lr * 0.2 * math.sqrt(max(p.shape)))
                else:
                    b1, b2 = group["betas"]
                    state["step"] = t = state.get("step", 0) + 1
                    m = state.setdefault("exp_avg", torch.zeros_like(p))
                    v = state.setdefault("exp_avg_sq", torch.zeros_like(p))
                    m.lerp_(g, 1 - b1)
                    v.mul_(b2).addcmul_(g, g, value=1 - b2)
                    denom = (v / (1 - b2**t)).sqrt_().add_(group["eps"])
                    p.addcdiv_(m, denom, value=-lr / (1 - b1**t))


def build(model: nn.Module, config: TrainConfig) -> tuple[torch.optim.Optimizer, bool]:
    """The run's optimizer and whether it is fused (a fused AdamW reads `found_inf` and
    skips a non-finite update on the device itself). Weight decay applies to matrices
    only: the biases and the embedding table are left alone."""
    matrices, decay, no_decay = [], [], []
    for name, p in model.named_parameters():
        if config.optimizer == "muon" and name.startswith(MUON_MATRICES):
            matrices.append(p)
        elif p.dim() >= 2 and not name.startswith("embedding"):
            decay.append(p)
        else:
            no_decay.append(p)
    groups = [{"params": decay, "weight_decay": config.weight_decay},
              {"params": no_decay, "weight_decay": 0.0}]
    if config.optimizer == "muon":
        return Muon([{"params": matrices, "weight_decay": config.weight_decay, "muon": True}, *groups], lr=config.lr), False
    try:
        return torch.optim.AdamW(groups, lr=config.lr, betas=BETAS, fused=True), True
    except (RuntimeError, ValueError):
        return torch.optim.AdamW(groups, lr=config.lr, betas=BETAS), False
