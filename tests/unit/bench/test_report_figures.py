"""The report's decision figures on the hand-built run folder (:mod:`bench_fixtures`): the
forest plot of paired differences, the small-multiple curves and the memory ranges of accuracy
against memory. Each figure is a non-empty PNG, and the numbers it draws (its data function)
are the table's, or a hand computation from the fixture's numbers."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pandas as pd
import pytest
from bench_fixtures import MIB, SUITE, T975, run_path, write_suite

from bench.memory_render import render_memory
from bench.plots import curve_panels, fold_widths, forest_frame, mean_curves, memory_points
from bench.report import build_report
from bench.run_frames import curves_frame, memory_ranges
from profl_core.results import Record, ResultFile

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture suite with profl IID seed 0's first round giving its two clients tasks of
    1 and 3 MiB (its other rounds 3 and 3), after ``build_report``."""
    folder = write_suite(tmp_path_factory.mktemp("figures") / "run")
    rounds = run_path(folder, "profl", "iid", 0) / "rounds.jsonl"
    lines = [json.loads(line) for line in rounds.read_text().splitlines()]
    lines[0]["required_bytes"] = [MIB, 3 * MIB]
    rounds.write_text("".join(json.dumps(line) + "\n" for line in lines))
    build_report(folder)
    return folder


def _table(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "tables" / "accuracy.csv")


@pytest.mark.parametrize("name", ["paired_differences.png", "accuracy_curves.png",
                                  "accuracy_vs_memory.png"])
def test_figure_is_a_non_empty_png(built: Path, name: str) -> None:
    data = (built / "figures" / name).read_bytes()
    assert data.startswith(PNG_MAGIC)
    assert len(data) > 10_000


def test_report_links_the_forest_plot(built: Path) -> None:
    assert "(figures/paired_differences.png)" in (built / "report.md").read_text()


def test_forest_plot_draws_the_tables_paired_differences(built: Path) -> None:
    table = _table(built).set_index(["label", "partition"])
    forest = forest_frame(table.reset_index())
    assert len(forest) > 0
    for _, row in forest.iterrows():
        source = table.loc[(row["label"], row["partition"])]
        kind = row["kind"]
        assert row["mean"] == pytest.approx(source[f"d_{kind}_mean"])
        assert row["half"] == pytest.approx(source[f"d_{kind}_ci95"], nan_ok=True)
        assert row["verdict"] == source[f"vs_{kind}"]


def test_forest_difference_against_a_hand_computation(built: Path) -> None:
    """fedavg minus profl on Dirichlet: per seed 40-60, 41-62, 42-64 points."""
    forest = forest_frame(_table(built))
    row = forest[(forest["kind"] == "profl") & (forest["label"] == "fedavg")
                 & (forest["partition"] == "dirichlet:0.5")].iloc[0]
    diffs = [100 * (f - p) for f, p in zip(SUITE[("fedavg", "fedavg", "dirichlet:0.5")],
                                           SUITE[("profl", "profl", "dirichlet:0.5")],
                                           strict=True)]
    assert row["mean"] == pytest.approx(statistics.mean(diffs))
    assert row["half"] == pytest.approx(T975[2] * statistics.stdev(diffs) / math.sqrt(3))
    assert row["reference"] == "profl"


def test_forest_leaves_out_each_reference_row(built: Path) -> None:
    forest = forest_frame(_table(built))
    against_profl = forest[forest["kind"] == "profl"]
    assert "profl" not in set(against_profl["label"])
    best = forest[forest["kind"] == "best"]
    assert not (best["label"] == best["reference"]).any()


def test_curve_panels_put_each_label_beside_profl_per_partition(built: Path) -> None:
    runs = pd.read_csv(built / "tables" / "accuracy_runs.csv")
    panels = curve_panels(runs, ["profl", "fedavg", "profl-noshrink"])
    assert panels == [("iid", "fedavg"), ("iid", "profl-noshrink"),
                      ("dirichlet:0.5", "fedavg"), ("dirichlet:0.5", "profl-noshrink")]


def test_curves_end_at_the_tables_final(built: Path) -> None:
    """The fixture's final is its last evaluation, so each curve's last mean is the table's
    ``final_mean`` (over the completed seeds)."""
    means = mean_curves(curves_frame(built))
    table = _table(built)
    for _, row in table[table["final_mean"].notna()].iterrows():
        line = means[(means["label"] == row["label"]) & (means["partition"] == row["partition"])]
        assert line["mean"].iloc[-1] == pytest.approx(row["final_mean"])


def test_memory_points_are_the_tables_with_the_task_range(built: Path) -> None:
    table = _table(built)
    points = memory_points(table, memory_ranges(built)).set_index(["label", "partition"])
    for _, row in table.iterrows():
        point = points.loc[(row["label"], row["partition"])]
        assert point["final_mean"] == pytest.approx(row["final_mean"], nan_ok=True)
        assert point["peak_mib"] == pytest.approx(row["peak_mib"])
    assert points.loc[("profl", "iid"), "low_mib"] == pytest.approx(1.0)  # round 1's small task
    assert points.loc[("profl", "iid"), "high_mib"] == pytest.approx(3.0)
    assert points.loc[("fedavg", "iid"), "low_mib"] == pytest.approx(8.0)  # one task size


def test_width_variants_fold_into_their_model_widest_first() -> None:
    frame = pd.DataFrame({"model": ["cnn@w0.25", "cnn", "cnn", "cnn@w0.5", "vit"],
                          "case": ["full", "full", "grow:1", "full", "full"]})
    folded = fold_widths(frame)
    assert list(folded["model"]) == ["cnn", "cnn", "cnn", "cnn", "vit"]
    assert list(folded["case"]) == ["full", "grow:1", "full@w0.5", "full@w0.25", "full"]


def _memory_result() -> ResultFile:
    """A hand-made memory section: cnn's full step and grow:1, and its width variant @w0.5."""
    records = []
    for key, peak in (("cnn/full/bs8", 6), ("cnn/grow:1/bs8", 4), ("cnn@w0.5/full/bs8", 2)):
        records += [
            Record(key=key, metric="peak_bytes", value=peak * MIB, unit="B"),
            Record(key=key, metric="breakdown_bytes:activation", value=peak * MIB / 2, unit="B"),
            Record(key=key, metric="breakdown_bytes:param_trainable", value=peak * MIB / 2,
                   unit="B"),
            Record(key=key, metric="block_peak_bytes:block1:forward", value=peak * MIB / 3,
                   unit="B"),
            Record(key=key, metric="block_peak_bytes:block1:backward", value=peak * MIB,
                   unit="B"),
            Record(key=key, metric="participation:edge", value=1 / peak, unit="ratio"),
        ]
    return ResultFile(suite="unit", records=tuple(records))


def test_memory_figures_are_pngs_one_block_figure_per_model(tmp_path: Path) -> None:
    written = render_memory(_memory_result(), tmp_path)
    figures = sorted(p.name for p in written if p.suffix == ".png")
    assert figures == ["block_peaks_cnn.png", "memory_breakdown.png",
                       "memory_participation.png"]  # cnn@w0.5 is a case of cnn's figures
    for name in figures:
        assert (tmp_path / "figures" / name).read_bytes().startswith(PNG_MAGIC)
