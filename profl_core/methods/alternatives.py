"""The single-device alternatives as a ladder of rungs, cheapest compute first.

A *rung* runs a sub-model's client step with less memory while training exactly the same
model: gradient accumulation over k micro-batches (:attr:`ClientTask.micro_batches`) and
activation checkpointing of the trainable modules (:attr:`ClientTask.checkpoint`). The ladder
of batch size B, in order of compute cost:

1. the plain step;
2. ``accum:k``, k = 2, 4, 8, ...: the powers of two that divide B while the micro-batch B/k
   has at least ``min_micro_batch`` samples (B = 64, minimum 2: k = 2 .. 32);
3. ``ckpt`` (with ``checkpointing``);
4. ``ckpt+accum:k`` for the same k.

Every rung is a memory-table entry named like the memory kinds (the sub-model, then the
modifiers in their canonical order: ``full+accum:4``, ``full+ckpt+accum:2``, ``grow:2+accum:8``),
measured on the client step its clients run. A device gets the **first** rung whose
``required_bytes`` fit its budget and keeps it for the step; a device that fits no rung does not
take part. A rung that needs more memory than an earlier one is measured but never handed out.

Compute cost of a rung, per local step: a checkpointed rung runs the forward of the trainable
modules twice (``extra_forward`` 1; the recompute in backward); ``accum:k`` does the same
arithmetic in k forwards and backwards of B/k samples (``micro_batch`` B/k: more, smaller
kernel calls). Batch norm then normalises each micro-batch with its own statistics. Mixed
precision is not a rung: it changes the numerics (a bf16 forward), so its clients would not
train the same model; measure it with the memory kinds (``full+amp``).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace

import numpy as np

from profl_core.devices import Fleet
from profl_core.errors import ConfigError
from profl_core.fl.selection import require_trainable, required
from profl_core.fl.types import ClientTask, ClientUpdate, MemoryTable, StepOptions

#: Keys of :func:`cost_metrics` in a round's ``metrics``.
COST_METRICS: tuple[str, ...] = ("extra_forward", "micro_batch", "micro_batch_min")


@dataclass(frozen=True, kw_only=True)
class Rung(StepOptions):
    """One way to run a sub-model's step: ``micro_batches`` and activation ``checkpoint``
    (never ``autocast``: it changes the numerics)."""

    @property
    def modifiers(self) -> tuple[str, ...]:
        """Modifier texts in the memory kinds' canonical order (``ckpt``, then ``accum:k``)."""
        return (*(("ckpt",) if self.checkpoint else ()),
                *((f"accum:{self.micro_batches}",) if self.micro_batches > 1 else ()))

    def name(self, base: str) -> str:
        """The memory-table name of this rung of sub-model ``base`` (``full+ckpt+accum:4``)."""
        return "+".join((base, *self.modifiers))

    def task(self, template: ClientTask) -> ClientTask:
        """``template`` (a task of the base sub-model) run on this rung."""
        return replace(template, submodel=self.name(template.submodel),
                       micro_batches=self.micro_batches, checkpoint=self.checkpoint)

    @property
    def extra_forwards(self) -> int:
        """Forwards of the trainable modules per step beyond the first (the recompute)."""
        return 1 if self.checkpoint else 0


PLAIN = Rung()


def micro_batch_counts(batch_size: int, min_micro_batch: int) -> tuple[int, ...]:
    """k = 2, 4, 8, ... that divide ``batch_size`` with ``batch_size / k >= min_micro_batch``."""
    counts: list[int] = []
    k = 2
    while batch_size % k == 0 and batch_size // k >= min_micro_batch:
        counts.append(k)
        k *= 2
    return tuple(counts)


def check_min_micro_batch(min_micro_batch: int, where: str = "") -> None:
    """Raise a one-line ConfigError (prefixed ``where: `` when given) for fewer than one
    sample per micro-batch."""
    if min_micro_batch < 1:
        prefix = f"{where}: " if where else ""
        raise ConfigError(f"{prefix}min_micro_batch={min_micro_batch}; use 1 or more samples")


def ladder(batch_size: int, *, min_micro_batch: int, checkpointing: bool) -> tuple[Rung, ...]:
    """Plain, ``accum:k`` (fewest first), then ``ckpt`` and ``ckpt+accum:k`` when
    ``checkpointing``."""
    check_min_micro_batch(min_micro_batch)
    counts = micro_batch_counts(batch_size, min_micro_batch)
    rungs = [PLAIN, *(Rung(micro_batches=k) for k in counts)]
    if checkpointing:
        rungs += [Rung(checkpoint=True), *(Rung(micro_batches=k, checkpoint=True)
                                           for k in counts)]
    return tuple(rungs)


def base_name(submodel: str) -> str:
    """The sub-model of a rung's name: ``full+ckpt+accum:4`` -> ``full``."""
    return submodel.split("+", 1)[0]


def first_fit(budget_bytes: int, base: str, rungs: Sequence[Rung],
              memory_table: MemoryTable) -> Rung | None:
    """The first of ``rungs`` whose measured ``required_bytes`` fit ``budget_bytes``."""
    for rung in rungs:
        if required(memory_table, rung.name(base)) <= budget_bytes:
            return rung
    return None


def assign(fleet: Fleet, base: str, rungs: Sequence[Rung],
           memory_table: MemoryTable) -> dict[int, Rung]:
    """Device id -> its first fitting rung, in fleet order; devices fitting none left out."""
    out: dict[int, Rung] = {}
    for device in fleet.devices:
        rung = first_fit(device.budget_bytes, base, rungs, memory_table)
        if rung is not None:
            out[device.device_id] = rung
    return out


def eligible_share(fleet: Fleet, base: str, rungs: Sequence[Rung],
                   memory_table: MemoryTable) -> float:
    """Share of the fleet that fits some rung of ``base``."""
    if not fleet.devices:
        return 0.0
    return len(assign(fleet, base, rungs, memory_table)) / len(fleet.devices)


def require_some_fit(fleet: Fleet, base: str, rungs: Sequence[Rung],
                     memory_table: MemoryTable) -> None:
    """A one-line ConfigError when no device of ``fleet`` fits any rung of ``base``."""
    smallest = min(rungs, key=lambda r: required(memory_table, r.name(base)))
    what = smallest.name(base) if len(rungs) == 1 \
        else f"{base} on any of its {len(rungs)} rungs (the smallest is {smallest.name(base)})"
    require_trainable(fleet, required(memory_table, smallest.name(base)), what)


def select(
    fleet: Fleet,
    base: str,
    rungs: Sequence[Rung],
    memory_table: MemoryTable,
    per_round: int,
    rng: np.random.Generator,
) -> list[tuple[int, Rung]]:
    """Draw up to ``per_round`` devices uniformly from those that fit some rung, each with its
    first fitting rung (with one rung: the draws of
    :func:`~profl_core.fl.selection.select_clients`).

    Raises:
        ConfigError: When no device fits any rung, or ``per_round`` < 1.
    """
    if per_round < 1:
        raise ConfigError(f"per_round={per_round}; use 1 or more clients per round")
    fits = assign(fleet, base, rungs, memory_table)
    if not fits:
        require_some_fit(fleet, base, rungs, memory_table)
    pool = np.array(list(fits), dtype=np.int64)
    chosen = rng.choice(pool, size=min(per_round, pool.size), replace=False)
    return [(int(cid), fits[int(cid)]) for cid in sorted(chosen)]


def tasks(template: ClientTask, chosen: Iterable[tuple[int, Rung]],
          memory_table: MemoryTable) -> list[ClientTask]:
    """One task per ``(client id, rung)``: ``template`` on the rung with its required bytes."""
    out: list[ClientTask] = []
    for cid, rung in chosen:
        task = rung.task(template)
        out.append(replace(task, client_id=cid,
                           required_bytes=required(memory_table, task.submodel)))
    return out


def cost_metrics(rungs: Sequence[Rung], batch_size: int) -> dict[str, float | None]:
    """Compute cost of the rungs the round's participants trained on: ``extra_forward``
    (mean extra forwards of the trainable modules per step), ``micro_batch`` (mean samples per
    micro-batch) and ``micro_batch_min``; None without participants."""
    if not rungs:
        return dict.fromkeys(COST_METRICS)
    sizes = [batch_size / r.micro_batches for r in rungs]
    return {
        "extra_forward": float(np.mean([r.extra_forwards for r in rungs])),
        "micro_batch": float(np.mean(sizes)),
        "micro_batch_min": float(min(sizes)),
    }


def rungs_of(updates: Iterable[ClientUpdate]) -> list[Rung]:
    """The rungs the clients of ``updates`` trained on (from the tasks they answer)."""
    return [Rung(micro_batches=u.task.micro_batches, checkpoint=u.task.checkpoint)
            for u in updates if u.task is not None]
