"""Full-model FedAvg with three eligibility policies: AllLarge, ExclusiveFL and AllSmall.

FedAvg: McMahan et al., "Communication-Efficient Learning of Deep Networks from Decentralized
Data", AISTATS 2017, arXiv 1602.05629. The three reference points are InclusiveFL's (Liu et al.,
KDD 2022; DepthFL calls ExclusiveFL "exclusive learning"); reference/baselines.md §1.

Every round draws ``per_round`` clients uniformly from the eligible devices, each trains the
same fixed architecture, and the server takes the example-weighted mean. The policies differ in
the architecture and in who is eligible:

* ``alllarge`` (the upper bound): the full model, every device, memory ignored;
* ``exclusivefl``: the full model, only devices whose budget fits its measured peak (memory-table
  entry ``full``); weak devices and their data never take part;
* ``allsmall``: the widest width-scaled model (HeteroFL's levels 1, 1/2, .., 1/16, memory-table
  entries ``full`` / ``w0.5`` / ..) whose measured peak fits **every** device that can train
  any level; those devices are eligible. (With the heap accounting a step never needs less than
  its kernels' scratch, so the weakest devices of a fleet may fit no level at all; they are
  left out, as every memory-aware method leaves them out.)

AllSmall's model is the channel prefix of the global weights (:mod:`profl_core.methods.width`);
every client holds the same slice, so the scatter-back mean is plain FedAvg on the small model
and the rest of the global tensors is never used. The small model keeps standard BN with running
statistics (plain FedAvg; no sBN, no Scaler).

Choices that differ from the papers: ExclusiveFL samples ``per_round`` of the *eligible* devices
(DepthFL's code samples 10 % of the reduced population: fewer clients per round);
the AllSmall model is the width-scaled one (DepthFL also ran a depth-1 AllSmall); weights are
by examples (DepthFL's unweighted mean equals this on its equal-sized IID splits).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
from torch import Tensor, nn

from profl_core.devices import Fleet
from profl_core.errors import ConfigError, build_config
from profl_core.fl.aggregate import Weighting, fedavg
from profl_core.fl.selection import require_trainable, select_any, select_clients
from profl_core.fl.types import ClientTask, ClientUpdate, MemoryTable, ServerState, SubModel
from profl_core.methods import tiers
from profl_core.methods.module_cache import ModuleCache
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
from profl_core.models import BlockedModel

Policy = Literal["alllarge", "exclusivefl", "allsmall", "all"]
POLICIES: tuple[str, ...] = ("alllarge", "exclusivefl", "allsmall")


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
        policy: ``"alllarge"`` (``"all"`` is an alias), ``"exclusivefl"`` or ``"allsmall"``.
        weighting: ``"examples"`` or ``"uniform"``.
        levels: AllSmall's candidate widths.
    """

    rounds: int
    per_round: int = 20
    local_epochs: int = 5
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    policy: Policy = "alllarge"
    weighting: Weighting = "examples"
    levels: tuple[float, ...] = LEVELS

    def __post_init__(self) -> None:
        if min(self.rounds, self.per_round, self.local_epochs, self.batch_size) < 1:
            raise ConfigError("fedavg: rounds, per_round, local_epochs, batch_size must be >= 1")
        if self.policy not in (*POLICIES, "all"):
            raise ConfigError(f"fedavg: policy={self.policy!r}; use one of {', '.join(POLICIES)}")
        check_levels(self.levels)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FedAvgConfig:
        """Build from a mapping; unknown keys are a ConfigError."""
        return build_config(cls, data, "fedavg config")

    @property
    def resolved_policy(self) -> str:
        """The policy with the ``all`` alias resolved."""
        return "alllarge" if self.policy == "all" else self.policy


class FedAvg:
    """Full-model FedAvg as a :class:`~profl_core.fl.types.Method`."""

    name = "fedavg"

    def __init__(self, config: FedAvgConfig) -> None:
        self.config = config
        self.policy = config.resolved_policy
        self.levels = check_levels(config.levels)
        self._model: BlockedModel | None = None
        self._copies = ModuleCache()  # the clients' copy of the full model
        self._small: str | None = None  # AllSmall's sub-model, fixed by the fleet

    @property
    def enforces_memory(self) -> bool:
        """False for AllLarge (memory ignored on purpose): its clients skip the budget check."""
        return self.policy != "alllarge"

    def _names(self) -> list[str]:
        if self._model is None:
            raise ConfigError("fedavg: call init_state(model, rng) first")
        return [*self._model.block_names(), "head"]

    # --- memory ---------------------------------------------------------------------------------

    def _task(self, client_id: int, submodel: str, required: int) -> ClientTask:
        cfg = self.config
        return ClientTask(
            client_id=client_id, submodel=submodel, trainable=frozenset(self._names()),
            required_bytes=required, local_epochs=cfg.local_epochs, lr=cfg.lr,
            momentum=cfg.momentum, weight_decay=cfg.weight_decay, batch_size=cfg.batch_size,
        )

    def memory_plan(self, state: ServerState) -> dict[str, ClientTask]:
        """``full``; AllSmall: every width level (the fleet decides which one it uses)."""
        names = [width_name(w) for w in self.levels] if self.policy == "allsmall" else ["full"]
        return {name: self._task(0, name, 0) for name in names}

    def check_fleet(self, fleet: Fleet, memory_table: MemoryTable) -> None:
        """ExclusiveFL: the full model fits some device; AllSmall: some level fits them all."""
        if self.policy == "exclusivefl":
            require_trainable(fleet, tiers.required(memory_table, "full"), "full")
        elif self.policy == "allsmall":
            self.small_model(fleet, memory_table)

    def model_weights(self, state: ServerState) -> dict[str, Tensor]:
        """The global model's weights."""
        return dict(state.weights)

    def small_model(self, fleet: Fleet, memory_table: MemoryTable) -> str:
        """AllSmall: the widest level whose measured peak fits the smallest budget among the
        devices that fit the narrowest level."""
        options = [width_name(w) for w in self.levels]
        narrowest = tiers.required(memory_table, options[-1])
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

    def eligible_share(self, state: ServerState, fleet: Fleet, memory_table: MemoryTable) -> float:
        """AllSmall: the share that fits its level; AllLarge and ExclusiveFL: the full model."""
        if self.policy == "allsmall":
            return fleet.participation(tiers.required(memory_table,
                                                      self.small_model(fleet, memory_table)))
        return fleet.participation(int(memory_table.get("full", 0)))

    # --- Method protocol --------------------------------------------------------------------------

    def init_state(self, model: nn.Module, rng: np.random.Generator) -> ServerState:
        """The model's weights; ``meta`` counts rounds."""
        if not isinstance(model, BlockedModel):
            raise ConfigError("fedavg needs a BlockedModel")
        if self.policy == "allsmall":
            require_sliceable(model, "allsmall")
        self._model = copy.deepcopy(model)
        self._copies.clear()
        weights = {k: v.detach().clone() for k, v in self._model.state_dict().items()}
        return ServerState(weights=weights, meta={"rounds_used": 0})

    def position(self, state: ServerState) -> tuple[str, int, str]:
        """``("full", 0, <sub-model>)``: ``full``, or AllSmall's width once it is known."""
        return "full", 0, self._small or ("allsmall" if self.policy == "allsmall" else "full")

    def configure_round(
        self, rnd: int, state: ServerState, fleet: Fleet, memory_table: MemoryTable,
        rng: np.random.Generator,
    ) -> list[ClientTask]:
        """``per_round`` eligible clients, each training the policy's model."""
        cfg = self.config
        if self.policy == "alllarge":
            submodel = "full"
            required = int(memory_table.get("full", 0))
            chosen = select_any(fleet, cfg.per_round, rng)
        elif self.policy == "exclusivefl":
            submodel = "full"
            required = tiers.required(memory_table, "full")
            chosen = select_clients(fleet, required, cfg.per_round, rng, submodel="full")
        else:
            submodel = self._small = self.small_model(fleet, memory_table)
            required = tiers.required(memory_table, submodel)
            chosen = select_clients(fleet, required, cfg.per_round, rng, submodel=submodel)
        return [self._task(cid, submodel, required) for cid in chosen]

    def _build(self, state: ServerState, submodel: str) -> SubModel:
        assert self._model is not None
        if submodel == "full":
            model = self._copies.loaded("full", self._model, state.weights)
        else:
            level = next(w for w in self.levels if width_name(w) == submodel)
            model = build_width_model(self._model.spec, level)
            plan = slice_plan(shapes(state.weights), shapes(model.state_dict()), static_indices)
            model.load_state_dict(extract(state.weights, plan))
        names = self._names()
        return SubModel(
            modules={n: model.get_submodule(n) for n in names}, prefix=(),
            student=tuple(names), trainable=frozenset(names),
        )

    def submodel(self, state: ServerState, task: ClientTask) -> SubModel:
        """The policy's model (full, or AllSmall's channel prefix)."""
        return self._build(state, task.submodel)

    def eval_submodel(self, state: ServerState, submodel: str) -> SubModel:
        """The trained model: full, or AllSmall's small model."""
        return self._build(state, self._small or submodel)

    def aggregate(
        self, rnd: int, state: ServerState, updates: Sequence[ClientUpdate]
    ) -> ServerState:
        """Example-weighted mean of the clients' models."""
        if self.policy == "allsmall" and updates:
            n = [float(u.num_examples) if self.config.weighting == "examples" else 1.0
                 for u in updates]
            global_shapes = shapes(state.weights)
            contributions = [
                (u.state, slice_plan(global_shapes, shapes(u.state), static_indices))
                for u in updates
            ]
            weights = scatter_mean(state.weights, contributions, n)
        else:
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
