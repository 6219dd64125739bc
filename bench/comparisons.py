"""The paired verdicts of an accuracy table, and the answer they give in words.

Every (label, partition) row is compared with ``profl`` and with the best label of its
partition (its row group: the highest mean ``final_%``) on the per-seed ``final_%``
(:func:`bench.paired.paired_difference`: the label minus the reference, over the seeds both
completed). The p-values of every distinct comparison of the table (each label against
``profl`` and against its partition's best; a pair that is both, such as ``profl`` against the
best, counted once, so it has one verdict) are Holm-corrected together
(:func:`bench.paired.holm`); a verdict is ``better``/``worse`` only when its corrected test
rejects at 5%.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from bench.paired import ALPHA, PairedDifference, holm, paired_difference, paired_verdict

#: The per-run column compared, and the label every row is also compared with.
COLUMN = "final_%"
REFERENCE = "profl"

#: The two comparisons of a row: ``profl`` (against :data:`REFERENCE`) and ``best``.
KINDS = ("profl", "best")


def kind_columns(kind: str) -> list[str]:
    """A comparison's columns: ``d_<kind>_mean``/``_ci95``/``_pairs`` (the paired difference in
    points), ``p_<kind>`` and ``p_<kind>_holm`` (raw and corrected) and ``vs_<kind>``."""
    return [f"d_{kind}_mean", f"d_{kind}_ci95", f"d_{kind}_pairs", f"p_{kind}",
            f"p_{kind}_holm", f"vs_{kind}"]


#: A distinct comparison: its partition and the two labels.
Test = tuple[str, frozenset[str]]

COMPARISON_COLUMNS = ["label", "partition", "best_label",
                      *(name for kind in KINDS for name in kind_columns(kind))]


def _seed_values(group: pd.DataFrame) -> dict[int, float]:
    return {int(seed): float(value)
            for seed, value in zip(group["seed"], group[COLUMN], strict=True)}


def best_labels(runs: pd.DataFrame) -> dict[str, str]:
    """Per partition, the label with the highest mean ``final_%`` over its completed seeds
    (the first in report order on a tie); a partition where no label completed has none."""
    means = runs.groupby(["partition", "label"], sort=False)[COLUMN].mean().dropna()
    best: dict[str, str] = {}
    for (partition, label), mean in means.items():
        if partition not in best or mean > means[(partition, best[partition])]:
            best[str(partition)] = str(label)
    return best


def paired_comparisons(runs: pd.DataFrame) -> pd.DataFrame:
    """One row per (label, partition) of :func:`bench.run_frames.accuracy_frame`'s rows, in
    their order, with :data:`COMPARISON_COLUMNS`.

    ``best_label``: the partition's best label (:func:`best_labels`). For each kind: the paired
    difference (label minus reference, in points), its p-value and its p-value Holm-corrected
    across the table's distinct comparisons (see the module's docstring), and
    ``vs_<kind>``: ``better``/``worse``/``~`` (:func:`bench.paired.paired_verdict`); ``-`` on
    the reference row itself (``best`` on the best row's ``vs_best``), without a reference row,
    or without a seed both completed.
    """
    groups = {key: _seed_values(group)
              for key, group in runs.groupby(["label", "partition"], sort=False)}
    best = best_labels(runs)
    rows: list[dict[str, Any]] = []
    found: list[tuple[dict[str, Any], str, Test | None, PairedDifference | None]] = []
    tests: dict[Test, float] = {}  # the p-value of each distinct comparison
    for label, partition in groups:
        row = {"label": label, "partition": partition, "best_label": best.get(partition, "-")}
        rows.append(row)
        for kind, reference in (("profl", REFERENCE), ("best", best.get(partition))):
            if reference is None or reference == label or (reference, partition) not in groups:
                found.append((row, kind, None, None))
                continue
            difference = paired_difference(groups[(reference, partition)],
                                           groups[(label, partition)])
            test = (partition, frozenset((label, reference)))
            tests[test] = difference.p
            found.append((row, kind, test, difference))
    corrected = dict(zip(tests, holm(list(tests.values())), strict=True))
    for target, kind, which, result in found:
        p_holm = math.nan if which is None else corrected[which]
        target.update(zip(kind_columns(kind), _columns(result, p_holm), strict=True))
    for row in rows:
        if row["label"] == row["best_label"]:
            row["vs_best"] = "best"
    return pd.DataFrame(rows, columns=COMPARISON_COLUMNS)


def _columns(difference: PairedDifference | None, p_holm: float) -> list[Any]:
    if difference is None:
        return [math.nan, math.nan, math.nan, math.nan, math.nan, "-"]
    if difference.pairs == 0:
        return [math.nan, math.nan, 0, math.nan, math.nan, "-"]
    return [difference.mean, difference.half, difference.pairs, difference.p, p_holm,
            paired_verdict(difference, p_holm)]


def format_difference(mean: float, half: float) -> str:
    """``"+2.1 ± 1.3"`` (points, signed); the mean alone for one pair; ``"-"`` for none."""
    if math.isnan(mean):
        return "-"
    mean = 0.0 if abs(mean) < 0.05 else mean  # no "-0.0"
    return f"{mean:+.1f}" if math.isnan(half) else f"{mean:+.1f} ± {half:.1f}"


def _numbers(row: pd.Series, kind: str) -> str:
    """``label (-3.1 ± 2.0 points, Holm p 0.012)`` for the answer's lists; the label alone
    without a paired seed."""
    if row[f"vs_{kind}"] == "-":
        return f"`{row['label']}`"
    shown = format_difference(row[f"d_{kind}_mean"], row[f"d_{kind}_ci95"])
    p_holm = row[f"p_{kind}_holm"]
    test = f"Holm p {p_holm:.2g}" if not math.isnan(p_holm) \
        else f"{int(row[f'd_{kind}_pairs'])} paired seed, no test"
    return f"`{row['label']}` ({shown} points, {test})"


#: The answer's phrase for each verdict, in the order listed.
PHRASES = {"~": "cannot be told apart", "worse": "worse", "better": "better",
           "-": "no seed completed by both"}


def _verdicts(group: pd.DataFrame, kind: str) -> str:
    """``cannot be told apart: `a` (...), `b` (...); worse: `c` (...)``: the rows of each
    verdict present, in :data:`PHRASES` order."""
    lists = []
    for verdict, phrase in PHRASES.items():
        rows = group[group[f"vs_{kind}"] == verdict]
        if not rows.empty:
            lists.append(f"{phrase}: " + ", ".join(_numbers(r, kind) for _, r in rows.iterrows()))
    return "; ".join(lists)


def answer_lines(comparisons: pd.DataFrame, finals: dict[tuple[str, str], float]) -> list[str]:
    """The table's answer in words, one line per partition: its best label and mean final,
    which labels cannot be told apart from it and which are worse (better, rarely: a paired
    mean over fewer seeds is not the difference of the means), then the labels against
    ``profl``; each with its paired difference and Holm-corrected p.

    Args:
        comparisons: :func:`paired_comparisons`.
        finals: Mean ``final_%`` of each (label, partition).
    """
    lines = []
    for partition, group in comparisons.groupby("partition", sort=False):
        best = str(group["best_label"].iloc[0])
        if best == "-":
            lines.append(f"- `{partition}`: no label completed a seed.")
            continue
        line = f"- `{partition}`: best `{best}` ({finals[(best, partition)]:.1f}%)"
        others = group[group["label"] != best]
        if not others.empty:
            line += f"; against it, {_verdicts(others, 'best')}"
        versus = group[(group["label"] != REFERENCE) & (group["vs_profl"] != "-")]
        if not versus.empty and best != REFERENCE:
            line += f". Against `{REFERENCE}`, {_verdicts(versus, 'profl')}"
        lines.append(line + ".")
    return lines


#: How the verdicts are made: the report's lead-in to :func:`answer_lines`.
RULE = (
    "Paired over seeds (a seed is the same partition, fleet draw and data order for every "
    "method): a label's `final_%` minus the reference's on each seed both completed, as mean ± "
    "95% Student-t half-width in points, and the paired t-test's p-value Holm-corrected across "
    "every distinct comparison of the table (`Holm p`: each label against `profl` and against "
    f"its partition's best, a pair counted once); better or worse only when that is under "
    f"{ALPHA:g}."
)
