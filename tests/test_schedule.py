"""The learning-rate schedules as functions of where the run stands."""

import pytest

from charrnn.config import TrainConfig
from charrnn.training.schedule import lr_at


def test_cosine_warms_up_then_ends_at_the_floor():
    c = TrainConfig(max_steps=1000, lr=1e-2, warmup_steps=10, min_lr_ratio=0.05)
    assert lr_at(c, 0, 0.0) == pytest.approx(1e-3)  # first of 10 warm-up steps
    assert lr_at(c, 10, 0.0) == pytest.approx(1e-2)
    assert lr_at(c, 500, 0.5) == pytest.approx(1e-2 * (0.05 + 0.95 * 0.5))
    assert lr_at(c, 1000, 1.0) == pytest.approx(5e-4)
