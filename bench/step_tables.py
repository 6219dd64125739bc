"""ProFL's steps over a suite's runs: how each step ended and how long EM let it run, and how
close each basic-layer stand-in came to the real block it replaces, from the ``extra.steps``
of every run's ``result.json`` (:func:`bench.run_summary.step_summary`), written as
``tables/profl_steps.md|csv`` and ``tables/profl_fits.md|csv``.

Only ProFL's steps count (stages ``shrink`` and ``grow``); the other methods' single step is
left out, so a suite without ProFL runs has no rows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd

from bench.frame_tables import markdown_table, write_table
from bench.run_files import read_run_result
from bench.run_frames import label_key, run_folders

#: The end of a step the run's end cut short (its ``end`` is None).
RUN_END = "run end"

#: Why a step ends, in column order: the EM rule, the round cap, the fixed schedule, the run.
REASONS = ("em", "cap", "fixed", RUN_END)

#: ProFL's stages (the others' steps are the whole run).
PROFL_STAGES = frozenset({"shrink", "grow"})

STEP_COLUMNS = ["run", "label", "partition", "seed", "step", "rounds", "end", "accuracy_%",
                "block_accuracy_%"]


def _percent(value: Any) -> float:
    return float("nan") if value is None else 100 * float(value)


def steps_frame(folder: Path) -> pd.DataFrame:
    """One row per ProFL step of every finished run of a suite run folder: the run's folder
    name, label (its method when unlabelled), partition and seed, the step's label, rounds,
    why it ended (:data:`RUN_END` when the run's end cut it), its test accuracy and, for a
    basic-layer fit, the real block's (percent; NaN when not evaluated or not a fit). Runs
    are in the accuracy tables' order (IID first, labels in the registry's order), each run's
    steps in their order."""
    rows = []
    for run in run_folders(folder):
        result = read_run_result(run)
        config = result.extra.get("config", {})
        who = {"run": run.name, "label": str(config.get("label") or config.get("method", "")),
               "partition": str(config.get("partition", "")),
               "seed": int(config.get("seed", 0))}
        for step in result.extra.get("steps") or []:
            if step.get("stage") not in PROFL_STAGES:
                continue
            rows.append({**who, "step": step["label"], "rounds": int(step["rounds"]),
                         "end": step.get("end") or RUN_END,
                         "accuracy_%": _percent(step.get("accuracy")),
                         "block_accuracy_%": _percent(step.get("block_accuracy"))})
    frame = pd.DataFrame(rows, columns=STEP_COLUMNS)
    return frame.sort_values(["partition", "label"], key=_report_order, kind="stable",
                             ignore_index=True)


def _report_order(column: pd.Series) -> pd.Series:
    """The accuracy tables' order: IID first, labels in the registry's order."""
    if column.name == "partition":
        return column.map(lambda p: (p != "iid", p))
    return column.map(label_key)


ENDS_COLUMNS = ["label", "partition", "runs", "steps", *REASONS, "em_rounds_median",
                "em_rounds_min", "em_rounds_max"]


def end_counts(steps: pd.DataFrame) -> pd.DataFrame:
    """Per (label, partition), in first-seen order: runs, steps, the steps that ended for
    each of :data:`REASONS` (over seeds and steps), and the median, least and most rounds of
    the steps EM ended (NaN when it ended none)."""
    rows = []
    for (label, partition), group in steps.groupby(["label", "partition"], sort=False):
        by_em = group.loc[group["end"] == "em", "rounds"]
        rows.append({"label": label, "partition": partition, "runs": group["run"].nunique(),
                     "steps": len(group),
                     **{reason: int((group["end"] == reason).sum()) for reason in REASONS},
                     "em_rounds_median": by_em.median(), "em_rounds_min": by_em.min(),
                     "em_rounds_max": by_em.max()})
    return pd.DataFrame(rows, columns=ENDS_COLUMNS)


FIT_COLUMNS = ["label", "partition", "step", "seeds", "standin_%", "block_%", "gap_pts"]


def fit_gaps(steps: pd.DataFrame) -> pd.DataFrame:
    """Per (label, partition, basic-layer fit) with both accuracies: the seeds that have
    them, the stand-in's and the real block's mean test accuracy over those seeds, and the
    gap in points (stand-in minus block: negative when the stand-in is worse)."""
    fits = steps[steps["step"].str.startswith("fit ")
                 & steps["accuracy_%"].notna() & steps["block_accuracy_%"].notna()]
    rows = []
    for (label, partition, step), group in fits.groupby(["label", "partition", "step"],
                                                         sort=False):
        standin, block = group["accuracy_%"].mean(), group["block_accuracy_%"].mean()
        rows.append({"label": label, "partition": partition, "step": step,
                     "seeds": len(group), "standin_%": standin, "block_%": block,
                     "gap_pts": standin - block})
    return pd.DataFrame(rows, columns=FIT_COLUMNS)


def _shown_ends(ends: pd.DataFrame) -> pd.DataFrame:
    """The end counts as printed: the EM-ended steps' rounds as ``median (min-max)``."""
    shown = ends.drop(columns=["em_rounds_median", "em_rounds_min", "em_rounds_max"])
    shown["em_rounds"] = [
        "-" if pd.isna(median) else f"{median:g} ({low:g}-{high:g})"
        for median, low, high in zip(ends["em_rounds_median"], ends["em_rounds_min"],
                                     ends["em_rounds_max"], strict=True)]
    return shown


STEPS_LEGEND = (
    "Step ends over seeds and steps: `em` the effective-movement rule, `cap` the step's round "
    "cap, `fixed` the fixed schedule, `run end` cut by the end of the run (a divergence); "
    "`em_rounds`: median (range) of the rounds of the steps EM ended. Fits: "
    "test accuracy at the end of each basic-layer fit (`standin_%`) against that at the end "
    "of training the real block it stands in for (`block_%`), means over seeds; `gap_pts`: "
    "stand-in minus block, in points."
)


def step_section(folder: Path) -> list[str]:
    """The report's "ProFL steps" section (no lines when no run has ProFL steps); writes
    ``tables/profl_steps.md|csv`` (step ends) and ``tables/profl_fits.md|csv`` (fits)."""
    steps = steps_frame(folder)
    if steps.empty:
        return []
    ends, fits = end_counts(steps), fit_gaps(steps)
    write_table(ends, folder, "profl_steps", shown=_shown_ends(ends))
    lines = ["## ProFL steps", "", markdown_table(_shown_ends(ends)), ""]
    if not fits.empty:
        write_table(fits, folder, "profl_fits")
        lines += [markdown_table(fits), ""]
    return [*lines, STEPS_LEGEND, "",
            "EM per step against its level: `runs/<run>/effective_movement.png`.", ""]
