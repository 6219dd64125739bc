"""FedAvg-fit: full-model FedAvg, each device training the full model with the cheapest
single-device alternative that fits its budget (issue 14: what a user would pick instead).

Pseudo-code (rungs: :mod:`profl_core.methods.alternatives`; B = the batch size)::

    rungs = [full, full+accum:2, full+accum:4, .., full+ckpt, full+ckpt+accum:2, ..]
    for each device d: rung(d) = the first rung whose measured required_bytes <= budget(d)
    eligible = the devices with a rung                 # the others never take part
    each round:
        draw per_round eligible devices uniformly
        each trains the full model, local_epochs at batch B, on its rung's step
        the server takes the example-weighted mean of the full models (plain FedAvg)

Every client trains the same model with the same optimizer and batch size: accumulation
gives the full batch's gradient (exactly so without batch norm; BN normalises each
micro-batch by itself) and checkpointing the same gradient (it recomputes the forward). So the
method is ExclusiveFL with more devices: the memory table decides who takes part, and the
price is compute. Each round records it (``metrics`` of ``rounds.jsonl``): ``extra_forward``,
the participants' mean number of extra forwards of the model per step (1 on a checkpointed
rung), ``micro_batch`` and ``micro_batch_min``, the mean and smallest samples per micro-batch.

Choices: micro-batches are powers of two that divide B down to ``min_micro_batch`` samples
(default 2: one sample leaves batch norm's statistics a single value per channel on small
feature maps); ``checkpointing=False`` leaves the ``ckpt`` rungs out; mixed precision is no
rung (it changes the numerics).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
from torch import nn

from profl_core.devices import Fleet
from profl_core.fl.aggregate import fedavg
from profl_core.fl.method import Method
from profl_core.fl.types import ClientTask, ClientUpdate, MemoryTable, ServerState, SubModel
from profl_core.methods import alternatives
from profl_core.methods.alternatives import Rung, check_min_micro_batch
from profl_core.methods.fedavg import FULL, FedAvgConfig, full_state, full_structure


@dataclass(frozen=True, kw_only=True)
class FedAvgFitConfig(FedAvgConfig):
    """FedAvg-fit's settings: FedAvg's (every rung's batch size is ``batch_size``;
    micro-batches split it), and

    Attributes:
        min_micro_batch: Fewest samples per micro-batch on the accumulation rungs.
        checkpointing: Add the activation-checkpointing rungs after the accumulation ones.
    """

    where: ClassVar[str] = "fedavg-fit"

    min_micro_batch: int = 2
    checkpointing: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        check_min_micro_batch(self.min_micro_batch, self.where)

    def ladder(self) -> tuple[Rung, ...]:
        """The rungs of the full model, cheapest compute first."""
        return alternatives.ladder(self.batch_size, min_micro_batch=self.min_micro_batch,
                                   checkpointing=self.checkpointing)


class FedAvgFit(Method):
    """Full-model FedAvg, each device on the first rung of the ladder that fits it."""

    name = "fedavg-fit"
    config: FedAvgFitConfig

    def __init__(self, config: FedAvgFitConfig) -> None:
        super().__init__(config)
        self.rungs = config.ladder()

    def _full(self, state: ServerState) -> ClientTask:
        return self.config.task(0, FULL, frozenset(full_structure(state).names), 0)

    def memory_plan(self, state: ServerState) -> dict[str, ClientTask]:
        """Every rung of the full model, cheapest compute first."""
        full = self._full(state)
        return {rung.name(FULL): rung.task(full) for rung in self.rungs}

    def fit_fleet(self, state: ServerState, fleet: Fleet,
                  memory_table: MemoryTable) -> ServerState:
        """Some device fits some rung."""
        alternatives.require_some_fit(fleet, FULL, self.rungs, memory_table)
        return state

    def init_state(self, model: nn.Module, rng: np.random.Generator) -> ServerState:
        """The model's weights; ``meta`` counts rounds."""
        return full_state(model, self.name)

    def configure_round(
        self, rnd: int, state: ServerState, fleet: Fleet, memory_table: MemoryTable,
        rng: np.random.Generator,
    ) -> list[ClientTask]:
        """``per_round`` devices that fit some rung, each training the full model on its rung."""
        chosen = alternatives.select(fleet, FULL, self.rungs, memory_table,
                                     self.config.per_round, rng)
        return alternatives.tasks(self._full(state), chosen, memory_table)

    def submodel(self, state: ServerState, task: ClientTask) -> SubModel:
        """The full model (the rung is the task's ``micro_batches`` and ``checkpoint``)."""
        return full_structure(state).submodel(state.weights)

    def eval_submodel(self, state: ServerState, submodel: str) -> SubModel:
        """The global full model."""
        return full_structure(state).submodel(state.weights)

    def aggregate(
        self, rnd: int, state: ServerState, updates: Sequence[ClientUpdate]
    ) -> ServerState:
        """Plain FedAvg of the full models; the round's compute cost goes to ``meta``."""
        weights = fedavg(state.weights, updates, weighting=self.config.weighting)
        rungs = alternatives.rungs_of(updates)
        return replace(state, weights=weights, meta={
            "rounds_used": int(state.meta["rounds_used"]) + 1,
            "cost": alternatives.cost_metrics(rungs, self.config.batch_size)})

    def round_metrics(self, state: ServerState) -> dict[str, float | None]:
        """The compute cost of the round just aggregated (:data:`alternatives.COST_METRICS`)."""
        return dict(state.meta.get("cost") or dict.fromkeys(alternatives.COST_METRICS))
