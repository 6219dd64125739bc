"""One client's work in a round, the same in every backend (DESIGN §3, memory-and-tools §2.3).

A backend (in process, or a Ray actor on another machine) hands each client a
:class:`ClientJob`: the task, its shuffling seed and an optional test-only fault. The client

1. refuses the task when its ``required_bytes`` (from the memory table) exceed the device's
   ``budget_bytes``: Ray's resources are soft and the same for every worker, so per-device
   memory can only be enforced here;
2. builds its sub-model from the server state and trains it with a generator seeded by
   :func:`client_seed`, which depends only on (run seed, round, client id), never on which
   worker runs the job or in which order; a task with ``steps`` (FeDepth's block groups)
   trains each step's sub-model in turn (:func:`train_task`);
3. turns an exception or an out-of-memory error into a :class:`ClientDrop` with the reason, so
   the round goes on with the others. Bad input (:class:`ConfigError`) is not a client fault
   and propagates;
4. drops its own update with reason ``non-finite: ...`` when its training loss or any
   floating-point tensor it would send is NaN or infinite (:func:`non_finite`): one diverged
   client never poisons the average.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Literal

import numpy as np
import torch

from profl_core.data import ArrayDataset
from profl_core.errors import ConfigError
from profl_core.fl.local import LocalConfig
from profl_core.fl.method import SubModels
from profl_core.fl.training import train_client
from profl_core.fl.types import ClientDrop, ClientTask, ClientUpdate, ServerState

#: Test-only faults: raise an exception, raise ``MemoryError``, or kill the worker process
#: (the last only where a worker is a separate process: the Ray backend).
Fault = Literal["raise", "oom", "crash"]
FAULTS: tuple[str, ...] = ("raise", "oom", "crash")

_OOM_ERRORS: tuple[type[BaseException], ...] = (
    MemoryError, getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError),
)


class InjectedFaultError(RuntimeError):
    """The test-only fault of a :class:`ClientJob` with ``fault="raise"``."""


@dataclass(frozen=True, kw_only=True)
class ClientJob:
    """What a backend sends a client for one round (besides the shared server state).

    Attributes:
        task: The client's task, ``budget_bytes`` filled in from its device.
        seed: Seed of the client's shuffling generator (:func:`client_seed`).
        fault: Test-only fault to inject (None in real runs).
    """

    task: ClientTask
    seed: int
    fault: Fault | None = None


def client_seed(seed: int, rnd: int, client_id: int) -> int:
    """The shuffling seed of ``client_id`` in round ``rnd`` of a run seeded ``seed``.

    A pure function of its arguments (NumPy's ``SeedSequence`` hash), so any backend, worker
    or execution order gives every client the same stream; 63 bits.
    """
    if min(seed, rnd, client_id) < 0:
        raise ConfigError(f"seed {seed}, round {rnd}, client {client_id}: use numbers >= 0")
    words = np.random.SeedSequence([seed, rnd, client_id]).generate_state(2, np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def refusal(task: ClientTask) -> str | None:
    """Why ``task`` does not fit its device's budget, or None when it fits (or is unchecked)."""
    if task.budget_bytes is None or task.required_bytes <= task.budget_bytes:
        return None
    return (f"refused: {task.submodel} needs {task.required_bytes} B, "
            f"budget {task.budget_bytes} B")


def run_client(
    method: SubModels,
    state: ServerState,
    job: ClientJob,
    data: ArrayDataset,
    config: LocalConfig,
) -> ClientUpdate | ClientDrop:
    """Check the budget, then train; a client fault becomes a :class:`ClientDrop`.

    Args:
        method: Builds the sub-model for the task.
        state: The server state of the round.
        job: Task, seed and (test-only) fault. ``fault="crash"`` is the worker's business
            (it must exit before calling this); here it is a ConfigError.
        data: The client's local data.
        config: Engine-side local-training settings.

    Returns:
        The update, or the drop with its reason.

    Raises:
        ConfigError: Bad input (a task with no trainable parameters, a client without data).
    """
    task = job.task
    reason = refusal(task)
    if reason is not None:
        return ClientDrop(client_id=task.client_id, reason=reason)
    if job.fault == "crash":
        raise ConfigError(f"client {task.client_id}: fault 'crash' needs a worker process "
                          "(backend 'ray')")
    try:
        if job.fault == "raise":
            raise InjectedFaultError(f"injected fault in client {task.client_id}")
        if job.fault == "oom":
            raise MemoryError(f"injected out-of-memory in client {task.client_id}")
        generator = torch.Generator().manual_seed(job.seed)
        update = train_task(method, state, task, data, generator=generator, config=config)
    except ConfigError:
        raise
    except _OOM_ERRORS as err:
        return ClientDrop(client_id=task.client_id, reason=f"out of memory: {one_line(err)}")
    except Exception as err:
        return ClientDrop(client_id=task.client_id, reason=f"error: {one_line(err)}")
    what = non_finite(update)
    if what is not None:
        return ClientDrop(client_id=task.client_id, reason=f"non-finite: {what}")
    return update


def train_task(
    method: SubModels,
    state: ServerState,
    task: ClientTask,
    data: ArrayDataset,
    *,
    generator: torch.Generator,
    config: LocalConfig,
) -> ClientUpdate:
    """Train ``task`` on ``data``: its sub-model, or, for a task with ``steps``, each step's
    sub-model one after another (FeDepth's block groups).

    Step k's sub-model is built from the server weights overwritten by everything steps
    1..k-1 trained, and trains with the client's id, budget and generator for its own
    ``local_epochs``. The update holds every entry any step trained (the last value of each),
    ``num_examples = len(data)`` and the mean training loss over all steps' batches.
    """
    if not task.steps:
        return train_client(method.submodel(state, task), data, task, generator=generator,
                            config=config)
    weights = dict(state.weights)
    trained: dict[str, torch.Tensor] = {}
    loss = batches = 0.0
    for step in task.steps:
        step = replace(step, client_id=task.client_id, budget_bytes=task.budget_bytes)
        sub = method.submodel(replace(state, weights=weights), step)
        update = train_client(sub, data, step, generator=generator, config=config)
        weights.update(update.state)
        trained.update(update.state)
        count = step.local_epochs * -(-len(data) // step.batch_size)
        loss += update.metrics["train_loss"] * count
        batches += count
    return ClientUpdate(client_id=task.client_id, state=trained, num_examples=len(data),
                        metrics={"train_loss": loss / batches}, task=task)


def non_finite(update: ClientUpdate) -> str | None:
    """What in ``update`` is NaN or infinite (its train loss or the first such tensor), or None."""
    loss = update.metrics.get("train_loss")
    if loss is not None and not math.isfinite(loss):
        return f"train loss {loss}"
    key = first_non_finite(update.state)
    return None if key is None else f"tensor {key}"


def first_non_finite(tensors: Mapping[str, torch.Tensor]) -> str | None:
    """The key of the first floating-point tensor holding a NaN or infinity, or None."""
    return next((key for key, value in tensors.items()
                 if value.is_floating_point() and not bool(torch.isfinite(value).all())), None)


def one_line(err: BaseException, limit: int = 200) -> str:
    """``Type: first line of the message``, at most ``limit`` characters."""
    text = str(err).strip().splitlines()
    line = f"{type(err).__name__}: {text[0]}" if text else type(err).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."
