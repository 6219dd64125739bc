"""The method contract (profl_core.fl.method) holds for every registered method."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from profl_core.data import partition, synthetic_dataset
from profl_core.devices import Device, Fleet
from profl_core.fl import FederatedData, RunConfig, run_federated
from profl_core.fl.method import Method
from profl_core.methods.registry import METHODS
from profl_core.models import build_model, native_spec
from tests.integration.tiny_fl import ListSink

SPEC = native_spec("cnn", width=0.25, num_classes=4, input_size=8)
FLEET = Fleet("hand", tuple(Device(device_id=i, budget_bytes=100) for i in range(6)))


def tiny_data() -> FederatedData:
    train = synthetic_dataset(num_samples=96, input_shape=(1, 8, 8), num_classes=4,
                              generator=torch.Generator().manual_seed(0))
    parts = partition("iid", train.y.numpy(), len(FLEET.devices), np.random.default_rng(0))
    return FederatedData(clients=tuple(train.subset(p) for p in parts), test=train)


def build(name: str, data: FederatedData, rounds: int) -> Method:
    info = METHODS[name]
    config = info.config_class.from_dict({"rounds": rounds, "per_round": 3, "local_epochs": 1,
                                          "batch_size": 8, **info.fixed})
    return info.build(config, data)


def every_sub_model_fits(method: Method) -> dict[str, int]:
    """A table in which each sub-model of the method needs 1 byte (every device fits all)."""
    state = method.init_state(build_model(SPEC), np.random.default_rng(0))
    return dict.fromkeys(method.memory_plan(state), 1)


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("name", list(METHODS))
def test_a_method_object_does_not_change_during_a_run(name: str) -> None:
    """The object pickles to the same bytes before and after two rounds: all that changes
    lives in the server state."""
    data = tiny_data()
    method = build(name, data, rounds=2)
    table = every_sub_model_fits(method)
    before = pickle.dumps(method)
    sink = ListSink()
    run_federated(method, FLEET, data, RunConfig(rounds=2, seed=0), model=build_model(SPEC),
                  memory_table=table, sink=sink)
    assert len(sink.records) == 2
    assert pickle.dumps(method) == before


@pytest.mark.parametrize("name", list(METHODS))
def test_registered_name_and_config_are_the_methods_own(name: str) -> None:
    """The built method carries its config, of the registered class, with the fixed values."""
    info = METHODS[name]
    method = build(name, tiny_data(), rounds=1)
    assert isinstance(method.config, info.config_class)
    for key, value in info.fixed.items():
        assert getattr(method.config, key) == value
