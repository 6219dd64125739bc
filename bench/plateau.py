"""The plateau oracle: the round at which a step's own test accuracy stops improving.

A ProFL step (a growing step, or a basic-layer fit) run well past its end gives its test
accuracy ``a_1 .. a_N`` after rounds ``1 .. N`` of the step. The oracle's rule:

1. smooth the curve with a centred moving average over ``smooth`` rounds (shorter at the ends);
2. the step's *start* is the smoothed value at round 1, its *level* the median of the smoothed
   values over the last quarter of the rounds (robust to the oscillation of non-IID FL);
3. the *plateau round* is the first round whose smoothed value reaches ``fraction`` (90%) of
   the way from the start to the level.

A step whose level is less than ``min_gain`` above its start (1 point) learned nothing worth
waiting for: its plateau round is 1. The rule needs the step run long enough that its last
quarter lies on the plateau (the study runs each step 4x its budget in a suite).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from profl_core.errors import ConfigError

#: The oracle's defaults: smoothing window (rounds), share of the gain, least gain that counts.
SMOOTH_ROUNDS, PLATEAU_FRACTION, MIN_GAIN = 5, 0.9, 0.01


def smoothed(values: Sequence[float], window: int = SMOOTH_ROUNDS) -> np.ndarray:
    """Centred moving average over ``window`` values (fewer at the ends)."""
    y = np.asarray(values, dtype=np.float64)
    if window < 1:
        raise ConfigError(f"plateau: smooth={window}; use 1 or more")
    half = window // 2
    return np.array([y[max(0, i - half): i + half + 1].mean() for i in range(y.size)])


def plateau_round(
    values: Sequence[float], *, smooth: int = SMOOTH_ROUNDS, fraction: float = PLATEAU_FRACTION,
    min_gain: float = MIN_GAIN,
) -> int:
    """The 1-based round of ``values`` (one per round of the step) at which the step has made
    ``fraction`` of its gain (module docstring).

    Raises:
        ConfigError: Fewer than 4 values, a NaN, or ``fraction`` outside (0, 1].
    """
    y = np.asarray(values, dtype=np.float64)
    if y.ndim != 1 or y.size < 4:
        raise ConfigError(f"plateau: {y.size} values; a step needs at least 4 rounds")
    if not np.isfinite(y).all():
        raise ConfigError("plateau: a value is NaN or infinite; the step diverged")
    if not 0 < fraction <= 1:
        raise ConfigError(f"plateau: fraction={fraction}; use a share in (0, 1]")
    s = smoothed(y, smooth)
    start = float(s[0])
    level = float(np.median(s[-max(1, y.size // 4):]))
    if level - start < min_gain:
        return 1
    reached = np.flatnonzero(s >= start + fraction * (level - start))
    return int(reached[0]) + 1
