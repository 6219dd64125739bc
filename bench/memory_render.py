"""The memory tables and figures: rebuilt from a section's ``result.json`` alone, never from
memory state (:func:`render_memory`), and the summary the CLI prints (:func:`summary_text`).

Output under the run folder: ``tables/*.md|csv`` and ``figures/*.png``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from tabulate import tabulate

from bench import plots
from profl_core.memory.categories import Category
from profl_core.results import ResultFile, atomic_write_text

MIB = 1 << 20


def _split_key(key: str) -> tuple[str, str]:
    model, case, _batch = key.split("/")
    return model, case


def case_frame(result: ResultFile) -> pd.DataFrame:
    """One row per case: model, case, peak, the bytes held before the step and where the peak
    happened (MiB)."""
    rows: dict[str, dict[str, object]] = {}
    for r in result.records:
        if r.unit == "B" and r.metric in ("peak_bytes", "heap_peak_bytes", "before_step_bytes"):
            model, case = _split_key(r.key)
            row = rows.setdefault(r.key, {"model": model, "case": case})
            row[r.metric.replace("_bytes", "_mib")] = r.value / MIB
        elif r.metric.startswith("peak_at:"):
            _, block, phase = r.metric.split(":")
            rows.setdefault(r.key, {})["peak_at"] = f"{block} {phase}"
    return pd.DataFrame(list(rows.values()))


def summary_frame(result: ResultFile) -> pd.DataFrame:
    """One row per model: full-model peak, ProFL peak and the reduction (tensor, and heap
    when the probe knows it)."""
    rows: dict[str, dict[str, object]] = {}
    for r in result.records:
        if r.key.count("/") == 2 and "/profl/" in r.key:
            row = rows.setdefault(r.key, {"model": r.key.split("/")[0]})
            if r.unit == "B":
                row[r.metric.replace("_bytes", "_mib")] = r.value / MIB
            else:
                row[r.metric + "_%"] = 100 * r.value
    return pd.DataFrame(list(rows.values()))


def alternatives_frame(result: ResultFile) -> pd.DataFrame:
    """Per model: the full model, its single-device alternatives (``full+<mods>``), ProFL's
    largest step and ProFL's largest step with each of its alternatives' modifiers: tensor and
    heap peaks (MiB) and both in % of the full model's. Empty without alternatives."""
    cases = case_frame(result)
    if cases.empty or not cases["case"].str.contains("+", regex=False).any():
        return pd.DataFrame()
    rows: list[dict[str, object]] = []
    for model, part in cases.groupby("model", sort=False):
        if not part["case"].str.contains("+", regex=False).any():
            continue  # width variants and models without alternatives
        base = part["case"].str.split("+", n=1).str[0]
        mods = part["case"].str.split("+", n=1).str[1].fillna("")
        full = part[part["case"] == "full"]
        if full.empty:
            continue
        full_peak = float(full["peak_mib"].iloc[0])
        full_heap = float(full["heap_peak_mib"].iloc[0]) if "heap_peak_mib" in part else None
        entries: list[tuple[str, str, pd.DataFrame]] = [
            (case, "", part[part["case"] == case])
            for case in part["case"][base == "full"]]
        steps = part[base.str.startswith(("grow:", "shrink:"))]
        for mod in dict.fromkeys(mods[steps.index]):
            group = steps[mods[steps.index] == mod]
            largest = group.loc[group["peak_mib"].idxmax()]
            label = "profl" if not mod else f"profl+{mod}"
            entries.append((label, str(largest["case"]).split("+", 1)[0], group))
        for label, step, group in entries:
            row: dict[str, object] = {"model": model, "case": label, "largest step": step,
                                      "peak_mib": group["peak_mib"].max(),
                                      "peak_%_of_full": 100 * group["peak_mib"].max() / full_peak}
            if full_heap is not None:
                row["heap_peak_mib"] = group["heap_peak_mib"].max()
                row["heap_%_of_full"] = 100 * group["heap_peak_mib"].max() / full_heap
            rows.append(row)
    return pd.DataFrame(rows)


def breakdown_frame(result: ResultFile) -> pd.DataFrame:
    """Long form: model, case, category, MiB at the case's peak."""
    rows = [
        {**dict(zip(("model", "case"), _split_key(r.key), strict=True)),
         "category": r.metric.split(":", 1)[1], "mib": r.value / MIB}
        for r in result.records if r.metric.startswith("breakdown_bytes:")
    ]
    return pd.DataFrame(rows)


def block_frame(result: ResultFile) -> pd.DataFrame:
    """Long form: model, case, block, phase, peak MiB of that segment."""
    rows = []
    for r in result.records:
        if r.metric.startswith("block_peak_bytes:"):
            _, block, phase = r.metric.split(":")
            model, case = _split_key(r.key)
            rows.append({"model": model, "case": case, "block": block, "phase": phase,
                         "mib": r.value / MIB})
    return pd.DataFrame(rows)


def participation_frame(result: ResultFile) -> pd.DataFrame:
    """Long form: model, case, fleet, share of devices that can train the case (%)."""
    rows = [
        {**dict(zip(("model", "case"), _split_key(r.key), strict=True)),
         "fleet": r.metric.split(":", 1)[1], "participation_%": 100 * r.value}
        for r in result.records if r.metric.startswith("participation:")
    ]
    return pd.DataFrame(rows)


CATEGORY_ORDER = [str(c) for c in Category]


def render_memory(result: ResultFile, folder: Path) -> list[Path]:
    """Write the memory tables (markdown + CSV) and figures (PNG) from a result file."""
    written: list[Path] = []
    tables = {
        "memory_summary": summary_frame(result),
        "memory_cases": case_frame(result),
        "memory_participation": participation_frame(result).pivot_table(
            index=["model", "case"], columns="fleet", values="participation_%", sort=False
        ).reset_index(),
        "memory_alternatives": alternatives_frame(result),
    }
    for name, frame in tables.items():
        if frame.empty and name == "memory_alternatives":
            continue
        md = folder / "tables" / f"{name}.md"
        atomic_write_text(md, tabulate(frame, headers="keys", tablefmt="github",
                                       showindex=False, floatfmt=".1f") + "\n")
        csv = md.with_suffix(".csv")
        atomic_write_text(csv, frame.to_csv(index=False))
        written += [md, csv]
    written += plots.memory_figures(
        breakdown_frame(result), block_frame(result), participation_frame(result),
        folder / "figures", category_order=CATEGORY_ORDER,
    )
    return written


def summary_text(result: ResultFile) -> str:
    """The per-model summary as a markdown table (what the CLI prints), then the
    alternatives table when the section has alternatives."""
    text = tabulate(summary_frame(result), headers="keys", tablefmt="github", showindex=False,
                    floatfmt=".1f")
    alternatives = alternatives_frame(result)
    if not alternatives.empty:
        text += "\n\nSingle-device alternatives (tensor and heap peaks):\n\n" + tabulate(
            alternatives, headers="keys", tablefmt="github", showindex=False, floatfmt=".1f")
    return text
