"""``profl speed`` runs the planner's benchmarks (bench/test_speed_plan.py) and reports their
targets (issue 29: resnet34 at batch 64 in at most 60 s, mobilenet_v3_small at batch 32 in at
most 30 s); the benchmarks themselves are timings, never run here."""

from __future__ import annotations

from bench.paths import SPEED_TESTS
from bench.speed import ratios
from bench.test_speed_plan import PLANS


def _dump(*benchmarks: tuple[str, float]) -> dict:
    return {"benchmarks": [{"name": n, "stats": {"mean": m}, "extra_info": {}}
                           for n, m in benchmarks]}


def test_the_planner_benchmark_is_a_speed_test() -> None:
    assert "test_speed_plan.py" in [p.name for p in SPEED_TESTS]


def test_the_resnet34_plan_under_a_minute_is_met() -> None:
    rows = ratios(_dump(("test_plan[resnet34]", 59.0)))
    assert rows == [["profl plan resnet34, batch 64 (s)", "59.000", "<= 60.0", "yes"]]


def test_the_mobilenet_v3_small_plan_over_30_s_is_not_met() -> None:
    rows = ratios(_dump(("test_plan[torchvision:mobilenet_v3_small]", 31.0)))
    assert rows == [["profl plan mobilenet_v3_small, batch 32 (s)", "31.000", "<= 30.0", "NO"]]


def test_the_targets_are_the_benchmarks_targets() -> None:
    """The speed table's goals are the ones bench/test_speed_plan.py records."""
    rows = ratios(_dump(*[(f"test_plan[{model}]", 1.0) for model, _, _ in PLANS]))
    assert [row[2] for row in rows] == [f"<= {target}" for _, _, target in PLANS]


def test_the_cached_plans_have_rows_of_their_own() -> None:
    rows = ratios(_dump(("test_plan[resnet34]", 200.0), ("test_plan_cached[resnet34]", 9.0)))
    assert rows == [["profl plan resnet34, batch 64 (s)", "200.000", "<= 60.0", "NO"],
                    ["profl plan resnet34 again, from the report cache (s)", "9.000", "<= 60.0",
                     "yes"]]
