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
from matplotlib.ticker import MaxNLocator

from bench.run_summary import step_groups, step_label
from bench.stats import t_interval
from bench.step_tables import RUN_END

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
    part = frame[frame["model"] == model]
    grid = sns.catplot(
        data=part, kind="bar", x="block", y="mib", hue="phase", col="case", col_wrap=4,
        height=2.8, aspect=1.25, sharex=False, palette="Set2",
    )
    grid.set_axis_labels("", "peak MiB")
    grid.set_titles("{col_name}")
    for ax in grid.axes.flat:
        ax.tick_params(axis="x", rotation=60, labelsize=8)
    grid.figure.subplots_adjust(hspace=0.55)
    grid.figure.suptitle(f"{model}: live tensor peak while each block ran", y=1.03)
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
    for model in dict.fromkeys(blocks["model"]):  # no ':' in file names (torchvision:NAME)
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


def accuracy_curves(
    curves: pd.DataFrame, runs: pd.DataFrame, path: Path, *, labels: list[str],
    target: float | None,
) -> Path:
    """Mean test accuracy per round over the completed seeds with a shaded 95% t-band, one
    line per label, one panel per partition; the legend counts each label's diverged runs.

    Rounds that only some of the completed seeds ran (runs that ended early) continue the line
    dashed and without a band, the mean of fewer seeds.
    """
    partitions = _partitions(runs)
    palette = _label_palette(labels)
    means = mean_curves(curves)
    status = runs.groupby(["label", "partition"])["status"]
    diverged = status.apply(lambda s: int((s == "diverged").sum()))
    completed = status.apply(lambda s: int((s == "completed").sum()))
    marker = "o" if means["round"].nunique() <= 20 else None
    fig, axes = plt.subplots(1, len(partitions), figsize=(5.6 * len(partitions), 4.4),
                             squeeze=False, sharey=True)
    for ax, part in zip(axes.flat, partitions, strict=True):
        for label in labels:
            if (label, part) not in diverged.index:
                continue
            line = means[(means["label"] == label) & (means["partition"] == part)]
            full = line[line["n"] == completed[(label, part)]]
            tail = line[line["round"] >= full["round"].max()] if len(full) < len(line) \
                else line.iloc[:0]
            color = palette[label]
            ax.plot(full["round"], full["mean"], color=color, marker=marker, markersize=3.5,
                    linewidth=1.6, label=_legend_label(label, diverged[(label, part)]))
            ax.plot(tail["round"], tail["mean"], color=color, linewidth=1.2, linestyle="--")
            ax.fill_between(full["round"], full["mean"] - full["half"],
                            full["mean"] + full["half"], color=color, alpha=0.18, linewidth=0)
        if target is not None:
            ax.axhline(100 * target, color="grey", linestyle=":", linewidth=1)
        ax.set(title=f"partition {part}", xlabel="round", ylim=(0, 100))
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.legend(fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.2),
                  ncol=min(3, len(labels)), frameon=False)
    axes.flat[0].set_ylabel("test accuracy (%)")
    fig.suptitle("Mean accuracy per round over the completed seeds (band: 95% t-interval; "
                 "dashed: rounds only some seeds ran; dotted: the target)", fontsize=11)
    fig.tight_layout()
    return _save(fig, path)


def accuracy_vs_memory(summary: pd.DataFrame, path: Path, *, labels: list[str]) -> Path:
    """Mean final accuracy (error bar: the 95% t half-width) against the label's peak training
    memory, one panel per partition (the Pareto view); labels with no completed seed are
    named in the panel's corner instead."""
    partitions = _partitions(summary)
    fig, axes = plt.subplots(1, len(partitions), figsize=(6.0 * len(partitions), 4.6),
                             squeeze=False, sharey=True)
    palette = _label_palette(labels)
    for ax, part in zip(axes.flat, partitions, strict=True):
        here = summary[summary["partition"] == part]
        sub = here[here["final_mean"].notna()]
        lost = here.loc[here["final_mean"].isna(), "label"]
        if not lost.empty:
            ax.text(0.02, 0.02, f"every seed diverged: {', '.join(lost)}", fontsize=8,
                    color="0.35", transform=ax.transAxes)
        sub = sub.assign(x=_dodged(sub["peak_mib"]))
        for _, row in sub.iterrows():
            half = row["final_ci95"]
            ax.errorbar(row["x"], row["final_mean"],
                        yerr=None if pd.isna(half) else half, fmt="o", markersize=8,
                        color=palette[row["label"]], ecolor=palette[row["label"]],
                        elinewidth=1.4, capsize=4)
        if not sub.empty:
            # Staircase of the best mean accuracy reachable at each memory budget.
            best = sub.sort_values("peak_mib")
            front = best[best["final_mean"] >= best["final_mean"].cummax()]
            xs = [*front["peak_mib"], sub["peak_mib"].max() * 1.1]
            ys = [*front["final_mean"], front["final_mean"].iloc[-1]]
            ax.step(xs, ys, where="post", color="grey", linewidth=1, linestyle="--")
        ax.set(title=f"partition {part}", xlabel="peak training memory (MiB)",
               ylabel="final test accuracy (%)")
        ax.margins(x=0.15, y=0.12)
        _label_points(ax, sub)
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=palette[label])
               for label in labels]
    fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
               title="label")
    fig.suptitle("Mean final accuracy against peak memory (bars: 95% t-interval over seeds; "
                 "dashed: best accuracy within a budget)")
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
    curves: pd.DataFrame, runs: pd.DataFrame, summary: pd.DataFrame, folder: Path, *,
    labels: list[str], target: float | None,
) -> list[Path]:
    """The accuracy section's figures (``labels``: legend and colour order); returns the
    written paths."""
    return [
        accuracy_curves(curves, runs, folder / "accuracy_curves.png", labels=labels,
                        target=target),
        accuracy_vs_memory(summary, folder / "accuracy_vs_memory.png", labels=labels),
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
