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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from torch import Tensor, nn

from profl_core.devices import Fleet
from profl_core.errors import ConfigError, build_config
from profl_core.fl.aggregate import Weighting
from profl_core.fl.types import ClientTask, ClientUpdate, MemoryTable, ServerState, SubModel
from profl_core.methods import alternatives
from profl_core.methods.alternatives import Rung, check_min_micro_batch
from profl_core.methods.fedavg import FedAvg, FedAvgConfig

FULL = "full"


@dataclass(frozen=True, kw_only=True)
class FedAvgFitConfig:
    """FedAvg-fit's settings.

    Attributes:
        rounds: Number of rounds.
        per_round: Clients per round.
        local_epochs: Local epochs per round.
        batch_size: Local batch size (every rung's; micro-batches split it).
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        weighting: ``"examples"`` or ``"uniform"``.
        min_micro_batch: Fewest samples per micro-batch on the accumulation rungs.
        checkpointing: Add the activation-checkpointing rungs after the accumulation ones.
    """

    rounds: int
    per_round: int = 20
    local_epochs: int = 5
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    weighting: Weighting = "examples"
    min_micro_batch: int = 2
    checkpointing: bool = True

    def __post_init__(self) -> None:
        if min(self.rounds, self.per_round, self.local_epochs, self.batch_size) < 1:
            raise ConfigError("fedavg-fit: rounds, per_round, local_epochs, batch_size must "
                              "be >= 1")
        check_min_micro_batch(self.min_micro_batch, "fedavg-fit")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FedAvgFitConfig:
        """Build from a mapping; unknown keys are a ConfigError."""
        return build_config(cls, data, "fedavg-fit config")

    def fedavg(self) -> FedAvgConfig:
        """The plain FedAvg (full model, every client) whose model, client task and
        aggregation this method uses."""
        return FedAvgConfig(
            rounds=self.rounds, per_round=self.per_round, local_epochs=self.local_epochs,
            batch_size=self.batch_size, lr=self.lr, momentum=self.momentum,
            weight_decay=self.weight_decay, weighting=self.weighting, policy="alllarge",
        )


class FedAvgFit:
    """FedAvg-fit as a :class:`~profl_core.fl.types.Method`."""

    name = "fedavg-fit"
    enforces_memory = True

    def __init__(self, config: FedAvgFitConfig) -> None:
        self.config = config
        self.rungs = alternatives.ladder(
            config.batch_size, min_micro_batch=config.min_micro_batch,
            checkpointing=config.checkpointing)
        self._fedavg = FedAvg(config.fedavg())
        self._round: dict[int, Rung] = {}  # client id -> rung, of the round being configured

    def memory_plan(self, state: ServerState) -> dict[str, ClientTask]:
        """Every rung of the full model, cheapest compute first."""
        full = self._fedavg.memory_plan(state)[FULL]
        return {rung.name(FULL): rung.task(full) for rung in self.rungs}

    def check_fleet(self, fleet: Fleet, memory_table: MemoryTable) -> None:
        """Some device fits some rung."""
        alternatives.require_some_fit(fleet, FULL, self.rungs, memory_table)

    def eligible_share(self, state: ServerState, fleet: Fleet, memory_table: MemoryTable) -> float:
        """The share of the fleet that fits some rung."""
        return alternatives.eligible_share(fleet, FULL, self.rungs, memory_table)

    def rung_of(self, fleet: Fleet, memory_table: MemoryTable) -> dict[int, Rung]:
        """Device id -> its rung (the first that fits); devices fitting none left out."""
        return alternatives.assign(fleet, FULL, self.rungs, memory_table)

    def init_state(self, model: nn.Module, rng: np.random.Generator) -> ServerState:
        """The model's weights; ``meta`` counts rounds."""
        return self._fedavg.init_state(model, rng)

    def configure_round(
        self, rnd: int, state: ServerState, fleet: Fleet, memory_table: MemoryTable,
        rng: np.random.Generator,
    ) -> list[ClientTask]:
        """``per_round`` devices that fit some rung, each training the full model on its rung."""
        chosen = alternatives.select(fleet, FULL, self.rungs, memory_table,
                                     self.config.per_round, rng)
        self._round = dict(chosen)
        full = self._fedavg.memory_plan(state)[FULL]
        return alternatives.tasks(full, chosen, memory_table)

    def submodel(self, state: ServerState, task: ClientTask) -> SubModel:
        """The full model (the rung is the task's ``micro_batches`` and ``checkpoint``)."""
        return self._fedavg.submodel(state, replace(task, submodel=FULL))

    def eval_submodel(self, state: ServerState, submodel: str) -> SubModel:
        """The global full model."""
        return self._fedavg.eval_submodel(state, FULL)

    def aggregate(
        self, rnd: int, state: ServerState, updates: Sequence[ClientUpdate]
    ) -> ServerState:
        """Plain FedAvg of the full models; the round's compute cost goes to ``meta``."""
        new = self._fedavg.aggregate(rnd, state, updates)
        rungs = alternatives.rungs_of(self._round, (u.client_id for u in updates))
        new.meta["cost"] = alternatives.cost_metrics(rungs, self.config.batch_size)
        return new

    def is_finished(self, state: ServerState) -> bool:
        """True after ``rounds`` rounds."""
        return self._fedavg.is_finished(state)

    def model_weights(self, state: ServerState) -> dict[str, Tensor]:
        """The global model's weights."""
        return self._fedavg.model_weights(state)

    def position(self, state: ServerState) -> tuple[str, int, str]:
        """``("full", 0, "full")``."""
        return "full", 0, FULL

    def round_metrics(self, state: ServerState) -> dict[str, float | None]:
        """The compute cost of the round just aggregated (:data:`alternatives.COST_METRICS`)."""
        return dict(state.meta.get("cost") or dict.fromkeys(alternatives.COST_METRICS))
