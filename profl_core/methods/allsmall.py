"""AllSmall: FedAvg of the one width-scaled model that every capable device can train.

InclusiveFL's (Liu et al., KDD 2022) lower reference point; reference/baselines.md §1.
Pseudo-code (widths: HeteroFL's levels 1, 1/2, .., 1/16, memory-table entries ``full``,
``w0.5``, ..)::

    capable = the devices that fit the narrowest level
    small   = the widest level whose measured peak fits the smallest budget among capable
    each round:
        draw per_round capable devices uniformly
        each trains the small model (the channel prefix of the global weights)
        the server averages the small models and writes them back into that prefix

Every client holds the same slice, so the scatter-back mean is plain FedAvg on the small model
and the rest of the global tensors is never used. The small model keeps standard BN with running
statistics (no sBN, no Scaler). The fleet fixes ``small`` once, before the first round
(:meth:`AllSmall.fit_fleet`); rounds record it as their sub-model from round 1. (With the heap
accounting a step never needs less than its kernels' scratch, so the weakest devices of a fleet
may fit no level at all; they are left out, as every memory-aware method leaves them out.)

Choices that differ from the papers: the AllSmall model is the width-scaled one (DepthFL also
ran a depth-1 AllSmall); weights are by examples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import ClassVar

import numpy as np
from torch import nn

from profl_core.devices import Fleet
from profl_core.errors import ConfigError
from profl_core.fl.method import Method
from profl_core.fl.selection import required, select_clients
from profl_core.fl.types import ClientTask, ClientUpdate, MemoryTable, ServerState, SubModel
from profl_core.methods import tiers
from profl_core.methods.fedavg import FULL, FedAvgConfig, full_state, full_structure
from profl_core.methods.width import (
    LEVELS,
    build_width_model,
    check_levels,
    extract,
    require_sliceable,
    scatter_mean,
    shapes,
    slice_plan,
    static_indices,
    width_name,
)


@dataclass(frozen=True, kw_only=True)
class AllSmallConfig(FedAvgConfig):
    """AllSmall's settings: FedAvg's, and

    Attributes:
        levels: The candidate widths (any order; the method takes them widest first).
    """

    where: ClassVar[str] = "allsmall"

    levels: tuple[float, ...] = LEVELS

    def __post_init__(self) -> None:
        super().__post_init__()
        check_levels(self.levels)


def small_model(levels: Sequence[float], fleet: Fleet, memory_table: MemoryTable) -> str:
    """The widest of ``levels`` (widest first) whose measured peak fits the smallest budget
    among the devices that fit the narrowest level."""
    options = [width_name(w) for w in levels]
    narrowest = required(memory_table, options[-1])
    capable = [d.budget_bytes for d in fleet.devices if d.budget_bytes >= narrowest]
    if not capable:
        largest = max((d.budget_bytes for d in fleet.devices), default=0)
        raise ConfigError(
            f"allsmall: even {options[-1]} needs {narrowest / 2**20:.1f} MiB, the largest "
            f"device of fleet {fleet.name!r} has {largest / 2**20:.1f} MiB; add a narrower "
            "level or use a smaller batch size"
        )
    name = tiers.largest_fitting(min(capable), options, memory_table)
    assert name is not None  # the narrowest level fits min(capable)
    return name


class AllSmall(Method):
    """FedAvg of the widest width-scaled model that fits every capable device."""

    name = "allsmall"
    config: AllSmallConfig

    def __init__(self, config: AllSmallConfig) -> None:
        super().__init__(config)
        #: The candidate widths, widest first.
        self.levels = check_levels(config.levels)

    def _small(self, state: ServerState) -> str:
        small = state.meta.get("small")
        if not isinstance(small, str):
            raise ConfigError("allsmall: the fleet has not fixed the model yet; call "
                              "fit_fleet(state, fleet, memory_table) first")
        return small

    def memory_plan(self, state: ServerState) -> dict[str, ClientTask]:
        """Every width level (the fleet decides which one the run uses)."""
        names = frozenset(full_structure(state).names)
        return {width_name(w): self.config.task(0, width_name(w), names, 0)
                for w in self.levels}

    def init_state(self, model: nn.Module, rng: np.random.Generator) -> ServerState:
        """The full model's weights (the small model is their channel prefix)."""
        return full_state(require_sliceable(model, self.name), self.name)

    def fit_fleet(self, state: ServerState, fleet: Fleet,
                  memory_table: MemoryTable) -> ServerState:
        """Fix the run's width (``meta["small"]``): some level must fit some device."""
        small = small_model(self.levels, fleet, memory_table)
        return replace(state, meta={**state.meta, "small": small})

    def position(self, state: ServerState) -> tuple[str, int, str]:
        """``("full", 0, <the run's width>)``."""
        return "full", 0, self._small(state)

    def eligible_share(self, state: ServerState, fleet: Fleet,
                       memory_table: MemoryTable) -> float:
        """The share of the fleet that fits the run's width."""
        return fleet.participation(required(memory_table, self._small(state)))

    def configure_round(
        self, rnd: int, state: ServerState, fleet: Fleet, memory_table: MemoryTable,
        rng: np.random.Generator,
    ) -> list[ClientTask]:
        """``per_round`` devices that fit the run's width, each training the small model."""
        small = self._small(state)
        need = required(memory_table, small)
        names = frozenset(full_structure(state).names)
        return [self.config.task(cid, small, names, need)
                for cid in select_clients(fleet, need, self.config.per_round, rng,
                                          submodel=small)]

    def submodel(self, state: ServerState, task: ClientTask) -> SubModel:
        """The channel prefix of the global weights at the task's width."""
        structure = full_structure(state)
        if task.submodel == FULL:
            return structure.submodel(state.weights)
        level = next(w for w in self.levels if width_name(w) == task.submodel)
        model = build_width_model(structure.model.spec, level)
        plan = slice_plan(shapes(state.weights), shapes(model.state_dict()), static_indices)
        model.load_state_dict(extract(state.weights, plan))
        names = structure.names
        return SubModel(modules={n: model.get_submodule(n) for n in names}, prefix=(),
                        student=tuple(names), trainable=frozenset(names))

    def eval_submodel(self, state: ServerState, submodel: str) -> SubModel:
        """The run's small model."""
        return self.submodel(state, self.memory_plan(state)[self._small(state)])

    def aggregate(
        self, rnd: int, state: ServerState, updates: Sequence[ClientUpdate]
    ) -> ServerState:
        """The example-weighted mean of the small models, written back into their prefix."""
        weights = state.weights
        if updates:
            n = [float(u.num_examples) if self.config.weighting == "examples" else 1.0
                 for u in updates]
            global_shapes = shapes(state.weights)
            weights = scatter_mean(state.weights, [
                (u.state, slice_plan(global_shapes, shapes(u.state), static_indices))
                for u in updates], n)
        return replace(state, weights=weights,
                       meta={**state.meta, "rounds_used": int(state.meta["rounds_used"]) + 1})
