"""Paired comparisons over seeds: the per-seed difference of two methods, the Student-t
interval and two-sided t-test of its mean, and Holm's step-down correction across tests.

One seed is the same partition, fleet draw and data order for every method, so the
difference of two methods on a seed removes what the seed adds to both. Only seeds where both
methods have a value are paired: a NaN (a diverged run) drops that seed from that pair.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from bench.stats import Verdict

#: The family-wise error rate of the corrected tests.
ALPHA = 0.05


@dataclass(frozen=True)
class PairedDifference:
    """``method - reference`` over the seeds both have.

    Attributes:
        pairs: Seeds with a value for both.
        mean: Mean per-seed difference; NaN without a pair.
        half: Half-width of its two-sided Student-t interval; NaN with fewer than 2 pairs.
        p: Two-sided p-value of the paired t-test (mean difference 0); NaN with fewer than
            2 pairs, or when every difference is 0. Differences that are all equal but not 0
            give 0 (no spread to doubt them).
    """

    pairs: int
    mean: float
    half: float
    p: float


def paired_difference(reference: Mapping[int, float], method: Mapping[int, float],
                      confidence: float = 0.95) -> PairedDifference:
    """``method - reference`` per seed (the keys), over the seeds where neither is NaN.

    With ``n`` pairs, differences ``d`` and their sample standard deviation ``s``
    (``ddof=1``): half-width ``t.ppf((1 + confidence) / 2, n - 1) * s / sqrt(n)``, statistic
    ``mean(d) / (s / sqrt(n))`` and ``p = 2 * t.sf(|statistic|, n - 1)``.
    """
    seeds = sorted(s for s in reference.keys() & method.keys()
                   if not math.isnan(reference[s]) and not math.isnan(method[s]))
    d = np.asarray([method[s] - reference[s] for s in seeds], dtype=float)
    if d.size == 0:
        return PairedDifference(pairs=0, mean=math.nan, half=math.nan, p=math.nan)
    mean = float(d.mean())
    if d.size == 1:
        return PairedDifference(pairs=1, mean=mean, half=math.nan, p=math.nan)
    error = float(d.std(ddof=1)) / math.sqrt(d.size)
    half = float(stats.t.ppf((1 + confidence) / 2, d.size - 1)) * error
    if error == 0:
        p = math.nan if mean == 0 else 0.0
    else:
        p = float(2 * stats.t.sf(abs(mean / error), d.size - 1))
    return PairedDifference(pairs=int(d.size), mean=mean, half=half, p=p)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given.

    The ``m`` finite p-values sorted ascending, ``p_(1) <= ... <= p_(m)``, are adjusted to
    ``max over j <= i of min(1, (m - j + 1) * p_(j))``; rejecting where the adjusted value is
    under ``alpha`` keeps the chance of any false rejection under ``alpha``. A NaN (no test)
    stays NaN and does not count in ``m``.
    """
    order = sorted((i for i, p in enumerate(p_values) if not math.isnan(p)),
                   key=lambda i: p_values[i])
    adjusted = [math.nan] * len(p_values)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(order) - rank) * p_values[i]))
        adjusted[i] = running
    return adjusted


def paired_verdict(difference: PairedDifference, p_adjusted: float,
                   alpha: float = ALPHA) -> Verdict:
    """``better``/``worse`` (the sign of the mean difference) when the corrected test rejects
    a zero mean difference (``p_adjusted < alpha``); ``~`` otherwise, and without a test."""
    if math.isnan(p_adjusted) or p_adjusted >= alpha:
        return "~"
    return "better" if difference.mean > 0 else "worse"
