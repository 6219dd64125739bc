"""The planner's report cache (bench/report_cache.py, ``profl plan --cache/--no-cache``)."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

import bench.report_cache as report_cache
from bench.report_cache import ReportCache
from profl_core.memory import MemoryReport, measure
from profl_core.memory.case import TrainingCase
from profl_core.models import native_spec

CASES = [TrainingCase(model=native_spec("cnn", width=0.25), kind=kind, step=step, batch_size=8)
         for kind, step in (("grow", 1), ("shrink", 2))]
PLAN_TESTS = Path(__file__).resolve().parents[1] / "memory"
TOY = "plan_toy_model:build"


def _counted(calls: Counter[TrainingCase]):
    def probe(case: TrainingCase) -> MemoryReport:
        calls[case] += 1
        return measure(case, probe="predict", threads=1)

    return probe


def _cache(folder: Path, *, threads: int = 1, warnings: io.StringIO | None = None):
    return ReportCache(folder, probe="predict", threads=threads,
                       warnings=warnings if warnings is not None else io.StringIO())


def test_a_case_measured_once_is_answered_from_the_folder_in_a_later_run(
        tmp_path: Path) -> None:
    calls: Counter[TrainingCase] = Counter()
    first = [_cache(tmp_path).wrap(_counted(calls))(case) for case in CASES]
    later = _cache(tmp_path)
    again = [later.wrap(_counted(calls))(case) for case in CASES]
    assert again == first
    assert calls == Counter(CASES)
    assert later.hits == 2
    assert later.misses == 0


def test_each_case_has_its_own_file(tmp_path: Path) -> None:
    cache = _cache(tmp_path)
    probe = cache.wrap(_counted(Counter()))
    for case in CASES:
        probe(case)
    assert len(list(tmp_path.glob("*.json"))) == 2


def test_another_thread_count_is_another_entry(tmp_path: Path) -> None:
    calls: Counter[TrainingCase] = Counter()
    _cache(tmp_path).wrap(_counted(calls))(CASES[0])
    two = _cache(tmp_path, threads=2)
    two.wrap(_counted(calls))(CASES[0])
    assert calls[CASES[0]] == 2
    assert two.misses == 1


def test_a_change_to_the_library_never_returns_an_old_number(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: Counter[TrainingCase] = Counter()
    _cache(tmp_path).wrap(_counted(calls))(CASES[0])
    monkeypatch.setattr(report_cache, "code_digest", lambda: "0" * 64)
    changed = _cache(tmp_path)
    changed.wrap(_counted(calls))(CASES[0])
    assert calls[CASES[0]] == 2
    assert changed.hits == 0


@pytest.mark.parametrize("content", [b"", b"\xff\xfe\x00", b"{\"schema\": ", b"[1, 2]",
                                     b'{"schema": "profl-report-cache/1"}'])
def test_a_bad_entry_is_measured_again_rewritten_and_named(tmp_path: Path,
                                                           content: bytes) -> None:
    calls: Counter[TrainingCase] = Counter()
    expected = _cache(tmp_path).wrap(_counted(calls))(CASES[0])
    [entry] = tmp_path.glob("*.json")
    entry.write_bytes(content)
    warnings = io.StringIO()
    cache = _cache(tmp_path, warnings=warnings)
    assert cache.wrap(_counted(calls))(CASES[0]) == expected
    assert calls[CASES[0]] == 2
    assert len(warnings.getvalue().splitlines()) == 1
    assert str(entry) in warnings.getvalue()
    assert json.loads(entry.read_text())["report"] == expected.to_dict()


def test_an_entry_of_another_case_under_this_name_is_not_used(tmp_path: Path) -> None:
    calls: Counter[TrainingCase] = Counter()
    cache = _cache(tmp_path)
    probe = cache.wrap(_counted(calls))
    probe(CASES[0])
    probe(CASES[1])
    first, second = (cache.path(cache.identity(c)) for c in CASES)
    first.write_bytes(second.read_bytes())
    again = _cache(tmp_path)
    again.wrap(_counted(calls))(CASES[0])
    assert again.misses == 1
    assert calls[CASES[0]] == 2


def test_a_folder_that_cannot_be_written_is_one_warning_and_the_reports_still_come(
        tmp_path: Path) -> None:
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    warnings = io.StringIO()
    cache = _cache(blocked, warnings=warnings)
    probe = cache.wrap(_counted(Counter()))
    reports = [probe(case) for case in CASES]
    assert reports == [measure(case, probe="predict", threads=1) for case in CASES]
    assert len(warnings.getvalue().splitlines()) == 1
    assert str(blocked) in warnings.getvalue()
    assert blocked.read_text() == "not a folder"


def _plan(folder: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bench", "plan", "--model", TOY, "--input-size", "16",
         "--batch-size", "8", "--max-blocks", "3", "--probe", "dispatch", "--json", *flags],
        cwd=folder, capture_output=True, text=True, check=False,
        env={"OMP_NUM_THREADS": "1", "PATH": "", "PYTHONPATH": str(PLAN_TESTS),
             "XDG_CACHE_HOME": str(folder / "xdg")})


def test_profl_plan_twice_reuses_every_step_and_prints_the_same_plan(tmp_path: Path) -> None:
    cache = tmp_path / "reports"
    first = _plan(tmp_path, "--cache", str(cache))
    second = _plan(tmp_path, "--cache", str(cache))
    assert first.returncode == 0, first.stderr
    assert second.returncode == 0, second.stderr
    assert second.stdout == first.stdout
    measured = len(list(cache.glob("*.json")))
    assert f"{measured} steps reused, 0 measured" in second.stderr.splitlines()[-1]


def test_profl_plan_caches_under_xdg_cache_home_unless_told_not_to(tmp_path: Path) -> None:
    assert _plan(tmp_path, "--no-cache").returncode == 0
    assert not (tmp_path / "xdg" / "profl").exists()
    assert _plan(tmp_path).returncode == 0
    assert list((tmp_path / "xdg" / "profl" / "reports").glob("*.json"))
