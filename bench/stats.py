"""Means with Student-t confidence intervals over seeds and their rendering; comparisons
are paired (:mod:`bench.paired`), and :data:`Verdict` is what they say.

An interval is ``(mean, half_width)``: the mean of a metric over a suite's seeds and the
half-width of its two-sided Student-t confidence interval. A half-width is NaN when one seed
gives no spread; a mean is NaN when no seed gave a value (every run diverged).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Literal

import numpy as np
from scipy import stats

Interval = tuple[float, float]
#: A comparison's answer: ``better``/``worse`` when a test says so, ``~`` when it cannot tell.
Verdict = Literal["better", "worse", "~"]


def t_interval(values: Iterable[float], confidence: float = 0.95) -> Interval:
    """``(mean, half-width)`` of the two-sided Student-t interval of the mean of ``values``.

    NaN values (a diverged run, a target never reached) are left out. The half-width is
    ``t.ppf((1 + confidence) / 2, n - 1) * s / sqrt(n)`` with the sample standard deviation
    ``s`` (``ddof=1``); it is NaN for one value; both are NaN for no value.
    """
    data = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if data.size == 0:
        return math.nan, math.nan
    mean = float(data.mean())
    if data.size == 1:
        return mean, math.nan
    quantile = float(stats.t.ppf((1 + confidence) / 2, data.size - 1))
    return mean, quantile * float(data.std(ddof=1)) / math.sqrt(data.size)


def format_interval(interval: Interval, digits: int = 1) -> str:
    """``"76.3 ± 1.2"``; the mean alone for one seed (``"76.3"``); ``"-"`` for no value."""
    mean, half = interval
    if math.isnan(mean):
        return "-"
    if math.isnan(half):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {half:.{digits}f}"
