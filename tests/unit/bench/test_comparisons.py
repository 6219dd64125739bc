"""The paired verdicts of an accuracy table on hand-made seeds, against scipy's paired t-test
and a hand-computed Holm step."""

from __future__ import annotations

import math

import pandas as pd
import pytest
from scipy import stats

from bench.comparisons import answer_lines, best_labels, format_difference, paired_comparisons

#: Hand-made final % of seeds 0-4: profl 5 points apart from seed to seed; `steady` 2 points
#: above it on every seed; `swinging` +4, -3, +5, -4, +3 (one point above on average).
FINALS = {
    "profl": [70.0, 75.0, 80.0, 65.0, 72.0],
    "steady": [72.3, 76.8, 82.1, 66.7, 74.1],
    "swinging": [74.0, 72.0, 85.0, 61.0, 75.0],
}


def _runs(finals: dict[str, list[float]], partition: str = "iid") -> pd.DataFrame:
    """Per-run rows (label, partition, seed, final_%) as accuracy_frame gives them."""
    return pd.DataFrame([{"label": label, "partition": partition, "seed": seed, "final_%": v}
                         for label, values in finals.items() for seed, v in enumerate(values)])


def _row(table: pd.DataFrame, label: str, partition: str = "iid") -> pd.Series:
    return table[(table["label"] == label) & (table["partition"] == partition)].iloc[0]


def _p(label: str, reference: str) -> float:
    return float(stats.ttest_rel(FINALS[label], FINALS[reference]).pvalue)


def test_consistently_two_points_better_is_better() -> None:
    assert _row(paired_comparisons(_runs(FINALS)), "steady")["vs_profl"] == "better"


def test_better_on_average_but_not_consistently_is_undecided() -> None:
    assert _row(paired_comparisons(_runs(FINALS)), "swinging")["vs_profl"] == "~"


def test_difference_and_interval_are_scipys() -> None:
    """Δ: steady - profl per seed; half-width t(0.975, 4) * sd / sqrt(5), from scipy."""
    diff = [a - b for a, b in zip(FINALS["steady"], FINALS["profl"], strict=True)]
    row = _row(paired_comparisons(_runs(FINALS)), "steady")
    assert row["d_profl_mean"] == pytest.approx(2.0)
    assert row["d_profl_ci95"] == pytest.approx(
        stats.t.ppf(0.975, 4) * stats.tstd(diff) / math.sqrt(5))
    assert row["d_profl_pairs"] == 5
    assert row["p_profl"] == pytest.approx(_p("steady", "profl"))


def test_holm_runs_across_the_distinct_comparisons_of_the_table() -> None:
    """Three distinct pairs (steady best): steady-profl p 5.3e-5, swinging-steady 0.602,
    swinging-profl 0.621 (scipy). Holm by hand: 3 x 5.3e-5; 2 x 0.602 = 1.20 -> 1; 0.621,
    raised to the running maximum 1."""
    assert _p("steady", "profl") < _p("swinging", "steady") < _p("swinging", "profl")
    table = paired_comparisons(_runs(FINALS))
    assert _row(table, "steady")["p_profl_holm"] == pytest.approx(3 * _p("steady", "profl"))
    assert _row(table, "swinging")["p_best_holm"] == 1.0
    assert _row(table, "swinging")["p_profl_holm"] == 1.0


def test_a_pair_in_both_columns_is_one_test() -> None:
    """profl against the best (steady) is steady against profl: one p, one verdict."""
    table = paired_comparisons(_runs(FINALS))
    assert _row(table, "profl")["p_best_holm"] == _row(table, "steady")["p_profl_holm"]


def test_holm_family_spans_every_partition() -> None:
    """The same labels on two partitions: six distinct tests; steady-profl's p, the smallest
    in both, times 6 (then times 5, raised to the running maximum)."""
    runs = pd.concat([_runs(FINALS, "iid"), _runs(FINALS, "dirichlet:0.5")])
    table = paired_comparisons(runs)
    assert _row(table, "steady")["p_profl_holm"] == pytest.approx(6 * _p("steady", "profl"))
    assert _row(table, "steady", "dirichlet:0.5")["p_profl_holm"] == pytest.approx(
        6 * _p("steady", "profl"))


def test_the_best_label_has_the_highest_mean_final_of_its_partition() -> None:
    """Means: profl 72.4, steady 74.4, swinging 73.4."""
    assert best_labels(_runs(FINALS)) == {"iid": "steady"}


def test_each_label_is_compared_with_the_best_of_its_partition() -> None:
    """profl against steady: -2.0 points on average, p from scipy."""
    table = paired_comparisons(_runs(FINALS))
    row = _row(table, "profl")
    assert row["best_label"] == "steady"
    assert row["d_best_mean"] == pytest.approx(-2.0)
    assert row["p_best"] == pytest.approx(_p("profl", "steady"))
    assert row["vs_best"] == "worse"


def test_the_best_row_says_best_and_the_profl_row_has_no_verdict_against_itself() -> None:
    table = paired_comparisons(_runs(FINALS))
    assert _row(table, "steady")["vs_best"] == "best"
    assert _row(table, "profl")["vs_profl"] == "-"


def test_a_diverged_seed_is_dropped_from_its_pairs_only() -> None:
    """steady seed 4 NaN: 4 pairs against profl, the p of scipy on seeds 0-3."""
    finals = {**FINALS, "steady": [*FINALS["steady"][:4], math.nan]}
    row = _row(paired_comparisons(_runs(finals)), "steady")
    assert row["d_profl_pairs"] == 4
    assert row["p_profl"] == pytest.approx(
        float(stats.ttest_rel(FINALS["steady"][:4], FINALS["profl"][:4]).pvalue))


def test_without_a_profl_row_there_is_no_verdict_against_it() -> None:
    table = paired_comparisons(_runs({"steady": FINALS["steady"],
                                      "swinging": FINALS["swinging"]}))
    assert list(table["vs_profl"]) == ["-", "-"]


def test_a_label_without_a_completed_seed_is_not_compared() -> None:
    table = paired_comparisons(_runs({**FINALS, "lost": [math.nan] * 5}))
    assert _row(table, "lost")["vs_profl"] == "-"
    assert _row(table, "lost")["d_profl_pairs"] == 0


@pytest.mark.parametrize(
    ("mean", "half", "expected"),
    [(2.04, 0.31, "+2.0 ± 0.3"), (-10.56, 12.0, "-10.6 ± 12.0"), (-0.01, 1.0, "+0.0 ± 1.0"),
     (1.5, math.nan, "+1.5"), (math.nan, math.nan, "-")],
)
def test_format_difference(mean: float, half: float, expected: str) -> None:
    assert format_difference(mean, half) == expected


def test_the_answer_names_the_best_and_who_is_worse_with_numbers() -> None:
    """profl is worse than steady: -2.0 ± its half-width, Holm p over the two tests."""
    table = paired_comparisons(_runs(FINALS))
    finals = {(label, "iid"): sum(v) / 5 for label, v in FINALS.items()}
    (line,) = answer_lines(table, finals)
    row = _row(table, "profl")
    assert line.startswith("- `iid`: best `steady` (74.4%)")
    assert f"worse: `profl` (-2.0 ± {row['d_best_ci95']:.1f} points, " \
           f"Holm p {row['p_best_holm']:.2g})" in line
    assert "cannot be told apart: `swinging` (" in line
