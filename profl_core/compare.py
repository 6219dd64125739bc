"""Baseline-versus-current checks with a tolerance per metric (DESIGN §5).

Numbers are compared by ``(key, metric)``. A metric's tolerance is the relative increase it may
show before it counts as a regression; the longest matching metric prefix wins, so
``{"peak_bytes": 0.005, "block_peak_bytes": 0.01}`` gives every ``block_peak_bytes:*`` metric
1%. Decreases beyond the tolerance are reported as improvements (the baseline should be updated
deliberately), never as failures.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

Values = Mapping[str, Mapping[str, float]]
"""``{case key: {metric: value}}``."""


class Status(StrEnum):
    """Outcome of one comparison."""

    OK = "ok"
    REGRESSION = "regression"
    IMPROVED = "improved"
    MISSING = "missing"
    NEW = "new"


FAILING = frozenset({Status.REGRESSION, Status.MISSING})


@dataclass(frozen=True)
class Diff:
    """One compared number."""

    key: str
    metric: str
    baseline: float | None
    current: float | None
    tolerance: float
    status: Status

    @property
    def relative_change(self) -> float | None:
        """``current / baseline - 1``, or ``None`` when either side is missing or zero."""
        if not self.baseline or self.current is None:
            return None
        return self.current / self.baseline - 1.0


def tolerance_for(metric: str, tolerances: Mapping[str, float], default: float) -> float:
    """The tolerance of the longest key of ``tolerances`` that prefixes ``metric``."""
    best, best_len = default, -1
    for prefix, tol in tolerances.items():
        if metric.startswith(prefix) and len(prefix) > best_len:
            best, best_len = tol, len(prefix)
    return best


def compare(
    baseline: Values,
    current: Values,
    *,
    tolerances: Mapping[str, float],
    default_tolerance: float = 0.005,
) -> list[Diff]:
    """Compare every baseline number with the current one; list new numbers too."""
    diffs: list[Diff] = []
    for key in sorted(set(baseline) | set(current)):
        base_metrics, cur_metrics = baseline.get(key, {}), current.get(key, {})
        for metric in sorted(set(base_metrics) | set(cur_metrics)):
            tol = tolerance_for(metric, tolerances, default_tolerance)
            base, cur = base_metrics.get(metric), cur_metrics.get(metric)
            if base is None:
                status = Status.NEW
            elif cur is None:
                status = Status.MISSING
            elif cur - base > tol * base:
                status = Status.REGRESSION
            elif base - cur > tol * base:
                status = Status.IMPROVED
            else:
                status = Status.OK
            diffs.append(Diff(key, metric, base, cur, tol, status))
    return diffs


def failed(diffs: list[Diff]) -> list[Diff]:
    """The diffs that fail a gate: regressions and numbers missing from the current run."""
    return [d for d in diffs if d.status in FAILING]
