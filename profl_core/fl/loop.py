"""The federated round loop: ``run_federated`` (DESIGN §3).

Per round: the method configures client tasks, the backend runs them, the method aggregates,
the server evaluates every ``eval_every`` rounds, one :class:`RoundRecord` goes to the sink
(JSONL, appended and flushed), and every ``checkpoint_every`` rounds the model, the method's
state and both RNG states are written atomically. ``resume=True`` continues from the latest
checkpoint and ends with exactly the weights of an uninterrupted run.

Randomness: one seed makes a NumPy generator (client selection, the method's choices) and a
torch generator (one shuffling seed per client task); both are checkpointed.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn

from profl_core.data import ArrayDataset
from profl_core.devices import Fleet
from profl_core.errors import ConfigError
from profl_core.fl.local import FrozenBN, LocalConfig, evaluate, train_client
from profl_core.fl.types import (
    ClientTask,
    ClientUpdate,
    MemoryTable,
    Method,
    RoundRecord,
    ServerState,
)

CHECKPOINT_NAME = "checkpoint.pt"
CHECKPOINT_FORMAT = 1


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    """Settings of the round loop.

    Attributes:
        rounds: Upper bound on rounds; the loop also stops when the method is finished.
        seed: The one seed of the run.
        eval_every: Evaluate on the test set every k rounds (and at the last round).
        eval_batch_size: Batch size of evaluation.
        checkpoint_every: Checkpoint every N rounds (0: only at the end) when a checkpoint
            folder is given.
        frozen_bn: BN of frozen modules: ``"eval"`` (fixed) or ``"train"`` (authors' code).
        feature_cache: Cache the frozen prefix per round (see :mod:`profl_core.fl.local`).
        device: Torch device for local training and evaluation.
    """

    rounds: int
    seed: int = 0
    eval_every: int = 1
    eval_batch_size: int = 512
    checkpoint_every: int = 0
    frozen_bn: FrozenBN = "eval"
    feature_cache: bool = True
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.rounds < 1:
            raise ConfigError(f"rounds={self.rounds}; use 1 or more")
        if self.eval_every < 1:
            raise ConfigError(f"eval_every={self.eval_every}; use 1 or more")
        if self.checkpoint_every < 0:
            raise ConfigError(f"checkpoint_every={self.checkpoint_every}; use 0 or more")
        LocalConfig(frozen_bn=self.frozen_bn)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RunConfig:
        """Build from a mapping; unknown keys are a ConfigError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"run config: unknown key {unknown[0]!r}; known: {sorted(known)}")
        return cls(**data)

    def local(self) -> LocalConfig:
        """The local-training part."""
        return LocalConfig(
            frozen_bn=self.frozen_bn, feature_cache=self.feature_cache, device=self.device
        )


@dataclass(frozen=True, kw_only=True)
class FederatedData:
    """Client datasets (index = client id = device id) and the server's test set."""

    clients: tuple[ArrayDataset, ...]
    test: ArrayDataset


class RoundSink(Protocol):
    """Where round records go."""

    def write(self, record: RoundRecord) -> None:
        """Store one record."""
        ...


class JsonlSink:
    """Round records as JSON lines, appended and flushed one per round."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def write(self, record: RoundRecord) -> None:
        """Append one record and flush it to disk."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(record_to_json(record)) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def truncate(self, after_round: int) -> None:
        """Drop records of rounds after ``after_round`` (used when resuming)."""
        if not self.path.exists():
            return
        keep = [
            line for line in self.path.read_text(encoding="utf-8").splitlines()
            if line.strip() and json.loads(line)["round"] <= after_round
        ]
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text("".join(line + "\n" for line in keep), encoding="utf-8")
        os.replace(tmp, self.path)


def record_to_json(record: RoundRecord) -> dict[str, Any]:
    """A JSON-ready dict of a record."""
    data = asdict(record)
    data["participants"] = list(record.participants)
    data["required_bytes"] = list(record.required_bytes)
    data["metrics"] = dict(record.metrics)
    return data


ClientRunner = Callable[
    [Method, ServerState, Sequence[ClientTask], FederatedData, Sequence[int], LocalConfig],
    list[ClientUpdate],
]


def run_clients_local(
    method: Method,
    state: ServerState,
    tasks: Sequence[ClientTask],
    data: FederatedData,
    seeds: Sequence[int],
    config: LocalConfig,
) -> list[ClientUpdate]:
    """Run the tasks one after another in this process (the ``local`` backend)."""
    updates = []
    for task, seed in zip(tasks, seeds, strict=True):
        sub = method.submodel(state, task)
        generator = torch.Generator().manual_seed(seed)
        updates.append(
            train_client(sub, data.clients[task.client_id], task, generator=generator,
                         config=config)
        )
    return updates


BACKENDS: dict[str, ClientRunner] = {"local": run_clients_local}


def save_checkpoint(
    path: Path, rnd: int, state: ServerState, method: str,
    np_rng: np.random.Generator, torch_gen: torch.Generator,
) -> None:
    """Write a checkpoint atomically (temp file + ``os.replace``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "method": method,
        "round": rnd,
        "weights": state.weights,
        "meta": state.meta,
        "numpy_rng": np_rng.bit_generator.state,
        "torch_rng": torch_gen.get_state(),
    }
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: Path) -> dict[str, Any]:
    """Read a checkpoint with ``weights_only=True``; a bad file is a ConfigError."""
    try:
        payload = torch.load(path, weights_only=True, map_location="cpu")
    except FileNotFoundError:
        raise ConfigError(f"{path}: no checkpoint to resume from") from None
    except Exception as err:
        raise ConfigError(f"{path}: unreadable checkpoint ({type(err).__name__})") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise ConfigError(f"{path}: not a checkpoint of format {CHECKPOINT_FORMAT}")
    return payload


def run_federated(
    method: Method,
    fleet: Fleet,
    data: FederatedData,
    config: RunConfig,
    *,
    model: nn.Module,
    memory_table: MemoryTable,
    sink: RoundSink,
    backend: str = "local",
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    progress: Callable[[RoundRecord], None] | None = None,
) -> ServerState:
    """Run federated training until the method is finished or ``config.rounds`` is reached.

    Args:
        method: The FL algorithm.
        fleet: The devices; device ``i`` holds ``data.clients[i]``.
        data: Client datasets and the test set.
        config: Loop settings.
        model: The initial model (a BlockedModel); its weights are the run's start.
        memory_table: Sub-model name -> required bytes.
        sink: Receives one :class:`RoundRecord` per round.
        backend: How client tasks run; only ``"local"`` for now.
        checkpoint_dir: Folder for ``checkpoint.pt``; None disables checkpoints.
        resume: Continue from ``checkpoint_dir/checkpoint.pt`` when it exists.
        progress: Called with each round's record after it is stored and checkpointed.

    Returns:
        The final server state.
    """
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} is not available; use one of {sorted(BACKENDS)}")
    if len(data.clients) != len(fleet.devices):
        raise ConfigError(
            f"{len(data.clients)} client datasets but fleet {fleet.name!r} has "
            f"{len(fleet.devices)} devices; use one partition per device"
        )
    runner = BACKENDS[backend]
    local = config.local()
    np_rng = np.random.default_rng(config.seed)
    torch_gen = torch.Generator().manual_seed(config.seed)
    state = method.init_state(model, np_rng)
    start = 1
    ckpt = checkpoint_dir / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if resume and ckpt is not None and ckpt.exists():
        payload = load_checkpoint(ckpt)
        if payload["method"] != method.name:
            raise ConfigError(
                f"{ckpt}: checkpoint of method {payload['method']!r}, not {method.name!r}"
            )
        state = ServerState(weights=payload["weights"], meta=payload["meta"])
        np_rng.bit_generator.state = payload["numpy_rng"]
        torch_gen.set_state(payload["torch_rng"])
        start = int(payload["round"]) + 1
    if resume and isinstance(sink, JsonlSink):
        sink.truncate(start - 1)
    budgets = np.array([d.budget_bytes for d in fleet.devices], dtype=np.int64)
    # Methods with several sub-model sizes say which share of the fleet can take part.
    share = getattr(method, "eligible_share", None)
    rnd = start
    while rnd <= config.rounds and not method.is_finished(state):
        t0 = time.perf_counter()
        stage, step, submodel = method.position(state)
        tasks = method.configure_round(rnd, state, fleet, memory_table, np_rng)
        seeds = [int(torch.randint(0, 2**62, (1,), generator=torch_gen)) for _ in tasks]
        updates = runner(method, state, tasks, data, seeds, local)
        state = method.aggregate(rnd, state, updates)
        last = method.is_finished(state) or rnd == config.rounds
        accuracy = loss = None
        if rnd % config.eval_every == 0 or last:
            accuracy, loss = evaluate(
                method.eval_submodel(state, submodel), data.test,
                batch_size=config.eval_batch_size, device=config.device,
            )
        examples = sum(u.num_examples for u in updates)
        required = max((t.required_bytes for t in tasks), default=0)
        record = RoundRecord(
            round=rnd, stage=stage, step=step, submodel=submodel,
            accuracy=accuracy, loss=loss,
            train_loss=sum(u.metrics["train_loss"] * u.num_examples for u in updates) / examples,
            participants=tuple(t.client_id for t in tasks),
            eligible_share=share(fleet, memory_table) if share is not None else (
                float((budgets >= required).mean()) if budgets.size else 0.0),
            required_bytes=tuple(t.required_bytes for t in tasks),
            wall_s=time.perf_counter() - t0,
            metrics=method.round_metrics(state),
        )
        sink.write(record)
        due = config.checkpoint_every and rnd % config.checkpoint_every == 0
        if ckpt is not None and (due or last):
            save_checkpoint(ckpt, rnd, state, method.name, np_rng, torch_gen)
        if progress is not None:
            progress(record)
        rnd += 1
    return state
