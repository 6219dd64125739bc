"""``profl check --format text|json|junit|github`` and the gate's refusals (exit 2).

Each format is run on a pass, a regression (the baseline's ``block2`` backward peak of
``cnn/grow:2`` edited down by 20%: today's number is 25% above it) and a case not comparable
(its definition hash edited), on a copy of the baseline that ``test_user_gate.py``'s fixtures
make with ``--update`` (measured once per module).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from test_user_gate import _edit, _entry, _suite, gate, made, measure_once

from bench.cli import main
from bench.gate import torch_minor
from bench.gate_output import REPORT_SCHEMA, case_results
from profl_core.compare import Diff, Status

__all__ = ["gate", "made", "measure_once"]  # the fixtures this module reuses

CASE = "cnn/grow:2"
METRIC = "block_peak_bytes:block2:backward"


def _regress(path: Path) -> int:
    """Edit the baseline's ``METRIC`` of ``CASE`` down by 20%; return the edited number."""
    edited = int(_entry(path)["cases"][CASE][METRIC] * 0.8)
    _edit(path, lambda entry: entry["cases"][CASE].update({METRIC: edited}))
    return edited


def _redefine(path: Path) -> None:
    _edit(path, lambda entry: entry["definitions"].update({CASE: "0" * 64}))


def _run(gate: list[str], fmt: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    capsys.readouterr()
    code = main([*gate, "--format", fmt])
    return code, capsys.readouterr().out


def _json_case(doc: dict[str, Any], key: str) -> dict[str, Any]:
    return next(case for case in doc["cases"] if case["key"] == key)


# ------------------------------------------------------------------------------------- json


def test_json_pass_has_its_schema_version(gate: list[str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert json.loads(_run(gate, "json", capsys)[1])["schema_version"] == 1


def test_json_pass_every_case_passes(gate: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(_run(gate, "json", capsys)[1])
    assert {case["status"] for case in doc["cases"]} == {"pass"}


def test_json_pass_is_exit_0(gate: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(gate, "json", capsys)[0] == 0


def test_json_pass_totals_count_the_cases(gate: list[str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert json.loads(_run(gate, "json", capsys)[1])["totals"]["pass"] == 8


def test_json_regression_is_exit_1(gate: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    _regress(Path(gate[-1]))
    assert _run(gate, "json", capsys)[0] == 1


def test_json_regression_names_the_failing_case(gate: list[str],
                                                capsys: pytest.CaptureFixture[str]) -> None:
    _regress(Path(gate[-1]))
    doc = json.loads(_run(gate, "json", capsys)[1])
    assert [case["key"] for case in doc["cases"] if case["status"] == "fail"] == [CASE]


def test_json_regression_names_the_worst_block_and_phase(
    gate: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    _regress(Path(gate[-1]))
    case = _json_case(json.loads(_run(gate, "json", capsys)[1]), CASE)
    assert (case["block"], case["phase"]) == ("block2", "backward")


def test_json_regression_gives_the_baseline_bytes(gate: list[str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    edited = _regress(Path(gate[-1]))
    assert _json_case(json.loads(_run(gate, "json", capsys)[1]), CASE)["baseline_bytes"] == edited


def test_json_regression_gives_the_current_bytes(
    gate: list[str], made: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The oracle: the number the untouched baseline holds (the predict probe is exact)."""
    _regress(Path(gate[-1]))
    case = _json_case(json.loads(_run(gate, "json", capsys)[1]), CASE)
    assert case["current_bytes"] == _entry(made)["cases"][CASE][METRIC]


def test_json_regression_gives_the_change(gate: list[str], made: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    edited = _regress(Path(gate[-1]))
    case = _json_case(json.loads(_run(gate, "json", capsys)[1]), CASE)
    assert case["change_bytes"] == _entry(made)["cases"][CASE][METRIC] - edited


def test_json_not_comparable_case(gate: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    _redefine(Path(gate[-1]))
    doc = json.loads(_run(gate, "json", capsys)[1])
    assert _json_case(doc, CASE)["status"] == "not-comparable"


def test_json_not_comparable_is_exit_0(gate: list[str],
                                       capsys: pytest.CaptureFixture[str]) -> None:
    _redefine(Path(gate[-1]))
    assert _run(gate, "json", capsys)[0] == 0


def _validate(doc: dict[str, Any]) -> None:
    jsonschema.validate(doc, REPORT_SCHEMA)


def test_json_pass_is_valid_against_the_schema(gate: list[str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    _validate(json.loads(_run(gate, "json", capsys)[1]))


def test_json_regression_is_valid_against_the_schema(
    gate: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    _regress(Path(gate[-1]))
    _validate(json.loads(_run(gate, "json", capsys)[1]))


def test_json_not_comparable_is_valid_against_the_schema(
    gate: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    _redefine(Path(gate[-1]))
    _validate(json.loads(_run(gate, "json", capsys)[1]))


def test_the_schema_refuses_a_compared_case_without_its_worst_number(
    gate: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The schema is not vacuous: a passing case with no metric is refused."""
    doc = json.loads(_run(gate, "json", capsys)[1])
    doc["cases"][0]["metric"] = None
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(doc, REPORT_SCHEMA)


def test_json_pass_case_worst_number_is_the_step_peak(
    gate: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """Every number unchanged: the worst is the whole step's peak, not the first metric."""
    case = _json_case(json.loads(_run(gate, "json", capsys)[1]), CASE)
    assert (case["metric"], case["block"], case["phase"]) == ("peak_bytes", None, None)


def test_json_pass_case_gives_the_step_peak_bytes(
    gate: list[str], made: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    case = _json_case(json.loads(_run(gate, "json", capsys)[1]), CASE)
    assert case["current_bytes"] == _entry(made)["cases"][CASE]["peak_bytes"]


def test_json_pass_case_gives_no_change(gate: list[str],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    assert _json_case(json.loads(_run(gate, "json", capsys)[1]), CASE)["change_bytes"] == 0


def _diff(metric: str, baseline: int, current: int) -> Diff:
    return Diff(key="k", metric=metric, baseline=baseline, current=current, tolerance=0.005,
                status=Status.OK)


def test_a_passing_number_that_grew_is_the_worst_over_the_step_peak() -> None:
    grew = _diff("block_peak_bytes:block2:backward", 1000, 1001)
    worst = case_results([_diff("block_heap_peak_bytes:block1:forward", 10, 10), grew,
                          _diff("peak_bytes", 2000, 2000)])[0].worst
    assert worst == grew


def test_unchanged_numbers_give_the_step_peak_before_the_heap_peak() -> None:
    step = _diff("peak_bytes", 2000, 2000)
    worst = case_results([_diff("block_peak_bytes:block1:forward", 10, 10),
                          _diff("heap_peak_bytes", 3000, 3000), step])[0].worst
    assert worst == step


def test_json_output_file_holds_the_document(gate: list[str], tmp_path: Path) -> None:
    report = tmp_path / "gate.json"
    main([*gate, "--format", "json", "--output", str(report)])
    assert json.loads(report.read_text(encoding="utf-8"))["schema_version"] == 1


# ------------------------------------------------------------------------------------ junit


def _testcases(out: str) -> dict[str, ET.Element]:
    root = ET.fromstring(out.encode())
    return {case.get("name", ""): case for case in root.iter("testcase")}


def test_junit_pass_has_one_testcase_per_case(gate: list[str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    assert len(_testcases(_run(gate, "junit", capsys)[1])) == 8


def test_junit_pass_has_no_failure(gate: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    root = ET.fromstring(_run(gate, "junit", capsys)[1].encode())
    assert list(root.iter("failure")) == []


def test_junit_regression_fails_the_case(gate: list[str],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    _regress(Path(gate[-1]))
    assert _testcases(_run(gate, "junit", capsys)[1])[CASE].find("failure") is not None


def test_junit_regression_fails_only_that_case(gate: list[str],
                                               capsys: pytest.CaptureFixture[str]) -> None:
    _regress(Path(gate[-1]))
    root = ET.fromstring(_run(gate, "junit", capsys)[1].encode())
    assert len(list(root.iter("failure"))) == 1


def test_junit_regression_is_exit_1(gate: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    _regress(Path(gate[-1]))
    assert _run(gate, "junit", capsys)[0] == 1


def test_junit_not_comparable_is_skipped(gate: list[str],
                                         capsys: pytest.CaptureFixture[str]) -> None:
    _redefine(Path(gate[-1]))
    assert _testcases(_run(gate, "junit", capsys)[1])[CASE].find("skipped") is not None


def test_junit_not_comparable_is_exit_0(gate: list[str],
                                        capsys: pytest.CaptureFixture[str]) -> None:
    _redefine(Path(gate[-1]))
    assert _run(gate, "junit", capsys)[0] == 0


# ----------------------------------------------------------------------------------- github


def test_github_pass_has_no_error(gate: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert "::error" not in _run(gate, "github", capsys)[1]


def test_github_pass_ends_with_the_totals(gate: list[str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    assert _run(gate, "github", capsys)[1].rstrip().endswith("0 failing")


def test_github_regression_is_an_error_titled_by_the_case(
    gate: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """The title is a property: its ':' is escaped as %3A, as the runner requires."""
    _regress(Path(gate[-1]))
    lines = _run(gate, "github", capsys)[1].splitlines()
    assert [line.split("::")[1] for line in lines if line.startswith("::error")] == [
        "error title=memory regression cnn/grow%3A2"]


def test_github_regression_is_exit_1(gate: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    _regress(Path(gate[-1]))
    assert _run(gate, "github", capsys)[0] == 1


def test_github_not_comparable_is_a_warning(gate: list[str],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    _redefine(Path(gate[-1]))
    assert "::warning title=not comparable cnn/grow%3A2::" in _run(gate, "github", capsys)[1]


def test_github_not_comparable_has_no_error(gate: list[str],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    _redefine(Path(gate[-1]))
    assert "::error" not in _run(gate, "github", capsys)[1]


def _lines_naming(out: str, key: str) -> list[str]:
    """The lines that name ``key``, as it is or escaped as a workflow command's property."""
    escaped = key.replace(":", "%3A")
    return [line for line in out.splitlines() if key in line or escaped in line]


def test_github_not_comparable_case_is_named_once(gate: list[str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    _redefine(Path(gate[-1]))
    assert len(_lines_naming(_run(gate, "github", capsys)[1], CASE)) == 1


def test_github_not_comparable_keeps_the_refresh_command(
    gate: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    _redefine(Path(gate[-1]))
    warning = next(line for line in _run(gate, "github", capsys)[1].splitlines()
                   if line.startswith("WARNING: 1 case not comparable: "))
    assert warning.endswith(f"--baseline {gate[-1]} --update`")


def test_github_regression_case_is_named_once(gate: list[str],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    _regress(Path(gate[-1]))
    assert len(_lines_naming(_run(gate, "github", capsys)[1], CASE)) == 1


def test_github_regression_ends_with_the_count_of_failing_cases(
    gate: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    _regress(Path(gate[-1]))
    assert _run(gate, "github", capsys)[1].rstrip().endswith("FAIL: memory regression in 1 case")


def test_text_not_comparable_still_lists_the_case_in_its_warning(
    gate: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    _redefine(Path(gate[-1]))
    assert f"WARNING: 1 case not comparable ({CASE})" in _run(gate, "text", capsys)[1]


# ------------------------------------------------------------------------------------- text


def test_text_pass_is_the_totals_line(
    gate: list[str], made: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The oracle: the numbers the baseline holds, counted."""
    numbers = sum(len(metrics) for metrics in _entry(made)["cases"].values())
    assert _run(gate, "text", capsys)[1].splitlines() == [
        f"checked {numbers} numbers of 8 cases against torch {torch_minor()}: "
        f"{numbers} within tolerance, 0 failing"]


def test_text_regression_names_the_case_and_block(gate: list[str],
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    _regress(Path(gate[-1]))
    assert f"FAIL           {CASE}  block2 backward" in _run(gate, "text", capsys)[1]


def test_text_regression_shows_no_table_without_details(
    gate: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    _regress(Path(gate[-1]))
    assert "| case" not in _run(gate, "text", capsys)[1]


def test_text_details_shows_the_table(gate: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    _regress(Path(gate[-1]))
    main([*gate, "--details"])
    assert f"| {CASE}" in capsys.readouterr().out


def test_text_not_comparable_has_its_line(gate: list[str],
                                          capsys: pytest.CaptureFixture[str]) -> None:
    _redefine(Path(gate[-1]))
    assert f"NOT-COMPARABLE {CASE}" in _run(gate, "text", capsys)[1]


# ------------------------------------------------------------------------- refused (exit 2)


def _other_suite(gate: list[str]) -> list[str]:
    """The gate's arguments with a suite named ``other`` (same section) on its baseline."""
    path = _suite(Path(gate[2]).parent)
    other = path.with_name("other.toml")
    other.write_text(path.read_text(encoding="utf-8").replace("my-gate", "other"))
    return [*gate[:2], str(other), *gate[3:]]


@pytest.mark.parametrize("update", [[], ["--update"]], ids=["check", "update"])
def test_another_suites_baseline_is_exit_2(gate: list[str], update: list[str]) -> None:
    assert main([*_other_suite(gate), *update]) == 2


@pytest.mark.parametrize("update", [[], ["--update"]], ids=["check", "update"])
def test_another_suites_baseline_is_left_untouched(gate: list[str], update: list[str]) -> None:
    before = Path(gate[-1]).read_bytes()
    main([*_other_suite(gate), *update])
    assert Path(gate[-1]).read_bytes() == before


def test_another_suites_baseline_error_names_both_suites(
    gate: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    main(_other_suite(gate))
    assert "a baseline of suite 'my-gate', not of suite 'other'" in capsys.readouterr().err


def test_another_suites_baseline_error_is_one_line(
    gate: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    main(_other_suite(gate))
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_another_suites_baseline_suggests_no_update(
    gate: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    main([*_other_suite(gate), "--update"])
    assert "--update" not in capsys.readouterr().err


def test_another_suites_baseline_points_to_the_suites_own(
    gate: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    """With ``other.json`` (made from suite ``other``) beside the baseline, the error gives
    the command that checks against it, and that command passes."""
    args = _other_suite(gate)
    own = Path(gate[-1]).with_name("other.json")
    own.write_text(Path(gate[-1]).read_text(encoding="utf-8").replace(
        '"suite": "my-gate"', '"suite": "other"'), encoding="utf-8")
    main(args)
    hint = capsys.readouterr().err.split("`")[1]
    assert main(hint.split()[1:]) == 0


def test_a_baseline_without_a_suite_is_read_as_before(
    gate: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    path = Path(gate[-1])
    data = json.loads(path.read_text(encoding="utf-8"))
    del data["suite"]
    path.write_text(json.dumps(data), encoding="utf-8")
    assert main(_other_suite(gate)) == 0


NOT_A_BASELINE = b'{"schema_version": 1, "suite": "unit", "records": []}\n'


@pytest.mark.parametrize("update", [[], ["--update"]], ids=["check", "update"])
def test_a_json_file_that_is_not_a_baseline_is_exit_2(gate: list[str],
                                                      update: list[str]) -> None:
    Path(gate[-1]).write_bytes(NOT_A_BASELINE)
    assert main([*gate, *update]) == 2


@pytest.mark.parametrize("update", [[], ["--update"]], ids=["check", "update"])
def test_a_json_file_that_is_not_a_baseline_is_left_untouched(gate: list[str],
                                                              update: list[str]) -> None:
    Path(gate[-1]).write_bytes(NOT_A_BASELINE)
    main([*gate, *update])
    assert Path(gate[-1]).read_bytes() == NOT_A_BASELINE


@pytest.mark.parametrize("update", [[], ["--update"]], ids=["check", "update"])
def test_a_json_file_that_is_not_a_baseline_suggests_no_update(
    gate: list[str], update: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    Path(gate[-1]).write_bytes(NOT_A_BASELINE)
    main([*gate, *update])
    assert "--update" not in capsys.readouterr().err


def test_a_json_file_that_is_not_a_baseline_error_is_one_line(
    gate: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    Path(gate[-1]).write_bytes(NOT_A_BASELINE)
    main(gate)
    assert len(capsys.readouterr().err.strip().splitlines()) == 1
