"""FedAvg on the full model (McMahan et al., "Communication-Efficient Learning of Deep Networks
from Decentralized Data", AISTATS 2017, arXiv 1602.05629).

Every round draws ``per_round`` clients uniformly from the whole fleet, each trains the full
model, and the server takes the example-weighted mean. With ``policy="all"`` memory is ignored:
this is the AllLarge upper bound. (ExclusiveFL / AllSmall policies come later on this class.)
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np
from torch import nn

from profl_core.devices import Fleet
from profl_core.errors import ConfigError
from profl_core.fl.aggregate import Weighting, fedavg
from profl_core.fl.selection import select_any
from profl_core.fl.types import ClientTask, ClientUpdate, MemoryTable, ServerState, SubModel
from profl_core.models import BlockedModel

Policy = Literal["all"]


@dataclass(frozen=True, kw_only=True)
class FedAvgConfig:
    """FedAvg's settings.

    Attributes:
        rounds: Number of rounds.
        per_round: Clients per round.
        local_epochs: Local epochs per round.
        batch_size: Local batch size.
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        policy: Who may take part; ``"all"``: every device, memory ignored.
        weighting: ``"examples"`` or ``"uniform"``.
    """

    rounds: int
    per_round: int = 20
    local_epochs: int = 5
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    policy: Policy = "all"
    weighting: Weighting = "examples"

    def __post_init__(self) -> None:
        if min(self.rounds, self.per_round, self.local_epochs, self.batch_size) < 1:
            raise ConfigError("fedavg: rounds, per_round, local_epochs, batch_size must be >= 1")
        if self.policy != "all":
            raise ConfigError(f"fedavg: policy={self.policy!r}; only 'all' is available")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FedAvgConfig:
        """Build from a mapping; unknown keys are a ConfigError."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"fedavg config: unknown key {unknown[0]!r}; known: {sorted(known)}")
        return cls(**data)


class FedAvg:
    """Full-model FedAvg as a :class:`~profl_core.fl.types.Method`."""

    name = "fedavg"

    def __init__(self, config: FedAvgConfig) -> None:
        self.config = config
        self._model: BlockedModel | None = None

    def _names(self) -> list[str]:
        if self._model is None:
            raise ConfigError("fedavg: call init_state(model, rng) first")
        return [*self._model.block_names(), "head"]

    def init_state(self, model: nn.Module, rng: np.random.Generator) -> ServerState:
        """The model's weights; ``meta`` counts rounds."""
        if not isinstance(model, BlockedModel):
            raise ConfigError("fedavg needs a BlockedModel")
        self._model = copy.deepcopy(model)
        weights = {k: v.detach().clone() for k, v in self._model.state_dict().items()}
        return ServerState(weights=weights, meta={"rounds_used": 0})

    def position(self, state: ServerState) -> tuple[str, int, str]:
        """Always ``("full", 0, "full")``."""
        return "full", 0, "full"

    def configure_round(
        self, rnd: int, state: ServerState, fleet: Fleet, memory_table: MemoryTable,
        rng: np.random.Generator,
    ) -> list[ClientTask]:
        """``per_round`` clients from the whole fleet, each training the full model."""
        cfg = self.config
        required = int(memory_table.get("full", 0))
        trainable = frozenset(self._names())
        return [
            ClientTask(
                client_id=cid, submodel="full", trainable=trainable, required_bytes=required,
                local_epochs=cfg.local_epochs, lr=cfg.lr, momentum=cfg.momentum,
                weight_decay=cfg.weight_decay, batch_size=cfg.batch_size,
            )
            for cid in select_any(fleet, cfg.per_round, rng)
        ]

    def _build(self, state: ServerState) -> SubModel:
        assert self._model is not None
        model = copy.deepcopy(self._model)
        model.load_state_dict(state.weights)
        names = self._names()
        return SubModel(
            modules={n: model.get_submodule(n) for n in names}, prefix=(),
            student=tuple(names), trainable=frozenset(names),
        )

    def submodel(self, state: ServerState, task: ClientTask) -> SubModel:
        """The full model."""
        return self._build(state)

    def eval_submodel(self, state: ServerState, submodel: str) -> SubModel:
        """The full model."""
        return self._build(state)

    def aggregate(
        self, rnd: int, state: ServerState, updates: Sequence[ClientUpdate]
    ) -> ServerState:
        """Example-weighted mean of the full models."""
        weights = fedavg(state.weights, updates, weighting=self.config.weighting)
        return ServerState(
            weights=weights, meta={"rounds_used": int(state.meta["rounds_used"]) + 1}
        )

    def is_finished(self, state: ServerState) -> bool:
        """True after ``rounds`` rounds."""
        return int(state.meta["rounds_used"]) >= self.config.rounds

    def round_metrics(self, state: ServerState) -> dict[str, float | None]:
        """No method-specific numbers."""
        return {}
