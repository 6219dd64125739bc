"""FedAvg-fit and ProFL with micro-batching: the single-device alternatives as methods.

Oracles: rung names from the memory kinds' own grammar (``case_from_text``'s canonical label),
budgets one byte either side of a rung's measured ``required_bytes`` (the predict probe's
table of the method), ``select_clients`` for the draws of plain ProFL, hand arithmetic for the
compute-cost metrics, and plain FedAvg's aggregated model for accumulation on a BN-free model
(the accumulated gradient is the full batch's).
"""

from __future__ import annotations

import math
import sys
import textwrap
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from profl_core.data import partition, synthetic_dataset
from profl_core.devices import Device, Fleet
from profl_core.errors import ConfigError
from profl_core.fl import FederatedData, RunConfig, run_federated
from profl_core.fl.selection import select_clients
from profl_core.fl.types import ClientUpdate
from profl_core.memory.case_text import case_from_text
from profl_core.memory.table import method_table
from profl_core.methods.alternatives import Rung, ladder
from profl_core.methods.fedavg import FedAvg, FedAvgConfig
from profl_core.methods.fedavg_fit import FedAvgFit, FedAvgFitConfig
from profl_core.methods.profl import ProFL, ProFLConfig
from profl_core.models import build_model, native_spec
from tests.integration.tiny_fl import ListSink

SPEC = native_spec("cnn", width=0.25)
BATCH = 8
#: float32 sums in another order: what accumulation may change in a weight.
ATOL, RTOL = 1e-6, 1e-5


def fleet(*budgets: int) -> Fleet:
    return Fleet("hand", tuple(Device(device_id=i, budget_bytes=b)
                               for i, b in enumerate(budgets)))


def fit(**options: Any) -> FedAvgFit:
    settings: dict[str, Any] = {"rounds": 2, "per_round": 20, "batch_size": BATCH}
    return FedAvgFit(FedAvgFitConfig(**settings | options))


def accum(**options: Any) -> ProFL:
    settings: dict[str, Any] = {"rounds": 20, "per_round": 20, "batch_size": BATCH,
                                "accumulate": True}
    return ProFL(ProFLConfig(**settings | options))


def handed(method: Any, budgets: list[int], table: dict[str, int]
           ) -> list[str | None]:
    """The memory-table name each device of ``budgets`` is given in round 1 (None: none)."""
    state = method.init_state(build_model(SPEC, generator=torch.Generator().manual_seed(0)),
                              np.random.default_rng(0))
    tasks = method.configure_round(1, state, fleet(*budgets), table, np.random.default_rng(0))
    given = {t.client_id: t.submodel for t in tasks}
    return [given.get(i) for i in range(len(budgets))]


@pytest.fixture(scope="module")
def fit_table() -> dict[str, int]:
    """FedAvg-fit's measured table at batch 8 (predict): full 2.46 MB, accum:2 1.98, accum:4
    1.60, ckpt 2.33, ckpt+accum:2 1.63, ckpt+accum:4 1.34."""
    return {k: r.required_bytes for k, r in method_table(fit(), SPEC, batch_size=BATCH).items()}


# ------------------------------------------------------------------------------ the ladder


def test_ladder_of_batch_64_in_order_of_compute_cost() -> None:
    names = [r.name("full") for r in ladder(64, min_micro_batch=2, checkpointing=True)]
    assert names == ["full", "full+accum:2", "full+accum:4", "full+accum:8", "full+accum:16",
                     "full+accum:32", "full+ckpt", "full+ckpt+accum:2", "full+ckpt+accum:4",
                     "full+ckpt+accum:8", "full+ckpt+accum:16", "full+ckpt+accum:32"]


def test_ladder_keeps_micro_batches_of_at_least_the_minimum() -> None:
    """48 = 16 * 3: k = 2, 4, 8 (micro-batch 6) with a minimum of 5; 32 does not divide it."""
    counts = [r.micro_batches for r in ladder(48, min_micro_batch=5, checkpointing=False)]
    assert counts == [1, 2, 4, 8]


@pytest.mark.parametrize("rung", ladder(64, min_micro_batch=2, checkpointing=True))
def test_rung_names_are_the_memory_kinds_canonical_labels(rung: Rung) -> None:
    name = rung.name("grow:2")
    assert case_from_text(SPEC, name, batch_size=64).label == name


def test_rung_task_carries_its_step_options() -> None:
    method = fit()
    plan = method.memory_plan(method.init_state(build_model(SPEC), np.random.default_rng(0)))
    task = plan["full+ckpt+accum:4"]
    assert task.micro_batches == 4
    assert task.checkpoint is True
    assert task.batch_size == BATCH


# ------------------------------------------------------------------------------ first fit


@pytest.mark.slow
def test_fedavg_fit_gives_each_device_the_first_rung_that_fits(fit_table: dict[str, int]
                                                                ) -> None:
    """Budgets at and one byte below rungs of the measured table. full+ckpt (2.33 MB) is
    never handed out: accum:2 comes first and needs less."""
    t = fit_table
    budgets = [t["full"], t["full"] - 1, t["full+accum:2"] - 1, t["full+ckpt"],
               t["full+accum:4"] - 1, t["full+ckpt+accum:4"], t["full+ckpt+accum:4"] - 1]
    got = handed(fit(), budgets, t)
    assert got[0] == "full"
    assert got[1] == "full+accum:2"
    assert got[2] == "full+accum:4"
    assert got[3] == "full+accum:2"
    assert got[4] == "full+ckpt+accum:4"
    assert got[5] == "full+ckpt+accum:4"
    assert got[6] is None


@pytest.mark.slow
def test_fedavg_fit_tasks_need_their_rungs_measured_bytes(fit_table: dict[str, int]) -> None:
    method = fit()
    state = method.init_state(build_model(SPEC), np.random.default_rng(0))
    budgets = sorted(fit_table.values())
    for task in method.configure_round(1, state, fleet(*budgets), fit_table,
                                       np.random.default_rng(0)):
        assert task.required_bytes == fit_table[task.submodel]
        assert task.required_bytes <= budgets[task.client_id]


@pytest.mark.slow
def test_fedavg_fit_eligible_share_counts_devices_on_any_rung(fit_table: dict[str, int]
                                                              ) -> None:
    """4 devices: one fits the full model, two only ckpt+accum:4 or accum:4, one nothing."""
    method = fit()
    state = method.init_state(build_model(SPEC), np.random.default_rng(0))
    t = fit_table
    hand = fleet(t["full"], t["full+accum:4"], t["full+ckpt+accum:4"], t["full+ckpt+accum:4"] - 1)
    assert method.eligible_share(state, hand, t) == 0.75


def test_profl_accum_gives_the_step_the_fewest_micro_batches_that_fit() -> None:
    """The first step (training B4, ``grow:4``) with a hand table: 30 fits accum:2 (30), 29
    only accum:4 (20), 100 the plain step, 19 nothing."""
    table = {"grow:4": 100, "grow:4+accum:2": 30, "grow:4+accum:4": 20}
    got = handed(accum(), [100, 30, 29, 19], table)
    assert got == ["grow:4", "grow:4+accum:2", "grow:4+accum:4", None]


def test_plain_profl_draws_the_clients_select_clients_draws() -> None:
    """accumulate=False: one rung per step, so the same draws as before the option."""
    table = {"grow:4": 50}
    budgets = [10, 60, 50, 70, 40, 90, 55, 80]
    method = ProFL(ProFLConfig(rounds=20, per_round=3, batch_size=BATCH))
    state = method.init_state(build_model(SPEC), np.random.default_rng(0))
    tasks = method.configure_round(1, state, fleet(*budgets), table, np.random.default_rng(7))
    expected = select_clients(fleet(*budgets), 50, 3, np.random.default_rng(7),
                              submodel="grow:4")
    assert [t.client_id for t in tasks] == expected
    assert {t.submodel for t in tasks} == {"grow:4"}


# ------------------------------------------------------------------------------ refusal


def plan_table(method: Any, bytes_of: dict[int, int]) -> dict[str, int]:
    """A hand table over the method's memory plan: bytes by micro-batch count."""
    state = method.init_state(build_model(SPEC), np.random.default_rng(0))
    return {name: bytes_of[task.micro_batches] + (5 if task.checkpoint else 0)
            for name, task in method.memory_plan(state).items()}


def test_fedavg_fit_refuses_a_fleet_that_fits_no_rung() -> None:
    method = fit()
    table = plan_table(method, {1: 100, 2: 60, 4: 30})
    state = method.init_state(build_model(SPEC), np.random.default_rng(0))
    with pytest.raises(ConfigError) as err:
        method.fit_fleet(state, fleet(20, 29), table)
    message = str(err.value)
    assert "\n" not in message
    assert "fleet 'hand'" in message
    assert "full on any of its 6 rungs (the smallest is full+accum:4)" in message


def test_profl_accum_refuses_a_fleet_where_a_step_fits_no_rung() -> None:
    method = accum()
    table = plan_table(method, {1: 100, 2: 60, 4: 30}) | {"grow:1+accum:4": 40}
    state = method.init_state(build_model(SPEC), np.random.default_rng(0))
    with pytest.raises(ConfigError, match=r"grow:1 on any of its 3 rungs") as err:
        method.fit_fleet(state, fleet(35, 39), table)
    assert "\n" not in str(err.value)


def test_fedavg_fit_selection_refuses_a_fleet_that_fits_no_rung() -> None:
    method = fit()
    table = plan_table(method, {1: 100, 2: 60, 4: 30})
    state = method.init_state(build_model(SPEC), np.random.default_rng(0))
    with pytest.raises(ConfigError, match="can train full on any"):
        method.configure_round(1, state, fleet(10), table, np.random.default_rng(0))


# ------------------------------------------------------------------------------ compute cost


def test_round_metrics_are_the_participants_compute_cost() -> None:
    """Device 0 on the plain step (8 samples per micro-batch), device 1 on ckpt+accum:4 (2
    samples, one extra forward): means 0.5 and 5, smallest 2."""
    method = fit()
    table = {"full": 100, "full+accum:2": 60, "full+accum:4": 30, "full+ckpt": 105,
             "full+ckpt+accum:2": 65, "full+ckpt+accum:4": 20}
    state = method.init_state(build_model(SPEC), np.random.default_rng(0))
    tasks = method.configure_round(1, state, fleet(100, 25), table, np.random.default_rng(0))
    assert [t.submodel for t in tasks] == ["full", "full+ckpt+accum:4"]
    updates = [ClientUpdate(client_id=t.client_id, state={}, num_examples=1, task=t)
               for t in tasks]
    metrics = method.round_metrics(method.aggregate(1, state, updates))
    assert metrics["extra_forward"] == 0.5
    assert metrics["micro_batch"] == 5.0
    assert metrics["micro_batch_min"] == 2.0


# ------------------------------------------------------------------------------ runs

CLASSES = 4
TINY = native_spec("cnn", width=0.25, num_classes=CLASSES, input_size=8)


def tiny_data(clients: int, samples: int) -> FederatedData:
    gen = torch.Generator().manual_seed(0)
    train = synthetic_dataset(num_samples=samples, input_shape=(1, 8, 8), num_classes=CLASSES,
                              generator=gen, noise=1.0)
    test = synthetic_dataset(num_samples=64, input_shape=(1, 8, 8), num_classes=CLASSES,
                             generator=torch.Generator().manual_seed(1), noise=1.0)
    parts = partition("iid", train.y.numpy(), clients, np.random.default_rng(0))
    return FederatedData(clients=tuple(train.subset(p) for p in parts), test=test)


def run(method: Any, budgets: list[int], table: dict[str, int], data: FederatedData,
        rounds: int, spec: Any = TINY) -> tuple[ListSink, Any]:
    sink = ListSink()
    state = run_federated(method, fleet(*budgets), data, RunConfig(rounds=rounds, seed=0),
                          model=build_model(spec, generator=torch.Generator().manual_seed(1)),
                          memory_table=table, sink=sink)
    return sink, state


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", ["fedavg-fit", "profl-accum"])
def test_a_tiny_run_finishes_with_finite_loss(name: str) -> None:
    """Budgets 30..100 put the devices on three rungs; the rounds record the cost."""
    common: dict[str, Any] = {"rounds": 4, "per_round": 4, "local_epochs": 1,
                              "batch_size": 16, "lr": 0.05}
    method: Any = (FedAvgFit(FedAvgFitConfig(**common)) if name == "fedavg-fit"
                   else ProFL(ProFLConfig(**common, accumulate=True)))
    state = method.init_state(build_model(TINY), np.random.default_rng(0))
    table = {n: 100 // t.micro_batches + (3 if t.checkpoint else 0)
             for n, t in method.memory_plan(state).items()}
    sink, _ = run(method, [30, 40, 60, 100], table, tiny_data(4, 128), rounds=4)
    assert len(sink.records) == 4
    assert all(math.isfinite(r.train_loss) for r in sink.records)
    assert math.isfinite(sink.records[-1].loss)
    assert sink.records[-1].metrics["micro_batch"] is not None


USER = "profl_test_bn_free_models"
SOURCE = '''
from torch import nn


def convnet(num_classes):
    """Convolutions without batch norm: the accumulated gradient is the full batch's."""
    return nn.Sequential(
        nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU()),
        nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(16, num_classes)),
    )
'''


@pytest.fixture
def bn_free(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    folder = tmp_path_factory.mktemp("bn_free")
    (folder / f"{USER}.py").write_text(textwrap.dedent(SOURCE), encoding="utf-8")
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(folder))
        yield native_spec(f"{USER}:convnet", num_classes=CLASSES, in_channels=1, input_size=8)
        sys.modules.pop(USER, None)


def one_round_both_ways(spec: Any) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The model after one round of FedAvg-fit with every client on full+accum:4 (the only
    rung its budget 30 fits), and after one round of plain FedAvg of the same clients."""
    common: dict[str, Any] = {"rounds": 1, "per_round": 4, "local_epochs": 2,
                              "batch_size": 8, "lr": 0.05}
    data = tiny_data(4, 64)
    method = FedAvgFit(FedAvgFitConfig(**common, checkpointing=False))
    table = {"full": 100, "full+accum:2": 60, "full+accum:4": 30}
    sink, got = run(method, [30] * 4, table, data, rounds=1, spec=spec)
    assert sink.records[0].required_bytes == (30, 30, 30, 30)
    plain = FedAvg(FedAvgConfig(**common))
    _, expected = run(plain, [30] * 4, {"full": 100}, data, rounds=1, spec=spec)
    return method.model_weights(got), plain.model_weights(expected)


@pytest.mark.usefixtures("one_thread")
def test_accumulating_clients_aggregate_to_plain_fedavgs_model(bn_free: Any) -> None:
    """A BN-free model: the same model as plain FedAvg's within float tolerance."""
    got_w, expected_w = one_round_both_ways(bn_free)
    assert got_w.keys() == expected_w.keys()
    for key, value in expected_w.items():
        assert torch.allclose(got_w[key], value, atol=ATOL, rtol=RTOL), key
    start = build_model(bn_free, generator=torch.Generator().manual_seed(1)).state_dict()
    moved = max(float((expected_w[k] - w).abs().max()) for k, w in start.items())
    assert moved > 1e-3  # the round did train


@pytest.mark.usefixtures("one_thread")
def test_with_batch_norm_the_accumulating_clients_do_train_another_model() -> None:
    """The control: on the cnn, batch norm normalises each micro-batch of 2 by itself, so
    the same round gives another model (the clients did run micro-batches)."""
    got_w, expected_w = one_round_both_ways(TINY)
    assert not torch.allclose(got_w["block1.0.weight"], expected_w["block1.0.weight"],
                              atol=ATOL, rtol=RTOL)
