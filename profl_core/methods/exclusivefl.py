"""ExclusiveFL: full-model FedAvg on the devices that fit the full model only.

InclusiveFL's (Liu et al., KDD 2022) and DepthFL's ("exclusive learning") reference point;
reference/baselines.md §1. Pseudo-code::

    eligible = the devices whose budget fits the full model's measured peak ("full")
    each round:
        draw per_round eligible devices uniformly      # weak devices and their data never train
        each trains the full model; the server takes the example-weighted mean

Choice that differs from DepthFL's code: ``per_round`` of the *eligible* devices (DepthFL
samples 10 % of the reduced population: fewer clients per round).
"""

from __future__ import annotations

import numpy as np

from profl_core.devices import Fleet
from profl_core.fl.selection import required, select_clients
from profl_core.fl.types import ClientTask, MemoryTable, ServerState
from profl_core.methods.fedavg import FULL, FedAvg


class ExclusiveFL(FedAvg):
    """FedAvg on the devices whose budget fits the full model."""

    name = "exclusivefl"
    enforces_memory = True

    def configure_round(
        self, rnd: int, state: ServerState, fleet: Fleet, memory_table: MemoryTable,
        rng: np.random.Generator,
    ) -> list[ClientTask]:
        """``per_round`` devices that fit the full model."""
        need = required(memory_table, FULL)
        return [self.full_task(state, cid, need)
                for cid in select_clients(fleet, need, self.config.per_round, rng,
                                          submodel=FULL)]

    def eligible_share(self, state: ServerState, fleet: Fleet,
                       memory_table: MemoryTable) -> float:
        """The share of the fleet that fits the full model."""
        return fleet.participation(required(memory_table, FULL))
