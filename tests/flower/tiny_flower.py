"""The tiny setup of the Flower tests: 4 nodes, synthetic data, a quarter-width cnn, hand
memory tables and a fleet whose device 0 fits nothing (the suite's integration setup).

Ray workers import this module by name (Flower passes the driver's ``sys.path`` on), so the
node setup is a module-level function, not a closure of a test.
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import Context

from profl_core.data import partition, synthetic_dataset
from profl_core.devices import Device, Fleet
from profl_core.fl import FederatedData, RoundRecord
from profl_core.fl.local import LocalConfig
from profl_core.models import build_model, native_spec
from profl_flower import NodeSetup, node_budget, partition_id

CLASSES = 4
NODES = 4
PROFL_TABLE = (
    {f"grow:{t}": 60 for t in range(1, 5)} | {f"shrink:{t}": 30 for t in range(2, 5)}
    | {"full": 100}
)
WIDTH_TABLE = {"full": 100, "w0.5": 50}
# Device 0 fits no sub-model; devices 1-2 fit ProFL's steps and HeteroFL's half width; only
# device 3 fits the full model.
FLEET = Fleet(
    "hand", tuple(Device(device_id=i, budget_bytes=b) for i, b in enumerate([10, 60, 80, 200]))
)
#: Partition -> the budget its node states itself (node config ``profl-budget-bytes``) when it
#: differs from what the server's fleet says: node 2 has lost its memory.
SHRUNK = {2: 0}
#: The partition whose node fails with an exception on every task.
BROKEN = 1


class NodeFaultError(RuntimeError):
    """The test's fault of node :data:`BROKEN`."""


class ListSink:
    """Collects round records in memory."""

    def __init__(self) -> None:
        self.records: list[RoundRecord] = []

    def write(self, record: RoundRecord) -> None:
        self.records.append(record)


def tiny_data() -> FederatedData:
    """256 train samples over 4 IID clients and 128 test samples, 1x28x28, 4 classes."""
    train = synthetic_dataset(num_samples=256, input_shape=(1, 28, 28), num_classes=CLASSES,
                              generator=torch.Generator().manual_seed(0))
    test = synthetic_dataset(num_samples=128, input_shape=(1, 28, 28), num_classes=CLASSES,
                             generator=torch.Generator().manual_seed(0))
    parts = partition("iid", train.y.numpy(), NODES, np.random.default_rng(0))
    return FederatedData(clients=tuple(train.subset(p) for p in parts), test=test)


def tiny_model() -> torch.nn.Module:
    """cnn at width 0.25 with seeded weights."""
    return build_model(native_spec("cnn", width=0.25, num_classes=CLASSES),
                       generator=torch.Generator().manual_seed(1))


def node(context: Context) -> NodeSetup:
    """A node of the simulation: its partition, the fleet's budget for it, one thread."""
    pid = partition_id(context)
    return NodeSetup(model=tiny_model(), data=tiny_data().clients[pid],
                     budget_bytes=node_budget(context, FLEET), local=LocalConfig(),
                     num_threads=1)


def shrunk_node(context: Context) -> NodeSetup:
    """:func:`node`, but partition 2 states a budget of 0 B (as a deployed node would) and
    partition 1 raises (its ClientApp answers with an error reply)."""
    setup = node(context)
    pid = partition_id(context)
    if pid == BROKEN:
        raise NodeFaultError(f"node of partition {pid} is broken")
    if pid not in SHRUNK:
        return setup
    return NodeSetup(model=setup.model, data=setup.data, budget_bytes=SHRUNK[pid],
                     local=setup.local, num_threads=1)
