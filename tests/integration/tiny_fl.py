"""The tiny FL setup shared by the integration tests: data, model, memory table, fleet, sink."""

import numpy as np
import torch

from profl_core.data import partition, synthetic_dataset
from profl_core.devices import Device, Fleet
from profl_core.fl import FederatedData, RoundRecord
from profl_core.methods.profl import ProFL, ProFLConfig
from profl_core.models import build_model, native_spec

CLASSES = 4
TABLE = (
    {f"grow:{t}": 60 for t in range(1, 5)} | {f"shrink:{t}": 30 for t in range(2, 5)}
    | {"full": 100}
)
# Device 0 fits no step; devices 1-2 fit every ProFL step; only device 3 fits the full model.
FLEET = Fleet(
    "hand", tuple(Device(device_id=i, budget_bytes=b) for i, b in enumerate([10, 60, 80, 200]))
)


class ListSink:
    """Collects records in memory."""

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
    parts = partition("iid", train.y.numpy(), 4, np.random.default_rng(0))
    return FederatedData(clients=tuple(train.subset(p) for p in parts), test=test)


def tiny_model() -> torch.nn.Module:
    """cnn at width 0.25 with seeded weights."""
    return build_model(native_spec("cnn", width=0.25, num_classes=CLASSES),
                       generator=torch.Generator().manual_seed(1))


def profl(rounds: int = 10) -> ProFL:
    """ProFL with one round per step (10 steps for T = 4)."""
    return ProFL(ProFLConfig(rounds=rounds, per_round=2, local_epochs=2, batch_size=16, lr=0.05,
                             distill_lr=0.05, schedule="fixed"))
