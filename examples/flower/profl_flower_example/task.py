"""What the server and every node build the same way: the model, the data partitions, the
method, its memory table and the fleet.

Synthetic data (4 classes, 28x28) and a quarter-width cnn keep it offline and fast; put your
own model and data here. The fleet's budgets are fractions of the full model's measured
training peak (the ``predict`` probe), so device 0 fits only ProFL's smallest steps and device 3
fits everything.
"""

from __future__ import annotations

from functools import cache
from typing import Any

import numpy as np
import torch
from flwr.app import Context

from profl_core.data import partition, synthetic_dataset
from profl_core.devices import Device, Fleet
from profl_core.fl import FederatedData
from profl_core.fl.method import Method
from profl_core.memory.table import method_table
from profl_core.methods.fedavg import FedAvg, FedAvgConfig
from profl_core.methods.registry import method_info
from profl_core.models import build_model, native_spec
from profl_flower import NodeSetup, node_budget, partition_id

NODES = 4
CLASSES = 4
SPEC = native_spec("cnn", width=0.25, num_classes=CLASSES)
#: Each device's training budget as a fraction of the full model's required bytes.
BUDGET_FRACTIONS = (0.45, 0.7, 0.9, 1.2)
#: The run config's keys and defaults (pyproject.toml's [tool.flwr.app.config]).
DEFAULTS: dict[str, Any] = {"method": "profl", "seed": 0, "rounds": 10, "per-round": 2,
                            "local-epochs": 1, "batch-size": 16, "lr": 0.05}


def settings(context: Context) -> dict[str, Any]:
    """The run config over the defaults."""
    return DEFAULTS | dict(context.run_config)


def model() -> torch.nn.Module:
    """The model every run starts from (seeded)."""
    return build_model(SPEC, generator=torch.Generator().manual_seed(1))


@cache
def data() -> FederatedData:
    """256 training samples in 4 IID partitions and 128 test samples."""
    train = synthetic_dataset(num_samples=256, input_shape=(1, 28, 28), num_classes=CLASSES,
                              generator=torch.Generator().manual_seed(0))
    test = synthetic_dataset(num_samples=128, input_shape=(1, 28, 28), num_classes=CLASSES,
                             generator=torch.Generator().manual_seed(1))
    parts = partition("iid", train.y.numpy(), NODES, np.random.default_rng(0))
    return FederatedData(clients=tuple(train.subset(p) for p in parts), test=test)


def method(config: dict[str, Any]) -> Method:
    """The registry's method with the run's settings."""
    info = method_info(str(config["method"]))
    return info.build(info.config_class.from_dict({
        "rounds": int(config["rounds"]), "per_round": int(config["per-round"]),
        "local_epochs": int(config["local-epochs"]), "batch_size": int(config["batch-size"]),
        "lr": float(config["lr"]), **info.fixed}), data())


def memory_table(run_method: Method, batch_size: int) -> dict[str, int]:
    """Sub-model -> required bytes, measured by the ``predict`` probe (nothing allocated)."""
    fresh = method_info(run_method.name).build(run_method.config, None)
    return {name: report.required_bytes
            for name, report in method_table(fresh, SPEC, batch_size=batch_size).items()}


@cache
def fleet(batch_size: int) -> Fleet:
    """Four devices whose budgets are :data:`BUDGET_FRACTIONS` of the full model's bytes."""
    full = method_table(FedAvg(FedAvgConfig(rounds=1, batch_size=batch_size)), SPEC,
                        batch_size=batch_size)["full"].required_bytes
    return Fleet("example", tuple(Device(device_id=i, budget_bytes=int(f * full))
                                  for i, f in enumerate(BUDGET_FRACTIONS)))


def node(context: Context) -> NodeSetup:
    """This node's model, data and budget (``profl-budget-bytes`` in its node config, else the
    fleet's device of its partition id)."""
    batch_size = int(settings(context)["batch-size"])
    return NodeSetup(model=model(), data=data().clients[partition_id(context)],
                     budget_bytes=node_budget(context, fleet(batch_size)), num_threads=1)
