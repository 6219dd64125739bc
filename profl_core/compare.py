"""Baseline-versus-current checks with a tolerance per metric (DESIGN §5).

Numbers are compared by ``(key, metric)``. A metric's tolerance is the relative increase it may
show before it counts as a regression; the longest matching metric prefix wins, so
``{"peak_bytes": 0.005, "block_peak_bytes": 0.01}`` gives every ``block_peak_bytes:*`` metric
1%. Decreases beyond the tolerance are reported as improvements (the baseline should be updated
deliberately), never as failures.

:func:`compare_cases` adds asv's rule for cases whose definition changed: each case carries a
definition hash (what was measured, not the code that measured it); a case whose hash differs
from the baseline's is **not comparable**: its numbers are not compared, it neither passes nor
fails, and the baseline needs a deliberate refresh. Cases only in the current run are ``new``
(nothing to compare, not failing); cases only in the baseline are ``missing`` (failing: the
run no longer produces numbers the baseline holds).
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
    NOT_COMPARABLE = "not comparable"


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


#: The metric name of a diff about a whole case (new, missing or not comparable).
CASE_METRIC = "(case)"


def compare_cases(
    baseline: Values,
    current: Values,
    *,
    baseline_definitions: Mapping[str, str],
    current_definitions: Mapping[str, str],
    tolerances: Mapping[str, float],
    default_tolerance: float = 0.005,
) -> list[Diff]:
    """Compare case by case: the numbers of cases whose definition hash is the baseline's,
    one :data:`CASE_METRIC` diff for each case that is new, missing or not comparable.

    A case's definition is looked up in ``baseline_definitions`` / ``current_definitions`` by
    its key; a case absent from its side's definitions counts as a changed definition.
    """
    diffs: list[Diff] = []
    for key in sorted(set(baseline) | set(current)):
        if key not in current:
            status: Status | None = Status.MISSING
        elif key not in baseline:
            status = Status.NEW
        elif (key not in baseline_definitions
              or baseline_definitions.get(key) != current_definitions.get(key)):
            status = Status.NOT_COMPARABLE
        else:
            status = None
        if status is None:
            diffs += compare({key: baseline[key]}, {key: current[key]}, tolerances=tolerances,
                             default_tolerance=default_tolerance)
        else:
            diffs.append(Diff(key, CASE_METRIC, None, None, 0.0, status))
    return diffs


def failed(diffs: list[Diff]) -> list[Diff]:
    """The diffs that fail a gate: regressions and numbers missing from the current run."""
    return [d for d in diffs if d.status in FAILING]
