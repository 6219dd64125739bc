"""FL speed benchmarks (pytest-benchmark). Run with ``profl speed -k fl`` or pytest directly.

Targets, reported as ratios of means measured in one run (never asserted):

* a ProFL round against a full-model FedAvg round on the same clients (CPU): target <= 0.8x,
  reported per growing step and for their mean;
* the frozen-prefix feature cache at growing step 3 with 5 local epochs: target >= 1.5x
  (uncached time over cached time);
* client-trainings per second of the engine (``run_client``: budget check, sub-model build,
  local training, non-finite check) against a bare PyTorch loop doing the same work (the
  a default-suite-sized client: ``cnn`` width 0.25, 250 samples, 1 epoch, batch 64, SGD with
  momentum): target >= 0.9x of the bare loop's rate.

Setup: ``cnn`` on Fashion-MNIST-shaped synthetic data (speed does not depend on the values),
4 clients x 600 samples (Fashion-MNIST's 60,000 over 100 clients), batch 64, SGD.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch

from profl_core.data import ArrayDataset, synthetic_dataset
from profl_core.devices import Device, Fleet
from profl_core.fl.client import ClientJob, run_client
from profl_core.fl.local import LocalConfig
from profl_core.fl.training import train_client
from profl_core.fl.types import ServerState
from profl_core.methods.fedavg import FedAvg, FedAvgConfig
from profl_core.methods.profl import ProFL, ProFLConfig
from profl_core.models import build_model, native_spec

CLIENTS, SAMPLES = 4, 600
FLEET = Fleet("bench", tuple(Device(device_id=i, budget_bytes=1 << 40) for i in range(CLIENTS)))
TABLE = {"full": 0} | {f"{kind}:{t}": 0 for kind in ("grow", "shrink") for t in range(1, 5)}


@pytest.fixture(scope="module")
def clients() -> list[ArrayDataset]:
    data = synthetic_dataset(num_samples=CLIENTS * SAMPLES, input_shape=(1, 28, 28),
                             num_classes=10, generator=torch.Generator().manual_seed(0))
    return [data.subset(np.arange(i * SAMPLES, (i + 1) * SAMPLES)) for i in range(CLIENTS)]


def _model() -> torch.nn.Module:
    return build_model(native_spec("cnn"), generator=torch.Generator().manual_seed(0))


def _round(method: Any, state: ServerState, data: list[ArrayDataset], *, cache: bool) -> None:
    """One round's client work: every client trains its task (no aggregation, no eval)."""
    tasks = method.configure_round(1, state, FLEET, TABLE, np.random.default_rng(0))
    config = LocalConfig(feature_cache=cache)
    for task in tasks:
        train_client(method.submodel(state, task), data[task.client_id], task,
                     generator=torch.Generator().manual_seed(task.client_id), config=config)


def _profl_at(submodel: str, epochs: int) -> tuple[ProFL, ServerState]:
    """ProFL (no shrinking, fixed schedule) advanced to growing step ``submodel``."""
    method = ProFL(ProFLConfig(rounds=4, per_round=CLIENTS, local_epochs=epochs, shrink=False,
                               schedule="fixed"))
    state = method.init_state(_model(), np.random.default_rng(0))
    while method.position(state)[2] != submodel:
        state = method.aggregate(1, state, [])
    return method, state


@pytest.mark.benchmark(group="round-time")
def test_fedavg_round(benchmark: Any, clients: list[ArrayDataset]) -> None:
    method = FedAvg(FedAvgConfig(rounds=1, per_round=CLIENTS, local_epochs=1))
    state = method.init_state(_model(), np.random.default_rng(0))
    benchmark.pedantic(_round, args=(method, state, clients), kwargs={"cache": True}, rounds=3,
                       warmup_rounds=1)


@pytest.mark.benchmark(group="round-time")
@pytest.mark.parametrize("step", [1, 2, 3, 4])
def test_profl_round(benchmark: Any, clients: list[ArrayDataset], step: int) -> None:
    method, state = _profl_at(f"grow:{step}", epochs=1)
    benchmark.pedantic(_round, args=(method, state, clients), kwargs={"cache": True}, rounds=3,
                       warmup_rounds=1)


@pytest.mark.benchmark(group="feature-cache")
@pytest.mark.parametrize("cache", [False, True], ids=["uncached", "cached"])
def test_feature_cache_grow3_5_epochs(
    benchmark: Any, clients: list[ArrayDataset], cache: bool
) -> None:
    method, state = _profl_at("grow:3", epochs=5)
    benchmark.pedantic(_round, args=(method, state, clients), kwargs={"cache": cache},
                       rounds=1, warmup_rounds=0)


# ---------------------------------------------------------------- engine vs a bare PyTorch loop

DEFAULT_SAMPLES, DEFAULT_WIDTH = 250, 0.25


@pytest.fixture(scope="module")
def default_client() -> ArrayDataset:
    """A default-suite-sized client: 250 Fashion-MNIST-shaped samples."""
    return synthetic_dataset(num_samples=DEFAULT_SAMPLES, input_shape=(1, 28, 28),
                             num_classes=10, generator=torch.Generator().manual_seed(0))


def _bare_client(model: torch.nn.Module, data: ArrayDataset) -> None:
    """The same client training written as a plain PyTorch loop (no engine)."""
    local = copy.deepcopy(model).train()
    optimizer = torch.optim.SGD(local.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0))
    for start in range(0, len(data), 64):
        idx = order[start:start + 64]
        loss = torch.nn.functional.cross_entropy(local(data.x[idx]), data.y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()


@pytest.mark.benchmark(group="client-training")
def test_client_training_bare_pytorch(benchmark: Any, default_client: ArrayDataset) -> None:
    model = build_model(native_spec("cnn", width=DEFAULT_WIDTH),
                        generator=torch.Generator().manual_seed(0))
    benchmark.pedantic(_bare_client, args=(model, default_client), rounds=10, warmup_rounds=2)


@pytest.mark.benchmark(group="client-training")
def test_client_training_engine(benchmark: Any, default_client: ArrayDataset) -> None:
    model = build_model(native_spec("cnn", width=DEFAULT_WIDTH),
                        generator=torch.Generator().manual_seed(0))
    method = FedAvg(FedAvgConfig(rounds=1, per_round=1, local_epochs=1, lr=0.05))
    state = method.init_state(model, np.random.default_rng(0))
    task = method.configure_round(1, state, FLEET, TABLE, np.random.default_rng(0))[0]
    job = ClientJob(task=task, seed=0)
    benchmark.pedantic(run_client, args=(method, state, job, default_client, LocalConfig()),
                       rounds=10, warmup_rounds=2)
