"""The suite's methods as a Flower strategy: :class:`MethodStrategy`.

One round, as the suite's own loop (:func:`profl_core.fl.loop.run_federated`) runs it:

1. ``configure_train``: the method's ``configure_round`` picks the round's client tasks from
   the fleet and the memory table (the same NumPy generator, seeded once, so the same
   selection); each task becomes one message to the node holding that partition, with only
   that task's sub-model arrays (``method.submodel(state, task)``: a ProFL step's frozen
   prefix, trained block and output module; a HeteroFL width slice) and the task's settings
   (sub-model, trainable modules, ``required_bytes``, optimizer, step options) as JSON, the
   client's shuffling seed (:func:`~profl_core.fl.client.client_seed`), the method's name
   and config, and the server ``meta`` the client half reads.
2. The :mod:`ClientApp <profl_flower.client>` checks its own budget and refuses the task
   before training when the task's ``required_bytes`` exceed it, else runs the suite's client
   step.
3. ``aggregate_train``: replies become :class:`~profl_core.fl.types.ClientUpdate` s in task
   order; an error reply, a refusal or no reply is a drop with its reason; the method's
   ``aggregate`` makes the next state. With fewer than ``min_survivors`` updates the round is
   configured again (``round_retries`` times), as the suite's loop does.

The run stops when ``method.is_finished(state)`` (ProFL: after its last step, ended by
effective movement or its round cap), not after a fixed count: :meth:`MethodStrategy.start`
owns that loop; ``num_rounds`` is only an upper bound. Node ids are random, so ``start`` first
asks every node for its ``partition-id`` (a query round) and keeps the mapping.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from logging import INFO
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Result, Strategy
from flwr.supercore import log
from torch import nn

from profl_core.data import ArrayDataset
from profl_core.devices import Fleet
from profl_core.errors import ConfigError
from profl_core.fl.client import client_seed, first_non_finite
from profl_core.fl.method import Method
from profl_core.fl.sinks import RoundSink
from profl_core.fl.training import evaluate
from profl_core.fl.types import (
    ClientTask,
    ClientUpdate,
    DivergedError,
    MemoryTable,
    RoundFailedError,
    RoundRecord,
    ServerState,
)
from profl_flower import codec

#: Message content keys (the client reads the same ones).
ARRAYS, CONFIG, UPDATE, METRICS, DROP = "submodel", "profl", "update", "metrics", "drop"
#: The node config key of a node's partition id (Flower's simulation sets it).
PARTITION_ID = "partition-id"


#: A line naming an exception: ``module.NameError: message``.
_EXCEPTION_LINE = re.compile(r"^\s*([\w.]+(?:Error|Exception)): (\S.*)$")
#: What the simulation wraps a ClientApp's exception in (not the cause).
_WRAPPERS = ("ClientAppException", "RayTaskError")
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def error_line(reason: str, limit: int = 200) -> str:
    """The client's exception in an error reply's reason as ``Type: message`` (the last
    exception line that is not the simulation's wrapper), else the reason's first line."""
    lines = _ANSI.sub("", reason).strip().splitlines()
    causes = [m for m in map(_EXCEPTION_LINE.match, lines)
              if m is not None and not any(w in m.group(1) for w in _WRAPPERS)]
    if causes:
        name, message = causes[-1].groups()
        line = f"{name.rsplit('.', 1)[-1]}: {message}"
    else:
        line = lines[0] if lines else "no reason given"
    return line if len(line) <= limit else line[: limit - 3] + "..."


@dataclass(frozen=True)
class RoundLog:
    """What ``aggregate_train`` learned of a round (for the round record and tests)."""

    tasks: tuple[ClientTask, ...]
    participants: tuple[int, ...]
    dropped: tuple[tuple[int, str], ...]
    train_loss: float


class MethodStrategy(Strategy):
    """A Flower strategy that runs any registered method of the suite, memory-aware.

    Args:
        method: The method (``method_info(name).build(config, data)``); built with the
            server's data when its server half needs it (HeteroFL's sBN samples).
        fleet: The devices; partition ``i`` is device ``i``.
        memory_table: Sub-model name -> required bytes (``profl memory`` or
            :func:`profl_core.fl.selection` helpers).
        model: The initial model; its weights are the run's start.
        seed: The run seed (client selection, the method's choices, client shuffling).
        min_survivors: Fewest updates a round needs; with fewer it is configured again.
        round_retries: How often such a round is repeated before :class:`RoundFailedError`.
        sink: Receives one :class:`RoundRecord` per round, as the suite's loop writes them.
    """

    def __init__(
        self, method: Method, fleet: Fleet, memory_table: MemoryTable, model: nn.Module, *,
        seed: int = 0, min_survivors: int = 1, round_retries: int = 2,
        sink: RoundSink | None = None,
    ) -> None:
        if min_survivors < 1 or round_retries < 0:
            raise ConfigError("MethodStrategy: min_survivors >= 1 and round_retries >= 0")
        self.method, self.fleet, self.memory_table = method, fleet, memory_table
        self.seed, self.min_survivors, self.round_retries = seed, min_survivors, round_retries
        self.sink = sink
        self.rng = np.random.default_rng(seed)
        self.state: ServerState = method.fit_fleet(method.init_state(model, self.rng), fleet,
                                                   memory_table)
        #: partition id -> node id, learnt by :meth:`map_nodes`.
        self.nodes: dict[int, int] = {}
        self.logs: list[RoundLog] = []
        #: Seconds of :meth:`start`: ``nodes_s`` until every node told its partition id,
        #: ``rounds_s`` the rounds after that.
        self.timing: dict[str, float] = {}
        #: The sub-model the current round trains (what :meth:`evaluator` scores).
        self.submodel = method.position(self.state)[2]
        self._method_json = codec.method_to_json(method)
        self._tasks: list[ClientTask] = []
        self._attempt = 1
        self._earlier: list[tuple[int, str]] = []

    # ----------------------------------------------------------------- the Strategy pair
    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                        grid: Grid) -> Iterable[Message]:
        """One message per task of the method's ``configure_round`` (``arrays`` is not used:
        the strategy's own server state is the model)."""
        if not self.nodes:
            self.map_nodes(grid)
        self._tasks = self.method.configure_round(server_round, self.state, self.fleet,
                                                  self.memory_table, self.rng)
        meta = codec.meta_to_bytes(self.state.meta)
        messages = []
        for task in self._tasks:
            if task.client_id not in self.nodes:
                raise ConfigError(f"round {server_round}: no node holds partition "
                                  f"{task.client_id}; start one node per fleet device")
            settings = ConfigRecord({
                "task": codec.task_to_json(task),
                "seed": client_seed(self.seed, server_round, task.client_id),
                "enforce-memory": self.method.enforces_memory,
                "method": self._method_json,
                "meta": meta,
                **dict(config),
            })
            content = RecordDict({ARRAYS: codec.to_arrays(self.task_arrays(task)),
                                  CONFIG: settings})
            messages.append(Message(content=content, dst_node_id=self.nodes[task.client_id],
                                    message_type=MessageType.TRAIN,
                                    group_id=str(server_round)))
        return messages

    def task_arrays(self, task: ClientTask) -> dict[str, Any]:
        """The arrays a task's client needs: its sub-model's state (every step's for a task
        of sub-steps, each built from the server weights)."""
        steps = getattr(task, "steps", ()) or (task,)
        out: dict[str, Any] = {}
        for step in steps:
            out.update(self.method.submodel(self.state, step).state())
        return out

    def aggregate_train(self, server_round: int, replies: Iterable[Message]
                        ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """The method's ``aggregate`` over the replies (task order); None, None when fewer
        than ``min_survivors`` clients answered with an update."""
        order = {t.client_id: i for i, t in enumerate(self._tasks)}
        by_client = {t.client_id: t for t in self._tasks}
        partition = {node: cid for cid, node in self.nodes.items()}
        updates: dict[int, ClientUpdate] = {}
        drops: dict[int, str] = {}
        for reply in replies:
            cid = partition.get(reply.metadata.src_node_id)
            if cid is None or cid not in by_client:
                continue
            if reply.has_error():
                drops[cid] = f"error: {error_line(reply.error.reason)}"
            elif DROP in reply.content.config_records:
                drops[cid] = str(reply.content.config_records[DROP]["reason"])
            else:
                metrics = reply.content.metric_records[METRICS]
                updates[cid] = ClientUpdate(
                    client_id=cid, state=codec.from_arrays(reply.content.array_records[UPDATE]),
                    num_examples=int(metrics["num-examples"]),
                    metrics={"train_loss": float(metrics["train_loss"])}, task=by_client[cid])
        for cid in by_client:
            if cid not in updates and cid not in drops:
                drops[cid] = "error: no reply (node gone or timeout)"
        ordered = [updates[c] for c in sorted(updates, key=order.__getitem__)]
        dropped = [(c, drops[c]) for c in sorted(drops, key=order.__getitem__)]
        if len(ordered) < max(1, min(self.min_survivors, len(self._tasks))):
            self._earlier += [(c, f"attempt {self._attempt}: {r}") for c, r in dropped]
            self._attempt += 1
            return None, None
        examples = sum(u.num_examples for u in ordered)
        train_loss = sum(u.metrics["train_loss"] * u.num_examples for u in ordered) / examples
        self.state = self.method.aggregate(server_round, self.state, ordered)
        self.logs.append(RoundLog(tasks=tuple(self._tasks),
                                  participants=tuple(u.client_id for u in ordered),
                                  dropped=(*self._earlier, *dropped), train_loss=train_loss))
        self._attempt, self._earlier = 1, []
        metrics = MetricRecord({"train_loss": train_loss, "participants": len(ordered),
                                "dropped": len(dropped)})
        return codec.to_arrays(self.method.model_weights(self.state)), metrics

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord,
                           grid: Grid) -> Iterable[Message]:
        """No federated evaluation: the suite evaluates on the server (``evaluate_fn``)."""
        return []

    def aggregate_evaluate(self, server_round: int,
                           replies: Iterable[Message]) -> MetricRecord | None:
        """Nothing to aggregate (see :meth:`configure_evaluate`)."""
        return None

    def summary(self) -> None:
        """Log the method, the fleet and the memory table."""
        log(INFO, "\t├── method: %s %s", self.method.name, self.method.config)
        log(INFO, "\t├── fleet: %s (%d devices), memory table: %s", self.fleet.name,
            len(self.fleet.devices), dict(self.memory_table))
        log(INFO, "\t└── seed %d, min_survivors %d, round_retries %d", self.seed,
            self.min_survivors, self.round_retries)

    # ----------------------------------------------------------------- the run
    def map_nodes(self, grid: Grid, timeout: float = 600) -> dict[int, int]:
        """Ask every node for its partition id (a query round) once the fleet's number of
        nodes has registered (within ``timeout`` seconds); one node per fleet device."""
        want = len(self.fleet.devices)
        deadline = time.monotonic() + timeout
        while len(node_ids := list(grid.get_node_ids())) < want:
            if time.monotonic() > deadline:
                raise ConfigError(f"{len(node_ids)} of {want} nodes registered within "
                                  f"{timeout:g} s; start one node per fleet device")
            time.sleep(0.5)
        queries = [Message(content=RecordDict(), dst_node_id=n, message_type=MessageType.QUERY,
                           group_id="partition-ids") for n in node_ids]
        mapping: dict[int, int] = {}
        for reply in grid.send_and_receive(queries, timeout=timeout):
            if reply.has_error():
                raise ConfigError(f"node {reply.metadata.src_node_id} gave no partition id "
                                  f"({reply.error.reason}); set node config '{PARTITION_ID}'")
            pid = int(reply.content.config_records[CONFIG][PARTITION_ID])
            if pid in mapping or not 0 <= pid < want:
                raise ConfigError(f"node {reply.metadata.src_node_id}: partition id {pid} is "
                                  f"taken or outside 0..{want - 1}; give each node its own")
            mapping[pid] = reply.metadata.src_node_id
        if len(mapping) != want:
            raise ConfigError(f"{len(mapping)} of {want} nodes told their partition id")
        self.nodes = mapping
        return mapping

    def evaluator(self, test: ArrayDataset, batch_size: int = 512, device: str = "cpu"
                  ) -> Callable[[int, ArrayRecord], MetricRecord | None]:
        """An ``evaluate_fn`` that scores the method's global sub-model of the current step
        (``method.eval_submodel``) on ``test``, as the suite's loop does."""

        def evaluate_fn(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
            accuracy, loss = evaluate(self.method.eval_submodel(self.state, self.submodel), test,
                                      batch_size=batch_size, device=device)
            return MetricRecord({"accuracy": accuracy, "loss": loss})

        return evaluate_fn

    def start(
        self, grid: Grid, initial_arrays: ArrayRecord | None = None,
        num_rounds: int | None = None, timeout: float = 3600,
        train_config: ConfigRecord | None = None, evaluate_config: ConfigRecord | None = None,
        evaluate_fn: Callable[[int, ArrayRecord], MetricRecord | None] | None = None,
    ) -> Result:
        """Run rounds until ``method.is_finished(state)`` (or ``num_rounds``, an upper bound).

        ``initial_arrays`` is not used: the start is the model the strategy was built with
        (the method's initial state). ``evaluate_fn(round, arrays)`` runs after every round
        (see :meth:`evaluator`); its ``accuracy`` and ``loss`` go into the round records.
        """
        log(INFO, "Starting %s (%s): until the method is finished", type(self).__name__,
            self.method.name)
        self.summary()
        train_config = train_config or ConfigRecord()
        result = Result()
        t_start = time.perf_counter()
        self.map_nodes(grid, timeout)
        self.timing["nodes_s"] = time.perf_counter() - t_start
        rnd = 1
        while not self.method.is_finished(self.state) and (num_rounds is None
                                                            or rnd <= num_rounds):
            t0 = time.perf_counter()
            before = self.state
            stage, step, submodel = self.method.position(before)
            self.submodel = submodel
            for _ in range(self.round_retries + 1):
                replies = grid.send_and_receive(
                    self.configure_train(rnd, result.arrays, train_config, grid),
                    timeout=timeout)
                arrays, metrics = self.aggregate_train(rnd, replies)
                if arrays is not None:
                    break
            else:
                listed = "; ".join(f"client {c}: {r}" for c, r in self._earlier)
                raise RoundFailedError(f"round {rnd}: fewer than {self.min_survivors} client(s) "
                                       f"survived in each of {self.round_retries + 1} "
                                       f"attempt(s); {listed or 'no client was selected'}")
            result.arrays = arrays
            if metrics is not None:
                result.train_metrics_clientapp[rnd] = metrics
            bad = first_non_finite(self.state.weights)
            if bad is not None:
                raise DivergedError(round=rnd, stage=stage, step=step, submodel=submodel,
                                    what=f"server weight {bad}")
            scores = evaluate_fn(rnd, arrays) if evaluate_fn is not None else None
            if scores is not None:
                result.evaluate_metrics_serverapp[rnd] = scores
            self._record(rnd, (stage, step, submodel), before, scores, time.perf_counter() - t0)
            rnd += 1
        self.timing["rounds_s"] = time.perf_counter() - t_start - self.timing["nodes_s"]
        return result

    def _record(self, rnd: int, position: tuple[str, int, str], before: ServerState,
                scores: Mapping[str, Any] | None, wall_s: float) -> None:
        """The round's :class:`RoundRecord`, as the suite's loop writes it, to the sink."""
        if self.sink is None:
            return
        last = self.logs[-1]
        needs = {t.client_id: t.required_bytes for t in last.tasks}
        metrics = dict(self.method.round_metrics(self.state))
        step_end = metrics.pop("step_end", None)
        accuracy = loss = None
        if scores is not None:
            accuracy, loss = float(scores["accuracy"]), float(scores["loss"])
            if not math.isfinite(loss):
                raise DivergedError(round=rnd, stage=position[0], step=position[1],
                                    submodel=position[2], what=f"test loss {loss}")
        self.sink.write(RoundRecord(
            round=rnd, stage=position[0], step=position[1], submodel=position[2],
            accuracy=accuracy, loss=loss, train_loss=last.train_loss,
            participants=last.participants,
            eligible_share=self.method.eligible_share(before, self.fleet, self.memory_table),
            required_bytes=tuple(needs[c] for c in last.participants), wall_s=wall_s,
            metrics=metrics, dropped=last.dropped,
            step_end=None if step_end is None else str(step_end)))

