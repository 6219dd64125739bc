"""``[memory] workers``: the predict probe measures cases in parallel processes and gives the
reports of one process, in the section's case order."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from bench.memory_cases import MemorySection
from bench.memory_measure import measure_section
from bench.suites import load_suite
from profl_core.errors import ConfigError

SECTION = MemorySection(models=("cnn",), batch_size=4, alternatives=("accum:2",))


@pytest.fixture(scope="module")
def one_and_two(tmp_path_factory: pytest.TempPathFactory):
    one = measure_section(SECTION, tmp_path_factory.mktemp("one"), resume=False)
    two = measure_section(replace(SECTION, workers=2), tmp_path_factory.mktemp("two"),
                          resume=False)
    return one, two


def test_two_workers_give_the_cases_in_the_section_order(one_and_two) -> None:
    one, two = one_and_two
    assert list(two) == [case.key for case in SECTION.cases()]
    assert list(two) == list(one)


def test_two_workers_give_the_reports_of_one_process(one_and_two) -> None:
    one, two = one_and_two
    for key, report in one.items():
        assert two[key].to_json() == report.to_json(), key


def test_two_workers_write_every_case_file(tmp_path: Path) -> None:
    measure_section(replace(SECTION, workers=2), tmp_path, resume=False)
    assert len(list((tmp_path / "cases").glob("*.json"))) == len(SECTION.cases())


@pytest.mark.parametrize("value", [0, True, "2", 2.0])
def test_a_bad_workers_value_is_one_line(tmp_path: Path, value: object) -> None:
    path = tmp_path / "s.toml"
    text = repr(value).lower() if isinstance(value, bool) else repr(value).replace("'", '"')
    path.write_text(f'name = "s"\n[memory]\nmodels = ["cnn"]\nworkers = {text}\n')
    with pytest.raises(ConfigError, match=r"s\.toml: \[memory\] workers = .*; use a whole number"):
        load_suite(str(path))


def test_the_default_and_gate_suites_use_both_cores() -> None:
    assert load_suite("default").memory.workers == 2
    assert load_suite("memory-ci").memory.workers == 2
