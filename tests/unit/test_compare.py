"""Baseline-versus-current comparison with per-metric tolerances."""

from __future__ import annotations

import pytest

from profl_core.compare import Status, compare, failed, tolerance_for


def test_longest_prefix_tolerance_wins() -> None:
    tolerances = {"peak_bytes": 0.005, "block_peak_bytes": 0.02, "block_peak_bytes:block1": 0.1}
    assert tolerance_for("block_peak_bytes:block1:forward", tolerances, 0.0) == 0.1
    assert tolerance_for("block_peak_bytes:block2:forward", tolerances, 0.0) == 0.02
    assert tolerance_for("other", tolerances, 0.3) == 0.3


@pytest.mark.parametrize(
    ("current", "status"),
    [
        (1005.0, Status.OK),
        (1006.0, Status.REGRESSION),
        (995.0, Status.OK),
        (994.0, Status.IMPROVED),
    ],
)
def test_relative_tolerance_boundaries(current: float, status: Status) -> None:
    diffs = compare({"c": {"peak_bytes": 1000.0}}, {"c": {"peak_bytes": current}},
                    tolerances={"peak_bytes": 0.005})
    assert [d.status for d in diffs] == [status]


def test_missing_and_new_numbers() -> None:
    diffs = compare({"a": {"peak_bytes": 1.0}}, {"b": {"peak_bytes": 1.0}}, tolerances={})
    assert {(d.key, d.status) for d in diffs} == {("a", Status.MISSING), ("b", Status.NEW)}
    assert [d.key for d in failed(diffs)] == ["a"]


def test_relative_change() -> None:
    (diff,) = compare({"c": {"m": 200.0}}, {"c": {"m": 250.0}}, tolerances={})
    assert diff.relative_change == pytest.approx(0.25)
