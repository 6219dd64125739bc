"""Figures made with seaborn from long-form data frames (themselves read from result files)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns

sns.set_theme(style="whitegrid", context="notebook")


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)
    tmp.replace(path)
    return path


def breakdown_bars(frame: pd.DataFrame, path: Path, *, category_order: list[str]) -> Path:
    """Stacked bars per case of the bytes at the peak by category, one panel per model."""
    models = list(dict.fromkeys(frame["model"]))
    cols = min(3, len(models))
    rows = -(-len(models) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 3.8 * rows), squeeze=False)
    palette = dict(zip(category_order, sns.color_palette("tab10", len(category_order)),
                       strict=True))
    for ax, model in zip(axes.flat, models, strict=False):
        part = frame[frame["model"] == model]
        wide = part.pivot_table(index="case", columns="category", values="mib", sort=False)
        wide = wide[[c for c in category_order if c in wide.columns]]
        wide.plot.bar(stacked=True, ax=ax, color=[palette[c] for c in wide.columns],
                      legend=False, width=0.8)
        ax.set_title(model)
        ax.set_xlabel("")
        ax.set_ylabel("MiB at the step's peak")
        ax.tick_params(axis="x", rotation=45)
    for ax in list(axes.flat)[len(models):]:
        ax.set_visible(False)
    handles = [plt.Rectangle((0, 0), 1, 1, color=palette[c]) for c in category_order
               if c in set(frame["category"])]
    labels = [c for c in category_order if c in set(frame["category"])]
    fig.legend(handles, labels, loc="upper center", ncol=min(5, len(labels)),
               bbox_to_anchor=(0.5, 1.04), frameon=False)
    fig.suptitle("Training-step peak memory by category (full model, ProFL shrink and grow steps)",
                 y=1.08)
    fig.tight_layout()
    return _save(fig, path)


def block_peak_bars(frame: pd.DataFrame, model: str, path: Path) -> Path:
    """Per-block forward/backward peaks of every case of one model."""
    part = frame[frame["model"] == model].copy()
    part["segment"] = part["block"].str.replace("teacher_output", "teacher")
    grid = sns.catplot(
        data=part, kind="bar", x="segment", y="mib", hue="phase", col="case", col_wrap=4,
        height=2.8, aspect=1.25, sharex=False, palette="Set2",
    )
    grid.set_axis_labels("", "peak MiB")
    grid.set_titles("{col_name}")
    for ax in grid.axes.flat:
        ax.tick_params(axis="x", rotation=60, labelsize=8)
    grid.figure.subplots_adjust(hspace=0.55)
    grid.figure.suptitle(f"{model}: live memory peak while each block ran", y=1.03)
    return _save(grid.figure, path)


def participation_bars(frame: pd.DataFrame, path: Path) -> Path:
    """Share of each fleet's devices that can train each case, one panel per model."""
    grid = sns.catplot(
        data=frame, kind="bar", x="case", y="participation_%", hue="fleet", col="model",
        col_wrap=3, height=3.2, aspect=1.4, sharex=False, palette="colorblind",
    )
    grid.set_axis_labels("", "devices that fit (%)")
    grid.set_titles("{col_name}")
    for ax in grid.axes.flat:
        ax.tick_params(axis="x", rotation=45)
        ax.set_ylim(0, 105)
    grid.figure.suptitle("Participation: devices whose budget fits the step", y=1.03)
    return _save(grid.figure, path)


def memory_figures(
    breakdown: pd.DataFrame,
    blocks: pd.DataFrame,
    participation: pd.DataFrame,
    folder: Path,
    *,
    category_order: list[str],
) -> list[Path]:
    """All memory figures; returns the written paths."""
    paths = [
        breakdown_bars(breakdown, folder / "memory_breakdown.png", category_order=category_order),
        participation_bars(participation, folder / "memory_participation.png"),
    ]
    for model in dict.fromkeys(blocks["model"]):
        paths.append(block_peak_bars(blocks, model, folder / f"block_peaks_{model}.png"))
    return paths
