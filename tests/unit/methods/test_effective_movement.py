"""Effective movement and the freeze rule on constructed trajectories."""

import numpy as np
import pytest

from profl_core.errors import ConfigError
from profl_core.methods.effective_movement import (
    FreezeRule,
    effective_movement,
    em_series,
    fitted_change,
    sample_indices,
    should_freeze,
)
from profl_core.methods.profl import ProFLConfig


def test_straight_line_gives_one() -> None:
    """Every scalar moving steadily in one direction: net displacement == path length."""
    # Prepare
    trajectory = np.arange(11, dtype=np.float64)[:, None] * np.array([1.0, -2.0, 0.5])
    # Execute
    em = effective_movement(trajectory, window=6)
    # Assert
    assert em == 1.0


def test_pure_oscillation_gives_zero_for_even_window() -> None:
    """+a, -a, +a, ... returns to the start after an even number of steps: EM is exactly 0."""
    # Prepare
    a = np.array([0.3, -1.5, 2.0])
    trajectory = np.array([a * (i % 2) for i in range(21)])
    # Execute / Assert
    assert effective_movement(trajectory, window=20) == 0.0
    assert effective_movement(trajectory, window=6) == 0.0
    assert effective_movement(trajectory, window=5) == pytest.approx(1 / 5)


def test_no_movement_is_zero_and_short_trajectory_raises() -> None:
    """0/0 is defined as 0; fewer than window+1 rows is an error."""
    assert effective_movement(np.ones((5, 3)), window=4) == 0.0
    with pytest.raises(ConfigError, match="window=4 needs 5"):
        effective_movement(np.ones((4, 3)), window=4)


def test_em_series_has_one_value_per_full_window() -> None:
    """Rows window .. n-1 each get a value."""
    trajectory = np.arange(10, dtype=np.float64)[:, None]
    values = em_series(trajectory, window=3)
    assert values.shape == (7,)
    assert np.all(values == 1.0)


def test_sample_indices_fixed_size_distinct_sorted() -> None:
    """k distinct sorted indices; all of them when there are fewer scalars than k."""
    rng = np.random.default_rng(0)
    idx = sample_indices(50_000, 10_000, rng=rng)
    assert idx.shape == (10_000,)
    assert np.all(np.diff(idx) > 0)
    assert idx[0] >= 0
    assert idx[-1] < 50_000
    assert np.array_equal(sample_indices(7, 10_000, rng=rng), np.arange(7))


def test_fitted_change_of_a_line() -> None:
    """The least-squares change over the span of an exact line is its rise."""
    assert fitted_change(np.linspace(1.0, 0.3, 15)) == pytest.approx(-0.7)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (np.full(15, 0.1), True),  # flat and low: converged
        (np.full(15, 0.9), False),  # flat but high: steady drift, keep training
        (np.linspace(0.9, 0.1, 15), False),  # falling fast: change 0.8 >= 0.2
        (np.linspace(0.3, 0.2, 15), True),  # change 0.1 < 0.2, mean 0.25 < 0.5
        (np.full(14, 0.1), False),  # fewer than evaluation_number values
        (np.r_[np.full(10, 0.9), np.full(15, 0.1)], True),  # only the last 15 count
    ],
)
def test_should_freeze_on_constructed_series(values: np.ndarray, expected: bool) -> None:
    """The documented rule: |fitted change| < 0.2 and mean EM < 0.5 over the last 15."""
    assert should_freeze(values, evaluation_number=15, slope_threshold=0.2) is expected


def test_freeze_rule_respects_min_and_max_rounds() -> None:
    """max_rounds ends a step whatever EM says ("cap"); min_rounds delays a converged one."""
    a = np.array([1.0, -1.0])
    oscillating = np.array([a * (i % 2) for i in range(8)])  # EM 0 everywhere (window 2)
    rule = FreezeRule(window=2, evaluation_number=3, min_rounds=1)
    assert rule.decide(oscillating, rounds_done=7, max_rounds=100) == "em"
    delayed = FreezeRule(window=2, evaluation_number=3, min_rounds=9)
    assert delayed.decide(oscillating, rounds_done=7, max_rounds=100) is None
    line = np.arange(8, dtype=np.float64)[:, None]
    assert rule.decide(line, rounds_done=7, max_rounds=100) is None
    assert rule.decide(line, rounds_done=7, max_rounds=7) == "cap"


def _walk(drift: float, rounds: int, seed: int = 0) -> np.ndarray:
    """``rounds + 1`` rows of 500 scalars: per round ``drift`` plus unit Gaussian noise."""
    steps = drift + np.random.default_rng(seed).standard_normal((rounds, 500))
    return np.vstack([np.zeros((1, 500)), np.cumsum(steps, axis=0)])


def test_default_rule_keeps_a_moving_block_and_freezes_an_oscillating_one() -> None:
    """ProFL's calibrated rule (H = 4, 8 values, change < 0.03, level 1.5/sqrt(4) = 0.75): a
    block still moving (drift 1 per round under unit noise: EM ~0.86) is never frozen in 120
    rounds; a driftless walk (EM ~1/sqrt(4) = 0.5) is frozen at the rule's earliest round,
    4 + 8 - 1 = 11. The level 0.5 of the first reading froze a moving block at drift 0.3."""
    rule = ProFLConfig(rounds=1).freeze_rule()
    old = FreezeRule(em_level=0.5)
    moving, still, slow = _walk(1.0, 120), _walk(0.0, 120), _walk(0.3, 120)

    def first_end(rule: FreezeRule, traj: np.ndarray) -> int | None:
        return next((r for r in range(1, 121) if rule.decide(traj[: r + 1], r, 10_000)), None)

    assert rule.em_level == pytest.approx(1.5 / np.sqrt(4))
    assert rule.rounds_needed() == 11
    assert first_end(rule, moving) is None
    assert first_end(rule, still) == 11
    assert first_end(old, slow) == old.rounds_needed()
