"""Full-model FedAvg: every client trains the whole model (AllLarge, the upper bound).

FedAvg: McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
Data", AISTATS 2017, arXiv 1602.05629. AllLarge is InclusiveFL's reference point (Liu et al.,
KDD 2022; reference/baselines.md §1): memory is ignored on purpose, so every device takes part.

Pseudo-code::

    each round:
        draw per_round devices uniformly from the whole fleet
        each trains the full model, local_epochs at batch B
        the server takes the example-weighted mean of the full models

ExclusiveFL (:mod:`profl_core.methods.exclusivefl`), AllSmall
(:mod:`profl_core.methods.allsmall`) and FedAvg-fit (:mod:`profl_core.methods.fedavg_fit`)
build on this model, task and aggregation.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar

import numpy as np
from torch import Tensor, nn

from profl_core.devices import Fleet
from profl_core.errors import ConfigError
from profl_core.fl.aggregate import Weighting, fedavg
from profl_core.fl.method import LocalTraining, Method
from profl_core.fl.selection import select_any
from profl_core.fl.types import ClientTask, ClientUpdate, MemoryTable, ServerState, SubModel
from profl_core.methods.module_cache import ModuleCache
from profl_core.models import BlockedModel

FULL = "full"


@dataclass(frozen=True, kw_only=True)
class FedAvgConfig(LocalTraining):
    """FedAvg's settings: the local training, and

    Attributes:
        weighting: ``"examples"`` or ``"uniform"``.
    """

    where: ClassVar[str] = "fedavg"

    weighting: Weighting = "examples"


@dataclass(frozen=True)
class FullModel:
    """A run's structure for full-model methods: the template model and the clients' copy."""

    model: BlockedModel
    copies: ModuleCache = field(default_factory=ModuleCache)

    @property
    def names(self) -> list[str]:
        """The model's module names: blocks, then the head."""
        return [*self.model.block_names(), "head"]

    def submodel(self, weights: Mapping[str, Tensor]) -> SubModel:
        """The whole model loaded with ``weights`` (one reused copy), every module trained."""
        model = self.copies.loaded(FULL, self.model, weights)
        names = self.names
        return SubModel(modules={n: model.get_submodule(n) for n in names}, prefix=(),
                        student=tuple(names), trainable=frozenset(names))


def full_structure(state: ServerState) -> FullModel:
    """The :class:`FullModel` of a full-model method's state."""
    if not isinstance(state.structure, FullModel):
        raise ConfigError("this state has no full-model structure; build it with init_state")
    return state.structure


def full_state(model: nn.Module, where: str) -> ServerState:
    """The model's weights, ``rounds_used`` 0 and a :class:`FullModel` of a copy of it."""
    if not isinstance(model, BlockedModel):
        raise ConfigError(f"{where} needs a BlockedModel")
    template = copy.deepcopy(model)
    weights = {k: v.detach().clone() for k, v in template.state_dict().items()}
    return ServerState(weights=weights, meta={"rounds_used": 0},
                       structure=FullModel(template))


class FedAvg(Method):
    """Full-model FedAvg, every device (AllLarge)."""

    name = "fedavg"
    enforces_memory = False  # AllLarge ignores memory on purpose: nobody refuses
    config: FedAvgConfig

    def full_task(self, state: ServerState, client_id: int, required: int) -> ClientTask:
        """The full model's client task."""
        return self.config.task(client_id, FULL, frozenset(full_structure(state).names),
                                required)

    def memory_plan(self, state: ServerState) -> dict[str, ClientTask]:
        """``full``."""
        return {FULL: self.full_task(state, 0, 0)}

    def init_state(self, model: nn.Module, rng: np.random.Generator) -> ServerState:
        """The model's weights; ``meta`` counts rounds."""
        return full_state(model, self.name)

    def configure_round(
        self, rnd: int, state: ServerState, fleet: Fleet, memory_table: MemoryTable,
        rng: np.random.Generator,
    ) -> list[ClientTask]:
        """``per_round`` devices drawn from the whole fleet, each training the full model."""
        required = int(memory_table.get(FULL, 0))
        return [self.full_task(state, cid, required)
                for cid in select_any(fleet, self.config.per_round, rng)]

    def submodel(self, state: ServerState, task: ClientTask) -> SubModel:
        """The full model."""
        return full_structure(state).submodel(state.weights)

    def eval_submodel(self, state: ServerState, submodel: str) -> SubModel:
        """The global full model."""
        return full_structure(state).submodel(state.weights)

    def aggregate(
        self, rnd: int, state: ServerState, updates: Sequence[ClientUpdate]
    ) -> ServerState:
        """Example-weighted mean of the clients' models."""
        return replace(state, weights=fedavg(state.weights, updates,
                                             weighting=self.config.weighting),
                       meta={"rounds_used": int(state.meta["rounds_used"]) + 1})

    def eligible_share(self, state: ServerState, fleet: Fleet,
                       memory_table: MemoryTable) -> float:
        """The share of the fleet whose budget fits the full model (all of it takes part)."""
        return fleet.participation(int(memory_table.get(FULL, 0)))
