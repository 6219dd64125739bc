"""A run folder's report, tables and figures, rebuilt from the files in the folder alone.

Inputs (any may be missing): ``result.json`` (the suite's records: memory section plus a copy
of every training run's summary), ``runs/*/result.json`` and ``rounds.jsonl`` (the accuracy
section: one training run per (label, partition, seed), described by the run's
``extra["config"]`` and ``extra["status"]``), ``tables/model_zoo.md`` and ``speed.md``.
Outputs: ``tables/*.md|csv``, ``figures/*.png`` and ``report.md``. The accuracy table gives,
per (label, partition), means over seeds with 95% Student-t intervals (:mod:`bench.stats`); a
diverged run never contributes an accuracy. :func:`compare_runs` puts two run folders side by
side.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from bench import plots
from bench.memory_render import render_memory, summary_frame, summary_text
from bench.run_files import RUN_FILE, read_rounds, read_run_result
from bench.stats import compare_to, format_interval, t_interval
from profl_core.errors import ConfigError
from profl_core.files import read_text
from profl_core.methods.registry import METHODS
from profl_core.results import ResultFile, atomic_write_text, read_result

MIB = 1 << 20

#: Per-run accuracy columns (after the run's label, method, partition, seed and status) and
#: their metric and scale.
ACCURACY_COLUMNS: dict[str, tuple[str, float]] = {
    "final_%": ("final_accuracy", 100.0),
    "best_%": ("best_accuracy", 100.0),
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
ACCURACY_ONLY = ("final_%", "best_%", "last10_pts", "to_target")

#: Columns summarised as a mean ± 95% interval over the completed seeds, and the prefix of
#: their ``<prefix>_mean`` / ``<prefix>_ci95`` columns in the summary; the others are means.
INTERVAL_COLUMNS = {"final_%": "final", "best_%": "best"}

#: The row ``vs_profl`` compares every other label of the same partition with.
REFERENCE = "profl"


def _md(frame: pd.DataFrame, floatfmt: str = ".1f") -> str:
    shown = frame.astype(object).where(frame.notna(), None)  # NaN renders as "-"
    return tabulate(shown, headers="keys", tablefmt="github", showindex=False,
                    floatfmt=floatfmt, missingval="-")


def _write_table(frame: pd.DataFrame, folder: Path, name: str,
                 shown: pd.DataFrame | None = None) -> list[Path]:
    """``tables/<name>.csv`` from ``frame``, ``tables/<name>.md`` from ``shown`` (or it)."""
    md, csv = folder / "tables" / f"{name}.md", folder / "tables" / f"{name}.csv"
    atomic_write_text(md, _md(frame if shown is None else shown) + "\n")
    atomic_write_text(csv, frame.to_csv(index=False))
    return [md, csv]


# ------------------------------------------------------------------------------------ reading


def run_folders(folder: Path) -> list[Path]:
    """Finished training runs of a suite run folder (those holding ``result.json``)."""
    runs = folder / "runs"
    return sorted(p for p in runs.iterdir() if (p / "result.json").is_file()) \
        if runs.is_dir() else []


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


RUN_COLUMNS = ["run", "label", "method", "partition", "seed", "status", "fleet", "message"]


def accuracy_frame(folder: Path) -> pd.DataFrame:
    """One row per finished run: :data:`RUN_COLUMNS` and :data:`ACCURACY_COLUMNS`.

    Values come from each run's ``result.json``; a metric a run lacks (``rounds_to_target``
    when the target was never reached) is NaN, and so are a diverged run's
    :data:`ACCURACY_ONLY` columns. Rows are in report order (:func:`_run_order`).
    """
    rows = []
    for run in run_folders(folder):
        result = read_run_result(run)
        row = _run_info(run, result)
        values = {r.metric: r.value for r in result.records}
        rounds = read_rounds(run / "rounds.jsonl")
        values["last10_change"] = last10_change(rounds)
        values |= {metric: mean_metric(rounds, metric) for metric in COST_METRICS}
        for column, (metric, scale) in ACCURACY_COLUMNS.items():
            row[column] = values[metric] * scale if metric in values else math.nan
        if row["status"] != "completed":
            row.update(dict.fromkeys(ACCURACY_ONLY, math.nan))
        rows.append(row)
    frame = pd.DataFrame(rows, columns=[*RUN_COLUMNS, *ACCURACY_COLUMNS])
    return frame.sort_values(["partition", "label", "seed"], key=_run_order, kind="stable",
                             ignore_index=True)


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
        return column.map(_label_key)
    return column


def _label_key(label: str) -> tuple[int, str]:
    """Registered methods in registry order, then the others by name."""
    order = list(METHODS)
    return (order.index(label) if label in order else len(order), label)


def curves_frame(folder: Path) -> pd.DataFrame:
    """Long form from every run's ``rounds.jsonl``: label, partition, seed, status, round,
    accuracy % (evaluated rounds only)."""
    rows = []
    for run in run_folders(folder):
        info = _run_info(run, read_run_result(run))
        for record in read_rounds(run / "rounds.jsonl"):
            if record.get("accuracy") is not None:
                rows.append({**{k: info[k] for k in ("label", "partition", "seed", "status")},
                             "round": record["round"], "accuracy_%": 100 * record["accuracy"]})
    return pd.DataFrame(rows, columns=["label", "partition", "seed", "status", "round",
                                       "accuracy_%"])


def target_accuracy(folder: Path) -> float | None:
    """The accuracy target the runs used (from the first run's result file)."""
    for run in run_folders(folder):
        target = read_run_result(run).extra.get("target_accuracy")
        if target is not None:
            return float(target)
    return None


def _suite_result(folder: Path) -> ResultFile | None:
    path = folder / "result.json"
    return read_result(path) if path.is_file() else None


def _has_memory(result: ResultFile | None) -> bool:
    return result is not None and any(r.metric == "peak_bytes" for r in result.records)


# ------------------------------------------------------------------------------------ summary


def _summary_names(column: str) -> tuple[str, ...]:
    """The summary columns of a per-run column: ``<prefix>_mean`` and ``<prefix>_ci95`` for
    :data:`INTERVAL_COLUMNS`, else the column itself (its mean). The first holds the mean."""
    if column in INTERVAL_COLUMNS:
        return f"{INTERVAL_COLUMNS[column]}_mean", f"{INTERVAL_COLUMNS[column]}_ci95"
    return (column,)


SUMMARY_COLUMNS = ["label", "partition", "seeds", "completed",
                   *(name for column in ACCURACY_COLUMNS for name in _summary_names(column)),
                   "vs_profl"]


def accuracy_summary(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (label, partition) of :func:`accuracy_frame`'s rows, in their order.

    ``seeds``: runs; ``completed``: those that did not diverge. ``final_mean``/``final_ci95``
    and ``best_mean``/``best_ci95``: mean and 95% half-width over the completed seeds. The
    other :data:`ACCURACY_COLUMNS` are means over the runs that have the value (``rounds``,
    memory and time count diverged runs too; ``to_target`` only the seeds that reached it).
    ``vs_profl``: ``better``/``worse``/``~`` of the final accuracy against the ``profl`` row of
    the same partition (:func:`bench.stats.compare_to`); ``-`` on that row itself, without one,
    or when either has no completed seed.
    """
    rows = []
    for (label, partition), group in runs.groupby(["label", "partition"], sort=False):
        row: dict[str, Any] = {"label": label, "partition": partition, "seeds": len(group),
                               "completed": int((group["status"] == "completed").sum())}
        for column in ACCURACY_COLUMNS:
            values = t_interval(group[column]) if column in INTERVAL_COLUMNS \
                else (group[column].mean(),)
            row.update(zip(_summary_names(column), values, strict=True))
        rows.append(row)
    summary = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    final = {(r["label"], r["partition"]): (r["final_mean"], r["final_ci95"])
             for _, r in summary.iterrows()}
    summary["vs_profl"] = [_versus(final, label, part)
                           for label, part in zip(summary["label"], summary["partition"],
                                                  strict=True)]
    return summary


def _versus(final: dict[tuple[str, str], tuple[float, float]], label: str, part: str) -> str:
    reference = final.get((REFERENCE, part))
    interval = final[(label, part)]
    if label == REFERENCE or reference is None or math.isnan(reference[0]) \
            or math.isnan(interval[0]):
        return "-"
    return compare_to(reference, interval)


def _shown_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """The summary as printed: ``seeds`` as ``completed/total`` when some diverged, and
    ``final_%``/``best_%`` as ``mean ± half`` (``diverged`` when no seed completed)."""
    shown = summary[["label", "partition"]].copy()
    shown["seeds"] = [str(n) if done == n else f"{done}/{n}"
                      for done, n in zip(summary["completed"], summary["seeds"], strict=True)]
    for column in ACCURACY_COLUMNS:
        if column in INTERVAL_COLUMNS:
            mean, half = _summary_names(column)
            shown[column] = [
                "diverged" if done == 0 else format_interval((m, h))
                for done, m, h in zip(summary["completed"], summary[mean], summary[half],
                                      strict=True)]
        else:
            shown[column] = summary[column]
    shown["vs_profl"] = summary["vs_profl"]
    return shown


# ------------------------------------------------------------------------------------ building


def _shown_runs(frame: pd.DataFrame) -> pd.DataFrame:
    """The per-run table as printed: no run folder or divergence message; the fleet only when
    runs differ in it."""
    shown = frame.drop(columns=["run", "message"])
    return shown.drop(columns=["fleet"]) if shown["fleet"].nunique() <= 1 else shown


def _settings_line(folder: Path, runs: pd.DataFrame) -> str:
    paths = run_folders(folder)
    if not paths:
        return ""
    c = read_run_result(paths[0]).extra.get("config", {})
    keys = ("dataset", "model", "width", "fleet", "clients", "per_round", "rounds",
            "local_epochs", "batch_size", "lr", "samples_per_client", "test_samples",
            "schedule", "device")
    seeds = ", ".join(str(s) for s in sorted(set(runs["seed"])))
    return ", ".join([*(f"{k} {c[k]}" for k in keys if k in c), f"seeds {seeds}"])


def diverged_lines(runs: pd.DataFrame) -> list[str]:
    """``diverged: <label> <partition> seed <s>: <message>`` for every diverged run."""
    bad = runs[runs["status"] == "diverged"]
    return [f"diverged: {r['label']} {r['partition']} seed {r['seed']}: {r['message']}"
            for _, r in bad.iterrows()]


LEGEND = (
    "`a ± b`: mean ± half-width of the 95% Student-t interval over the completed seeds (the "
    "mean alone for one seed); `seeds`: completed/total when some diverged; `vs_profl`: final "
    "accuracy against `profl` on the same partition, better/worse when the intervals do not "
    "overlap, ~ when they do; `last10_pts`: points the last 10% of rounds moved the accuracy "
    "(under 1: converged within the budget)."
)


def accuracy_tables(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[Path]]:
    """The per-run and the per-(label, partition) accuracy tables (markdown + CSV) and their
    figures; returns the per-run frame, the summary and the written paths."""
    runs = accuracy_frame(folder)
    summary = accuracy_summary(runs)
    if runs.empty:
        return runs, summary, []
    written = _write_table(runs.drop(columns=["run"]), folder, "accuracy_runs",
                           shown=_shown_runs(runs))
    written += _write_table(summary, folder, "accuracy", shown=_shown_summary(summary))
    written += plots.accuracy_figures(curves_frame(folder), runs, summary, folder / "figures",
                                      labels=sorted(set(runs["label"]), key=_label_key),
                                      target=target_accuracy(folder))
    return runs, summary, written


def build_report(folder: Path) -> str:
    """Rebuild ``report.md``, ``tables/`` and ``figures/`` of a run folder from its files.

    Returns:
        The text printed to the terminal: the accuracy table with its legend and diverged
        runs, and the memory summary.
    """
    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such run folder")
    if (folder / RUN_FILE).is_file() or (folder / "rounds.jsonl").is_file():
        raise ConfigError(f"{folder}: a training run's folder (profl train), whose result.json, "
                          "rounds.jsonl and learning_curve.png are its report; give profl "
                          "report a suite run folder (profl bench), e.g. its parent's parent")
    result = _suite_result(folder)
    runs, summary, _ = accuracy_tables(folder)
    if runs.empty and result is None and not (folder / "speed.md").is_file():
        raise ConfigError(f"{folder}: no result.json, runs/*/result.json or speed.md; "
                          "is this a run folder?")
    suite = result.suite if result is not None else folder.name.rsplit("_", 1)[-1]
    lines = [f"# Suite `{suite}`", ""]
    if result is not None:
        prov = result.provenance
        git = prov.get("git", {})
        lines += [f"Run {result.created_utc} on {prov.get('machine', '?')} "
                  f"({prov.get('cpu_count', '?')} CPUs, GPU {prov.get('gpu') or 'none'}), "
                  f"torch {prov.get('torch', '?')}, commit {str(git.get('sha', '?'))[:8]}"
                  f"{' (dirty)' if git.get('dirty') else ''}.", ""]
    printed: list[str] = []
    if not runs.empty:
        target = target_accuracy(folder)
        diverged = [f"- {line}" for line in diverged_lines(runs)]
        section = [
            "## Accuracy under the fleet's memory limits", "",
            f"Settings: {_settings_line(folder, runs)}.", "",
            _md(_shown_summary(summary)), "",
            LEGEND, "",
            *([*diverged, ""] if diverged else []),
        ]
        lines += [
            *section,
            f"`final_%`/`best_%`: test accuracy at the last/best evaluation. `last10_pts`: how "
            "many points the last 10% of rounds moved the test accuracy (mean over seeds; a "
            "method has converged within the budget when it is under 1). `rounds`: rounds "
            f"used (diverged runs included). `to_target`: first round with test accuracy >= "
            f"{100 * (target or 0):.0f}%, mean over the seeds that reached it (`-`: none "
            "did). `clients`: clients that trained per round (mean). `eligible_%`: mean share "
            "of the fleet whose budget fits the round's sub-model (`fedavg` is AllLarge, the "
            "upper bound that ignores budgets). `peak_mib`: the largest memory any of the "
            "method's client tasks needed; `saved_%` is against the full model. `extra_fwd`, "
            "`ubatch`: compute cost of the methods on single-device alternatives (`-` for the "
            "others), extra forwards of the model per local step (activation checkpointing "
            "recomputes it) and samples per micro-batch (gradient accumulation), means over "
            "participants and rounds. `wall_s`: "
            "training time of a run. Every run: `tables/accuracy_runs.md`.", "",
            "![accuracy per round](figures/accuracy_curves.png)", "",
            "![final accuracy against peak memory](figures/accuracy_vs_memory.png)", "",
            "![participation per method](figures/participation.png)", "",
        ]
        printed += section
    if _has_memory(result):
        assert result is not None
        render_memory(result, folder)
        batch = result.extra.get("batch_size", "?")
        probe = result.extra.get("probe", "?")
        section = [f"## Training memory at batch {batch} ({probe} probe)", "",
                   summary_text(result), "",
                   "![memory breakdown](figures/memory_breakdown.png)", "",
                   "![memory participation](figures/memory_participation.png)", ""]
        lines += section
        printed += [*section[:3], ""]
    zoo = folder / "tables" / "model_zoo.md"
    if zoo.is_file():
        lines += ["#" + read_text(zoo, "model zoo table", missing="rerun the suite"), ""]
    speed = folder / "speed.md"
    if speed.is_file():
        text = read_text(speed, "speed table", missing="rerun the suite").replace(
            "# Speed", "## Speed", 1)
        lines += [text, "Raw numbers: `benchmark.json` (pytest-benchmark).", ""]
        printed += [text]
    atomic_write_text(folder / "report.md", "\n".join(lines).rstrip() + "\n")
    return "\n".join(printed).rstrip()


# ------------------------------------------------------------------------------------ compare


def _metrics_frame(folder: Path) -> pd.DataFrame:
    """Long form of one run folder: key (what), metric, value (accuracy: means over seeds)."""
    rows = []
    summary = accuracy_summary(accuracy_frame(folder))
    for _, row in summary.iterrows():
        for column in ACCURACY_COLUMNS:
            rows.append({"what": f"{row['label']} {row['partition']}", "metric": column,
                         "value": row[_summary_names(column)[0]]})
    result = _suite_result(folder)
    if _has_memory(result):
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
    return f"a: {run_a}\nb: {run_b}\n\n" + _md(frame, floatfmt=".2f")
