"""The federated engine: types, local training, aggregation, selection and the round loop."""

from profl_core.fl.aggregate import aggregate_partial, fedavg, weighted_mean
from profl_core.fl.backend import Backend, FederatedData, LocalBackend
from profl_core.fl.checkpoint import load_checkpoint, restore_checkpoint, save_checkpoint
from profl_core.fl.client import ClientJob, client_seed, run_client
from profl_core.fl.local import LocalConfig
from profl_core.fl.loop import BACKENDS, RunConfig, run_federated
from profl_core.fl.method import LocalTraining, Method, SubModels
from profl_core.fl.selection import eligible_ids, require_trainable, select_any, select_clients
from profl_core.fl.sinks import JsonlSink
from profl_core.fl.training import evaluate, train_client
from profl_core.fl.types import (
    ClientDrop,
    ClientTask,
    ClientUpdate,
    DivergedError,
    MemoryTable,
    RoundFailedError,
    RoundRecord,
    ServerState,
    StepOptions,
    SubModel,
)

__all__ = [
    "BACKENDS",
    "Backend",
    "ClientDrop",
    "ClientJob",
    "ClientTask",
    "ClientUpdate",
    "DivergedError",
    "FederatedData",
    "JsonlSink",
    "LocalBackend",
    "LocalConfig",
    "LocalTraining",
    "MemoryTable",
    "Method",
    "RoundFailedError",
    "RoundRecord",
    "RunConfig",
    "ServerState",
    "StepOptions",
    "SubModel",
    "SubModels",
    "aggregate_partial",
    "client_seed",
    "eligible_ids",
    "evaluate",
    "fedavg",
    "load_checkpoint",
    "require_trainable",
    "restore_checkpoint",
    "run_client",
    "run_federated",
    "save_checkpoint",
    "select_any",
    "select_clients",
    "train_client",
    "weighted_mean",
]
