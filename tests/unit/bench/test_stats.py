"""Student-t intervals over seeds and their rendering, against hand computation."""

from __future__ import annotations

import math

import pytest
from bench_fixtures import T975

from bench.stats import format_interval, t_interval


def test_t_interval_of_three_values_is_the_hand_computed_one() -> None:
    """[0.70, 0.74, 0.78]: mean 0.74, sample std 0.04, half = t(0.975, 2) * 0.04 / sqrt(3)."""
    mean, half = t_interval([0.70, 0.74, 0.78])
    assert mean == pytest.approx(0.74)
    assert half == pytest.approx(T975[2] * 0.04 / math.sqrt(3))


def test_t_interval_of_two_and_five_values() -> None:
    """n = 2 (df 1) and n = 5 (df 4), each against its table quantile."""
    _, half_two = t_interval([0.80, 0.81])
    assert half_two == pytest.approx(T975[1] * math.sqrt(0.00005) / math.sqrt(2))
    values = [1.0, 2.0, 3.0, 4.0, 5.0]  # sample variance 2.5
    _, half_five = t_interval(values)
    assert half_five == pytest.approx(T975[4] * math.sqrt(2.5) / math.sqrt(5))


def test_t_interval_confidence_sets_the_quantile() -> None:
    """90%: t(0.95, 2) = 2.919985580353725 from the table."""
    _, half = t_interval([0.70, 0.74, 0.78], confidence=0.90)
    assert half == pytest.approx(2.919985580353725 * 0.04 / math.sqrt(3))


def test_one_value_has_a_nan_half_width() -> None:
    mean, half = t_interval([0.5])
    assert mean == 0.5
    assert math.isnan(half)


def test_no_value_is_nan_nan() -> None:
    mean, half = t_interval([])
    assert math.isnan(mean)
    assert math.isnan(half)


def test_nan_values_are_left_out() -> None:
    """A diverged seed (NaN) counts as no value: same interval as without it."""
    assert t_interval([0.70, math.nan, 0.74, 0.78]) == t_interval([0.70, 0.74, 0.78])


@pytest.mark.parametrize(
    ("interval", "expected"),
    [
        ((76.34, 1.23), "76.3 ± 1.2"),
        ((76.34, math.nan), "76.3"),
        ((math.nan, math.nan), "-"),
    ],
)
def test_format_interval(interval: tuple[float, float], expected: str) -> None:
    assert format_interval(interval) == expected
