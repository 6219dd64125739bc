"""A measured sub-model is the step a client of the method trains (issue 11's first test).

For every method and every sub-model it hands out through ``configure_round``, the memory
table's entry (measured by ``method_table`` on the method's declared memory plan) must hold the
same modules and exactly the parameter bytes of the sub-model a client receives, counted
independently as ``numel * element_size`` over ``method.submodel(state, task)``. The old
parallel step builders failed this for ProFL's basic-layer fit, where the client holds a frozen
copy of ``OM_t`` on both the teacher and the student path.

The methods on single-device alternatives (FedAvg-fit, ProFL with micro-batching) hand out
rungs of a sub-model (``full+ckpt+accum:2``, ``grow:2+accum:4``): the same modules, another
step. Their entries must be exactly the memory kinds of the same text, measured by the case
machinery (:func:`~profl_core.memory.case_text.case_from_text`: the kind's method with the step
options), so a rung's bytes are its client's step and not a stand-in.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
import pytest
import torch

from profl_core.devices import Device, Fleet
from profl_core.fl.method import Method
from profl_core.fl.types import ClientTask, ServerState
from profl_core.memory.case_text import case_from_text
from profl_core.memory.report import MemoryReport
from profl_core.memory.table import method_table, required_bytes_table
from profl_core.methods.allsmall import AllSmall, AllSmallConfig
from profl_core.methods.depthfl import DepthFL, DepthFLConfig
from profl_core.methods.fedavg import FedAvg, FedAvgConfig
from profl_core.methods.fedavg_fit import FedAvgFit, FedAvgFitConfig
from profl_core.methods.fedrolex import FedRolex
from profl_core.methods.heterofl import HeteroFL, HeteroFLConfig
from profl_core.methods.profl import ProFL, ProFLConfig
from profl_core.methods.profl_steps import structure_of
from profl_core.models import build_model, native_spec

SPEC = native_spec("cnn", width=0.25)
BATCH = 8


def make(name: str) -> Method:
    """A fresh method with per_round large enough to hand every sub-model out."""
    common = {"rounds": 20, "per_round": 20, "batch_size": BATCH}
    return {
        "fedavg": lambda: FedAvg(FedAvgConfig(**common)),
        "allsmall": lambda: AllSmall(AllSmallConfig(**common)),
        "heterofl": lambda: HeteroFL(HeteroFLConfig(**common)),
        "fedrolex": lambda: FedRolex(HeteroFLConfig(**common)),
        "depthfl": lambda: DepthFL(DepthFLConfig(**common)),
        "profl": lambda: ProFL(ProFLConfig(**common, schedule="fixed", max_rounds=1)),
        "fedavg-fit": lambda: FedAvgFit(FedAvgFitConfig(**common)),
        "profl-accum": lambda: ProFL(ProFLConfig(**common, schedule="fixed", max_rounds=1,
                                                 accumulate=True)),
    }[name]()


@functools.cache
def reports_of(name: str) -> dict[str, MemoryReport]:
    """The method's memory table (measured once per test session)."""
    return method_table(make(name), SPEC, batch_size=BATCH)


def handed_out(method: Method, table: dict[str, int]) -> Iterator[tuple[ServerState, ClientTask]]:
    """Every (state, task) ``configure_round`` produces: one device per sub-model budget, and
    for ProFL every step of its plan."""
    fleet = Fleet("exact", tuple(Device(device_id=i, budget_bytes=b)
                                 for i, b in enumerate(sorted(table.values()))))
    state = method.init_state(build_model(SPEC, generator=torch.Generator().manual_seed(0)),
                              np.random.default_rng(0))
    state = method.fit_fleet(state, fleet, table)
    rnd = 1
    while not method.is_finished(state) and rnd <= 20:
        for task in method.configure_round(rnd, state, fleet, table, np.random.default_rng(rnd)):
            yield state, task
        if not isinstance(method, ProFL):
            return
        state = method.aggregate(rnd, state, [])
        rnd += 1


def param_bytes(report: MemoryReport) -> int:
    """Trainable plus frozen parameter bytes the probe saw before the measured step."""
    extra = report.extra
    return extra["before_step.param_trainable"] + extra.get("before_step.param_frozen", 0)


@pytest.mark.parametrize("name", [
    "fedavg", "allsmall", "heterofl", "fedrolex", "depthfl", "profl",
    pytest.param("fedavg-fit", marks=pytest.mark.slow),
    pytest.param("profl-accum", marks=pytest.mark.slow),
])
def test_every_handed_out_sub_model_is_measured_with_its_client_modules(name: str) -> None:
    reports = reports_of(name)
    table = {sub: r.required_bytes for sub, r in reports.items()}
    method = make(name)
    seen = set()
    for state, task in handed_out(method, table):
        sub = method.submodel(state, task)
        client = sum(p.numel() * p.element_size()
                     for m in sub.modules.values() for p in m.parameters())
        report = reports[task.submodel]
        assert param_bytes(report) == client, task.submodel
        assert {b.block for b in report.blocks} - {"loss", "optimizer"} <= set(sub.modules)
        seen.add(task.submodel)
    assert seen, "configure_round handed nothing out"


def test_profl_fit_counts_both_copies_of_the_output_module() -> None:
    """shrink:3 on cnn (T = 4): teacher block3 + om3, student om2 = basic3 + a copy of om3,
    all of it trained (fit_scope="module")."""
    method = make("profl")
    report = method_table(method, SPEC, batch_size=BATCH)["shrink:3"]
    state = method.init_state(build_model(SPEC), np.random.default_rng(0))
    container = structure_of(state).modules
    om3 = sum(p.numel() * p.element_size() for p in container.get_submodule("om3").parameters())
    basic3 = sum(p.numel() * p.element_size()
                 for p in container.get_submodule("om2.basic3").parameters())
    prefix_and_teacher = sum(p.numel() * p.element_size() for i in (1, 2, 3)
                             for p in container.get_submodule(f"block{i}").parameters())
    assert report.extra["before_step.param_trainable"] == basic3 + om3
    assert report.extra["before_step.param_frozen"] == prefix_and_teacher + om3


@pytest.mark.slow
@pytest.mark.parametrize(("name", "bases", "count"), [
    ("fedavg-fit", ("full",), 6), ("profl-accum", ("grow:1", "shrink:3"), 6)])
def test_every_rung_is_the_memory_kind_of_its_name(name: str, bases: tuple[str, ...],
                                                   count: int) -> None:
    """All rungs of FedAvg-fit (batch 8: plain, accum:2, accum:4 and each with ckpt), and of
    ProFL-accum's first growing step and a basic-layer fit (plain, accum:2, accum:4 each; the
    others are built by the same code): the same required bytes as the case text."""
    reports = reports_of(name)
    rungs = [rung for rung in reports if rung.split("+", 1)[0] in bases]
    assert len(rungs) == count
    cases = {rung: case_from_text(SPEC, rung, batch_size=BATCH) for rung in rungs}
    expected = required_bytes_table(cases.values())
    for rung, case in cases.items():
        assert reports[rung].required_bytes == expected[case.key], rung


@pytest.mark.slow
def test_rungs_hand_out_their_own_step_options() -> None:
    """A rung's handed-out task runs the step its memory-plan entry was measured with."""
    for name in ("fedavg-fit", "profl-accum"):
        method = make(name)
        table = {sub: r.required_bytes for sub, r in reports_of(name).items()}
        for state, task in handed_out(method, table):
            planned = method.memory_plan(state)[task.submodel]
            assert task.micro_batches == planned.micro_batches, task.submodel
            assert task.checkpoint == planned.checkpoint, task.submodel
            assert task.trainable == planned.trainable, task.submodel
