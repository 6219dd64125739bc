"""The planner's lower bound of a ProFL grow step (profl_core/memory/plan_bound.py).

The oracle is the probe: the bound of every block the planner can cost must be at most the
tensor peak ``dispatch`` (real tensors) or ``predict`` measures for that block's grow step.
"""

from __future__ import annotations

import statistics
import sys
from collections import Counter
from pathlib import Path

import pytest

from profl_core.errors import ConfigError
from profl_core.memory import MemoryReport, measure
from profl_core.memory.case import TrainingCase
from profl_core.memory.case_text import case_from_text
from profl_core.memory.plan import _searched_blocks, plan_partition
from profl_core.memory.plan_bound import GrowBound, optimizer_copies
from profl_core.memory.plan_units import Unit, head_group, layer_units, partition_spec
from profl_core.models import ModelSpec, build_model, native_spec

HERE = Path(__file__).resolve().parent
BATCH = 8


@pytest.fixture(scope="module", autouse=True)
def _toy_importable():
    sys.path.insert(0, str(HERE))
    yield
    sys.path.remove(str(HERE))


def _grow_case(spec: ModelSpec, units: list[Unit], head: str,
               key: tuple[int, int, tuple[int, ...]], batch: int) -> TrainingCase:
    i, j, rest = key
    cut = partition_spec(spec, units, [b for b in (i, j) if 0 < b < len(units)] + list(rest),
                         head=head)
    return case_from_text(cut, f"grow:{1 if i == 0 else 2}", batch_size=batch)


def _bound(spec: ModelSpec, batch: int) -> tuple[GrowBound, list[Unit], str]:
    model = build_model(spec)
    units, head = layer_units(model), head_group(model)
    example = case_from_text(partition_spec(spec, units, [1, 2], head=head), "grow:2",
                             batch_size=batch)
    return GrowBound(spec, units, head, case=example), units, head


def _keys(count: int, rests: list[tuple[int, ...]]) -> list[tuple[int, int, tuple[int, ...]]]:
    return [(i, j, tuple(b for b in rest if b > j)) for rest in rests
            for i, j in _searched_blocks(count)]


@pytest.mark.parametrize("factory", ["build", "build_linear"])
def test_the_bound_is_at_most_what_dispatch_measures_for_every_toy_block(factory: str) -> None:
    """Units of several layers each; ``build_linear``'s layers reshape their input (the
    first one's is the batch, which the step holds anyway)."""
    spec = native_spec(f"plan_toy_model:{factory}", input_size=16)
    bound, units, head = _bound(spec, BATCH)
    for key in _keys(len(units), [(), (3,), (2, 3)]):
        peak = measure(_grow_case(spec, units, head, key, BATCH), probe="dispatch")
        assert bound(key) <= peak.tensor_peak_bytes, key


@pytest.mark.slow
def test_the_bound_is_below_resnet18s_grow_steps_and_near_them() -> None:
    """Every first-search block of resnet18 at batch 16 and those of one refinement: at most
    the predicted tensor peak, and at least 70% of it in the median (a bound far below the
    steps would skip none)."""
    base = native_spec("resnet18")
    bound, units, head = _bound(base, 16)
    ratios = []
    for key in _keys(len(units), [(), (2, 5)]):
        report = measure(_grow_case(base, units, head, key, 16), probe="predict", threads=1)
        value = bound(key)
        assert value <= report.tensor_peak_bytes, key
        ratios.append(value / report.tensor_peak_bytes)
    assert statistics.median(ratios) >= 0.7


@pytest.mark.parametrize(("optimizer", "copies"), [("sgd", (1, 1)), ("adam", (2, 2))])
def test_optimizer_copies_counts_the_optimizers_own_tensors(optimizer: str,
                                                             copies: tuple[int, int]) -> None:
    """SGD with ProFL's default momentum and weight decay keeps one momentum buffer per
    parameter and makes one weight-decayed gradient while it updates it; Adam keeps two
    moments (its 0-d step count is no copy) and makes two parameter-sized temporaries."""
    case = TrainingCase(model=native_spec("cnn"), kind="grow", step=2, batch_size=BATCH,
                        optimizer=optimizer)
    assert optimizer_copies(case) == copies


def test_a_case_with_step_options_is_refused() -> None:
    spec = native_spec("plan_toy_model:build", input_size=16)
    model = build_model(spec)
    units, head = layer_units(model), head_group(model)
    case = TrainingCase(model=partition_spec(spec, units, [1, 2], head=head), kind="grow",
                        step=2, batch_size=BATCH, checkpoint=True)
    with pytest.raises(ConfigError, match="default float32 step only"):
        GrowBound(spec, units, head, case=case)


@pytest.mark.slow
def test_a_plan_with_the_bound_is_the_plan_without_it_in_fewer_steps() -> None:
    """resnet18 at width 0.25 on 16x16 inputs, batch 8, at most 4 blocks (this session: 36
    steps measured with the bound, 87 without)."""
    measured: dict[bool, Counter[TrainingCase]] = {True: Counter(), False: Counter()}
    plans = {}
    for bounded in (True, False):

        def counted(case: TrainingCase, bounded: bool = bounded) -> MemoryReport:
            measured[bounded][case] += 1
            return measure(case, probe="predict", threads=1)

        plans[bounded] = plan_partition(native_spec("resnet18", width=0.25, input_size=16),
                                        batch_size=BATCH, max_blocks=4, measure=counted,
                                        bound=bounded)
    assert plans[True] == plans[False]
    assert len(measured[True]) < len(measured[False]) / 2
