"""Speed benchmarks of the partition planner (``profl plan``; pytest-benchmark). ``profl
speed`` runs them with the other speed benchmarks (``profl speed -k test_plan`` alone); or
``OMP_NUM_THREADS=1 pytest bench/test_speed_plan.py``.

Targets, on one core (the planner's probe runs at one thread), reported in ``extra_info``
next to the time, and by ``profl speed`` as rows of its table (:data:`bench.speed.TARGETS`),
never asserted:

* resnet34 at batch 64: at most 60 s;
* torchvision mobilenet_v3_small at batch 32: at most 30 s.

Each plan is searched once (``rounds=1``) in a fresh in-process state but for the scratch
model's cache, which is shared like in one ``profl plan`` run. The plan's blocks and largest
step go into ``extra_info`` so the JSON shows what was planned.

``test_plan`` measures every step (its report cache starts empty: the cold run the targets
are about) and fills a report cache (:mod:`bench.report_cache`); ``test_plan_cached`` then
runs ``profl plan`` for the same model in a new process from that cache, as a second plan on
the same machine and code does (``extra_info["cache"]``: its line of steps reused and
measured).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench.planning import PLAN_THREADS, make_plan
from bench.report_cache import ReportCache
from profl_core.models import native_spec

pytestmark = pytest.mark.benchmark(group="planner")

#: (model, batch size, target seconds on one core)
PLANS = [("resnet34", 64, 60.0), ("torchvision:mobilenet_v3_small", 32, 30.0)]


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The report cache the cold plans fill and the cached plans read."""
    return tmp_path_factory.mktemp("reports")


@pytest.mark.parametrize(("model", "batch", "target_s"), PLANS,
                         ids=[model for model, _, _ in PLANS])
def test_plan(benchmark: Any, model: str, batch: int, target_s: float, reports: Path) -> None:
    cache = ReportCache(reports, probe="predict", threads=PLAN_THREADS, warnings=sys.stderr)

    def plan() -> Any:
        return make_plan(native_spec(model), batch_size=batch, max_blocks=8, cache=cache)[0]

    planned = benchmark.pedantic(plan, rounds=1, warmup_rounds=0)
    benchmark.extra_info["target_s"] = target_s
    benchmark.extra_info["blocks"] = list(planned.groups)
    benchmark.extra_info["peak_bytes"] = planned.peak_bytes
    benchmark.extra_info["measured"] = cache.misses


@pytest.mark.parametrize(("model", "batch", "target_s"), PLANS,
                         ids=[model for model, _, _ in PLANS])
def test_plan_cached(benchmark: Any, model: str, batch: int, target_s: float,
                     reports: Path) -> None:
    """``profl plan`` in a new process (its imports included, nothing remembered in memory)
    answered from the cache ``test_plan`` filled."""
    command = [sys.executable, "-m", "bench", "plan", "--model", model, "--batch-size",
               str(batch), "--json", "--cache", str(reports)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def plan() -> subprocess.CompletedProcess[str]:
        return subprocess.run(command, capture_output=True, text=True, check=True, env=env)

    done = benchmark.pedantic(plan, rounds=1, warmup_rounds=0)
    benchmark.extra_info["target_s"] = target_s
    benchmark.extra_info["blocks"] = json.loads(done.stdout)["blocks"]
    benchmark.extra_info["cache"] = done.stderr.strip().splitlines()[-1]
