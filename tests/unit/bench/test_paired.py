"""Paired differences over seeds against scipy, and Holm's step-down against hand computation."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from bench.paired import PairedDifference, holm, paired_difference, paired_verdict
from bench.stats import t_interval

#: Hand-made finals (%) of a reference over 5 seeds, 5 points apart from seed to seed.
REFERENCE = {0: 70.0, 1: 75.0, 2: 80.0, 3: 65.0, 4: 72.0}
#: The reference plus about 2 points on every seed.
STEADY = {0: 72.3, 1: 76.8, 2: 82.1, 3: 66.7, 4: 74.1}
#: The reference plus +4, -3, +5, -4, +3: one point better on average, not consistently.
SWINGING = {0: 74.0, 1: 72.0, 2: 85.0, 3: 61.0, 4: 75.0}


def _scipy(reference: dict[int, float], method: dict[int, float],
           seeds: list[int]) -> tuple[float, float, float]:
    """Mean, 95% half-width and p of ``method - reference`` over ``seeds``, from scipy."""
    a = [method[s] for s in seeds]
    b = [reference[s] for s in seeds]
    diff = [x - y for x, y in zip(a, b, strict=True)]
    n = len(diff)
    half = stats.t.ppf(0.975, n - 1) * stats.tstd(diff) / math.sqrt(n)
    return sum(diff) / n, float(half), float(stats.ttest_rel(a, b).pvalue)


def test_paired_difference_mean_interval_and_p_are_scipys() -> None:
    mean, half, p = _scipy(REFERENCE, STEADY, [0, 1, 2, 3, 4])
    found = paired_difference(REFERENCE, STEADY)
    assert found.pairs == 5
    assert found.mean == pytest.approx(mean)
    assert found.half == pytest.approx(half)
    assert found.p == pytest.approx(p)


def test_the_difference_is_method_minus_reference() -> None:
    """STEADY is 2.0 points above REFERENCE on average: +2.0 one way, -2.0 the other."""
    assert paired_difference(REFERENCE, STEADY).mean == pytest.approx(2.0)
    assert paired_difference(STEADY, REFERENCE).mean == pytest.approx(-2.0)


def test_a_nan_seed_is_dropped_from_the_pair() -> None:
    """Seed 1 diverged for the method: the pair is seeds 0, 2, 3, 4, as scipy on those."""
    method = {**SWINGING, 1: math.nan}
    mean, half, p = _scipy(REFERENCE, SWINGING, [0, 2, 3, 4])
    found = paired_difference(REFERENCE, method)
    assert found.pairs == 4
    assert found.mean == pytest.approx(mean)
    assert found.half == pytest.approx(half)
    assert found.p == pytest.approx(p)


def test_a_seed_only_one_side_has_is_not_paired() -> None:
    """The reference ran seeds 0-4, the method 0-2 and 9: pairs are seeds 0-2."""
    method = {0: 72.3, 1: 76.8, 2: 82.1, 9: 10.0}
    mean, _, p = _scipy(REFERENCE, method, [0, 1, 2])
    found = paired_difference(REFERENCE, method)
    assert found.pairs == 3
    assert found.mean == pytest.approx(mean)
    assert found.p == pytest.approx(p)


def test_one_pair_has_a_mean_but_no_interval_or_test() -> None:
    found = paired_difference({0: 70.0, 1: math.nan}, {0: 72.0, 1: 80.0})
    assert found.pairs == 1
    assert found.mean == pytest.approx(2.0)
    assert math.isnan(found.half)
    assert math.isnan(found.p)


def test_no_pair_is_all_nan() -> None:
    found = paired_difference({0: math.nan}, {0: 72.0})
    assert found.pairs == 0
    assert math.isnan(found.mean)
    assert math.isnan(found.p)


def test_equal_nonzero_differences_have_p_zero_as_in_scipy() -> None:
    """Every seed exactly 2 points up: no spread, t infinite; scipy's p is 0 too (with a
    warning about the zero spread)."""
    reference, method = {0: 70.0, 1: 75.0, 2: 80.0}, {0: 72.0, 1: 77.0, 2: 82.0}
    with pytest.warns(RuntimeWarning):
        oracle = float(stats.ttest_rel([72.0, 77.0, 82.0], [70.0, 75.0, 80.0]).pvalue)
    assert oracle == 0.0
    assert paired_difference(reference, method).p == 0.0


def test_identical_results_have_no_test() -> None:
    """Every difference 0: scipy's p is NaN (0/0); so is ours."""
    values = list(REFERENCE.values())
    assert math.isnan(float(stats.ttest_rel(values, values).pvalue))
    assert math.isnan(paired_difference(REFERENCE, dict(REFERENCE)).p)


def test_holm_against_hand_computation() -> None:
    """p = 0.01, 0.04, 0.03, 0.005 (m = 4). Sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03;
    0.03 x 2 = 0.06; 0.04 x 1 = 0.04, raised to the running maximum 0.06."""
    adjusted = holm([0.01, 0.04, 0.03, 0.005])
    assert adjusted[0] == pytest.approx(0.03)
    assert adjusted[1] == pytest.approx(0.06)
    assert adjusted[2] == pytest.approx(0.06)
    assert adjusted[3] == pytest.approx(0.02)


def test_holm_caps_at_one() -> None:
    """0.6 x 2 = 1.2 -> 1; 0.7 x 1 = 0.7, raised to 1."""
    assert holm([0.6, 0.7]) == [1.0, 1.0]


def test_holm_leaves_nan_out_of_the_count() -> None:
    """A NaN (no test) stays NaN, and m is 2: 0.01 x 2 = 0.02, 0.04 x 1 = 0.04."""
    adjusted = holm([0.01, math.nan, 0.04])
    assert adjusted[0] == pytest.approx(0.02)
    assert math.isnan(adjusted[1])
    assert adjusted[2] == pytest.approx(0.04)


def test_holm_of_one_test_is_its_p() -> None:
    assert holm([0.03]) == [0.03]


def test_two_points_better_on_every_seed_is_called_better() -> None:
    """5 seeds 5 points apart, the method 2 points up on each: the unpaired intervals
    overlap, the paired test (Holm over this and SWINGING's) says better."""
    reference_mean, reference_half = t_interval(REFERENCE.values())
    steady_mean, steady_half = t_interval(STEADY.values())
    assert steady_mean - steady_half < reference_mean + reference_half  # unpaired: overlap
    steady = paired_difference(REFERENCE, STEADY)
    swinging = paired_difference(REFERENCE, SWINGING)
    p_steady, _ = holm([steady.p, swinging.p])
    assert paired_verdict(steady, p_steady) == "better"


def test_one_point_better_on_average_but_not_consistently_is_undecided() -> None:
    steady = paired_difference(REFERENCE, STEADY)
    swinging = paired_difference(REFERENCE, SWINGING)
    _, p_swinging = holm([steady.p, swinging.p])
    assert swinging.mean == pytest.approx(1.0)
    assert paired_verdict(swinging, p_swinging) == "~"


def test_two_points_worse_on_every_seed_is_called_worse() -> None:
    worse = paired_difference(STEADY, REFERENCE)
    assert paired_verdict(worse, holm([worse.p])[0]) == "worse"


@pytest.mark.parametrize("p_adjusted", [0.05, 0.2, math.nan])
def test_no_verdict_at_or_above_alpha_or_without_a_test(p_adjusted: float) -> None:
    difference = PairedDifference(pairs=3, mean=5.0, half=1.0, p=0.01)
    assert paired_verdict(difference, p_adjusted) == "~"
