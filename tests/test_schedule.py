"""The learning-rate schedules as functions of where the run stands."""

import pytest

from charrnn.config import ConfigError, TrainConfig
from charrnn.schedule import DECAY_SHARE, lr_at


def test_cosine_warms_up_then_ends_at_the_floor():
    c = TrainConfig(max_steps=1000, lr=1e-2, warmup_steps=10, min_lr_ratio=0.05)
    assert lr_at(c, 0, 0.0) == pytest.approx(1e-3)  # first of 10 warm-up steps
    assert lr_at(c, 10, 0.0) == pytest.approx(1e-2)
    assert lr_at(c, 500, 0.5) == pytest.approx(1e-2 * (0.05 + 0.95 * 0.5))
    assert lr_at(c, 1000, 1.0) == pytest.approx(5e-4)


def test_wsd_holds_the_peak_then_decays_in_a_straight_line_to_the_floor():
    c = TrainConfig(max_steps=1000, lr=1e-2, warmup_steps=10, min_lr_ratio=0.05, schedule="wsd")
    assert lr_at(c, 0, 0.0) == pytest.approx(1e-3)
    start = 1.0 - DECAY_SHARE
    for fraction in (0.01, 0.5, start):
        assert lr_at(c, 100, fraction) == pytest.approx(1e-2)
    middle = lr_at(c, 100, start + DECAY_SHARE / 2)
    assert middle == pytest.approx(1e-2 * (0.05 + 0.95 * 0.5))
    assert lr_at(c, 100, 1.0) == pytest.approx(5e-4) == lr_at(c, 100, 1.5)
    assert lr_at(c, 100, start + 0.01) > middle > lr_at(c, 100, 1.0 - 0.01)


def test_an_unknown_schedule_is_one_sentence():
    with pytest.raises(ConfigError, match="schedule"):
        TrainConfig(max_steps=10, schedule="linear")
