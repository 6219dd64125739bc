"""Every baseline: memory-respecting selection and learning on a tiny synthetic problem."""

import numpy as np
import pytest
import torch

from profl_core.data import partition, synthetic_dataset
from profl_core.devices import Device, Fleet
from profl_core.errors import ConfigError
from profl_core.fl import FederatedData, RunConfig, run_federated
from profl_core.methods.allsmall import AllSmall, AllSmallConfig
from profl_core.methods.depthfl import DepthFL, DepthFLConfig
from profl_core.methods.exclusivefl import ExclusiveFL
from profl_core.methods.fedavg import FedAvg, FedAvgConfig
from profl_core.methods.fedrolex import FedRolex
from profl_core.methods.heterofl import HeteroFL, HeteroFLConfig
from profl_core.methods.inclusivefl import InclusiveFL
from profl_core.models import build_model, native_spec
from tests.integration.tiny_fl import ListSink

CLASSES = 4
SPEC = native_spec("cnn", width=0.25, num_classes=CLASSES, input_size=8)
# Hand-made tables (bytes): wider / deeper sub-models need more.
WIDTH_TABLE = {"full": 100, "w0.5": 50, "w0.25": 25, "w0.125": 12, "w0.0625": 6}
DEPTH_TABLE = {"full": 100, "depth:4": 120, "depth:3": 90, "depth:2": 70, "depth:1": 55,
               "trunc:4": 100, "trunc:3": 80, "trunc:2": 65, "trunc:1": 55}
BUDGETS = [5, 8, 20, 30, 54, 60, 75, 95, 110, 130]
FLEET = Fleet("hand", tuple(Device(device_id=i, budget_bytes=b) for i, b in enumerate(BUDGETS)))


def methods(rounds: int, client_data=None, test=None) -> dict[str, object]:
    """One instance of every baseline with tiny settings."""
    common = {"rounds": rounds, "per_round": 4, "local_epochs": 2, "batch_size": 16, "lr": 0.05}
    return {
        "alllarge": FedAvg(FedAvgConfig(**common)),
        "exclusivefl": ExclusiveFL(FedAvgConfig(**common)),
        "allsmall": AllSmall(AllSmallConfig(**common)),
        "heterofl": HeteroFL(HeteroFLConfig(**common), client_data=client_data),
        "fedrolex": FedRolex(HeteroFLConfig(**common), client_data=client_data),
        "depthfl": DepthFL(DepthFLConfig(**common), test_data=test),
        "inclusivefl": InclusiveFL(DepthFLConfig(**common), test_data=test),
    }


def largest_fit(budget: int, table: dict[str, int], prefix: str) -> str | None:
    """Oracle: the most memory-hungry entry with ``prefix`` that fits ``budget``."""
    fits = [(v, k) for k, v in table.items() if k.startswith(prefix) and v <= budget]
    return max(fits)[1] if fits else None


@pytest.mark.parametrize("name", ["exclusivefl", "heterofl", "fedrolex", "depthfl", "inclusivefl"])
def test_only_devices_whose_budget_fits_their_task_are_selected(name: str) -> None:
    """Over many rounds, every task fits its device, and tiered methods give the largest fit."""
    method = methods(1)[name]
    state = method.init_state(build_model(SPEC), np.random.default_rng(0))
    table = WIDTH_TABLE | DEPTH_TABLE
    rng = np.random.default_rng(1)
    seen = set()
    for rnd in range(1, 60):
        for task in method.configure_round(rnd, state, FLEET, table, rng):
            budget = BUDGETS[task.client_id]
            assert task.required_bytes == table[task.submodel] <= budget
            seen.add(task.client_id)
            if name in ("heterofl", "fedrolex"):
                assert task.submodel == largest_fit(budget, WIDTH_TABLE, "w") or (
                    budget >= 100 and task.submodel == "full")
            if name in ("depthfl", "inclusivefl"):
                assert task.submodel == largest_fit(budget, DEPTH_TABLE, method.kind)
    smallest = {"exclusivefl": 100, "heterofl": 6, "fedrolex": 6, "depthfl": 55,
                "inclusivefl": 55}[name]
    assert seen == {i for i, b in enumerate(BUDGETS) if b >= smallest}


def test_allsmall_uses_the_widest_level_the_weakest_device_fits() -> None:
    """Weakest budget 8 -> w0.0625 (6): every device but budget 5 (fits no level) may train."""
    method = methods(1)["allsmall"]
    state = method.init_state(build_model(SPEC), np.random.default_rng(0))
    fleet = Fleet("hand", FLEET.devices[1:])
    state = method.fit_fleet(state, fleet, WIDTH_TABLE)
    tasks = method.configure_round(1, state, fleet, WIDTH_TABLE, np.random.default_rng(0))
    assert {t.submodel for t in tasks} == {"w0.0625"}
    assert len(tasks) == 4
    assert method.position(state) == ("full", 0, "w0.0625")
    assert method.fit_fleet(state, FLEET, WIDTH_TABLE).meta["small"] == "w0.0625"
    assert method.eligible_share(state, FLEET, WIDTH_TABLE) == 0.9


def test_allsmall_takes_its_levels_in_any_order() -> None:
    """Levels given narrowest first: the same width as the default order (w0.0625 for the
    weakest capable budget 8), handed out as the same tasks."""
    shuffled = AllSmall(AllSmallConfig(rounds=1, per_round=4, batch_size=16,
                                       levels=(0.0625, 0.25, 1.0, 0.125, 0.5)))
    state = shuffled.init_state(build_model(SPEC), np.random.default_rng(0))
    fleet = Fleet("hand", FLEET.devices[1:])
    assert shuffled.fit_fleet(state, fleet, WIDTH_TABLE).meta["small"] == "w0.0625"
    assert list(shuffled.memory_plan(state)) == ["full", "w0.5", "w0.25", "w0.125", "w0.0625"]


def test_allsmall_leaves_out_devices_that_fit_no_level() -> None:
    """Budgets 60+ only: the weakest capable device (60) fits w0.5 (50); on a fleet where no
    device fits w0.0625 (6) it is a one-line ConfigError."""
    method = methods(1)["allsmall"]
    state = method.init_state(build_model(SPEC), np.random.default_rng(0))
    strong = Fleet("strong", tuple(Device(device_id=i, budget_bytes=b)
                                   for i, b in enumerate([3, 60, 75])))
    state = method.fit_fleet(state, strong, WIDTH_TABLE)
    assert state.meta["small"] == "w0.5"
    tasks = method.configure_round(1, state, strong, WIDTH_TABLE, np.random.default_rng(0))
    assert sorted(t.client_id for t in tasks) == [1, 2]
    weak = Fleet("weak", (Device(device_id=0, budget_bytes=5),))
    with pytest.raises(ConfigError, match=r"allsmall: even w0\.0625"):
        method.fit_fleet(state, weak, WIDTH_TABLE)


def test_alllarge_ignores_memory() -> None:
    """The upper bound: the full model on any device, weak ones included."""
    method = methods(1)["alllarge"]
    state = method.init_state(build_model(SPEC), np.random.default_rng(0))
    rng = np.random.default_rng(0)
    seen = {t.client_id for _ in range(50)
            for t in method.configure_round(1, state, FLEET, WIDTH_TABLE, rng)}
    assert {t for t in seen if BUDGETS[t] < 100}


@pytest.mark.usefixtures("one_thread")
def test_allsmall_records_its_one_sub_model_from_round_one() -> None:
    """The fleet fixes AllSmall's width before round 1: every record names it (w0.0625 for
    budgets from 8), so the blow-up guard and the step summary see one step."""
    gen = torch.Generator().manual_seed(0)
    train = synthetic_dataset(num_samples=90, input_shape=(1, 8, 8), num_classes=CLASSES,
                              generator=gen)
    parts = partition("iid", train.y.numpy(), 9, np.random.default_rng(0))
    data = FederatedData(clients=tuple(train.subset(p) for p in parts), test=train)
    fleet = Fleet("hand", FLEET.devices[1:])
    sink = ListSink()
    run_federated(methods(3)["allsmall"], fleet, data, RunConfig(rounds=3, seed=0),
                  model=build_model(SPEC), memory_table=WIDTH_TABLE, sink=sink)
    assert [r.round for r in sink.records] == [1, 2, 3]
    assert {r.submodel for r in sink.records} == {"w0.0625"}


@pytest.mark.usefixtures("one_thread")
def test_every_baseline_learns_a_tiny_problem() -> None:
    """4 classes (chance 0.25): after 4 rounds every baseline reaches chance + 0.2 = 0.45, and
    its memory rule holds (participants fit their required bytes). The table is hand-made in
    the proportions the predict probe measures for cnn (measuring it here would triple the
    test's time; measured tables are covered by test_depth and the train CLI)."""
    gen = torch.Generator().manual_seed(0)
    train = synthetic_dataset(num_samples=320, input_shape=(1, 8, 8), num_classes=CLASSES,
                              generator=gen, noise=1.0)
    test = synthetic_dataset(num_samples=200, input_shape=(1, 8, 8), num_classes=CLASSES,
                             generator=torch.Generator().manual_seed(0), noise=1.0)
    parts = partition("iid", train.y.numpy(), 8, np.random.default_rng(0))
    data = FederatedData(clients=tuple(train.subset(p) for p in parts), test=test)
    results = {}
    for name, method in methods(4, data.clients, data.test).items():
        table = WIDTH_TABLE | DEPTH_TABLE
        fleet = Fleet("rel", tuple(Device(device_id=i, budget_bytes=int(f))
                                   for i, f in enumerate(np.linspace(50, 140, 8))))
        sink = ListSink()
        run_federated(method, fleet, data, RunConfig(rounds=4, seed=0), model=build_model(
            SPEC, generator=torch.Generator().manual_seed(1)), memory_table=table, sink=sink)
        for record in sink.records:
            for cid, need in zip(record.participants, record.required_bytes, strict=True):
                assert name == "alllarge" or need <= fleet.devices[cid].budget_bytes
        results[name] = sink.records[-1].accuracy
    low = {k: v for k, v in results.items() if v is None or v < 0.45}
    assert not low, results
