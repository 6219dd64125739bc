"""Figures (seaborn styles): the report's, from long-form data frames themselves read from
result files, and one training run's learning curve and effective movement per step."""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.collections import PolyCollection
from matplotlib.ticker import MaxNLocator

from bench.run_summary import step_groups, step_label
from bench.stats import t_interval
from bench.step_tables import RUN_END

sns.set_theme(style="whitegrid", context="notebook")


def _save(fig: plt.Figure, path: Path, *, tight: bool = True) -> Path:
    """Write ``fig`` atomically and close it; ``tight=False`` keeps the figure's own margins
    (no second drawing to measure them: figures with many panels draw in a fraction of the
    time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    fig.savefig(tmp, dpi=110, bbox_inches="tight" if tight else None)
    plt.close(fig)
    tmp.replace(path)
    return path


def fold_widths(frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with each width variant of a model (``cnn@w0.5``, HeteroFL's and AllSmall's
    sub-models) moved into its model as cases ``<case>@w0.5``, after the model's own cases,
    widest first; models in order of appearance."""
    split = frame["model"].str.split("@w", n=1, regex=False)
    base = split.str[0]
    width = split.str[1]
    out = frame.assign(model=base, case=[c if pd.isna(w) else f"{c}@w{w}"
                                         for c, w in zip(frame["case"], width, strict=True)])
    order = {m: i for i, m in enumerate(dict.fromkeys(base))}
    key = pd.DataFrame({"m": base.map(order), "variant": width.notna(),
                        "w": -pd.to_numeric(width, errors="coerce").fillna(1.0)})
    return out.iloc[np.lexsort((key["w"], key["variant"], key["m"]))].reset_index(drop=True)


def _bars(ax: plt.Axes, x: np.ndarray, heights: np.ndarray, width: float, color: Any,
          bottom: np.ndarray | None = None) -> None:
    """Bars centred on ``x`` as one collection (``ax.bar`` makes an artist per bar: with
    thousands of bars most of a figure's time)."""
    low = np.zeros(len(x)) if bottom is None else bottom
    left, right, top = x - width / 2, x + width / 2, low + heights
    boxes = np.stack([np.column_stack(pair) for pair in
                      ((left, low), (left, top), (right, top), (right, low))], axis=1)
    ax.add_collection(PolyCollection(list(boxes), facecolors=[color], edgecolors="none"))
    ax.update_datalim(np.column_stack([np.r_[left, right], np.r_[low, top]]))
    ax.autoscale_view()


def _cases(part: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(part["case"]))


def _case_ticks(ax: plt.Axes, cases: list[str]) -> None:
    ax.set_xticks(np.arange(len(cases)), cases, rotation=90, fontsize=7)
    ax.set_xlim(-0.6, len(cases) - 0.4)


def breakdown_bars(frame: pd.DataFrame, path: Path, *, category_order: list[str]) -> Path:
    """Stacked bars per case of the bytes at the peak by category, one panel per model (its
    width variants as cases, :func:`fold_widths`)."""
    frame = fold_widths(frame)
    models = list(dict.fromkeys(frame["model"]))
    cols = min(2, len(models))
    rows = -(-len(models) // cols)
    height = 4.2 * rows + 1.0
    fig, axes = plt.subplots(rows, cols, figsize=(8.0 * cols, height), squeeze=False)
    fig.subplots_adjust(left=0.06, right=0.98, top=1 - 0.9 / height, bottom=1.5 / height,
                        hspace=0.62, wspace=0.18)
    palette = dict(zip(category_order, sns.color_palette("tab10", len(category_order)),
                       strict=True))
    for ax, model in zip(axes.flat, models, strict=False):
        part = frame[frame["model"] == model]
        wide = part.pivot_table(index="case", columns="category", values="mib", sort=False,
                                aggfunc="sum").reindex(_cases(part))
        bottom = np.zeros(len(wide))
        for category in [c for c in category_order if c in wide.columns]:
            values = wide[category].fillna(0).to_numpy()
            _bars(ax, np.arange(len(wide)), values, 0.8, palette[category], bottom.copy())
            bottom += values
        _case_ticks(ax, list(wide.index))
        ax.set_title(model, fontsize=10)
        ax.set_ylabel("MiB at the step's peak", fontsize=9)
        ax.tick_params(axis="y", labelsize=8)
    for ax in list(axes.flat)[len(models):]:
        ax.set_visible(False)
    present = set(frame["category"])
    labels = [c for c in category_order if c in present]
    handles = [plt.Rectangle((0, 0), 1, 1, color=palette[c]) for c in labels]
    fig.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, 1 - 0.35 / height),
               ncol=min(9, len(labels)), frameon=False, fontsize=9)
    fig.suptitle("Training-step peak memory by category (full model, ProFL shrink and grow "
                 "steps, the alternatives and the width variants @w)", fontsize=11,
                 y=1 - 0.08 / height)
    return _save(fig, path, tight=False)


#: Short names of the probe's phases in :func:`block_peak_bars`'s columns.
PHASE_SHORT = {"forward": "fwd", "backward": "bwd", "optimizer": "opt"}


def block_peak_bars(frame: pd.DataFrame, model: str, path: Path) -> Path:
    """Where each case of one model (its width variants as cases, :func:`fold_widths`) peaks:
    a heatmap with a row per case (named with its peak in MiB) and a column per block and
    phase, coloured by the live tensor peak while that block ran in that phase, as a share of
    the case's own peak (white: the case has no such block or phase)."""
    part = fold_widths(frame)
    part = part[part["model"] == model]
    cases = _cases(part)
    grid = part.pivot_table(index="case", columns=["block", "phase"], values="mib",
                            aggfunc="max", sort=False)
    grid = grid.reindex(index=cases)
    peak = grid.max(axis=1)
    share = 100 * grid.div(peak.where(peak > 0), axis=0)
    height = 0.22 * len(cases) + 2.4
    width = min(22.0, 0.26 * grid.shape[1] + 4.0)
    fig, ax = plt.subplots(figsize=(width, height))
    fig.subplots_adjust(left=2.6 / width, right=1 - 1.3 / width, top=1 - 0.55 / height,
                        bottom=1.3 / height)
    image = ax.imshow(share.to_numpy(), aspect="auto", cmap="magma_r", vmin=0, vmax=100,
                      interpolation="nearest")
    ax.set_yticks(np.arange(len(cases)),
                  [f"{case} ({p:.1f} MiB)" for case, p in zip(cases, peak, strict=True)],
                  fontsize=7)
    ax.set_xticks(np.arange(grid.shape[1]),
                  [f"{block} {PHASE_SHORT.get(phase, phase)}" for block, phase in grid.columns],
                  rotation=90,
                  fontsize=7)
    ax.grid(False)
    fig.colorbar(image, cax=fig.add_axes((1 - 1.0 / width, 0.3, 0.15 / width, 0.4)),
                 label="% of the case's peak")
    ax.set_title(f"{model}: live tensor peak while each block ran (fwd, bwd, opt), per case",
                 fontsize=10)
    return _save(fig, path, tight=False)


def participation_bars(frame: pd.DataFrame, path: Path) -> Path:
    """Share of each fleet's devices that can train each case: one heatmap per model (cases
    by fleets, its width variants as cases, :func:`fold_widths`), the share written in
    each cell."""
    frame = fold_widths(frame)
    models = list(dict.fromkeys(frame["model"]))
    fleets = list(dict.fromkeys(frame["fleet"]))
    cols = min(4, len(models))
    rows = -(-len(models) // cols)
    tallest = max(len(_cases(frame[frame["model"] == m])) for m in models)
    panel = 0.16 * tallest + 1.6
    height = panel * rows + 0.8
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols + 1.0, height), squeeze=False)
    fig.subplots_adjust(left=0.12, right=0.9, top=1 - 0.6 / height, bottom=1.1 / height,
                        hspace=1.3 / panel, wspace=0.95)
    image = None
    for ax, model in zip(axes.flat, models, strict=False):
        part = frame[frame["model"] == model]
        grid = part.pivot_table(index="case", columns="fleet", values="participation_%",
                                sort=False).reindex(index=_cases(part), columns=fleets)
        image = ax.imshow(grid.to_numpy(), aspect="auto", cmap="viridis", vmin=0, vmax=100,
                          interpolation="nearest")
        for (r, c), value in np.ndenumerate(grid.to_numpy()):
            if not np.isnan(value):
                ax.text(c, r, f"{value:.0f}", ha="center", va="center", fontsize=6,
                        color="white" if value < 60 else "black")
        ax.set_yticks(np.arange(len(grid)), list(grid.index), fontsize=7)
        ax.set_xticks(np.arange(len(fleets)), fleets, rotation=45, ha="right", fontsize=7)
        ax.set_title(model, fontsize=9)
        ax.grid(False)
    for ax in list(axes.flat)[len(models):]:
        ax.set_visible(False)
    if image is not None:
        fig.colorbar(image, cax=fig.add_axes((0.93, 0.3, 0.012, 0.4)),
                     label="devices that fit (%)")
    fig.suptitle("Participation: devices of each fleet whose budget fits the step (%)",
                 fontsize=11, y=1 - 0.15 / height)
    return _save(fig, path, tight=False)


def memory_figures(
    breakdown: pd.DataFrame,
    blocks: pd.DataFrame,
    participation: pd.DataFrame,
    folder: Path,
    *,
    category_order: list[str],
) -> list[Path]:
    """All memory figures (a model's width variants in the model's figures and panels);
    returns the written paths."""
    paths = [
        breakdown_bars(breakdown, folder / "memory_breakdown.png", category_order=category_order),
        participation_bars(participation, folder / "memory_participation.png"),
    ]
    for model in dict.fromkeys(fold_widths(blocks)["model"]):  # no ':' in file names
        name = str(model).replace(":", "-")
        paths.append(block_peak_bars(blocks, model, folder / f"block_peaks_{name}.png"))
    return paths


# ------------------------------------------------------------------------------ accuracy section
#
# Inputs are the frames of :mod:`bench.run_frames` and :mod:`bench.accuracy_tables`: ``curves``
# (label, partition, seed, status, round, accuracy_%), ``runs`` (one row per run) and
# ``summary`` (one row per (label, partition), with ``final_mean``/``final_ci95``). Every
# figure has one colour per label, in ``labels`` order.


def _label_palette(labels: list[str]) -> dict[str, tuple[float, float, float]]:
    """A distinct colour for every label (tab10, or evenly spaced hues past ten labels)."""
    colors = sns.color_palette("tab10" if len(labels) <= 10 else "husl", len(labels))
    return dict(zip(labels, colors, strict=True))


def _partitions(frame: pd.DataFrame) -> list[str]:
    return list(dict.fromkeys(frame["partition"]))  # the table's order: IID first


def mean_curves(curves: pd.DataFrame) -> pd.DataFrame:
    """Per (label, partition, round): mean accuracy % over the completed seeds that evaluated
    that round, the 95% t half-width (NaN for one seed) and ``n``, the number of those seeds."""
    done = curves[curves["status"] == "completed"]
    rows = [{"label": label, "partition": part, "round": rnd, "n": len(group),
             **dict(zip(("mean", "half"), t_interval(group["accuracy_%"]), strict=True))}
            for (label, part, rnd), group in done.groupby(["label", "partition", "round"],
                                                          sort=False)]
    out = pd.DataFrame(rows, columns=["label", "partition", "round", "n", "mean", "half"])
    return out.sort_values(["label", "partition", "round"], kind="stable", ignore_index=True)


def _legend_label(label: str, diverged: int) -> str:
    return f"{label} ({diverged} diverged)" if diverged else label


#: The label every small panel of :func:`accuracy_curves` draws beside its own.
CURVE_REFERENCE = "profl"


def curve_panels(runs: pd.DataFrame, labels: list[str],
                 reference: str = CURVE_REFERENCE) -> list[tuple[str, str]]:
    """The panels of :func:`accuracy_curves`, in order: ``(partition, label)`` for every label
    of each partition but ``reference`` (each drawn beside it), or every label when the
    partition has no ``reference`` runs."""
    panels = []
    for part in _partitions(runs):
        here = set(runs.loc[runs["partition"] == part, "label"])
        shown = [label for label in labels if label in here and label != reference] \
            if reference in here else [label for label in labels if label in here]
        panels += [(part, label) for label in (shown or [reference])]
    return panels


def _curve(ax: plt.Axes, means: pd.DataFrame, completed: int, color: Any, label: str,
           marker: str | None) -> None:
    """One label's mean line with its 95% band over the rounds every completed seed ran,
    continued dashed (no band) over the rounds only some ran."""
    full = means[means["n"] == completed]
    tail = means[means["round"] >= full["round"].max()] if len(full) < len(means) \
        else means.iloc[:0]
    ax.plot(full["round"], full["mean"], color=color, marker=marker, markersize=3,
            linewidth=1.5, label=label)
    ax.plot(tail["round"], tail["mean"], color=color, linewidth=1.1, linestyle="--")
    ax.fill_between(full["round"], full["mean"] - full["half"], full["mean"] + full["half"],
                    color=color, alpha=0.2, linewidth=0)


def accuracy_curves(
    curves: pd.DataFrame, runs: pd.DataFrame, path: Path, *, labels: list[str],
    target: float | None, reference: str = CURVE_REFERENCE,
) -> Path:
    """Small multiples of the mean test accuracy per round over the completed seeds, with
    95% t-bands: one panel per label and partition (:func:`curve_panels`), each with
    ``reference`` (``profl``, black) beside it, up to four panels a row, every partition
    starting a new row; y shared. A panel's title counts each label's diverged runs; rounds
    that only some completed seeds ran (runs that ended early) continue dashed, the mean of
    fewer seeds.
    """
    panels = curve_panels(runs, labels, reference)
    palette = _label_palette(labels)
    means = mean_curves(curves)
    status = runs.groupby(["label", "partition"])["status"]
    diverged = status.apply(lambda s: int((s == "diverged").sum()))
    completed = status.apply(lambda s: int((s == "completed").sum()))
    marker = "o" if means["round"].nunique() <= 20 else None
    per_part = {part: sum(1 for p, _ in panels if p == part) for part, _ in panels}
    cols = min(4, max(per_part.values()))
    rows = sum(-(-n // cols) for n in per_part.values())
    fig, axes = plt.subplots(rows, cols, figsize=(3.6 * cols, 2.9 * rows + 0.9),
                             squeeze=False, sharey=True, layout="constrained")
    places: list[tuple[int, int]] = []
    row = 0
    for n in per_part.values():
        places += [(row + i // cols, i % cols) for i in range(n)]
        row += -(-n // cols)
    used = set(places)
    low = means["mean"] - means["half"].fillna(0)
    y_low = max(0.0, 5 * math.floor((low.min() if len(low) else 0) / 5) - 5)
    for (part, label), (r, c) in zip(panels, places, strict=True):
        ax = axes[r][c]
        drawn = [(reference, "black")] if label != reference else []
        for who, color in [*drawn, (label, palette[label])]:
            if (who, part) not in completed.index:
                continue
            line = means[(means["label"] == who) & (means["partition"] == part)]
            _curve(ax, line, completed[(who, part)], color,
                   _legend_label(who, diverged[(who, part)]), marker)
        if target is not None:
            ax.axhline(100 * target, color="grey", linestyle=":", linewidth=1)
        bad = diverged.get((label, part), 0)
        ax.set_title(f"{label}{f' ({bad} diverged)' if bad else ''}, {part}", fontsize=9)
        ax.set_ylim(y_low, 100)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
        ax.tick_params(labelsize=8)
        if c == 0:
            ax.set_ylabel("test accuracy (%)", fontsize=9)
        if r == rows - 1 or (r + 1, c) not in used:
            ax.set_xlabel("round", fontsize=9)
    for r, c in itertools.product(range(rows), range(cols)):
        if (r, c) not in used:
            axes[r][c].set_visible(False)
    beside = any(label != reference for _, label in panels) and \
        reference in set(runs["label"])
    if beside:
        fig.legend([plt.Line2D([], [], color="black", linewidth=1.5)],
                   [f"{reference} (in every panel)"], loc="outside lower center", fontsize=8,
                   frameon=False)
    fig.suptitle("Mean accuracy per round over the completed seeds"
                 f"{f', each label beside {reference}' if beside else ''}\n(band: 95% "
                 "t-interval; dashed: rounds only some seeds ran; dotted: the target)",
                 fontsize=10)
    return _save(fig, path)


def memory_points(summary: pd.DataFrame, ranges: pd.DataFrame) -> pd.DataFrame:
    """What :func:`accuracy_vs_memory` draws, per (label, partition) of the table: its
    ``final_mean``/``final_ci95`` and ``peak_mib`` (the table's), and ``low_mib``/``high_mib``,
    the smallest and the largest client task its runs gave out
    (:func:`bench.run_frames.memory_ranges`; the peak where a run folder has no rounds)."""
    points = summary[["label", "partition", "final_mean", "final_ci95", "peak_mib"]]
    points = points.merge(ranges, on=["label", "partition"], how="left", sort=False)
    points["low_mib"] = points["low_mib"].fillna(points["peak_mib"])
    points["high_mib"] = points["high_mib"].fillna(points["peak_mib"])
    return points


def accuracy_vs_memory(summary: pd.DataFrame, ranges: pd.DataFrame, path: Path, *,
                       labels: list[str]) -> Path:
    """Mean final accuracy (vertical bar: the 95% t half-width) against the label's memory,
    one panel per partition (the Pareto view): a dot at the largest client task (what a
    device needs to train every task) and a horizontal bar from the smallest (what a device
    needs to take part at all, e.g. fedavg-fit's smallest micro-batch rung) to the largest
    (:func:`memory_points`). Labels with no completed seed are named in the panel's
    corner instead; the dashed staircase is the best mean accuracy within a budget (at the
    largest task)."""
    points = memory_points(summary, ranges)
    partitions = _partitions(points)
    fig, axes = plt.subplots(1, len(partitions), figsize=(6.4 * len(partitions), 4.8),
                             squeeze=False, sharey=True)
    palette = _label_palette(labels)
    for ax, part in zip(axes.flat, partitions, strict=True):
        here = points[points["partition"] == part]
        sub = here[here["final_mean"].notna()]
        lost = here.loc[here["final_mean"].isna(), "label"]
        if not lost.empty:
            ax.text(0.02, 0.02, f"every seed diverged: {', '.join(lost)}", fontsize=8,
                    color="0.35", transform=ax.transAxes)
        shift = _dodged(sub["peak_mib"]) - sub["peak_mib"]
        sub = sub.assign(x=sub["peak_mib"] + shift, x_low=sub["low_mib"] + shift)
        for _, row in sub.iterrows():
            half = row["final_ci95"]
            color = palette[row["label"]]
            if row["x_low"] < row["x"]:
                ax.plot([row["x_low"], row["x"]], [row["final_mean"]] * 2, color=color,
                        linewidth=3.5, alpha=0.45, solid_capstyle="butt")
                ax.plot([row["x_low"]], [row["final_mean"]], marker="|", markersize=11,
                        color=color)
            ax.errorbar(row["x"], row["final_mean"],
                        yerr=None if pd.isna(half) else half, fmt="o", markersize=8,
                        color=color, ecolor=color, elinewidth=1.4, capsize=4)
        if not sub.empty:
            # Staircase of the best mean accuracy reachable at each memory budget.
            best = sub.sort_values("peak_mib")
            front = best[best["final_mean"] >= best["final_mean"].cummax()]
            xs = [*front["peak_mib"], sub["peak_mib"].max() * 1.1]
            ys = [*front["final_mean"], front["final_mean"].iloc[-1]]
            ax.step(xs, ys, where="post", color="grey", linewidth=1, linestyle="--")
        ax.set(title=f"partition {part}",
               xlabel="client task memory (MiB): bar from the smallest task to the largest (dot)",
               ylabel="final test accuracy (%)")
        ax.margins(x=0.15, y=0.12)
        _label_points(ax, sub)
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=palette[label])
               for label in labels]
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
               title="label")
    fig.suptitle("Mean final accuracy against client task memory (dot: the largest task, bar: "
                 "from the smallest; vertical: 95% t-interval over seeds; dashed: best "
                 "accuracy within a budget)", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def _dodged(peak: pd.Series) -> pd.Series:
    """Memory positions with labels of the same peak spread apart sideways (1.5% of the
    axis each) so their points and error bars stay visible."""
    step = 0.015 * max(peak.max() - peak.min(), peak.max(), 1e-9)
    rank = peak.groupby(peak).cumcount()
    size = peak.groupby(peak).transform("size")
    return peak + (rank - (size - 1) / 2) * step


def _label_points(ax: plt.Axes, frame: pd.DataFrame) -> None:
    """Labels right of their points, nudged apart vertically so none overlap."""
    low, high = ax.get_ylim()
    gap = 0.055 * (high - low)
    placed: list[tuple[float, float]] = []  # (x, label y) already used
    x_span = ax.get_xlim()[1] - ax.get_xlim()[0]
    for _, row in frame.sort_values("final_mean").iterrows():
        x, y = float(row["x"]), float(row["final_mean"])
        label_y = y
        for px, py in sorted(placed, key=lambda item: item[1]):
            if abs(px - x) < 0.25 * x_span and abs(py - label_y) < gap:
                label_y = py + gap
        placed.append((x, label_y))
        ax.annotate(row["label"], (x, y), xytext=(x + 0.02 * x_span, label_y), fontsize=8,
                    va="center", arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.6})


#: Colour of each paired verdict in :func:`forest_plot`.
VERDICT_COLORS = {"better": "tab:green", "worse": "tab:red", "~": "0.4"}

#: The forest plot's two comparisons: the summary's kind and the panel's reference.
FOREST_KINDS = ("profl", "best")


def forest_frame(summary: pd.DataFrame) -> pd.DataFrame:
    """What :func:`forest_plot` draws: one row per (partition, kind, label) with a paired
    difference in the table (:func:`bench.comparisons.paired_comparisons`; the reference's
    own row and rows without a seed both completed are left out), with the label's
    ``family`` (shown beside it): ``reference`` (``profl``,
    or the partition's best label), ``mean``/``half`` (points), ``pairs``, ``p_holm`` and
    ``verdict``, the table's ``d_<kind>_mean``, ``d_<kind>_ci95``, ``d_<kind>_pairs``,
    ``p_<kind>_holm`` and ``vs_<kind>``."""
    rows = []
    for kind in FOREST_KINDS:
        for _, row in summary.iterrows():
            if row[f"vs_{kind}"] in ("-", "best") or pd.isna(row[f"d_{kind}_mean"]):
                continue
            rows.append({"partition": row["partition"], "kind": kind,
                         "reference": "profl" if kind == "profl" else row["best_label"],
                         "label": row["label"], "family": row.get("family", "-"),
                         "mean": row[f"d_{kind}_mean"],
                         "half": row[f"d_{kind}_ci95"], "pairs": int(row[f"d_{kind}_pairs"]),
                         "p_holm": row[f"p_{kind}_holm"], "verdict": row[f"vs_{kind}"]})
    return pd.DataFrame(rows, columns=["partition", "kind", "reference", "label", "family",
                                       "mean", "half", "pairs", "p_holm", "verdict"])


def _forest_text(row: pd.Series) -> str:
    half = "" if pd.isna(row["half"]) else f" ± {row['half']:.1f}"
    test = f"p {row['p_holm']:.2g}" if not pd.isna(row["p_holm"]) else "no test"
    return f"{row['mean']:+.1f}{half}  {row['verdict']} ({test})"


def forest_plot(summary: pd.DataFrame, path: Path, *, labels: list[str]) -> Path:
    """The paired differences of ``final_%`` (:func:`forest_frame`), one panel per partition
    and reference (against ``profl``, against the partition's best label): a row per label in
    report order, its mean difference in points with the 95% paired t-interval, coloured by
    its Holm-corrected verdict, and the numbers written beside it. Returns ``path``."""
    frame = forest_frame(summary)
    partitions = _partitions(summary)
    shown = [kind for kind in FOREST_KINDS if (frame["kind"] == kind).any()] or ["profl"]
    height = max(2, max((len(g) for _, g in frame.groupby(["partition", "kind"])), default=1))
    fig, axes = plt.subplots(len(partitions), len(shown),
                             figsize=(6.2 * len(shown), (0.42 * height + 1.3) * len(partitions)),
                             squeeze=False, layout="constrained")
    for (r, part), (c, kind) in itertools.product(enumerate(partitions), enumerate(shown)):
        ax = axes[r][c]
        here = frame[(frame["partition"] == part) & (frame["kind"] == kind)]
        here = here.assign(order=here["label"].map(
            lambda label: labels.index(label) if label in labels else len(labels)))
        here = here.sort_values("order", kind="stable")
        y = np.arange(len(here))[::-1]
        ax.axvline(0, color="0.3", linewidth=1)
        for yy, (_, row) in zip(y, here.iterrows(), strict=True):
            color = VERDICT_COLORS.get(row["verdict"], "0.4")
            ax.errorbar(row["mean"], yy, xerr=None if pd.isna(row["half"]) else row["half"],
                        fmt="o", color=color, ecolor=color, elinewidth=2, capsize=4,
                        markersize=6)
            ax.annotate(_forest_text(row), (1.0, yy), xycoords=("axes fraction", "data"),
                        xytext=(6, 0), textcoords="offset points", va="center", fontsize=8,
                        color=color, annotation_clip=False)
        ax.set_yticks(y, [f"{label} ({family})" for label, family
                          in zip(here["label"], here["family"], strict=True)])
        ax.set_ylim(-0.7, max(len(here), 1) - 0.3)
        reference = here["reference"].iloc[0] if len(here) else \
            ("profl" if kind == "profl" else "best")
        ax.set_title(f"{part}: label minus {reference}", fontsize=10)
        ax.set_xlabel("paired difference of final_% (points)", fontsize=9)
        ax.tick_params(labelsize=8)
        if here.empty:
            ax.text(0.5, 0.5, "no paired comparison", ha="center", va="center",
                    transform=ax.transAxes, color="0.4")
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=color)
               for color in VERDICT_COLORS.values()]
    fig.legend(handles, ["better", "worse", "~ (cannot tell)"], loc="outside lower center",
               ncol=3, fontsize=8, frameon=False)
    fig.suptitle("Paired differences over seeds (bar: 95% t-interval; verdict: Holm-corrected "
                 "paired t-test at 5%, p shown corrected)", fontsize=10)
    return _save(fig, path)


def participation_by_method(runs: pd.DataFrame, path: Path, *, labels: list[str]) -> Path:
    """Mean share of the fleet that can take part and clients per round, per label (means
    over the runs, diverged ones included)."""
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    sns.barplot(data=runs, x="label", y="eligible_%", hue="fleet", order=labels,
                palette="colorblind", errorbar=None, ax=axes[0])
    axes[0].set(xlabel="", ylabel="eligible devices (%)", ylim=(0, 105),
                title="Fleet share whose budget fits (mean over rounds)")
    sns.barplot(data=runs, x="label", y="clients", hue="partition", order=labels,
                palette="pastel", errorbar=None, ax=axes[1])
    axes[1].set(xlabel="", ylabel="clients per round",
                title="Clients that trained per round (mean)")
    for ax, fmt in zip(axes, ("%.0f", "%.1f"), strict=True):
        ax.tick_params(axis="x", rotation=45)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
        for container in ax.containers:
            ax.bar_label(container, fmt=fmt, fontsize=7, padding=1)
        ax.legend(fontsize=8, title=ax.get_legend().get_title().get_text(), title_fontsize=8,
                  loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def accuracy_figures(
    curves: pd.DataFrame, runs: pd.DataFrame, summary: pd.DataFrame, ranges: pd.DataFrame,
    folder: Path, *, labels: list[str], target: float | None,
) -> list[Path]:
    """The accuracy section's figures (``labels``: legend and colour order; ``ranges``: each
    label's smallest and largest client task, :func:`bench.run_frames.memory_ranges`);
    returns the written paths."""
    return [
        forest_plot(summary, folder / "paired_differences.png", labels=labels),
        accuracy_curves(curves, runs, folder / "accuracy_curves.png", labels=labels,
                        target=target),
        accuracy_vs_memory(summary, ranges, folder / "accuracy_vs_memory.png", labels=labels),
        participation_by_method(runs, folder / "participation.png", labels=labels),
    ]


# ------------------------------------------------------------------------------ one training run


def plot_curve(rounds: list[dict[str, Any]], path: Path, title: str) -> None:
    """Test accuracy per round with a dashed line at every step boundary, labelled with the
    step that starts and, at the bottom, why the step before ended (``em``, ``cap``...)."""
    evaluated = [r for r in rounds if r["accuracy"] is not None]
    fig, ax = plt.subplots(figsize=(8, 4))
    sns.lineplot(x=[r["round"] for r in evaluated], y=[r["accuracy"] for r in evaluated], ax=ax,
                 marker="o" if len(evaluated) < 40 else None)
    for prev, cur in itertools.pairwise(rounds):
        if (prev["stage"], prev["submodel"]) != (cur["stage"], cur["submodel"]):
            ax.axvline(cur["round"] - 0.5, color="grey", linestyle="--", linewidth=0.8)
            ax.text(cur["round"] - 0.5, 1.0, f" {step_label(cur['stage'], cur['submodel'])}",
                    fontsize=7, va="top", rotation=90, color="grey")
            if prev.get("step_end"):
                ax.text(cur["round"] - 0.5, 0.01, f"{prev['step_end']} ", fontsize=6,
                        va="bottom", ha="right", rotation=90, color="grey")
    ax.set(xlabel="round", ylabel="test accuracy", ylim=(0, 1.02), title=title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)



@dataclass(frozen=True)
class EmPanel:
    """One method step's effective movement, for :func:`em_figure`.

    Attributes:
        label: The step (``train B3``, ``fit basic3``, ``grow B1``).
        rounds: The step's rounds, numbered 1..n within the step.
        em: The active block's EM after each of those rounds (NaN before a full window).
        level: The EM level the freeze rule ends a step under; None: no level to draw.
        end_round: The step round where the step ended; None: not known.
        end_reason: Why it ended (``em``, ``cap``, ``fixed``, ``run end``).
        oracle_round: The step round where an oracle saw the accuracy plateau; None: none.
    """

    label: str
    rounds: np.ndarray
    em: np.ndarray
    level: float | None
    end_round: int | None
    end_reason: str | None
    oracle_round: int | None = None


def has_em(rounds: list[dict[str, Any]]) -> bool:
    """Whether a run's rounds record effective movement (``metrics.em``: ProFL's runs)."""
    return any(isinstance(r.get("metrics"), dict) and "em" in r["metrics"] for r in rounds)


def em_panels(rounds: list[dict[str, Any]], level: float | None) -> list[EmPanel]:
    """One panel per method step of a run's ``rounds.jsonl`` records (runs of equal stage,
    step and sub-model), its rounds numbered from 1, ``em`` NaN where ``metrics.em`` is null
    or absent, ended at its last round for the reason of its ``step_end`` (``run end`` for a
    step the run's end cut short); no oracle round."""
    panels = []
    for (stage, _, submodel), records in step_groups(rounds):
        em = [(r.get("metrics") or {}).get("em") for r in records]
        panels.append(EmPanel(
            label=step_label(stage, submodel),
            rounds=np.arange(1, len(records) + 1),
            em=np.array([math.nan if v is None else float(v) for v in em]),
            level=level, end_round=len(records),
            end_reason=records[-1].get("step_end") or RUN_END))
    return panels


#: Colours of an EM panel's lines.
_EM_COLORS = {"em": "tab:blue", "level": "tab:red", "end": "0.25", "oracle": "tab:green"}


def _em_panel(ax: plt.Axes, panel: EmPanel) -> None:
    """One step's EM line, level, end and oracle round on ``ax``."""
    ax.plot(panel.rounds, panel.em, color=_EM_COLORS["em"], linewidth=1.4,
            marker="o" if len(panel.rounds) <= 30 else None, markersize=2.5)
    if panel.level is not None:
        ax.axhline(panel.level, color=_EM_COLORS["level"], linestyle="--", linewidth=1)
    if panel.end_round is not None:
        ax.axvline(panel.end_round, color=_EM_COLORS["end"], linewidth=1)
        ax.text(panel.end_round, 0.03, f"{panel.end_reason or '?'} ", fontsize=7,
                ha="right", va="bottom", color=_EM_COLORS["end"])
    if panel.oracle_round is not None:
        ax.axvline(panel.oracle_round, color=_EM_COLORS["oracle"], linestyle=":",
                   linewidth=1.4)
    last = max([int(panel.rounds.max()) if len(panel.rounds) else 1, panel.end_round or 1,
                panel.oracle_round or 1])
    ax.set_xlim(0.5, last + 0.5)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=5))
    ax.set_title(f"{panel.label} ({len(panel.rounds)} rounds)", fontsize=9)
    ax.tick_params(labelsize=7)


def em_figure(panels: list[EmPanel], path: Path, title: str) -> Path:
    """Effective movement against the rounds of each step, one small panel per step (up to
    five a row, y shared in [0, 1]): the EM line, the level as a dashed line, a solid line
    where the step ended, labelled with why, and a dotted line at the oracle's plateau
    round. Returns ``path``."""
    cols = max(1, min(5, len(panels)))
    rows = max(1, -(-len(panels) // cols))
    fig, axes = plt.subplots(rows, cols, figsize=(2.7 * cols, 2.3 * rows + 0.7),
                             squeeze=False, sharey=True, layout="constrained")
    for ax, panel in zip(axes.flat, panels, strict=False):
        _em_panel(ax, panel)
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    for ax in axes.flat:
        ax.set_ylim(0, 1.02)
    for row in axes:
        row[0].set_ylabel("EM", fontsize=9)
    for ax in axes[-1]:
        ax.set_xlabel("round of the step", fontsize=8)
    handles = [plt.Line2D([], [], color=_EM_COLORS["em"], marker="o", markersize=3),
               plt.Line2D([], [], color=_EM_COLORS["level"], linestyle="--"),
               plt.Line2D([], [], color=_EM_COLORS["end"]),
               plt.Line2D([], [], color=_EM_COLORS["oracle"], linestyle=":")]
    names = ["effective movement", "EM level", "step end (reason)", "oracle plateau"]
    shown = [panel.level is not None for panel in panels]
    keep = [True, any(shown), any(p.end_round is not None for p in panels),
            any(p.oracle_round is not None for p in panels)]
    fig.legend([h for h, k in zip(handles, keep, strict=True) if k],
               [n for n, k in zip(names, keep, strict=True) if k],
               loc="outside lower center", ncol=4, fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
