"""``profl speed`` turns a benchmark's ``extra_info["ratio_to"]`` into a ratio row."""

from __future__ import annotations

from bench.paths import SPEED_TESTS
from bench.speed import ratios


def dump(*benchmarks: tuple[str, float, dict[str, str]]) -> dict:
    return {"benchmarks": [{"name": n, "stats": {"mean": m}, "extra_info": e}
                           for n, m, e in benchmarks]}


def test_ratio_to_gives_the_mean_over_the_named_benchmark() -> None:
    rows = ratios(dump(("full", 2.0, {}),
                       ("ckpt", 3.0, {"ratio_to": "full", "label": "ckpt / full"})))
    assert rows == [["ckpt / full", "1.500", "-", "-"]]


def test_ratio_to_a_benchmark_that_did_not_run_gives_no_row() -> None:
    assert ratios(dump(("ckpt", 3.0, {"ratio_to": "full"}))) == []


def test_the_alternatives_benchmark_is_a_speed_test() -> None:
    assert "test_speed_alternatives.py" in [p.name for p in SPEED_TESTS]
