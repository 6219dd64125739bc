"""The plateau oracle (bench/plateau.py) on constructed accuracy curves with a known plateau."""

from __future__ import annotations

import numpy as np
import pytest

from bench.plateau import plateau_round, smoothed
from profl_core.errors import ConfigError


def ramp_then_flat(rise: int, total: int, start: float = 0.2, level: float = 0.8) -> np.ndarray:
    """Accuracy rising linearly over rounds 1..rise, then flat at ``level`` up to ``total``."""
    r = np.arange(1, total + 1, dtype=float)
    return np.where(r <= rise, start + (level - start) * (r - 1) / (rise - 1), level)


def test_unsmoothed_ramp_reaches_ninety_percent_at_the_hand_computed_round() -> None:
    # 0.2 + 0.6 (r - 1) / 19 >= 0.2 + 0.9 * 0.6  <=>  r - 1 >= 17.1  <=>  r = 19
    assert plateau_round(ramp_then_flat(20, 80), smooth=1) == 19


def test_smoothing_moves_the_plateau_by_at_most_one_round_on_a_ramp() -> None:
    assert abs(plateau_round(ramp_then_flat(20, 80)) - 19) <= 1


def test_noise_does_not_move_the_plateau_far() -> None:
    rng = np.random.default_rng(0)
    noisy = ramp_then_flat(30, 120) + rng.normal(0, 0.02, 120)
    assert abs(plateau_round(noisy) - 28) <= 3


def test_a_step_that_learns_nothing_plateaus_at_round_one() -> None:
    rng = np.random.default_rng(1)
    flat = 0.7 + rng.normal(0, 0.003, 60)
    assert plateau_round(flat) == 1


def test_a_later_plateau_is_found_later() -> None:
    assert plateau_round(ramp_then_flat(40, 160), smooth=1) > plateau_round(
        ramp_then_flat(20, 160), smooth=1)


def test_smoothed_is_a_centred_mean_shorter_at_the_ends() -> None:
    s = smoothed([0.0, 3.0, 6.0, 9.0], window=3)
    assert s[0] == pytest.approx(1.5)
    assert s[1] == pytest.approx(3.0)
    assert s[3] == pytest.approx(7.5)


@pytest.mark.parametrize("values", [[0.1, 0.2, 0.3], [0.1, float("nan"), 0.3, 0.4, 0.5]])
def test_too_short_or_diverged_steps_are_refused(values: list[float]) -> None:
    with pytest.raises(ConfigError):
        plateau_round(values)
