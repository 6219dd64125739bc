"""The accuracy table's compute-cost columns (``extra_fwd``, ``ubatch``) of the methods on
single-device alternatives, from ``metrics`` in ``rounds.jsonl``; oracle: hand arithmetic."""

from __future__ import annotations

import json
import math
from pathlib import Path

from bench_fixtures import write_run

from bench.run_frames import accuracy_frame, mean_metric


def rounds_with(metrics: list[dict[str, float | None]]) -> list[dict[str, object]]:
    return [{"round": i + 1, "accuracy": None, "metrics": m} for i, m in enumerate(metrics)]


def test_mean_metric_averages_the_rounds_that_recorded_it() -> None:
    """Rounds 1 and 3 recorded 4 and 8 samples per micro-batch, round 2 none (null)."""
    rounds = rounds_with([{"micro_batch": 4.0}, {"micro_batch": None}, {"micro_batch": 8.0}])
    assert mean_metric(rounds, "micro_batch") == 6.0


def test_mean_metric_of_a_method_without_it_is_nan() -> None:
    assert math.isnan(mean_metric(rounds_with([{"em": 0.5}]), "micro_batch"))


def test_accuracy_table_shows_the_cost_of_a_run(tmp_path: Path) -> None:
    """A run whose rounds say extra_forward 0, 0.5, 0.5, 1 and micro_batch 64, 32, 32, 16."""
    run = write_run(tmp_path, None, "fedavg", "iid", 0, 0.8)
    path = run / "rounds.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for record, fwd, micro in zip(records, [0, 0.5, 0.5, 1], [64, 32, 32, 16], strict=True):
        record["metrics"] = {"extra_forward": fwd, "micro_batch": micro}
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    row = accuracy_frame(tmp_path).iloc[0]
    assert row["extra_fwd"] == 0.5
    assert row["ubatch"] == 36.0


def test_accuracy_table_leaves_the_cost_empty_for_other_methods(tmp_path: Path) -> None:
    write_run(tmp_path, None, "profl", "iid", 0, 0.6)
    row = accuracy_frame(tmp_path).iloc[0]
    assert math.isnan(row["extra_fwd"])
    assert math.isnan(row["ubatch"])
