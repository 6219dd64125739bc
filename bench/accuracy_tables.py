"""The accuracy tables of a suite run folder: per run, and per (label, partition) with the
paired verdicts against ``profl`` and the best label of the partition, written as
``tables/accuracy_runs|accuracy.md|csv`` with figures.

The summary gives, per (label, partition), means over seeds with 95% Student-t intervals
(:mod:`bench.stats`) of the rows of :func:`bench.run_frames.accuracy_frame`, and the paired
comparisons of :mod:`bench.comparisons`; a diverged run never contributes an accuracy.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from bench import plots
from bench.comparisons import COMPARISON_COLUMNS, format_difference, paired_comparisons
from bench.frame_tables import write_table
from bench.run_frames import (
    ACCURACY_COLUMNS,
    accuracy_frame,
    curves_frame,
    label_key,
    memory_ranges,
    read_runs,
    target_accuracy,
)
from bench.stats import format_interval, t_interval
from profl_core.methods.registry import METHODS

#: Columns summarised as a mean ± 95% interval over the completed seeds, and the prefix of
#: their ``<prefix>_mean`` / ``<prefix>_ci95`` columns in the summary; the others are means.
INTERVAL_COLUMNS = {"final_%": "final", "best_%": "best"}


def summary_names(column: str) -> tuple[str, ...]:
    """The summary columns of a per-run column: ``<prefix>_mean`` and ``<prefix>_ci95`` for
    :data:`INTERVAL_COLUMNS`, else the column itself (its mean). The first holds the mean."""
    if column in INTERVAL_COLUMNS:
        return f"{INTERVAL_COLUMNS[column]}_mean", f"{INTERVAL_COLUMNS[column]}_ci95"
    return (column,)


#: The summary's columns: who, how many seeds, the means (and intervals) of the per-run
#: columns, then the paired comparisons (whose first two columns are label and partition).
MEAN_COLUMNS = ["label", "family", "partition", "seeds", "completed",
                *(name for column in ACCURACY_COLUMNS for name in summary_names(column))]
SUMMARY_COLUMNS = [*MEAN_COLUMNS, *COMPARISON_COLUMNS[2:]]

#: The printed paired comparisons: ``Δ ± CI`` column and verdict column of each kind.
SHOWN_COMPARISONS = {"profl": ("Δ_profl", "vs_profl"), "best": ("Δ_best", "vs_best")}


def family(method: str) -> str:
    """The registry family of ``method`` (progressive, full, width, depth, alternatives,
    other), ``-`` for a method that is not registered here."""
    return METHODS[method].family if method in METHODS else "-"


def accuracy_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (label, partition) of :func:`~bench.run_frames.accuracy_frame`'s rows, in
    their order, with the method's registry family.

    ``seeds``: runs; ``completed``: those that did not diverge. ``final_mean``/``final_ci95``
    and ``best_mean``/``best_ci95``: mean and 95% half-width over the completed seeds. The
    other :data:`~bench.run_frames.ACCURACY_COLUMNS` are means over the runs that have the
    value (``rounds``, memory and time count diverged runs too; ``to_target`` only the seeds
    that reached it). Then the paired comparisons of ``final_%`` against ``profl`` and the
    partition's best label (:func:`bench.comparisons.paired_comparisons`: ``best_label``,
    ``d_profl_mean``, ..., ``vs_profl``, ``d_best_mean``, ..., ``vs_best``).
    """
    rows = []
    for (label, partition), group in runs.groupby(["label", "partition"], sort=False):
        row: dict[str, Any] = {"label": label, "family": family(group["method"].iloc[0]),
                               "partition": partition, "seeds": len(group),
                               "completed": int((group["status"] == "completed").sum())}
        for column in ACCURACY_COLUMNS:
            values = t_interval(group[column]) if column in INTERVAL_COLUMNS \
                else (group[column].mean(),)
            row.update(zip(summary_names(column), values, strict=True))
        rows.append(row)
    if not rows:
        return pd.DataFrame(columns=SUMMARY_COLUMNS)
    means = pd.DataFrame(rows, columns=MEAN_COLUMNS)
    return means.merge(paired_comparisons(runs), on=["label", "partition"], how="left",
                       sort=False)


def shown_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as printed: ``seeds`` as ``completed/total`` when some diverged,
    ``final_%``/``best_%`` as ``mean ± half`` (``diverged`` when no seed completed), and each
    paired comparison as ``Δ ± CI`` (signed points) and its verdict."""
    shown = summary[["label", "family", "partition"]].copy()
    shown["seeds"] = [str(n) if done == n else f"{done}/{n}"
                      for done, n in zip(summary["completed"], summary["seeds"], strict=True)]
    for column in ACCURACY_COLUMNS:
        if column in INTERVAL_COLUMNS:
            mean, half = summary_names(column)
            shown[column] = [
                "diverged" if done == 0 else format_interval((m, h))
                for done, m, h in zip(summary["completed"], summary[mean], summary[half],
                                      strict=True)]
        else:
            shown[column] = summary[column]
    for kind, (delta, verdict) in SHOWN_COMPARISONS.items():
        shown[delta] = [format_difference(m, h) for m, h in
                        zip(summary[f"d_{kind}_mean"], summary[f"d_{kind}_ci95"], strict=True)]
        shown[verdict] = summary[verdict]
    return shown


def _shown_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """The per-run table as printed: no run folder or divergence message; the fleet only when
    runs differ in it; ``final_from`` only when some ``final_%`` is not from ``result.json``."""
    shown = frame.drop(columns=["run", "message"])
    if shown["fleet"].nunique() <= 1:
        shown = shown.drop(columns=["fleet"])
    if shown["final_from"].isin(["result", "-"]).all():
        shown = shown.drop(columns=["final_from"])
    return shown


def accuracy_tables(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[Path]]:
    """The per-run and the per-(label, partition) accuracy tables (markdown + CSV) and their
    figures; returns the per-run frame, the summary and the written paths (every run's files
    read once)."""
    files = read_runs(folder)
    runs = accuracy_frame(folder, files)
    summary = accuracy_summary(runs)
    if runs.empty:
        return runs, summary, []
    written = write_table(runs.drop(columns=["run"]), folder, "accuracy_runs",
                          shown=_shown_runs(runs))
    written += write_table(summary, folder, "accuracy", shown=shown_summary(summary))
    written += plots.accuracy_figures(curves_frame(folder, files), runs, summary,
                                      memory_ranges(folder, files), folder / "figures",
                                      labels=sorted(set(runs["label"]), key=label_key),
                                      target=target_accuracy(folder, files))
    return runs, summary, written
