"""Case-level comparison: asv's rule for changed definitions, new and missing cases."""

from __future__ import annotations

from profl_core.compare import CASE_METRIC, Status, compare_cases, failed

BASE = {"a": {"peak_bytes": 1000.0}, "b": {"peak_bytes": 1000.0}}
DEFS = {"a": "h-a", "b": "h-b"}


def _statuses(
    current: dict[str, dict[str, float]], definitions: dict[str, str]
) -> dict[tuple[str, str], Status]:
    diffs = compare_cases(BASE, current, baseline_definitions=DEFS,
                          current_definitions=definitions, tolerances={"peak_bytes": 0.005})
    return {(d.key, d.metric): d.status for d in diffs}


def test_same_definition_compares_the_numbers() -> None:
    statuses = _statuses({"a": {"peak_bytes": 1100.0}, "b": {"peak_bytes": 1000.0}}, DEFS)
    assert statuses[("a", "peak_bytes")] == Status.REGRESSION


def test_changed_definition_is_not_comparable() -> None:
    statuses = _statuses({"a": {"peak_bytes": 1100.0}, "b": {"peak_bytes": 1000.0}},
                         {"a": "changed", "b": "h-b"})
    assert statuses[("a", CASE_METRIC)] == Status.NOT_COMPARABLE


def test_a_not_comparable_case_has_no_number_diffs() -> None:
    statuses = _statuses({"a": {"peak_bytes": 1100.0}, "b": {"peak_bytes": 1000.0}},
                         {"a": "changed", "b": "h-b"})
    assert ("a", "peak_bytes") not in statuses


def test_not_comparable_does_not_fail() -> None:
    diffs = compare_cases(BASE, {"a": {"peak_bytes": 2000.0}, "b": {"peak_bytes": 1000.0}},
                          baseline_definitions=DEFS,
                          current_definitions={"a": "changed", "b": "h-b"}, tolerances={})
    assert failed(diffs) == []


def test_a_case_without_a_baseline_definition_is_not_comparable() -> None:
    diffs = compare_cases(BASE, BASE, baseline_definitions={"b": "h-b"},
                          current_definitions=DEFS, tolerances={})
    assert {d.key: d.status for d in diffs}["a"] == Status.NOT_COMPARABLE


def test_a_case_only_in_the_run_is_new() -> None:
    statuses = _statuses({**BASE, "c": {"peak_bytes": 5.0}}, {**DEFS, "c": "h-c"})
    assert statuses[("c", CASE_METRIC)] == Status.NEW


def test_a_new_case_does_not_fail() -> None:
    diffs = compare_cases(BASE, {**BASE, "c": {"peak_bytes": 5.0}}, baseline_definitions=DEFS,
                          current_definitions={**DEFS, "c": "h-c"}, tolerances={})
    assert failed(diffs) == []


def test_a_case_only_in_the_baseline_is_missing_and_fails() -> None:
    diffs = compare_cases(BASE, {"b": {"peak_bytes": 1000.0}}, baseline_definitions=DEFS,
                          current_definitions=DEFS, tolerances={})
    assert [(d.key, d.status) for d in failed(diffs)] == [("a", Status.MISSING)]
