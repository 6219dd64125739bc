"""The rounds of a method whose clients all train one stage at a time (SLT, NeuLite).

Each round has one stage t (:meth:`StageMethod.stage`: the method's schedule at the round
count); ``per_round`` devices whose budget fits stage t's measured bytes (the memory table's
``<kind>:t``) are drawn, and each trains stage t (:meth:`StageMethod.stage_task`). A fleet in
which some stage fits no device is refused before training.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar

import numpy as np

from profl_core.devices import Fleet
from profl_core.errors import ConfigError
from profl_core.fl.method import Method
from profl_core.fl.selection import require_trainable, required, select_clients
from profl_core.fl.types import ClientTask, MemoryTable, ServerState


class StageMethod(Method):
    """A :class:`Method` whose every round trains stage :meth:`stage` on all its clients.

    Attributes:
        kind: The memory kind of the stages (their sub-models are ``<kind>:t``).
    """

    kind: ClassVar[str]

    @abstractmethod
    def stage(self, state: ServerState) -> int:
        """The stage of the next (or, once finished, the last) round."""

    @abstractmethod
    def stage_task(self, state: ServerState, t: int, client_id: int,
                   required_bytes: int) -> ClientTask:
        """The task of client ``client_id`` training stage ``t``."""

    def stage_name(self, t: int) -> str:
        """Stage ``t``'s sub-model and memory-table name, ``<kind>:t``."""
        return f"{self.kind}:{t}"

    def parse_stage(self, submodel: str, blocks: int) -> int:
        """``"<kind>:2"`` -> 2 (a one-line ConfigError for any other name)."""
        kind, _, step = submodel.partition(":")
        if kind != self.kind or not step.isdigit() or not 1 <= int(step) <= blocks:
            raise ConfigError(f"{self.kind}: unknown sub-model {submodel!r}; use {self.kind}:t "
                              f"with t in 1..{blocks}")
        return int(step)

    def position(self, state: ServerState) -> tuple[str, int, str]:
        """``(kind, t, "<kind>:t")`` of the next round's stage."""
        t = self.stage(state)
        return self.kind, t, self.stage_name(t)

    def fit_fleet(self, state: ServerState, fleet: Fleet,
                  memory_table: MemoryTable) -> ServerState:
        """Every stage must fit at least one device."""
        for name in self.memory_plan(state):
            require_trainable(fleet, required(memory_table, name), name)
        return state

    def eligible_share(self, state: ServerState, fleet: Fleet,
                       memory_table: MemoryTable) -> float:
        """The share of the fleet whose budget fits the next round's stage."""
        return fleet.participation(required(memory_table, self.position(state)[2]))

    def configure_round(
        self, rnd: int, state: ServerState, fleet: Fleet, memory_table: MemoryTable,
        rng: np.random.Generator,
    ) -> list[ClientTask]:
        """``per_round`` devices that fit the stage's required bytes, each training it."""
        t = self.stage(state)
        need = required(memory_table, self.stage_name(t))
        chosen = select_clients(fleet, need, self.config.per_round, rng,
                                submodel=self.stage_name(t))
        return [self.stage_task(state, t, cid, need) for cid in chosen]
