"""A suite run folder's training runs read into frames, from the folder's files alone.

Inputs (any may be missing): ``runs/*/result.json`` and ``rounds.jsonl`` (the accuracy
section: one training run per (label, partition, seed), described by the run's
``extra["config"]`` and ``extra["status"]``) and the suite's ``result.json`` (memory section
plus a copy of every training run's summary). :func:`accuracy_frame` has one row per run in
report order (:func:`label_key`), :func:`curves_frame` every evaluated round; a diverged run
never contributes an accuracy.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from bench.run_files import read_rounds, read_run_result
from bench.run_summary import smoothed_final
from profl_core.methods.registry import METHODS
from profl_core.results import ResultFile, read_result

MIB = 1 << 20

#: Per-run accuracy columns (after the run's label, method, partition, seed and status) and
#: their metric and scale. ``final_%`` is the smoothed final accuracy
#: (:func:`bench.run_summary.final_window`), ``last_%`` the last evaluation's.
ACCURACY_COLUMNS: dict[str, tuple[str, float]] = {
    "final_%": ("smoothed_final_accuracy", 100.0),
    "best_%": ("best_accuracy", 100.0),
    "last_%": ("final_accuracy", 100.0),
    "last10_pts": ("last10_change", 100.0),
    "rounds": ("rounds", 1.0),
    "to_target": ("rounds_to_target", 1.0),
    "clients": ("mean_participants", 1.0),
    "eligible_%": ("mean_eligible_share", 100.0),
    "peak_mib": ("max_required_bytes", 1 / MIB),
    "saved_%": ("memory_reduction", 100.0),
    "extra_fwd": ("extra_forward", 1.0),
    "ubatch": ("micro_batch", 1.0),
    "wall_s": ("train_wall_s", 1.0),
}

#: Compute-cost metrics of the methods on single-device alternatives (``metrics`` of
#: ``rounds.jsonl``, :mod:`profl_core.methods.alternatives`), averaged over a run's rounds.
COST_METRICS = ("extra_forward", "micro_batch")

#: Columns a diverged run has no value for (NaN in its row, left out of every mean).
ACCURACY_ONLY = ("final_%", "best_%", "last_%", "last10_pts", "to_target")

#: Where a run's ``final_%`` came from (the ``final_from`` column): its ``result.json``, its
#: ``rounds.jsonl`` (a result file from before the smoothed final), or, with neither, its
#: last evaluation; ``-`` for a run without accuracy (diverged).
FINAL_SOURCES = ("result", "rounds", "last")


def run_folders(folder: Path) -> list[Path]:
    """Finished training runs of a suite run folder (those holding ``result.json``)."""
    runs = folder / "runs"
    return sorted(p for p in runs.iterdir() if (p / "result.json").is_file()) \
        if runs.is_dir() else []


@dataclass(frozen=True)
class RunFiles:
    """One finished training run's files, read once for every frame of a report.

    Attributes:
        path: The run folder.
        result: Its ``result.json`` (:func:`~bench.run_files.read_run_result`).
        rounds: Its ``rounds.jsonl`` records (:func:`~bench.run_files.read_rounds`; empty
            without the file). Read only: frames copy what they change.
    """

    path: Path
    result: ResultFile
    rounds: list[dict[str, Any]]


def read_runs(folder: Path) -> list[RunFiles]:
    """Every finished run of a suite run folder (:func:`run_folders`), read once."""
    return [RunFiles(run, read_run_result(run), read_rounds(run / "rounds.jsonl"))
            for run in run_folders(folder)]


def _run_info(run: Path, result: ResultFile) -> dict[str, Any]:
    """Who a run is, from its result file: files without ``label``/``seed``/``status`` are
    labelled by their method, seed 0, completed."""
    config = dict(result.extra.get("config", {}))
    method = str(config.get("method", ""))
    diverged = result.extra.get("diverged") or {}
    return {
        "run": run.name,
        "label": str(config.get("label") or method),
        "method": method,
        "partition": str(config.get("partition", "")),
        "seed": int(config.get("seed", 0)),
        "status": str(result.extra.get("status", "completed")),
        "fleet": result.extra.get("fleet", config.get("fleet", "")),
        "message": str(diverged.get("message", "")),
    }


RUN_COLUMNS = ["run", "label", "method", "partition", "seed", "status", "fleet", "message",
               "final_from"]


def accuracy_frame(folder: Path, files: list[RunFiles] | None = None) -> pd.DataFrame:
    """One row per finished run: :data:`RUN_COLUMNS` and :data:`ACCURACY_COLUMNS`.

    Values come from each run's ``result.json``; a metric a run lacks (``rounds_to_target``
    when the target was never reached) is NaN, and so are a diverged run's
    :data:`ACCURACY_ONLY` columns. A result file written before the smoothed final accuracy
    gets it from the run's ``rounds.jsonl``, or without one its last evaluation
    (``final_from``: :data:`FINAL_SOURCES`). Rows are in report order (:func:`_run_order`).
    ``files``: the folder's runs already read (:func:`read_runs`).
    """
    rows = []
    for run in read_runs(folder) if files is None else files:
        result, rounds = run.result, run.rounds
        row = _run_info(run.path, result)
        values = {r.metric: r.value for r in result.records}
        row["final_from"] = _fill_smoothed_final(values, rounds)
        values["last10_change"] = last10_change(rounds)
        values |= {metric: mean_metric(rounds, metric) for metric in COST_METRICS}
        for column, (metric, scale) in ACCURACY_COLUMNS.items():
            row[column] = values[metric] * scale if metric in values else math.nan
        if row["status"] != "completed":
            row.update(dict.fromkeys(ACCURACY_ONLY, math.nan))
            row["final_from"] = "-"
        rows.append(row)
    frame = pd.DataFrame(rows, columns=[*RUN_COLUMNS, *ACCURACY_COLUMNS])
    return frame.sort_values(["partition", "label", "seed"], key=_run_order, kind="stable",
                             ignore_index=True)


def _fill_smoothed_final(values: dict[str, float], rounds: list[dict[str, Any]]) -> str:
    """Add a missing ``smoothed_final_accuracy`` to a run's ``values`` from its rounds, else
    from its last evaluation; return where it came from (:data:`FINAL_SOURCES`, ``-``: no
    accuracy at all)."""
    if "smoothed_final_accuracy" in values:
        return "result"
    smoothed = smoothed_final(rounds)
    if not math.isnan(smoothed):
        values["smoothed_final_accuracy"] = smoothed
        return "rounds"
    if "final_accuracy" in values:
        values["smoothed_final_accuracy"] = values["final_accuracy"]
        return "last"
    return "-"


def mean_metric(rounds: list[dict[str, Any]], metric: str) -> float:
    """The mean of a method metric over the rounds that recorded it; NaN when none did."""
    seen = [float(r["metrics"][metric]) for r in rounds
            if isinstance(r.get("metrics"), dict) and r["metrics"].get(metric) is not None]
    return sum(seen) / len(seen) if seen else math.nan


def last10_change(rounds: list[dict[str, Any]]) -> float:
    """How much the last 10% of rounds moved the test accuracy: the final evaluation minus the
    last evaluation at or before round ``0.9 * R`` (R: rounds used); NaN without both.

    The convergence check of a suite (DESIGN §5): a budget is large enough when this is
    under one point for every method.
    """
    scored = [(r["round"], r["accuracy"]) for r in rounds if r.get("accuracy") is not None]
    if not scored:
        return math.nan
    cutoff = 0.9 * max(r["round"] for r in rounds)
    before = [acc for rnd, acc in scored if rnd <= cutoff]
    return scored[-1][1] - before[-1] if before else math.nan


def _run_order(column: pd.Series) -> pd.Series:
    """Sort key: IID before the other partitions; labels in the registry's order, unknown
    labels after them alphabetically; seeds ascending."""
    if column.name == "partition":
        return column.map(lambda p: (p != "iid", p))
    if column.name == "label":
        return column.map(label_key)
    return column


def label_key(label: str) -> tuple[int, str]:
    """Registered methods in registry order, then the others by name."""
    order = list(METHODS)
    return (order.index(label) if label in order else len(order), label)


def curves_frame(folder: Path, files: list[RunFiles] | None = None) -> pd.DataFrame:
    """Long form from every run's ``rounds.jsonl``: label, partition, seed, status, round,
    accuracy % (evaluated rounds only). ``files``: as in :func:`accuracy_frame`."""
    rows = []
    for run in read_runs(folder) if files is None else files:
        info = _run_info(run.path, run.result)
        for record in run.rounds:
            if record.get("accuracy") is not None:
                rows.append({**{k: info[k] for k in ("label", "partition", "seed", "status")},
                             "round": record["round"], "accuracy_%": 100 * record["accuracy"]})
    return pd.DataFrame(rows, columns=["label", "partition", "seed", "status", "round",
                                       "accuracy_%"])


def memory_ranges(folder: Path, files: list[RunFiles] | None = None) -> pd.DataFrame:
    """Per (label, partition): ``low_mib`` and ``high_mib``, the smallest and the largest
    required bytes of any client task in any round of its runs (``rounds.jsonl``'s
    ``required_bytes``, diverged runs included), in MiB; labels without rounds are left out.
    ``files``: as in :func:`accuracy_frame`."""
    seen: dict[tuple[str, str], list[int]] = {}
    for run in read_runs(folder) if files is None else files:
        info = _run_info(run.path, run.result)
        tasks = [b for record in run.rounds for b in record["required_bytes"]]
        if tasks:
            span = seen.setdefault((info["label"], info["partition"]), [min(tasks), max(tasks)])
            span[:] = [min(span[0], min(tasks)), max(span[1], max(tasks))]
    return pd.DataFrame([{"label": label, "partition": part, "low_mib": low / MIB,
                          "high_mib": high / MIB} for (label, part), (low, high) in seen.items()],
                        columns=["label", "partition", "low_mib", "high_mib"])


def target_accuracy(folder: Path, files: list[RunFiles] | None = None) -> float | None:
    """The accuracy target the runs used (from the first run's result file)."""
    for run in read_runs(folder) if files is None else files:
        target = run.result.extra.get("target_accuracy")
        if target is not None:
            return float(target)
    return None


def suite_result(folder: Path) -> ResultFile | None:
    """The suite's ``result.json``; ``None`` when the folder has none."""
    path = folder / "result.json"
    return read_result(path) if path.is_file() else None


def has_memory(result: ResultFile | None) -> bool:
    """Whether a suite's result file holds a memory section (``peak_bytes`` records)."""
    return result is not None and any(r.metric == "peak_bytes" for r in result.records)
