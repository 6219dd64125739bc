"""The report builder and ``profl compare`` on hand-written run folders (no training).

The folder (:mod:`bench_fixtures`) holds 3 seeds of profl, fedavg and profl-noshrink on two
partitions; fedavg IID seed 2 and every profl-noshrink IID seed diverged. Expected means and
intervals are computed here by hand from the fixture's numbers and a printed t-table.
"""

from __future__ import annotations

import json
import math
import shutil
import statistics
from pathlib import Path

import pandas as pd
import pytest
from bench_fixtures import MESSAGE, T975, run_path, write_run, write_suite

from bench.accuracy_tables import accuracy_summary
from bench.cli import main
from bench.report import build_report
from bench.run_comparison import compare_frame
from bench.run_frames import accuracy_frame, last10_change
from profl_core.errors import ConfigError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FIGURES = ["accuracy_curves.png", "accuracy_vs_memory.png", "participation.png"]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The fixture suite folder after ``build_report``, and the text it returned."""
    folder = write_suite(tmp_path_factory.mktemp("built") / "run")
    return folder, build_report(folder)


def _csv_row(folder: Path, label: str, partition: str) -> pd.Series:
    table = pd.read_csv(folder / "tables" / "accuracy.csv")
    return table[(table["label"] == label) & (table["partition"] == partition)].iloc[0]


def _md_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a github-style markdown table, as ``{header: cell}``."""
    lines = [line for line in path.read_text().splitlines() if line.startswith("|")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    return [dict(zip(cells[0], row, strict=True)) for row in cells[2:]]


def _md_row(path: Path, **match: str) -> dict[str, str]:
    (row,) = [r for r in _md_rows(path) if all(r[k] == v for k, v in match.items())]
    return row


def _half(values: list[float]) -> float:
    """The 95% t half-width by hand: table quantile * sample std / sqrt(n)."""
    return T975[len(values) - 1] * statistics.stdev(values) / math.sqrt(len(values))


# ------------------------------------------------------------------------------ the main table


def test_summary_mean_and_interval_over_three_seeds(built: tuple[Path, str]) -> None:
    """profl IID finals 50, 52, 54 %: mean 52, half-width t(0.975, 2) * 2 / sqrt(3)."""
    row = _csv_row(built[0], "profl", "iid")
    assert row["seeds"] == 3
    assert row["completed"] == 3
    assert row["final_mean"] == pytest.approx(52.0)
    assert row["final_ci95"] == pytest.approx(_half([50.0, 52.0, 54.0]))
    assert row["best_mean"] == pytest.approx(54.0)  # best = final + 2 in every seed
    assert row["best_ci95"] == pytest.approx(_half([52.0, 54.0, 56.0]))


def test_summary_leaves_the_diverged_seed_out_of_accuracy(built: tuple[Path, str]) -> None:
    """fedavg IID: seeds 80, 81 % and one diverged; the interval has df 1; rounds used
    count the diverged run (4, 4, 3)."""
    row = _csv_row(built[0], "fedavg", "iid")
    assert row["seeds"] == 3
    assert row["completed"] == 2
    assert row["final_mean"] == pytest.approx(80.5)
    assert row["final_ci95"] == pytest.approx(_half([80.0, 81.0]))
    assert row["rounds"] == pytest.approx((4 + 4 + 3) / 3)


def test_to_target_is_the_mean_over_seeds_that_reached_it(built: tuple[Path, str]) -> None:
    """Target 60%: profl Dirichlet reaches it at round 3 in every seed, profl IID never."""
    assert _csv_row(built[0], "profl", "dirichlet:0.5")["to_target"] == pytest.approx(3.0)
    assert pd.isna(_csv_row(built[0], "profl", "iid")["to_target"])
    assert _md_row(built[0] / "tables" / "accuracy.md", label="profl",
                   partition="iid")["to_target"] == "-"


def test_markdown_cells_are_mean_plus_minus_half(built: tuple[Path, str]) -> None:
    """Cells render the hand-computed mean and half-width with one decimal."""
    row = _md_row(built[0] / "tables" / "accuracy.md", label="profl", partition="iid")
    assert row["final_%"] == f"52.0 ± {_half([50.0, 52.0, 54.0]):.1f}"
    assert row["seeds"] == "3"
    fedavg = _md_row(built[0] / "tables" / "accuracy.md", label="fedavg", partition="iid")
    assert fedavg["final_%"] == f"80.5 ± {_half([80.0, 81.0]):.1f}"
    assert fedavg["seeds"] == "2/3"


def test_a_label_with_every_seed_diverged_shows_diverged(built: tuple[Path, str]) -> None:
    row = _md_row(built[0] / "tables" / "accuracy.md", label="profl-noshrink",
                  partition="iid")
    assert row["seeds"] == "0/3"
    assert row["final_%"] == "diverged"
    assert row["best_%"] == "diverged"
    assert row["vs_profl"] == "-"
    csv = _csv_row(built[0], "profl-noshrink", "iid")
    assert pd.isna(csv["final_mean"])
    assert pd.isna(csv["final_ci95"])


@pytest.mark.parametrize(
    ("label", "partition", "expected"),
    [
        # paired over seeds 0, 1: +30, +29; t(1) = 59, p 0.0108, Holm x 2 (3 tests)
        ("fedavg", "iid", "better"),
        # -20, -21, -22: t(2) = -36.4, p 0.00075, Holm x 3
        ("fedavg", "dirichlet:0.5", "worse"),
        ("profl-noshrink", "dirichlet:0.5", "~"),  # -2, 0, +2: mean 0, p 1
        ("profl-noshrink", "iid", "-"),  # no seed completed by both
        ("profl", "iid", "-"),  # the reference row itself
    ],
)
def test_vs_profl_is_the_holm_corrected_paired_test(
    built: tuple[Path, str], label: str, partition: str, expected: str
) -> None:
    assert _csv_row(built[0], label, partition)["vs_profl"] == expected


def test_vs_profl_without_a_profl_row_is_a_dash(tmp_path: Path) -> None:
    """Only fedavg (one seed): no reference, and one seed renders as the mean alone."""
    write_run(tmp_path, None, "fedavg", "iid", 0, 0.80)
    summary = accuracy_summary(accuracy_frame(tmp_path))
    assert list(summary["vs_profl"]) == ["-"]
    build_report(tmp_path)
    assert _md_row(tmp_path / "tables" / "accuracy.md", label="fedavg")["final_%"] == "80.0"


def test_rows_are_iid_first_then_registry_order_then_unknown_labels(
    built: tuple[Path, str],
) -> None:
    table = pd.read_csv(built[0] / "tables" / "accuracy.csv")
    assert list(table["partition"]) == ["iid"] * 3 + ["dirichlet:0.5"] * 3
    assert list(table["label"]) == ["profl", "fedavg", "profl-noshrink"] * 2


# ------------------------------------------------------------------------------ per-run table


def test_per_run_table_has_one_row_per_run_folder(built: tuple[Path, str]) -> None:
    runs = pd.read_csv(built[0] / "tables" / "accuracy_runs.csv")
    assert len(runs) == 18
    fedavg = runs[(runs["label"] == "fedavg") & (runs["partition"] == "iid")]
    assert list(fedavg["seed"]) == [0, 1, 2]
    assert list(fedavg["final_%"].iloc[:2]) == pytest.approx([80.0, 81.0])


def test_per_run_table_keeps_the_best_and_the_last_evaluation(built: tuple[Path, str]) -> None:
    """profl IID seed 0: curve 20, 40, 52, 50 %: best 52, last 50."""
    runs = pd.read_csv(built[0] / "tables" / "accuracy_runs.csv")
    row = runs[(runs["label"] == "profl") & (runs["partition"] == "iid")
               & (runs["seed"] == 0)].iloc[0]
    assert row["best_%"] == pytest.approx(52.0)
    assert row["last_%"] == pytest.approx(50.0)


def test_a_diverged_run_has_no_accuracy_number(built: tuple[Path, str]) -> None:
    runs = pd.read_csv(built[0] / "tables" / "accuracy_runs.csv")
    row = runs[(runs["label"] == "fedavg") & (runs["partition"] == "iid")
               & (runs["seed"] == 2)].iloc[0]
    assert row["status"] == "diverged"
    assert pd.isna(row["final_%"])
    assert pd.isna(row["best_%"])
    assert pd.isna(row["to_target"])
    assert row["rounds"] == 3
    md = _md_row(built[0] / "tables" / "accuracy_runs.md", label="fedavg", partition="iid",
                 seed="2")
    assert md["status"] == "diverged"
    assert md["final_%"] == "-"


def test_old_result_files_are_labelled_by_method_seed_zero_completed(tmp_path: Path) -> None:
    """A config without label/seed and no status: label = method, seed 0, completed."""
    write_run(tmp_path, None, "profl", "iid", None, 0.5)
    data = json.loads((run_path(tmp_path, "profl", "iid", 0) / "result.json").read_text())
    del data["extra"]["status"]
    (run_path(tmp_path, "profl", "iid", 0) / "result.json").write_text(json.dumps(data))
    row = accuracy_frame(tmp_path).iloc[0]
    assert row["label"] == "profl"
    assert row["seed"] == 0
    assert row["status"] == "completed"


def _drop_smoothed_final(run: Path) -> None:
    """Make a run's result file one from before the smoothed final."""
    data = json.loads((run / "result.json").read_text())
    data["records"] = [r for r in data["records"] if r["metric"] != "smoothed_final_accuracy"]
    (run / "result.json").write_text(json.dumps(data))


def test_an_old_result_file_gets_its_smoothed_final_from_its_rounds(tmp_path: Path) -> None:
    """Curve 20, 40, 52, 50 % over 4 rounds: fewer than 5 evaluations, so all of them:
    (20 + 40 + 52 + 50) / 4 = 40.5."""
    _drop_smoothed_final(write_run(tmp_path, None, "profl", "iid", 0, 0.5))
    row = accuracy_frame(tmp_path).iloc[0]
    assert row["final_%"] == pytest.approx(40.5)
    assert row["final_from"] == "rounds"


def test_an_old_result_file_without_rounds_falls_back_to_the_last_evaluation(
    tmp_path: Path,
) -> None:
    run = write_run(tmp_path, None, "profl", "iid", 0, 0.5)
    _drop_smoothed_final(run)
    (run / "rounds.jsonl").unlink()
    row = accuracy_frame(tmp_path).iloc[0]
    assert row["final_%"] == pytest.approx(50.0)
    assert row["final_from"] == "last"


def test_the_report_says_which_finals_came_from_elsewhere(tmp_path: Path) -> None:
    _drop_smoothed_final(write_run(tmp_path, None, "profl", "iid", 0, 0.5))
    text = build_report(tmp_path)
    assert "`final_%` of every run is computed from rounds.jsonl" in text
    assert _md_row(tmp_path / "tables" / "accuracy_runs.md", label="profl")["final_from"] \
        == "rounds"


# ------------------------------------------------------------------------------ report text


def test_printed_text_has_table_legend_and_diverged_runs(built: tuple[Path, str]) -> None:
    _, text = built
    assert "## Accuracy" in text
    assert "| profl-noshrink | progressive | iid           | 0/3     | diverged" in text
    assert "95% Student-t interval over the completed seeds" in text
    assert "`vs_profl`" in text
    assert "last ceil(10%) of rounds" in text
    assert f"diverged: fedavg iid seed 2: {MESSAGE}" in text
    assert text.count("diverged: profl-noshrink iid seed") == 3
    assert "seeds 0, 1, 2" in text


def test_printed_text_opens_with_the_answer(built: tuple[Path, str]) -> None:
    """IID: fedavg is best (80.5); profl is worse by the paired -30, -29 (seeds 0, 1)."""
    _, text = built
    answer = text.split("Settings:")[0]
    assert "- `iid`: best `fedavg` (80.5%); against it, worse: `profl` (-29.5 ± " in answer
    assert "Holm p" in answer


def test_markdown_shows_the_paired_difference(built: tuple[Path, str]) -> None:
    """fedavg Dirichlet - profl per seed: -20, -21, -22; half t(0.975, 2) * 1 / sqrt(3)."""
    row = _md_row(built[0] / "tables" / "accuracy.md", label="fedavg", partition="dirichlet:0.5")
    assert row["Δ_profl"] == f"-21.0 ± {T975[2] / math.sqrt(3):.1f}"
    assert row["vs_profl"] == "worse"


def test_report_md_links_the_figures_and_the_per_run_table(built: tuple[Path, str]) -> None:
    report = (built[0] / "report.md").read_text()
    assert all(f"figures/{name}" in report for name in FIGURES)
    assert "tables/accuracy_runs.md" in report
    assert f"diverged: fedavg iid seed 2: {MESSAGE}" in report


@pytest.mark.parametrize("name", FIGURES)
def test_figures_are_non_empty_pngs(built: tuple[Path, str], name: str) -> None:
    data = (built[0] / "figures" / name).read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 10_000


# ------------------------------------------------------------------------------ rebuild, compare


def _edit_final_accuracy(path: Path, value: float) -> None:
    """Set the smoothed final accuracy (the report's ``final_%``) of a run's result file."""
    data = json.loads(path.read_text())
    for record in data["records"]:
        if record["metric"] == "smoothed_final_accuracy":
            record["value"] = value
    path.write_text(json.dumps(data))


def test_report_is_rebuilt_from_files_only(run_folder: Path) -> None:
    """``profl report`` after a result file changed shows the new mean."""
    folder = run_folder
    build_report(folder)
    _edit_final_accuracy(run_path(folder, "profl", "iid", 0) / "result.json", 0.9)
    assert main(["report", str(folder)]) == 0
    assert _csv_row(folder, "profl", "iid")["final_mean"] == pytest.approx((90 + 52 + 54) / 3)


def test_compare_puts_means_side_by_side_with_deltas(run_folder: Path, tmp_path: Path) -> None:
    """fedavg IID seed 0 from 80 to 90 %: the mean over its 2 completed seeds moves by 5."""
    folder = run_folder
    other = tmp_path / "other"
    shutil.copytree(folder, other)
    _edit_final_accuracy(run_path(other, "fedavg", "iid", 0) / "result.json", 0.90)
    frame = compare_frame(folder, other)
    final = frame[frame["metric"] == "final_%"].set_index("what")
    assert final.loc["fedavg iid", "delta"] == pytest.approx(5.0)
    assert final.loc["profl iid", "delta"] == pytest.approx(0.0)
    assert pd.isna(final.loc["profl-noshrink iid", "a"])
    assert main(["compare", str(folder), str(other)]) == 0


def test_report_of_a_folder_without_results_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="run folder"):
        build_report(tmp_path)
    with pytest.raises(ConfigError, match="no such run folder"):
        build_report(tmp_path / "missing")


def test_last10_change_is_final_minus_the_last_evaluation_before_90_percent() -> None:
    """100 rounds: the cut-off is round 90; evaluations at 80, 90, 100 -> final - acc(90)."""
    rounds = [{"round": r, "accuracy": None} for r in range(1, 101)]
    rounds[79]["accuracy"], rounds[89]["accuracy"], rounds[99]["accuracy"] = 0.70, 0.74, 0.75
    assert last10_change(rounds) == pytest.approx(0.75 - 0.74)
    assert math.isnan(last10_change([{"round": 1, "accuracy": None}]))
    assert math.isnan(last10_change([{"round": 10, "accuracy": 0.5}]))


def test_the_table_names_each_labels_registry_family(built: tuple[Path, str]) -> None:
    """A variant's family is its method's: profl-noshrink runs profl (progressive)."""
    table = built[0] / "tables" / "accuracy.md"
    assert _md_row(table, label="fedavg", partition="iid")["family"] == "full"
    assert _md_row(table, label="profl-noshrink", partition="iid")["family"] == "progressive"
