"""The memory section's ``alternatives``: suite field, cases, records and the table.

Oracles: the canonical case labels of :mod:`profl_core.memory.case`, the per-case reports the
section measured (the largest ProFL step is their maximum), the shipped suite files.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from bench.memory_cases import MemorySection, parse_alternatives
from bench.memory_measure import measure_section, memory_records
from bench.memory_render import alternatives_frame, summary_text
from bench.suites import load_suite
from profl_core.errors import ConfigError
from profl_core.memory import MemoryReport
from profl_core.results import ResultFile

ISSUE_LIST = ["accum:4", "accum:8", "ckpt", "amp", "ckpt+accum:4", "profl+accum:4"]


def test_alternatives_are_canonical() -> None:
    assert parse_alternatives(["accum:4+ckpt", "profl+accum:4+amp:bf16"], 64, "x") == (
        "ckpt+accum:4", "profl+amp+accum:4")


@pytest.mark.parametrize(("value", "named"), [
    ("ckpt", "use a list of modifier texts"),
    (["grow:2"], "write modifiers only"),
    (["accum:3"], "accum:3 does not divide batch_size 64"),
    (["ckpt", "ckpt"], "list each alternative once"),
    (["profl+"], "write modifiers only"),
])
def test_bad_alternatives_are_one_line_naming_the_field(value: object, named: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_alternatives(value, 64, "s.toml: [memory] alternatives")
    assert named in str(err.value)
    assert str(err.value).startswith("s.toml: [memory] alternatives")
    assert "\n" not in str(err.value)


def test_suite_file_alternatives_reach_the_section(tmp_path: Path) -> None:
    path = tmp_path / "alt.toml"
    path.write_text('[memory]\nmodels = ["cnn"]\nbatch_size = 8\n'
                    'alternatives = ["accum:2+ckpt", "profl+accum:2"]\n')
    section = load_suite(str(path)).memory
    assert section is not None
    assert section.alternatives == ("ckpt+accum:2", "profl+accum:2")


def test_the_default_suite_lists_the_issue_alternatives() -> None:
    section = load_suite("default").memory
    assert section is not None
    assert list(section.alternatives) == ISSUE_LIST


def test_the_gate_keeps_one_micro_batch_size_of_them() -> None:
    section = load_suite("memory-ci").memory
    assert section is not None
    assert list(section.alternatives) == ["accum:4", "ckpt", "amp", "profl+accum:4"]


SECTION = MemorySection(models=("cnn",), batch_size=4, probe="dispatch",
                        model_spec={"cnn": {"width": 0.25}},
                        alternatives=("accum:2", "ckpt", "profl+accum:2"))


def test_section_adds_the_full_alternatives_and_every_profl_step_modified() -> None:
    labels = [c.label for c in SECTION.model_cases("cnn")]
    assert labels[8:] == ["full+accum:2", "full+ckpt", "shrink:4+accum:2", "shrink:3+accum:2",
                          "shrink:2+accum:2", "grow:1+accum:2", "grow:2+accum:2",
                          "grow:3+accum:2", "grow:4+accum:2"]


@pytest.fixture(scope="module")
def measured(tmp_path_factory: pytest.TempPathFactory) -> dict[str, MemoryReport]:
    return measure_section(SECTION, tmp_path_factory.mktemp("alt"), resume=False)


def records_by_metric(reports: dict[str, MemoryReport]) -> dict[tuple[str, str], float]:
    return {(r.key, r.metric): r.value for r in memory_records(SECTION, reports)}


def test_profl_peak_with_modifiers_is_the_largest_modified_step(
    measured: dict[str, MemoryReport],
) -> None:
    expected = max(r.tensor_peak_bytes for k, r in measured.items()
                   if k.split("/")[1].startswith(("grow:", "shrink:")) and k.endswith(
                       "+accum:2/bs4"))
    got = records_by_metric(measured)[("cnn/profl/bs4", "profl_peak_bytes:accum:2")]
    assert got == expected


def test_plain_profl_peak_leaves_the_modified_steps_out(
    measured: dict[str, MemoryReport],
) -> None:
    expected = max(r.tensor_peak_bytes for k, r in measured.items()
                   if k.split("/")[1].startswith(("grow:", "shrink:")) and "+" not in k)
    got = records_by_metric(measured)[("cnn/profl/bs4", "profl_peak_bytes")]
    assert got == expected


def result_of(reports: dict[str, MemoryReport]) -> ResultFile:
    return ResultFile(suite="alt", records=tuple(memory_records(SECTION, reports)))


def test_alternatives_table_has_one_row_per_alternative(
    measured: dict[str, MemoryReport],
) -> None:
    frame = alternatives_frame(result_of(measured))
    assert list(frame["case"]) == ["full", "full+accum:2", "full+ckpt", "profl",
                                   "profl+accum:2"]


def test_alternatives_table_gives_the_share_of_the_full_peak(
    measured: dict[str, MemoryReport],
) -> None:
    frame = alternatives_frame(result_of(measured)).set_index("case")
    full = measured["cnn@w0.25/full/bs4"].tensor_peak_bytes
    ckpt = measured["cnn@w0.25/full+ckpt/bs4"].tensor_peak_bytes
    assert frame.loc["full+ckpt", "peak_%_of_full"] == pytest.approx(100 * ckpt / full)


def test_summary_text_prints_the_alternatives_table(measured: dict[str, MemoryReport]) -> None:
    assert "| cnn@w0.25 | profl+accum:2" in summary_text(result_of(measured)).replace("  ", "")
