"""Speed benchmarks (pytest-benchmark). Run with ``profl speed`` or ``pytest bench/test_speed.py``.

Targets are reported as ratios measured in one run, never asserted:

* dispatch-probe overhead: the traced step over the same untraced step, ResNet18, batch 64,
  CPU (target <= 1.10x);
* predicting the whole memory table (every model and case at batch 64; target <= 60 s on
  2 cores).

Bytes and case counts go into ``extra_info`` so the JSON carries them next to the times.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch

from bench.memory_cases import profl_cases
from profl_core.memory import TrainingCase, build_step, measure
from profl_core.memory.dispatch import StorageTracker
from profl_core.models import MODEL_NAMES, native_spec

pytestmark = pytest.mark.benchmark(group="memory")
BATCH = 64


@pytest.fixture(scope="module")
def resnet18_step() -> Any:
    case = TrainingCase(model=native_spec("resnet18"), kind="full", batch_size=BATCH)
    prepared = build_step(case, device="cpu", generator=torch.Generator().manual_seed(0))
    prepared.run()  # warm-up: optimizer state exists from here on
    return prepared


def _traced(prepared: Any) -> Callable[[], int]:
    def run() -> int:
        tracker = StorageTracker()
        tracker.track_step(prepared)
        return tracker.report(probe="dispatch", device="cpu", case_key="bench").tensor_peak_bytes

    return run


@pytest.mark.benchmark(group="probe-overhead")
def test_untraced_step_resnet18(benchmark: Any, resnet18_step: Any) -> None:
    torch.set_num_threads(torch.get_num_threads())
    benchmark.pedantic(resnet18_step.run, rounds=5, warmup_rounds=1)


@pytest.mark.benchmark(group="probe-overhead")
def test_dispatch_traced_step_resnet18(benchmark: Any, resnet18_step: Any) -> None:
    peak = benchmark.pedantic(_traced(resnet18_step), rounds=5, warmup_rounds=1)
    benchmark.extra_info["peak_bytes"] = peak


@pytest.mark.benchmark(group="memory-table")
def test_predict_whole_memory_table(benchmark: Any) -> None:
    cases = [c for name in MODEL_NAMES for c in profl_cases(native_spec(name), BATCH)]

    def predict_all() -> int:
        return sum(measure(case, probe="predict").tensor_peak_bytes for case in cases)

    total = benchmark.pedantic(predict_all, rounds=1, warmup_rounds=0)
    benchmark.extra_info["cases"] = len(cases)
    benchmark.extra_info["sum_peak_bytes"] = total
