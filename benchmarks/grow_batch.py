"""Prototype of a batch that grows during a run, for `benchmarks/quality.py --prelude`.

    python benchmarks/quality.py --time 10m --prelude "import grow_batch; grow_batch.install()"
    python benchmarks/quality.py --time 10m --prelude "import grow_batch; grow_batch.install(((0, 8), (0.5, 16)))"

Small batches early make many cheap steps while the gradient is large and coherent; larger
ones late average more text per step while the learning rate decays. `install(schedule)`
patches `Trainer._train_step` so that the batch is, from each fraction of the budget on,
the size the schedule gives. At a change the training text is laid out again as that many
streams, training continues at the same fraction of a pass, and the carried state starts
from zero (the streams are other stretches of text now). Not resumable: a measurement,
not a feature; it becomes one only if it wins.
"""

from __future__ import annotations

from charrnn import trainer as tr
from charrnn.data import as_streams

SCHEDULE = ((0.0, 8), (1 / 3, 16), (2 / 3, 32))  # (from this fraction of the budget on, batch)


def _relayout(trainer: tr.Trainer, batch: int) -> None:
    flat = trainer.train_streams.reshape(-1).cpu().numpy()  # the text the streams hold, in order
    before = trainer.windows_per_epoch
    trainer.train_streams = as_streams(flat, batch).to(trainer.device)  # (B, L)
    trainer.local_batch = batch
    trainer.state = trainer.model.init_state(batch, trainer.device)
    p = trainer.progress
    p.window = min(round(p.window * trainer.windows_per_epoch / before), trainer.windows_per_epoch - 1)


def install(schedule=SCHEDULE) -> None:
    original = tr.Trainer._train_step

    def _train_step(self, lr, sums):
        fraction = self.fraction(self.progress.elapsed)
        batch = [b for start, b in schedule if fraction >= start][-1]
        if batch != self.train_streams.size(0):
            _relayout(self, batch)
        return original(self, lr, sums)

    tr.Trainer._train_step = _train_step
