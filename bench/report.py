"""A run folder's report, tables and figures, rebuilt from the files in the folder alone.

Inputs (any may be missing): ``result.json`` (the suite's records: memory section plus a copy
of every training run's summary), ``runs/<method>-<partition>/result.json`` and ``rounds.jsonl``
(the accuracy section), ``tables/model_zoo.md`` and ``speed.md``. Outputs: ``tables/*.md|csv``,
``figures/*.png`` and ``report.md``. :func:`compare_runs` puts two run folders side by side.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pandas as pd
from tabulate import tabulate

from profl_core.errors import ConfigError
from profl_core.results import ResultFile, atomic_write_text, read_result

MIB = 1 << 20

#: Accuracy-table columns (after ``method`` and ``partition``) and their metric and scale.
ACCURACY_COLUMNS: dict[str, tuple[str, float]] = {
    "final_%": ("final_accuracy", 100.0),
    "best_%": ("best_accuracy", 100.0),
    "to_target": ("rounds_to_target", 1.0),
    "rounds": ("rounds", 1.0),
    "clients": ("mean_participants", 1.0),
    "eligible_%": ("mean_eligible_share", 100.0),
    "peak_mib": ("max_required_bytes", 1 / MIB),
    "saved_%": ("memory_reduction", 100.0),
    "wall_s": ("train_wall_s", 1.0),
}


def _md(frame: pd.DataFrame, floatfmt: str = ".1f") -> str:
    shown = frame.astype(object).where(frame.notna(), None)  # NaN renders as "-"
    return tabulate(shown, headers="keys", tablefmt="github", showindex=False,
                    floatfmt=floatfmt, missingval="-")


def _write_table(frame: pd.DataFrame, folder: Path, name: str) -> list[Path]:
    md, csv = folder / "tables" / f"{name}.md", folder / "tables" / f"{name}.csv"
    atomic_write_text(md, _md(frame) + "\n")
    atomic_write_text(csv, frame.to_csv(index=False))
    return [md, csv]


# ------------------------------------------------------------------------------------ reading


def run_folders(folder: Path) -> list[Path]:
    """Finished training runs of a suite run folder (those holding ``result.json``)."""
    runs = folder / "runs"
    return sorted(p for p in runs.iterdir() if (p / "result.json").is_file()) \
        if runs.is_dir() else []


def _run_info(run: Path, result: ResultFile) -> dict[str, Any]:
    config = dict(result.extra.get("config", {}))
    method, _, partition = run.name.partition("-")
    return {
        "run": run.name,
        "method": config.get("method", method),
        "partition": config.get("partition", partition),
        "fleet": result.extra.get("fleet", config.get("fleet", "")),
    }


def accuracy_frame(folder: Path) -> pd.DataFrame:
    """One row per finished run: method, partition, fleet and :data:`ACCURACY_COLUMNS`.

    Values come from each run's ``result.json``; a metric a run lacks (``rounds_to_target``
    when the target was never reached) is NaN.
    """
    rows = []
    for run in run_folders(folder):
        result = read_result(run / "result.json")
        row = _run_info(run, result)
        values = {r.metric: r.value for r in result.records}
        for column, (metric, scale) in ACCURACY_COLUMNS.items():
            row[column] = values[metric] * scale if metric in values else math.nan
        rows.append(row)
    columns = ["run", "method", "partition", "fleet", *ACCURACY_COLUMNS]
    frame = pd.DataFrame(rows, columns=columns)
    return frame.sort_values(["partition", "method"], key=_run_order, kind="stable",
                             ignore_index=True)


def _run_order(column: pd.Series) -> pd.Series:
    """Sort key: IID before the other partitions; methods in the registry's order."""
    if column.name == "partition":
        return column.map(lambda p: (p != "iid", p))
    from bench.training import METHODS

    order = {name: i for i, name in enumerate(METHODS)}
    return column.map(lambda m: order.get(m, len(order)))


def curves_frame(folder: Path) -> pd.DataFrame:
    """Long form from every run's ``rounds.jsonl``: method, partition, round, accuracy %."""
    rows = []
    for run in run_folders(folder):
        info = _run_info(run, read_result(run / "result.json"))
        for line in (run / "rounds.jsonl").read_text(encoding="utf-8").splitlines():
            record = json.loads(line) if line else None
            if record and record["accuracy"] is not None:
                rows.append({"method": info["method"], "partition": info["partition"],
                             "round": record["round"], "accuracy_%": 100 * record["accuracy"]})
    return pd.DataFrame(rows, columns=["method", "partition", "round", "accuracy_%"])


def target_accuracy(folder: Path) -> float | None:
    """The accuracy target the runs used (from the first run's result file)."""
    for run in run_folders(folder):
        target = read_result(run / "result.json").extra.get("target_accuracy")
        if target is not None:
            return float(target)
    return None


def _suite_result(folder: Path) -> ResultFile | None:
    path = folder / "result.json"
    return read_result(path) if path.is_file() else None


def _has_memory(result: ResultFile | None) -> bool:
    return result is not None and any(r.metric == "peak_bytes" for r in result.records)


# ------------------------------------------------------------------------------------ building


def _shown(frame: pd.DataFrame) -> pd.DataFrame:
    """The accuracy table as printed: no run folder; the fleet only when runs differ in it."""
    shown = frame.drop(columns=["run"])
    return shown.drop(columns=["fleet"]) if shown["fleet"].nunique() <= 1 else shown


def _settings_line(folder: Path) -> str:
    runs = run_folders(folder)
    if not runs:
        return ""
    c = read_result(runs[0] / "result.json").extra.get("config", {})
    keys = ("dataset", "model", "width", "fleet", "clients", "per_round", "rounds",
            "local_epochs", "batch_size", "lr", "samples_per_client", "test_samples", "seed",
            "schedule", "device")
    return ", ".join(f"{k} {c[k]}" for k in keys if k in c)


def accuracy_tables(folder: Path) -> tuple[pd.DataFrame, list[Path]]:
    """The accuracy table (markdown + CSV) and its figures; returns the frame and the paths."""
    from bench import plots

    frame = accuracy_frame(folder)
    if frame.empty:
        return frame, []
    written = _write_table(frame.drop(columns=["run"]), folder, "accuracy")
    written += plots.accuracy_figures(curves_frame(folder), frame, folder / "figures",
                                      target=target_accuracy(folder))
    return frame, written


def build_report(folder: Path) -> str:
    """Rebuild ``report.md``, ``tables/`` and ``figures/`` of a run folder from its files.

    Returns:
        The text printed to the terminal: the accuracy table and the memory summary.
    """
    from bench.memory_suite import render_memory, summary_text

    if not folder.is_dir():
        raise ConfigError(f"{folder}: no such run folder")
    result = _suite_result(folder)
    frame, _ = accuracy_tables(folder)
    if frame.empty and result is None and not (folder / "speed.md").is_file():
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
    if not frame.empty:
        target = target_accuracy(folder)
        section = [
            "## Accuracy under the fleet's memory limits", "",
            f"Settings: {_settings_line(folder)}.", "",
            _md(_shown(frame)), "",
            f"`final_%`/`best_%`: test accuracy at the last/best evaluation. `to_target`: first "
            f"round with test accuracy >= {100 * (target or 0):.0f}% (`-`: never reached). "
            "`clients`: clients that trained per round (mean). `eligible_%`: mean share of the "
            "fleet whose budget fits the round's sub-model (`fedavg` is AllLarge, the upper "
            "bound that ignores budgets). `peak_mib`: the largest memory any of the method's "
            "client tasks needed; `saved_%` is against the full model. `wall_s`: training "
            "time of the run.", "",
            "![accuracy per round](figures/accuracy_curves.png)", "",
            "![final accuracy against peak memory](figures/accuracy_vs_memory.png)", "",
            "![participation per method](figures/participation.png)", "",
        ]
        lines += section
        printed += [*section[:5], ""]
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
        lines += ["#" + zoo.read_text(encoding="utf-8"), ""]
    speed = folder / "speed.md"
    if speed.is_file():
        text = speed.read_text(encoding="utf-8").replace("# Speed", "## Speed", 1)
        lines += [text, "Raw numbers: `benchmark.json` (pytest-benchmark).", ""]
        printed += [text]
    atomic_write_text(folder / "report.md", "\n".join(lines).rstrip() + "\n")
    return "\n".join(printed).rstrip()


# ------------------------------------------------------------------------------------ compare


def _metrics_frame(folder: Path) -> pd.DataFrame:
    """Long form of one run folder: key (what), metric, value."""
    rows = []
    acc = accuracy_frame(folder)
    for _, row in acc.iterrows():
        for column in ACCURACY_COLUMNS:
            rows.append({"what": f"{row['method']} {row['partition']}", "metric": column,
                         "value": row[column]})
    result = _suite_result(folder)
    if _has_memory(result):
        from bench.memory_suite import summary_frame

        assert result is not None
        for _, row in summary_frame(result).iterrows():
            for column in ("full_peak_mib", "profl_peak_mib", "reduction_%"):
                if column in row:
                    rows.append({"what": f"memory {row['model']}", "metric": column,
                                 "value": row[column]})
    return pd.DataFrame(rows, columns=["what", "metric", "value"])


def compare_frame(run_a: Path, run_b: Path) -> pd.DataFrame:
    """The same metrics of two run folders side by side with ``delta = b - a``."""
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
