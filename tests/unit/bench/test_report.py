"""The report builder and ``profl compare`` on a hand-written run folder (no training)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from bench.cli import main
from bench.report import ACCURACY_COLUMNS, build_report, compare_frame
from profl_core.errors import ConfigError
from profl_core.results import Record, ResultFile, read_result, write_result

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
MIB = 1 << 20

# method, partition -> (accuracy per round, required bytes per participant, eligible share)
RUNS = {
    ("profl", "iid"): ([0.30, 0.55, 0.62, 0.71], 3 * MIB, 0.8),
    ("fedavg", "iid"): ([0.40, 0.60, 0.66, 0.69], 8 * MIB, 0.1),
    ("profl", "dirichlet:0.5"): ([0.20, 0.35, 0.50, 0.58], 3 * MIB, 0.8),
    ("fedavg", "dirichlet:0.5"): ([0.25, 0.45, 0.52, 0.55], 8 * MIB, 0.1),
}


def _write_run(folder: Path, method: str, partition: str) -> None:
    accuracy, required, share = RUNS[(method, partition)]
    run = folder / "runs" / f"{method}-{partition.replace(':', '')}"
    run.mkdir(parents=True)
    lines = [
        json.dumps({"round": i + 1, "stage": "full", "step": 0, "submodel": "full",
                    "accuracy": acc, "loss": 1 - acc, "train_loss": 1.0,
                    "participants": [0, 1], "eligible_share": share,
                    "required_bytes": [required, required], "wall_s": 0.5, "metrics": {}})
        for i, acc in enumerate(accuracy)
    ]
    (run / "rounds.jsonl").write_text("\n".join(lines) + "\n")
    key = f"{method}/cnn/{partition}"
    values = {
        "final_accuracy": accuracy[-1], "best_accuracy": max(accuracy), "rounds": 4.0,
        "mean_participants": 2.0, "mean_eligible_share": share,
        "max_required_bytes": float(required), "memory_reduction": 1 - required / (8 * MIB),
        "train_wall_s": 2.0,
    }
    reached = next((i + 1 for i, a in enumerate(accuracy) if a >= 0.6), None)
    if reached is not None:
        values["rounds_to_target"] = float(reached)
    records = tuple(Record(key=key, metric=m, value=v, unit="x") for m, v in values.items())
    config = {"method": method, "partition": partition, "dataset": "synthetic",
              "model": "cnn", "rounds": 4}
    write_result(run / "result.json", ResultFile(
        suite="unit", records=records, created_utc="2024-01-01T00:00:00Z",
        extra={"config": config, "fleet": "relative-uniform", "target_accuracy": 0.6}))


@pytest.fixture
def run_folder(tmp_path: Path) -> Path:
    """A suite run folder with four finished training runs and no memory section."""
    folder = tmp_path / "run"
    for method, partition in RUNS:
        _write_run(folder, method, partition)
    return folder


def test_tables_equal_result_files_and_figures_exist(run_folder: Path) -> None:
    """Every accuracy-table value equals its result.json value; every figure is a PNG."""
    # Execute
    text = build_report(run_folder)
    # Assert
    table = pd.read_csv(run_folder / "tables" / "accuracy.csv")
    assert len(table) == len(RUNS)
    for _, row in table.iterrows():
        run = run_folder / "runs" / f"{row['method']}-{row['partition'].replace(':', '')}"
        values = {r.metric: r.value for r in read_result(run / "result.json").records}
        for column, (metric, scale) in ACCURACY_COLUMNS.items():
            if metric in values:
                assert row[column] == pytest.approx(values[metric] * scale), (run, column)
            else:
                assert pd.isna(row[column]), (run, column)
    figures = ["accuracy_curves.png", "accuracy_vs_memory.png", "participation.png"]
    for name in figures:
        data = (run_folder / "figures" / name).read_bytes()
        assert data.startswith(PNG_MAGIC), name
        assert len(data) > 1000, name
    report = (run_folder / "report.md").read_text()
    assert all(f"figures/{name}" in report for name in figures)
    assert "| profl    | dirichlet:0.5 |" in report
    assert list(table["method"]) == ["profl", "fedavg", "profl", "fedavg"]
    assert list(table["partition"]) == ["iid", "iid", "dirichlet:0.5", "dirichlet:0.5"]
    assert "## Accuracy" in text


def test_report_is_rebuilt_from_files_only(run_folder: Path) -> None:
    """``profl report`` after a result file changed shows the new value."""
    build_report(run_folder)
    _edit_final_accuracy(run_folder / "runs" / "profl-iid" / "result.json", 0.9)
    assert main(["report", str(run_folder)]) == 0
    table = pd.read_csv(run_folder / "tables" / "accuracy.csv")
    row = table[(table["method"] == "profl") & (table["partition"] == "iid")]
    assert row["final_%"].item() == pytest.approx(90.0)


def _edit_final_accuracy(path: Path, value: float) -> None:
    data = json.loads(path.read_text())
    for record in data["records"]:
        if record["metric"] == "final_accuracy":
            record["value"] = value
    path.write_text(json.dumps(data))


def test_compare_puts_metrics_side_by_side_with_deltas(run_folder: Path, tmp_path: Path) -> None:
    """Two folders: same rows on both sides, delta = b - a; the CLI prints the table."""
    other = tmp_path / "other"
    shutil.copytree(run_folder, other)
    _edit_final_accuracy(other / "runs" / "fedavg-iid" / "result.json", 0.79)
    frame = compare_frame(run_folder, other)
    final = frame[frame["metric"] == "final_%"].set_index("what")
    assert final.loc["fedavg iid", "delta"] == pytest.approx(10.0)
    assert final.loc["profl iid", "delta"] == pytest.approx(0.0)
    assert main(["compare", str(run_folder), str(other)]) == 0


def test_report_of_a_folder_without_results_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="run folder"):
        build_report(tmp_path)
    with pytest.raises(ConfigError, match="no such run folder"):
        build_report(tmp_path / "missing")
