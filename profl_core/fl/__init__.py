"""The federated engine: types, local training, aggregation, selection and the round loop."""

from profl_core.fl.aggregate import aggregate_partial, fedavg, weighted_mean
from profl_core.fl.local import LocalConfig, evaluate, train_client
from profl_core.fl.loop import (
    FederatedData,
    JsonlSink,
    RunConfig,
    load_checkpoint,
    run_federated,
    save_checkpoint,
)
from profl_core.fl.selection import eligible_ids, require_trainable, select_any, select_clients
from profl_core.fl.types import (
    ClientTask,
    ClientUpdate,
    MemoryTable,
    Method,
    RoundRecord,
    ServerState,
    SubModel,
)

__all__ = [
    "ClientTask",
    "ClientUpdate",
    "FederatedData",
    "JsonlSink",
    "LocalConfig",
    "MemoryTable",
    "Method",
    "RoundRecord",
    "RunConfig",
    "ServerState",
    "SubModel",
    "aggregate_partial",
    "eligible_ids",
    "evaluate",
    "fedavg",
    "load_checkpoint",
    "require_trainable",
    "run_federated",
    "save_checkpoint",
    "select_any",
    "select_clients",
    "train_client",
    "weighted_mean",
]
