"""Figures made with seaborn from long-form data frames (themselves read from result files)."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt
import pandas as pd
import seaborn as sns
from matplotlib.ticker import MaxNLocator

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


# ------------------------------------------------------------------------------ accuracy section


def _method_palette(methods: list[str]) -> dict[str, tuple[float, float, float]]:
    colors = sns.color_palette("tab10", max(10, len(methods)))
    return dict(zip(methods, colors, strict=False))


def accuracy_curves(
    curves: pd.DataFrame, path: Path, *, methods: list[str], target: float | None
) -> Path:
    """Test accuracy against round, one line per method, one panel per partition."""
    partitions = sorted(set(curves["partition"]), key=lambda p: (p != "iid", p))
    grid = sns.relplot(
        data=curves, kind="line", x="round", y="accuracy_%", hue="method", hue_order=methods,
        col="partition", col_order=partitions, height=3.6, aspect=1.3,
        palette=_method_palette(methods),
        marker="o", markersize=4, facet_kws={"sharey": True},
    )
    grid.set_axis_labels("round", "test accuracy (%)")
    grid.set_titles("partition {col_name}")
    for ax in grid.axes.flat:
        ax.set_ylim(0, 100)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if target is not None:
            ax.axhline(100 * target, color="grey", linestyle=":", linewidth=1)
    sns.move_legend(grid, "center left", bbox_to_anchor=(1.0, 0.5), frameon=False)
    grid.figure.suptitle("Accuracy per round (dotted: the rounds-to-target line)", y=1.04)
    return _save(grid.figure, path)


def accuracy_vs_memory(frame: pd.DataFrame, path: Path, *, methods: list[str]) -> Path:
    """Final accuracy against the method's peak training memory (the Pareto view)."""
    partitions = list(dict.fromkeys(frame["partition"]))
    fig, axes = plt.subplots(1, len(partitions), figsize=(6.0 * len(partitions), 4.6),
                             squeeze=False, sharey=True)
    palette = _method_palette(methods)
    for ax, part in zip(axes.flat, partitions, strict=True):
        sub = frame[frame["partition"] == part]
        sns.scatterplot(data=sub, x="peak_mib", y="final_%", hue="method",
                        hue_order=methods, palette=palette, s=80, ax=ax, legend=False)
        # Staircase of the best accuracy reachable at each memory budget.
        best = sub.sort_values("peak_mib")
        front = best[best["final_%"] >= best["final_%"].cummax()]
        xs = [*front["peak_mib"], sub["peak_mib"].max() * 1.1]
        ys = [*front["final_%"], front["final_%"].iloc[-1]]
        ax.step(xs, ys, where="post", color="grey", linewidth=1, linestyle="--")
        ax.set(title=f"partition {part}", xlabel="peak training memory (MiB)",
               ylabel="final test accuracy (%)")
        ax.margins(x=0.15, y=0.12)
        _label_points(ax, sub)
    handles = [plt.Line2D([], [], marker="o", linestyle="", color=palette[m]) for m in methods]
    fig.legend(handles, methods, loc="center left", bbox_to_anchor=(1.0, 0.5), frameon=False,
               title="method")
    fig.suptitle("Final accuracy against peak memory (dashed: best accuracy within a budget)")
    fig.tight_layout()
    return _save(fig, path)


def _label_points(ax: plt.Axes, frame: pd.DataFrame) -> None:
    """Method names right of their points, nudged apart vertically so none overlap."""
    low, high = ax.get_ylim()
    gap = 0.055 * (high - low)
    placed: list[tuple[float, float]] = []  # (x, label y) already used
    x_span = ax.get_xlim()[1] - ax.get_xlim()[0]
    for _, row in frame.sort_values("final_%").iterrows():
        x, y = float(row["peak_mib"]), float(row["final_%"])
        label_y = y
        for px, py in sorted(placed, key=lambda item: item[1]):
            if abs(px - x) < 0.25 * x_span and abs(py - label_y) < gap:
                label_y = py + gap
        placed.append((x, label_y))
        ax.annotate(row["method"], (x, y), xytext=(x + 0.02 * x_span, label_y), fontsize=8,
                    va="center", arrowprops={"arrowstyle": "-", "color": "0.6", "lw": 0.6})


def participation_by_method(frame: pd.DataFrame, path: Path, *, methods: list[str]) -> Path:
    """Mean share of the fleet that can take part and clients per round, per method."""
    part = frame.drop_duplicates(["method", "fleet"])
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2))
    sns.barplot(data=part, x="method", y="eligible_%", hue="fleet", order=methods,
                palette="colorblind", ax=axes[0])
    axes[0].set(xlabel="", ylabel="eligible devices (%)", ylim=(0, 105),
                title="Fleet share whose budget fits (mean over rounds)")
    sns.barplot(data=frame, x="method", y="clients", hue="partition", order=methods,
                palette="pastel", ax=axes[1])
    axes[1].set(xlabel="", ylabel="clients per round",
                title="Clients that trained per round (mean)")
    for ax, fmt in zip(axes, ("%.0f", "%.1f"), strict=True):
        ax.tick_params(axis="x", rotation=45)
        for label in ax.get_xticklabels():
            label.set_horizontalalignment("right")
        for container in ax.containers:
            ax.bar_label(container, fmt=fmt, fontsize=7, padding=1)
        ax.legend(fontsize=8, title=ax.get_legend().get_title().get_text(), title_fontsize=8,
                  loc="upper center", bbox_to_anchor=(0.5, -0.32), ncol=3, frameon=False)
    fig.tight_layout()
    return _save(fig, path)


def accuracy_figures(
    curves: pd.DataFrame, frame: pd.DataFrame, folder: Path, *, target: float | None
) -> list[Path]:
    """The accuracy section's figures; returns the written paths."""
    methods = list(dict.fromkeys(frame["method"]))  # the table's order
    return [
        accuracy_curves(curves, folder / "accuracy_curves.png", methods=methods, target=target),
        accuracy_vs_memory(frame, folder / "accuracy_vs_memory.png", methods=methods),
        participation_by_method(frame, folder / "participation.png", methods=methods),
    ]
