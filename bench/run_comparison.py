"""Two suite run folders side by side (``profl compare``): the same metrics of each and their
difference; accuracy metrics are the means over seeds of each (label, partition)."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from bench.accuracy_tables import accuracy_summary, summary_names
from bench.frame_tables import markdown_table
from bench.memory_render import summary_frame
from bench.run_frames import ACCURACY_COLUMNS, accuracy_frame, has_memory, suite_result
from profl_core.errors import ConfigError


def _metrics_frame(folder: Path) -> pd.DataFrame:
    """Long form of one run folder: key (what), metric, value (accuracy: means over seeds)."""
    rows = []
    summary = accuracy_summary(accuracy_frame(folder))
    for _, row in summary.iterrows():
        for column in ACCURACY_COLUMNS:
            rows.append({"what": f"{row['label']} {row['partition']}", "metric": column,
                         "value": row[summary_names(column)[0]]})
    result = suite_result(folder)
    if has_memory(result):
        assert result is not None
        for _, row in summary_frame(result).iterrows():
            for column in ("full_peak_mib", "profl_peak_mib", "reduction_%"):
                if column in row:
                    rows.append({"what": f"memory {row['model']}", "metric": column,
                                 "value": row[column]})
    return pd.DataFrame(rows, columns=["what", "metric", "value"])


def compare_frame(run_a: Path, run_b: Path) -> pd.DataFrame:
    """The same metrics of two run folders side by side with ``delta = b - a`` (accuracy
    metrics: the means over seeds of each (label, partition))."""
    for run in (run_a, run_b):
        if not run.is_dir():
            raise ConfigError(f"{run}: no such run folder")
    a, b = _metrics_frame(run_a), _metrics_frame(run_b)
    if a.empty and b.empty:
        raise ConfigError(f"{run_a} and {run_b} hold no results to compare")
    merged = a.merge(b, on=["what", "metric"], how="outer", suffixes=("_a", "_b"), sort=False)
    merged = merged.rename(columns={"value_a": "a", "value_b": "b"})
    merged["delta"] = merged["b"] - merged["a"]
    return merged


def compare_runs(run_a: Path, run_b: Path) -> str:
    """A markdown table of :func:`compare_frame` (what, metric, a, b, delta)."""
    frame = compare_frame(run_a, run_b)
    return f"a: {run_a}\nb: {run_b}\n\n" + markdown_table(frame, floatfmt=".2f")
