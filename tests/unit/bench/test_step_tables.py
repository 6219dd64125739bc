"""The report's "ProFL steps" tables on hand-made run result files (no training): step ends
counted by hand, EM-ended rounds and the stand-ins' gaps computed by hand."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from bench_fixtures import write_run

from bench.report import build_report
from bench.step_tables import end_counts, fit_gaps, step_section, steps_frame
from profl_core.results import ResultFile, write_result


def _step(label: str, stage: str, rounds: int, end: str | None,
          accuracy: float | None = None, block: float | None = None) -> dict[str, Any]:
    """A ``step_summary`` entry with the fields the tables read."""
    entry: dict[str, Any] = {"stage": stage, "label": label, "rounds": rounds, "end": end,
                             "accuracy": accuracy}
    if block is not None:
        entry["block_accuracy"] = block
    return entry


#: (label, method, partition, seed) -> the run's steps.
RUNS: dict[tuple[str, str, str, int], list[dict[str, Any]]] = {
    ("profl", "profl", "iid", 0): [
        _step("train B2", "shrink", 9, "em", 0.50),
        _step("fit basic2", "shrink", 6, "cap", 0.40, 0.50),
        _step("grow B1", "grow", 12, "em", 0.55),
        _step("grow B2", "grow", 20, "cap", 0.60),
    ],
    ("profl", "profl", "iid", 1): [
        _step("train B2", "shrink", 15, "em", 0.48),
        _step("fit basic2", "shrink", 9, "em", 0.44, 0.48),
        _step("grow B1", "grow", 10, "cap", 0.52),
        _step("grow B2", "grow", 3, None, None),  # the run ended (diverged) in this step
    ],
    ("profl-fixed", "profl", "iid", 0): [
        _step("grow B1", "grow", 5, "fixed", 0.30),
        _step("grow B2", "grow", 5, "fixed", 0.35),
    ],
    ("fedavg", "fedavg", "iid", 0): [_step("full", "full", 30, None, 0.70)],
}


def _write_runs(folder: Path) -> Path:
    for (label, method, partition, seed), steps in RUNS.items():
        run = folder / "runs" / f"{label}-{partition}-s{seed}"
        run.mkdir(parents=True)
        extra = {"config": {"label": label, "method": method, "partition": partition,
                            "seed": seed}, "steps": steps}
        write_result(run / "result.json", ResultFile(
            suite="unit", records=(), created_utc="2024-01-01T00:00:00Z", extra=extra))
    return folder


@pytest.fixture(scope="module")
def steps(tmp_path_factory: pytest.TempPathFactory) -> pd.DataFrame:
    return steps_frame(_write_runs(tmp_path_factory.mktemp("steps")))


def _row(frame: pd.DataFrame, **match: Any) -> pd.Series:
    (index,) = frame.index[(frame[list(match)] == pd.Series(match)).all(axis=1)]
    return frame.loc[index]


def test_only_profl_steps_are_rows(steps: pd.DataFrame) -> None:
    """4 + 4 + 2 ProFL steps; fedavg's single ``full`` step is left out."""
    assert len(steps) == 10
    assert "fedavg" not in set(steps["label"])


def test_ends_are_counted_over_seeds_and_steps(steps: pd.DataFrame) -> None:
    """profl IID by hand: em 2 + 2, cap 2 + 1, run end 0 + 1, fixed none."""
    row = _row(end_counts(steps), label="profl", partition="iid")
    assert row["runs"] == 2
    assert row["steps"] == 8
    assert row["em"] == 4
    assert row["cap"] == 3
    assert row["fixed"] == 0
    assert row["run end"] == 1


def test_em_ended_rounds_median_and_range(steps: pd.DataFrame) -> None:
    """EM ended steps of 9, 12, 15 and 9 rounds: median 10.5, range 9-15."""
    row = _row(end_counts(steps), label="profl", partition="iid")
    assert row["em_rounds_median"] == 10.5
    assert row["em_rounds_min"] == 9
    assert row["em_rounds_max"] == 15


def test_a_fixed_schedule_has_no_em_rounds(steps: pd.DataFrame) -> None:
    row = _row(end_counts(steps), label="profl-fixed", partition="iid")
    assert row["fixed"] == 2
    assert pd.isna(row["em_rounds_median"])


def test_fit_gap_is_the_mean_standin_minus_the_mean_block(steps: pd.DataFrame) -> None:
    """fit basic2: stand-ins 40 and 44 %, real blocks 50 and 48 %: 42 vs 49, gap -7."""
    row = _row(fit_gaps(steps), label="profl", partition="iid", step="fit basic2")
    assert row["seeds"] == 2
    assert row["standin_%"] == pytest.approx(42.0)
    assert row["block_%"] == pytest.approx(49.0)
    assert row["gap_pts"] == pytest.approx(-7.0)


def test_only_fits_are_in_the_fit_table(steps: pd.DataFrame) -> None:
    assert fit_gaps(steps)["step"].tolist() == ["fit basic2"]


def test_the_section_writes_its_tables(tmp_path: Path) -> None:
    folder = _write_runs(tmp_path / "suite")
    lines = step_section(folder)
    assert lines[0] == "## ProFL steps"
    assert pd.read_csv(folder / "tables" / "profl_steps.csv")["em"].tolist() == [4, 0]
    assert "10.5 (9-15)" in (folder / "tables" / "profl_steps.md").read_text()
    assert (folder / "tables" / "profl_fits.md").is_file()


def test_no_section_without_profl_steps(tmp_path: Path) -> None:
    write_run(tmp_path, None, "fedavg", "iid", 0, 0.8)
    assert step_section(tmp_path) == []


def test_the_report_has_the_section_when_runs_have_steps(tmp_path: Path) -> None:
    run = write_run(tmp_path, None, "profl", "iid", 0, 0.5)
    data = json.loads((run / "result.json").read_text())
    data["extra"]["steps"] = RUNS[("profl", "profl", "iid", 0)]
    (run / "result.json").write_text(json.dumps(data))
    build_report(tmp_path)
    assert "## ProFL steps" in (tmp_path / "report.md").read_text()
