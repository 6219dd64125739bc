"""The suite's client step as a Flower ``ClientApp``: :func:`make_client_app`.

A node answers two kinds of message:

* ``query``: its ``partition-id`` (from ``context.node_config``; Flower's simulation sets it,
  a deployed SuperNode gets it with ``--node-config "partition-id=3"``), so the server maps
  Flower's random node ids onto the fleet's devices.
* ``train``: one :class:`~profl_core.fl.types.ClientTask` of the suite's method. The node
  compares the task's ``required_bytes`` (the server's memory table) with its own budget and
  refuses before it builds or trains anything when it does not fit (the reply names the
  reason; the server records a drop). Otherwise it runs the suite's own client step,
  :func:`profl_core.fl.client.run_client`: the method's client half builds the sub-model,
  the message's arrays are loaded over it, and it trains with the seed the server sent.

The node's budget: ``node_config["profl-budget-bytes"]`` when set (a deployment: each device
states its own), else the fleet device of its partition id (a simulation), see
:func:`node_budget`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from flwr.app import ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from torch import Tensor, nn

from profl_core.data import ArrayDataset
from profl_core.devices import Fleet
from profl_core.errors import ConfigError
from profl_core.fl.backend import FederatedData
from profl_core.fl.client import ClientJob, refusal, run_client
from profl_core.fl.local import LocalConfig
from profl_core.fl.method import SubModels
from profl_core.fl.types import ClientDrop, ClientTask, ServerState, SubModel
from profl_core.methods.registry import method_info
from profl_flower import codec
from profl_flower.strategy import ARRAYS, CONFIG, DROP, METRICS, PARTITION_ID, UPDATE

#: The node config key of a node's training budget in bytes (a deployment).
BUDGET_KEY = "profl-budget-bytes"


@dataclass(frozen=True, kw_only=True)
class NodeSetup:
    """What a node brings to a run.

    Attributes:
        model: The run's model (the architecture: its weights are replaced by the server's).
        data: This node's training data.
        budget_bytes: This node's training budget (:func:`node_budget`).
        local: Engine-side local-training settings (frozen BN, feature cache, device).
        num_threads: ``torch.set_num_threads`` before training (None: leave it).
    """

    model: nn.Module
    data: ArrayDataset
    budget_bytes: int | None
    local: LocalConfig = field(default_factory=LocalConfig)
    num_threads: int | None = None


def partition_id(context: Context) -> int:
    """The node's partition id (= fleet device id), a one-line error when unset."""
    if PARTITION_ID not in context.node_config:
        raise ConfigError(f"node config has no '{PARTITION_ID}'; start the SuperNode with "
                          f"--node-config \"{PARTITION_ID}=<device id>\"")
    return int(context.node_config[PARTITION_ID])


def node_budget(context: Context, fleet: Fleet | None = None) -> int | None:
    """``node_config["profl-budget-bytes"]`` when set, else the budget of the fleet's device
    with the node's partition id; None when neither is given."""
    if BUDGET_KEY in context.node_config:
        value = context.node_config[BUDGET_KEY]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"node config {BUDGET_KEY}={value!r}; use a whole number of "
                              "bytes, 0 or more")
        return value
    if fleet is None:
        return None
    pid = partition_id(context)
    if not 0 <= pid < len(fleet.devices):
        raise ConfigError(f"{PARTITION_ID}={pid}; fleet {fleet.name!r} has devices "
                          f"0..{len(fleet.devices) - 1}")
    return fleet.devices[pid].budget_bytes


class ReceivedSubModels(SubModels):
    """A method's client half whose sub-models are loaded with the arrays a message carried
    (the server's sub-model state) after the method built them."""

    def __init__(self, method: SubModels, arrays: Mapping[str, Tensor]) -> None:
        self.method, self.arrays = method, arrays

    def memory_plan(self, state: ServerState) -> Mapping[str, ClientTask]:
        """The method's."""
        return self.method.memory_plan(state)

    def submodel(self, state: ServerState, task: ClientTask) -> SubModel:
        """The method's sub-model with the received arrays loaded (every key, shape-checked)."""
        sub = self.method.submodel(state, task)
        own = sub.state()
        if set(own) != set(self.arrays):
            raise ConfigError(f"{task.submodel}: the message's arrays do not match the "
                              "sub-model's keys; server and client run different models")
        for name, module in sub.modules.items():
            head = f"{name}."
            module.load_state_dict({k[len(head):]: v for k, v in self.arrays.items()
                                    if k.startswith(head)})
        return sub


def _reply(message: Message, records: RecordDict) -> Message:
    return Message(content=records, reply_to=message)


def train_reply(message: Message, node: NodeSetup, pid: int) -> Message:
    """Run one ``train`` message's task on this node: a refusal or drop (with its reason), or
    the update's arrays and metrics."""
    settings = message.content.config_records[CONFIG]
    task = codec.task_from_json(str(settings["task"]))
    if task.client_id != pid:
        raise ConfigError(f"a task of partition {task.client_id} reached partition {pid}")
    if task.budget_bytes is None and bool(settings["enforce-memory"]):  # the loop's rule
        task = replace(task, budget_bytes=node.budget_bytes)
    reason = refusal(task)
    if reason is not None:  # before anything is built or trained
        return _reply(message, RecordDict({DROP: ConfigRecord({"reason": reason})}))
    if node.num_threads is not None:
        torch.set_num_threads(node.num_threads)
    name, config = codec.method_spec(str(settings["method"]))
    # The client half reads only this client's data (HeteroFL's label mask): every index
    # up to this partition's holds it.
    view = FederatedData(clients=(node.data,) * (pid + 1), test=node.data)
    method = method_info(name).build(config, view)
    state = method.init_state(node.model, np.random.default_rng(0))
    received = codec.from_arrays(message.content.array_records[ARRAYS])
    state = replace(state, meta=codec.meta_from_bytes(bytes(settings["meta"])))
    client: SubModels = ReceivedSubModels(method, received)
    if getattr(task, "steps", ()):  # sub-steps build from weights that earlier steps changed
        state = replace(state, weights=dict(state.weights) | received)
        client = method
    result = run_client(client, state, ClientJob(task=task, seed=int(settings["seed"])),
                        node.data, node.local)
    if isinstance(result, ClientDrop):
        return _reply(message, RecordDict({DROP: ConfigRecord({"reason": result.reason})}))
    return _reply(message, RecordDict({
        UPDATE: codec.to_arrays(result.state),
        METRICS: MetricRecord({"num-examples": result.num_examples,
                               "train_loss": float(result.metrics["train_loss"])}),
    }))


def make_client_app(setup: Callable[[Context], NodeSetup]) -> ClientApp:
    """A ``ClientApp`` running the suite's client step; ``setup(context)`` gives the node's
    model, data and budget (e.g. ``node_budget(context, fleet)``)."""
    app = ClientApp()

    @app.query()
    def query(message: Message, context: Context) -> Message:
        return _reply(message, RecordDict({
            CONFIG: ConfigRecord({PARTITION_ID: partition_id(context)})}))

    @app.train()
    def train(message: Message, context: Context) -> Message:
        return train_reply(message, setup(context), partition_id(context))

    return app

