"""The federated round loop: ``run_federated`` (DESIGN §3).

Per round: the method configures client tasks, the backend runs them, the method aggregates,
the server evaluates every ``eval_every`` rounds, one :class:`RoundRecord` goes to the sink
(JSONL, appended and flushed), and every ``checkpoint_every`` rounds the model, the method's
state and both RNG states are written atomically. ``resume=True`` continues from the latest
checkpoint and ends with exactly the weights of an uninterrupted run.

Randomness: one seed makes a NumPy generator (client selection, the method's choices; it is
checkpointed); each client's shuffling generator is seeded by
:func:`~profl_core.fl.client.client_seed` from (seed, round, client id) only, so backends that
run clients in any order or on any worker give the same result.

Backends (:data:`BACKENDS`): ``local`` runs the clients one after another in this process;
``ray`` (:mod:`profl_core.fl.ray_backend`) runs them on Ray actors of an already connected Ray
(``ray.init`` is the caller's job). Either way a client that refuses its task (budget), raises,
runs out of memory or dies is recorded in ``RoundRecord.dropped`` and the round goes on with the
others; a round with fewer than ``min_survivors`` updates is repeated with a fresh selection
(``round_retries`` times) and then fails with :class:`RoundFailedError`, never averaging over
nothing.

Divergence (:class:`~profl_core.fl.types.DivergedError`, DESIGN §5). A client whose loss or
update is non-finite is dropped by the client itself (reason ``non-finite: ...``). The run
stops as diverged when, after a round,

* the aggregated server weights hold a NaN or infinity,
* the test loss is non-finite,
* every selected client was dropped as non-finite in every attempt, or
* the round's mean training loss exceeds ``loss_blowup`` times the mean training loss of the
  first round of the current step (stage, step, sub-model): the step started from that loss, so
  a hundredfold rise (the default) is a blow-up, not noise. ``loss_blowup = 0`` turns this
  rule off.

Either failure (diverged or too few survivors) first checkpoints the last finished round with
the NumPy RNG state it had then, so ``--resume`` continues exactly; the failed round leaves no
record.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from profl_core.devices import Fleet
from profl_core.errors import ConfigError, build_config
from profl_core.fl.backend import Backend, FederatedData, LocalBackend
from profl_core.fl.checkpoint import (
    CHECKPOINT_NAME,
    load_checkpoint,
    restore_checkpoint,
    save_checkpoint,
)
from profl_core.fl.client import (
    FAULTS,
    ClientJob,
    Fault,
    client_seed,
    first_non_finite,
)
from profl_core.fl.local import FrozenBN, LocalConfig
from profl_core.fl.method import Method
from profl_core.fl.sinks import JsonlSink, RoundSink
from profl_core.fl.training import evaluate
from profl_core.fl.types import (
    ClientDrop,
    ClientTask,
    ClientUpdate,
    DivergedError,
    MemoryTable,
    RoundFailedError,
    RoundRecord,
    ServerState,
)


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
        feature_cache: Cache the frozen prefix per round (see :mod:`profl_core.fl.training`).
        device: Torch device for local training and evaluation.
        min_survivors: Fewest client updates a round needs (capped at the number of selected
            clients, at least 1); with fewer the round is repeated.
        round_retries: How often a round with too few survivors is repeated (with a fresh
            selection) before the run fails with :class:`RoundFailedError`.
        faults: Test-only fault injection: client id -> ``"raise"`` (an exception in local
            training), ``"oom"`` (``MemoryError``) or ``"crash"`` (the worker process exits;
            Ray backend only), applied every time the client is selected.
        loss_blowup: The run diverges when a round's mean training loss exceeds this many
            times the first-round loss of its step (0: off).
    """

    rounds: int
    seed: int = 0
    eval_every: int = 1
    eval_batch_size: int = 512
    checkpoint_every: int = 0
    frozen_bn: FrozenBN = "eval"
    feature_cache: bool = True
    device: str = "cpu"
    min_survivors: int = 1
    round_retries: int = 2
    faults: Mapping[int, Fault] = field(default_factory=dict)
    loss_blowup: float = 100.0

    def __post_init__(self) -> None:
        if self.loss_blowup < 0 or not math.isfinite(self.loss_blowup):
            raise ConfigError(f"loss_blowup={self.loss_blowup}; use 0 (off) or a positive factor")
        if self.min_survivors < 1:
            raise ConfigError(f"min_survivors={self.min_survivors}; use 1 or more")
        if self.round_retries < 0:
            raise ConfigError(f"round_retries={self.round_retries}; use 0 or more")
        for cid, fault in self.faults.items():
            if fault not in FAULTS:
                raise ConfigError(f"faults[{cid}]={fault!r}; use one of {list(FAULTS)}")
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
        return build_config(cls, data, "run config")

    def local(self) -> LocalConfig:
        """The local-training part."""
        return LocalConfig(
            frozen_bn=self.frozen_bn, feature_cache=self.feature_cache, device=self.device
        )


def _ray_backend() -> Backend:
    try:
        from profl_core.fl.ray_backend import RayBackend  # ray is optional: only for "ray"
    except ModuleNotFoundError as err:
        if err.name != "ray":
            raise
        raise ConfigError("ray is not installed; pip install 'profl-bench[ray]'") from None
    return RayBackend()


#: Backend name -> factory of a fresh backend for one run.
BACKENDS: dict[str, Callable[[], Backend]] = {"local": LocalBackend, "ray": _ray_backend}


def make_backend(backend: str | Backend) -> Backend:
    """A backend by name (see :data:`BACKENDS`), or ``backend`` itself when it is one."""
    if not isinstance(backend, str):
        return backend
    if backend not in BACKENDS:
        raise ConfigError(f"backend {backend!r} is not available; use one of {sorted(BACKENDS)}")
    return BACKENDS[backend]()


def run_federated(
    method: Method,
    fleet: Fleet,
    data: FederatedData,
    config: RunConfig,
    *,
    model: nn.Module,
    memory_table: MemoryTable,
    sink: RoundSink,
    backend: str | Backend = "local",
    checkpoint_dir: Path | None = None,
    resume: bool = False,
    progress: Callable[[RoundRecord], None] | None = None,
    warn: Callable[[str], None] | None = None,
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
        backend: How client tasks run: a name in :data:`BACKENDS` (``"local"``, ``"ray"``:
            needs a connected Ray) or a :class:`Backend` instance (e.g. a configured
            ``RayBackend``).
        checkpoint_dir: Folder for ``checkpoint.pt``; None disables checkpoints.
        resume: Continue from ``checkpoint_dir/checkpoint.pt`` when it exists (checked by
            :func:`restore_checkpoint`); a :class:`JsonlSink` is cut back to its round.
        progress: Called with each round's record after it is stored and checkpointed.
        warn: Receives one-line notes (a torn last line of ``rounds.jsonl`` dropped on resume).

    Returns:
        The final server state.

    Raises:
        RoundFailedError: A round kept fewer than ``config.min_survivors`` updates after
            ``config.round_retries`` repeats (the last finished round is checkpointed first).
        DivergedError: The run diverged (see the module docstring; the last finished round is
            checkpointed first).
    """
    if len(data.clients) != len(fleet.devices):
        raise ConfigError(
            f"{len(data.clients)} client datasets but fleet {fleet.name!r} has "
            f"{len(fleet.devices)} devices; use one partition per device"
        )
    if "crash" in config.faults.values() and backend == "local":
        raise ConfigError("faults: 'crash' needs a worker process; use backend 'ray'")
    runner = make_backend(backend)
    np_rng = np.random.default_rng(config.seed)
    state = method.init_state(model, np_rng)
    start = 1
    payload: dict[str, Any] = {}
    ckpt = checkpoint_dir / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if resume and ckpt is not None and ckpt.exists():
        payload = load_checkpoint(ckpt)
        state = restore_checkpoint(ckpt, payload, method=method, fresh=state, np_rng=np_rng,
                                   rounds=config.rounds)
        start = int(payload["round"]) + 1
    state = method.fit_fleet(state, fleet, memory_table)
    if resume and isinstance(sink, JsonlSink):
        torn = sink.truncate(start - 1)
        if torn is not None and warn is not None:
            warn(torn)
    guard = _BlowupGuard(config.loss_blowup, payload.get("loop", {}) if start > 1 else {})
    runner.start(method, data, config.local())
    try:
        rnd = start
        while rnd <= config.rounds and not method.is_finished(state):
            t0 = time.perf_counter()
            stage, step, submodel = method.position(state)
            rng_before = np_rng.bit_generator.state
            loop_before = guard.state()

            def stop_after(prev: ServerState, rnd: int = rnd, rng_before: dict = rng_before,
                           loop_before: dict = loop_before) -> None:
                """Checkpoint round ``rnd - 1`` exactly as it ended (RNG included)."""
                if ckpt is not None:
                    np_rng.bit_generator.state = rng_before
                    save_checkpoint(ckpt, rnd - 1, prev, method.name, np_rng, loop=loop_before)

            try:
                tasks, updates, dropped = _train_round(rnd, method, state, fleet, memory_table,
                                                       np_rng, config, runner)
            except RoundFailedError as err:
                stop_after(state)
                if err.all_non_finite:
                    raise DivergedError(round=rnd, stage=stage, step=step, submodel=submodel,
                                        what="every client update was non-finite") from None
                raise
            previous, state = state, method.aggregate(rnd, state, updates)
            examples = sum(u.num_examples for u in updates)
            train_loss = sum(u.metrics["train_loss"] * u.num_examples for u in updates) / examples
            metrics = dict(method.round_metrics(state))
            step_end = metrics.pop("step_end", None)
            last = method.is_finished(state) or rnd == config.rounds
            accuracy = loss = None
            bad = first_non_finite(state.weights)
            what = f"server weight {bad}" if bad is not None else guard.check(
                (stage, step, submodel), train_loss)
            if what is None and (rnd % config.eval_every == 0 or last or step_end is not None):
                accuracy, loss = evaluate(
                    method.eval_submodel(state, submodel), data.test,
                    batch_size=config.eval_batch_size, device=config.device,
                )
                if not math.isfinite(loss):
                    what = f"test loss {loss}"
            if what is not None:
                stop_after(previous)
                raise DivergedError(round=rnd, stage=stage, step=step, submodel=submodel,
                                    what=what)
            needs = {t.client_id: t.required_bytes for t in tasks}
            record = RoundRecord(
                round=rnd, stage=stage, step=step, submodel=submodel,
                accuracy=accuracy, loss=loss, train_loss=train_loss,
                participants=tuple(u.client_id for u in updates),
                eligible_share=method.eligible_share(previous, fleet, memory_table),
                required_bytes=tuple(needs[u.client_id] for u in updates),
                wall_s=time.perf_counter() - t0,
                metrics=metrics,
                dropped=dropped,
                step_end=None if step_end is None else str(step_end),
            )
            sink.write(record)
            due = config.checkpoint_every and rnd % config.checkpoint_every == 0
            if ckpt is not None and (due or last):
                save_checkpoint(ckpt, rnd, state, method.name, np_rng, loop=guard.state())
            if progress is not None:
                progress(record)
            rnd += 1
    finally:
        runner.close()
    return state


class _BlowupGuard:
    """The loss blow-up rule: a round's train loss vs the first-round loss of its step."""

    def __init__(self, factor: float, saved: Mapping[str, Any]) -> None:
        self.factor = factor
        self.step: list[Any] | None = saved.get("step")
        self.reference: float | None = saved.get("reference_loss")

    def state(self) -> dict[str, Any]:
        """What a checkpoint keeps of the rule (so a resumed run checks the same way)."""
        return {"step": self.step, "reference_loss": self.reference}

    def check(self, step: tuple[str, int, str], loss: float) -> str | None:
        """Why ``loss`` of a round of ``step`` means divergence, or None."""
        if not math.isfinite(loss):
            return f"train loss {loss}"
        if self.step != list(step):
            self.step, self.reference = list(step), loss
            return None
        if self.factor and self.reference and loss > self.factor * self.reference:
            return (f"train loss {loss:.3g} > {self.factor:g} x the step's first-round loss "
                    f"{self.reference:.3g}")
        return None


def _train_round(
    rnd: int, method: Method, state: ServerState, fleet: Fleet, memory_table: MemoryTable,
    np_rng: np.random.Generator, config: RunConfig, runner: Backend,
) -> tuple[list[ClientTask], list[ClientUpdate], tuple[tuple[int, str], ...]]:
    """Configure and run round ``rnd`` until enough clients survive.

    Returns:
        The tasks of the kept attempt, its updates (task order) and the drops of every attempt.
    """
    enforce = method.enforces_memory
    dropped: list[tuple[int, str]] = []
    attempts = config.round_retries + 1
    for attempt in range(1, attempts + 1):
        tasks = [
            t if t.budget_bytes is not None or not enforce
            else replace(t, budget_bytes=fleet.devices[t.client_id].budget_bytes)
            for t in method.configure_round(rnd, state, fleet, memory_table, np_rng)
        ]
        jobs = [ClientJob(task=t, seed=client_seed(config.seed, rnd, t.client_id),
                          fault=config.faults.get(t.client_id)) for t in tasks]
        results = runner.run_round(method, state, jobs)
        updates = [r for r in results if isinstance(r, ClientUpdate)]
        drops = [(r.client_id, r.reason) for r in results if isinstance(r, ClientDrop)]
        if len(updates) >= max(1, min(config.min_survivors, len(tasks))):
            return tasks, updates, (*dropped, *drops)
        dropped += [(cid, f"attempt {attempt}: {reason}") for cid, reason in drops]
    listed = "; ".join(f"client {cid}: {reason}" for cid, reason in dropped)
    error = RoundFailedError(
        f"round {rnd}: fewer than {config.min_survivors} client(s) survived in each of "
        f"{attempts} attempt(s); {listed or 'no client was selected'}"
    )
    error.all_non_finite = bool(dropped) and all("non-finite:" in r for _, r in dropped)
    raise error
