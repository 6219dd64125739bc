"""The smoothed final accuracy of a run against hand computation, on a recorded curve and on
hand-made ones."""

from __future__ import annotations

import math
from typing import Any

import pytest

from bench.run_summary import final_window, smoothed_final, summary_records

#: The evaluated rounds of a recorded run (profl bench, the shrink-ablation setting at 60
#: rounds evaluated every 4th round and at every ProFL step end: ProFL, IID, seed 0).
RECORDED = {4: 0.1, 6: 0.118, 8: 0.1275, 12: 0.141, 16: 0.285, 18: 0.3265, 20: 0.2105,
            24: 0.2105, 28: 0.3935, 30: 0.5115, 32: 0.332, 36: 0.392, 40: 0.473, 42: 0.5475,
            44: 0.528, 48: 0.5855, 52: 0.5795, 54: 0.6285, 56: 0.56, 60: 0.6345}


def _rounds(accuracy: dict[int, float], last: int) -> list[dict[str, Any]]:
    """Rounds 1..last as ``rounds.jsonl`` records, evaluated where ``accuracy`` has them."""
    return [{"round": r, "accuracy": accuracy.get(r), "loss": 1.0 if r in accuracy else None,
             "participants": [0], "required_bytes": [1], "wall_s": 0.1,
             "eligible_share": 1.0} for r in range(1, last + 1)]


def test_recorded_curve_takes_its_last_five_evaluations() -> None:
    """60 rounds: the last ceil(6) rounds, 55-60, hold 2 evaluations (56, 60), fewer than 5,
    so the window is the last 5: rounds 48, 52, 54, 56, 60;
    (0.5855 + 0.5795 + 0.6285 + 0.56 + 0.6345) / 5 = 2.988 / 5 = 0.5976."""
    rounds = _rounds(RECORDED, 60)
    assert [r["round"] for r in final_window(rounds)] == [48, 52, 54, 56, 60]
    assert smoothed_final(rounds) == pytest.approx(0.5976)


def test_every_round_evaluated_takes_the_last_tenth() -> None:
    """100 rounds, accuracy round / 100: the last 10 rounds, 91-100, mean 0.955."""
    rounds = _rounds({r: r / 100 for r in range(1, 101)}, 100)
    assert [r["round"] for r in final_window(rounds)] == list(range(91, 101))
    assert smoothed_final(rounds) == pytest.approx(0.955)


def test_the_tenth_of_rounds_is_rounded_up() -> None:
    """41 rounds: ceil(4.1) = 5 rounds, 37-41, each evaluated: exactly the 5 needed."""
    rounds = _rounds({r: r / 100 for r in range(1, 42)}, 41)
    assert [r["round"] for r in final_window(rounds)] == [37, 38, 39, 40, 41]


def test_150_rounds_every_tenth_averages_rounds_110_to_150() -> None:
    """The default suite's schedule: rounds 136-150 hold 2 evaluations, so the last 5:
    accuracies 0.70, 0.72, 0.80, 0.74, 0.76 at rounds 110-150, mean 0.744."""
    accuracy = {r: 0.5 for r in range(10, 101, 10)}
    accuracy |= {110: 0.70, 120: 0.72, 130: 0.80, 140: 0.74, 150: 0.76}
    assert smoothed_final(_rounds(accuracy, 150)) == pytest.approx(0.744)


def test_a_run_with_fewer_than_five_evaluations_averages_them_all() -> None:
    assert smoothed_final(_rounds({5: 0.4, 10: 0.6}, 10)) == pytest.approx(0.5)


def test_no_evaluation_is_nan() -> None:
    assert math.isnan(smoothed_final(_rounds({}, 10)))


def test_summary_records_hold_the_smoothed_and_the_last_evaluation() -> None:
    """On the recorded curve: smoothed 0.5976 over 5 evaluations; last 0.6345; best 0.6345."""
    records = {r.metric: r.value for r in summary_records(_rounds(RECORDED, 60), "k")}
    assert records["smoothed_final_accuracy"] == pytest.approx(0.5976)
    assert records["smoothed_final_evaluations"] == 5
    assert records["final_accuracy"] == pytest.approx(0.6345)
    assert records["best_accuracy"] == pytest.approx(0.6345)


def test_a_diverged_run_has_no_smoothed_final() -> None:
    records = {r.metric for r in summary_records(_rounds(RECORDED, 60), "k", completed=False)}
    assert "smoothed_final_accuracy" not in records
