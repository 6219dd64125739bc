"""The ``ray`` backend: clients run on Ray actors, the server loop stays in the driver.

Needs a connected Ray (``ray.init(address=...)``: the caller's job; the ``profl`` CLI does it
for ``--backend ray [--address ADDR]``). Design:

* One actor per worker slot (default: the cluster's CPUs, ``num_cpus=1`` each). Client ``c``
  lives on actor ``c % num_actors``; each actor receives its clients' data partitions once, at
  start (an object-store reference, so a restarted actor fetches them again).
* Per round the driver puts the server state's weights and meta in the object store once;
  every actor reads them from there (one copy per node). The client half of the method (the
  method object, immutable, and the state's ``structure``, built once per run) goes out once
  per run. Updates come back as name-keyed tensors of the trained modules.
* Each actor runs one job at a time and gets the next only when the last one is done, so a
  worker that dies takes only its own client with it: the others of that actor go to the
  restarted actor (``max_restarts``).
* Results are collected by job index, so aggregation sees them in task order whatever the
  completion order, and each client's generator is seeded from (seed, round, client id):
  the same seed gives the same weights as the ``local`` backend.
* Per-client memory budgets are checked inside the client
  (:func:`profl_core.fl.client.run_client`): Ray's resources are soft and the same for every
  worker, so they cannot stand for a device's memory.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import ray
import ray.exceptions
import torch
from ray import cloudpickle

from profl_core.errors import ConfigError
from profl_core.fl.backend import ClientResult, FederatedData
from profl_core.fl.client import ClientJob, one_line, run_client
from profl_core.fl.local import LocalConfig
from profl_core.fl.method import SubModels
from profl_core.fl.types import ClientDrop, ServerState

_PROBE = -1  # marks an actor.ready() call in the round's running set
_PROBE_PAUSE_S = 0.2

# Worker deaths (process crash, Ray's OOM killer, node loss): the client is dropped.
_DEATHS: tuple[type[BaseException], ...] = (
    ray.exceptions.RayActorError,
    ray.exceptions.WorkerCrashedError,
    ray.exceptions.OutOfMemoryError,
    ray.exceptions.NodeDiedError,
)


class ClientActor:
    """A Ray worker holding some clients' data; trains one job at a time."""

    def __init__(self, data: dict[int, Any], config: LocalConfig, num_threads: int) -> None:
        torch.set_num_threads(num_threads)
        self._data = data
        self._config = config
        self._method_key: bytes | None = None
        self._method: SubModels | None = None
        self._structure: Any = None
        self._state_key: bytes | None = None
        self._state: ServerState | None = None

    def ready(self) -> int:
        """The worker's pid, once constructed."""
        return os.getpid()

    def run(
        self, method: list[Any], state: list[Any], job: ClientJob
    ) -> ClientResult:
        """Run ``job``. ``method`` (the method and the state's structure) and ``state`` (the
        state without it) are ``[key, ObjectRef]``, fetched only when the key changed (wrapped
        in a list so that Ray does not fetch them for every call)."""
        if job.fault == "crash":
            os._exit(1)  # test-only: the worker dies mid-round
        if method[0] != self._method_key:
            self._method, self._structure = cloudpickle.loads(ray.get(method[1]))
            self._method_key = method[0]
            self._state_key = None
        if state[0] != self._state_key:
            self._state = replace(ray.get(state[1]), structure=self._structure)
            self._state_key = state[0]
        assert self._method is not None
        assert self._state is not None
        cid = job.task.client_id
        return run_client(self._method, self._state, job, self._data[cid], self._config)


class RayBackend:
    """Runs client jobs on Ray actors (see the module docstring).

    Args:
        num_actors: Worker actors (default: the connected cluster's CPUs / ``num_cpus``).
        num_cpus: Ray CPUs each actor reserves.
        num_threads: ``torch.set_num_threads`` in each actor (1 by default: several actors
            share a node, and busy OpenMP threads slow each other down badly).
        max_restarts: How often Ray restarts an actor whose process died.
    """

    def __init__(
        self, *, num_actors: int | None = None, num_cpus: float = 1.0, num_threads: int = 1,
        max_restarts: int = 3,
    ) -> None:
        if num_actors is not None and num_actors < 1:
            raise ConfigError(f"ray backend: num_actors={num_actors}; use 1 or more")
        if num_cpus <= 0 or num_threads < 1 or max_restarts < 0:
            raise ConfigError("ray backend: need num_cpus > 0, num_threads >= 1, "
                              "max_restarts >= 0")
        self.num_actors = num_actors
        self.num_cpus = num_cpus
        self.num_threads = num_threads
        self.max_restarts = max_restarts
        self._actors: list[Any] = []
        self._data_refs: list[Any] = []
        self._method_key: bytes | None = None
        self._method_ref: Any = None
        self._round = 0
        self._restarting: set[int] = set()

    def start(self, method: SubModels, data: FederatedData, config: LocalConfig) -> None:
        """Start the actors, each with the data of its clients, and wait until they are up."""
        if not ray.is_initialized():
            raise ConfigError("ray backend: Ray is not connected; call ray.init(address=...) "
                              "first (profl train --backend ray [--address HOST:PORT])")
        n = self.num_actors
        if n is None:
            n = max(1, int(ray.cluster_resources().get("CPU", 1) // self.num_cpus))
        n = min(n, len(data.clients))
        actor_cls = ray.remote(ClientActor).options(
            num_cpus=self.num_cpus, max_restarts=self.max_restarts, max_task_retries=0,
        )
        self._data_refs = [
            ray.put({c: data.clients[c] for c in range(k, len(data.clients), n)})
            for k in range(n)
        ]
        self._actors = [actor_cls.remote(ref, config, self.num_threads)
                        for ref in self._data_refs]
        self._method_key = self._method_ref = None
        ray.get([a.ready.remote() for a in self._actors])

    def run_round(
        self, method: SubModels, state: ServerState, jobs: Sequence[ClientJob]
    ) -> list[ClientResult]:
        """Run the jobs on their clients' actors; one result per job, in job order."""
        if not self._actors:
            raise RuntimeError("RayBackend.run_round before start")
        # Both are fixed for a run (the method is immutable, the structure built once), so
        # their identity keys them: pickled and shipped once per run.
        key = f"{id(method)}:{id(state.structure)}".encode()
        if key != self._method_key:
            blob = cloudpickle.dumps((method, state.structure))
            self._method_key, self._method_ref = key, ray.put(blob)
        self._round += 1
        state_arg = [self._round.to_bytes(8, "little"), ray.put(replace(state, structure=None))]
        method_arg = [self._method_key, self._method_ref]
        n = len(self._actors)
        queues: list[deque[int]] = [deque() for _ in range(n)]
        for i, job in enumerate(jobs):
            queues[job.task.client_id % n].append(i)
        results: list[ClientResult | None] = [None] * len(jobs)
        running: dict[Any, tuple[int, int]] = {}  # ref -> (actor, job index or PROBE)

        def submit(k: int) -> None:
            if queues[k]:
                i = queues[k].popleft()
                ref = self._actors[k].run.remote(method_arg, state_arg, jobs[i])
                running[ref] = (k, i)

        def probe(k: int) -> None:
            running[self._actors[k].ready.remote()] = (k, _PROBE)

        for k in range(n):
            probe(k) if k in self._restarting else submit(k)
        while running:
            done, _ = ray.wait(list(running), num_returns=1)
            k, i = running.pop(done[0])
            if i == _PROBE:  # a restarting actor: next job once it is back (or dead for good)
                try:
                    ray.get(done[0])
                except ray.exceptions.ActorUnavailableError:
                    time.sleep(_PROBE_PAUSE_S)
                    probe(k)
                    continue
                except ray.exceptions.RayActorError:
                    pass  # dead for good: its jobs fail fast and are dropped
                self._restarting.discard(k)
                submit(k)
                continue
            result = results[i] = self._collect(done[0], jobs[i])
            if isinstance(result, ClientDrop) and result.reason.startswith("worker died"):
                self._restarting.add(k)
                probe(k)
            else:
                submit(k)
        return [r for r in results if r is not None]

    @staticmethod
    def _collect(ref: Any, job: ClientJob) -> ClientResult:
        cid = job.task.client_id
        try:
            return ray.get(ref)
        except ray.exceptions.OutOfMemoryError as err:
            return ClientDrop(client_id=cid, reason=f"out of memory: {_first_line(err)}")
        except _DEATHS as err:
            return ClientDrop(client_id=cid, reason=f"worker died: {_first_line(err)}")
        except ray.exceptions.RayTaskError as err:
            cause = err.cause
            if isinstance(cause, ConfigError):
                raise ConfigError(str(cause)) from None
            return ClientDrop(client_id=cid, reason=f"error: {one_line(cause or err)}")

    def close(self) -> None:
        """Kill the actors and drop the data references."""
        for actor in self._actors:
            ray.kill(actor, no_restart=True)
        self._actors, self._data_refs = [], []
        self._method_key = self._method_ref = None


def _first_line(err: BaseException) -> str:
    """The error's type and the first line of its message."""
    return one_line(err, limit=160)
