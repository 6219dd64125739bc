"""HeteroFL: width-scaled sub-models of one global model.

Paper: Enmao Diao, Jie Ding, Vahid Tarokh, "HeteroFL: Computation and Communication Efficient
Federated Learning for Heterogeneous Clients", ICLR 2021, arXiv 2010.01264. Details, code
pointers and pitfalls: ``reference/baselines.md`` §2.

Every round:

1. *Levels.* Widths ``beta`` in {1, 1/2, 1/4, 1/8, 1/16}; the width-``beta`` sub-model keeps the
   first ``ceil(beta * C)`` channels of every hidden layer (:mod:`profl_core.methods.width`).
   Each device gets the widest level whose **measured** peak training memory (memory-table
   entry ``full`` / ``w0.5`` / ..., the ``full`` case of ``ModelSpec.width = beta`` at the
   run's batch size) fits its budget, for the whole run (the paper's *fix* mode). Devices that
   fit no level never take part.
2. *Selection.* ``per_round`` devices are drawn uniformly from those that fit some level.
3. *Local training.* The client cuts its slice out of the global weights, trains it with
   static batch norm (no running statistics) and the Scaler (inputs of every norm layer divided
   by ``beta`` in training), and, on label-skewed data, the masked classifier: logits of classes
   absent from its data are set to 0 (not -inf, as in the authors' code).
4. *Aggregation.* Every global entry becomes the mean over the clients whose slice holds it
   (equal weights, as in the paper); entries no client held keep their value. Classifier rows
   are taken only from clients that have that label.
5. *Evaluation (sBN).* The global (width-1) model gets cumulative batch-norm statistics from one
   no-grad pass over the clients' training data (up to ``sbn_samples`` per client, in their
   stored order; the authors' code uses the whole training set), then is tested. Without client
   data the test batch's own statistics are used (FedRolex's protocol).

Choices that differ from the paper and the authors' code: selection is uniform over the fleet's
eligible devices instead of over all users; the local optimizer (SGD, lr 0.01, momentum 0.9,
weight decay 5e-4, recreated every round, no gradient clipping, no lr schedule) is the one every
method of this suite uses; the backbone is the suite's post-activation model (the authors use a
pre-activation ResNet), with the Scaler before every BN; ``weighting="examples"`` is offered as
an ablation. With batch-statistics BN the Scaler's division cancels up to BN's epsilon.

Server weights: the model's parameters and non-BN buffers (no BN running statistics: sBN).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from profl_core.data import ArrayDataset
from profl_core.devices import Fleet
from profl_core.errors import ConfigError, build_config
from profl_core.fl.types import ClientTask, ClientUpdate, MemoryTable, ServerState, SubModel
from profl_core.methods import tiers
from profl_core.methods.width import (
    LEVELS,
    IndexRule,
    add_scaler,
    bn_stat_keys,
    build_width_model,
    calibrate_bn,
    check_levels,
    classifier_keys,
    extract,
    make_static_bn,
    require_sliceable,
    restrict,
    scatter_mean,
    shapes,
    slice_plan,
    static_indices,
    width_name,
)
from profl_core.models import ConvBlockedModel

Weighting = Literal["count", "examples"]


@dataclass(frozen=True, kw_only=True)
class HeteroFLConfig:
    """Settings of HeteroFL (and FedRolex, which shares them).

    Attributes:
        rounds: Number of rounds.
        per_round: Clients per round.
        local_epochs: Local epochs per round.
        batch_size: Local batch size (also the memory table's).
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        levels: Width levels (HeteroFL's a..e: 1, 1/2, 1/4, 1/8, 1/16).
        masked_classifier: Mask absent classes' logits and aggregate classifier rows per label.
        scaler: Divide norm inputs by the client's width in training.
        weighting: ``"count"`` (the paper's element-wise mean) or ``"examples"``.
        sbn_samples: Training samples per client for the sBN pass (None: all of them).
    """

    rounds: int
    per_round: int = 20
    local_epochs: int = 5
    batch_size: int = 64
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    levels: tuple[float, ...] = LEVELS
    masked_classifier: bool = True
    scaler: bool = True
    weighting: Weighting = "count"
    sbn_samples: int | None = 64

    def __post_init__(self) -> None:
        if min(self.rounds, self.per_round, self.local_epochs, self.batch_size) < 1:
            raise ConfigError("heterofl: rounds, per_round, local_epochs, batch_size must be >= 1")
        check_levels(self.levels)
        if self.weighting not in ("count", "examples"):
            raise ConfigError(f"heterofl: weighting={self.weighting!r}; use 'count' or 'examples'")
        if self.sbn_samples is not None and self.sbn_samples < 1:
            raise ConfigError(f"heterofl: sbn_samples={self.sbn_samples}; use 1 or more or None")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> HeteroFLConfig:
        """Build from a mapping; unknown keys are a ConfigError."""
        return build_config(cls, data, "heterofl config")


def masked_cross_entropy(labels_present: Tensor) -> Any:
    """Cross-entropy with the logits of absent classes set to 0 (HeteroFL's masked classifier)."""

    def criterion(logits: Tensor, labels: Tensor) -> Tensor:
        mask = labels_present.to(logits.device)
        return F.cross_entropy(logits.masked_fill(~mask, 0.0), labels)

    return criterion


class HeteroFL:
    """HeteroFL as a :class:`~profl_core.fl.types.Method`.

    Args:
        config: The settings.
        client_data: The clients' training sets (index = client id). They give each client's
            label set (masked classifier) and the samples of the sBN pass. ``None``: IID
            classifier and test-batch BN statistics.
    """

    name = "heterofl"
    enforces_memory = True

    def __init__(
        self, config: HeteroFLConfig, *, client_data: Sequence[ArrayDataset] | None = None
    ) -> None:
        self.config = config
        self.levels = check_levels(config.levels)
        self.client_data = client_data
        self._model: ConvBlockedModel | None = None
        self._local_shapes: dict[float, dict[str, tuple[int, ...]]] = {}

    # --- what makes HeteroFL HeteroFL (FedRolex overrides only this) ---------------------------

    def channel_rule(self, rounds_done: int) -> IndexRule:
        """Which channels a narrow client holds: always the first ones."""
        return static_indices

    # --- memory ---------------------------------------------------------------------------------

    def options(self) -> list[str]:
        """Sub-model names, widest first."""
        return [width_name(w) for w in self.levels]

    def memory_plan(self, state: ServerState) -> dict[str, ClientTask]:
        """Every width level's task, widest first."""
        return {name: self._task(0, name, 0) for name in self.options()}

    def check_fleet(self, fleet: Fleet, memory_table: MemoryTable) -> None:
        """The narrowest level fits at least one device."""
        tiers.require_some_fit(fleet, self.options(), memory_table)

    def eligible_share(self, state: ServerState, fleet: Fleet, memory_table: MemoryTable) -> float:
        """Share of the fleet that fits the narrowest level."""
        return tiers.eligible_share(fleet, self.options(), memory_table)

    def model_weights(self, state: ServerState) -> dict[str, Tensor]:
        """The global width-1 model's parameters and non-BN buffers (sBN keeps no stats)."""
        return dict(state.weights)

    # --- Method protocol --------------------------------------------------------------------------

    def _global(self) -> ConvBlockedModel:
        if self._model is None:
            raise ConfigError(f"{self.name}: call init_state(model, rng) first")
        return self._model

    def init_state(self, model: nn.Module, rng: np.random.Generator) -> ServerState:
        """The model's parameters and non-BN buffers; ``meta`` counts rounds."""
        self._model = copy.deepcopy(require_sliceable(model, self.name))
        drop = bn_stat_keys(self._model)
        weights = {k: v.detach().clone() for k, v in self._model.state_dict().items()
                   if k not in drop}
        return ServerState(weights=weights, meta={"rounds_used": 0})

    def position(self, state: ServerState) -> tuple[str, int, str]:
        """Always ``("width", 0, "full")``: the global model is evaluated."""
        return "width", 0, "full"

    def configure_round(
        self, rnd: int, state: ServerState, fleet: Fleet, memory_table: MemoryTable,
        rng: np.random.Generator,
    ) -> list[ClientTask]:
        """``per_round`` devices that fit some level, each with the widest level it fits."""
        return [
            self._task(cid, name, tiers.required(memory_table, name))
            for cid, name in tiers.select_tiered(fleet, self.options(), memory_table,
                                                 self.config.per_round, rng)
        ]

    def _task(self, client_id: int, submodel: str, required: int) -> ClientTask:
        cfg = self.config
        return ClientTask(
            client_id=client_id, submodel=submodel,
            trainable=frozenset([*self._global().block_names(), "head"]),
            required_bytes=required, local_epochs=cfg.local_epochs, lr=cfg.lr,
            momentum=cfg.momentum, weight_decay=cfg.weight_decay, batch_size=cfg.batch_size,
        )

    def _level(self, submodel: str) -> float:
        for w in self.levels:
            if width_name(w) == submodel:
                return w
        raise ConfigError(f"{self.name}: unknown sub-model {submodel!r}; use {self.options()}")

    def _labels_present(self, client_id: int) -> Tensor | None:
        """Boolean class mask of a client's labels, or None when masking is off or useless."""
        if not self.config.masked_classifier or self.client_data is None:
            return None
        num_classes = self._global().spec.num_classes
        present = torch.zeros(num_classes, dtype=torch.bool, device="cpu")
        present[torch.unique(self.client_data[client_id].y)] = True
        return None if bool(present.all()) else present

    def submodel(self, state: ServerState, task: ClientTask) -> SubModel:
        """The client's slice with static BN, the Scaler and (on skewed labels) the mask."""
        level = self._level(task.submodel)
        local = make_static_bn(build_width_model(self._global().spec, level))
        plan = slice_plan(shapes(state.weights), shapes(local.state_dict()),
                          self.channel_rule(int(state.meta["rounds_used"])))
        local.load_state_dict(extract(state.weights, plan))
        if self.config.scaler:
            add_scaler(local, level)
        present = self._labels_present(task.client_id)
        names = [*local.block_names(), "head"]
        return SubModel(
            modules={n: local.get_submodule(n) for n in names}, prefix=(), student=tuple(names),
            trainable=frozenset(names),
            criterion=None if present is None else masked_cross_entropy(present),
        )

    def aggregate(
        self, rnd: int, state: ServerState, updates: Sequence[ClientUpdate]
    ) -> ServerState:
        """Element-wise mean over the clients holding each entry; the rest keeps its value."""
        rule = self.channel_rule(int(state.meta["rounds_used"]))
        global_shapes = shapes(state.weights)
        head_keys = classifier_keys(self._global())
        contributions = []
        for update in updates:
            plan = slice_plan(global_shapes, shapes(update.state), rule)
            client_state: Mapping[str, Tensor] = update.state
            present = self._labels_present(update.client_id)
            if present is not None:
                rows = torch.nonzero(present).flatten()
                client_state, plan = restrict(client_state, plan, head_keys, 0, rows)
            contributions.append((client_state, plan))
        weights = None
        if self.config.weighting == "examples":
            weights = [float(u.num_examples) for u in updates]
        merged = scatter_mean(state.weights, contributions, weights) if updates else state.weights
        return ServerState(
            weights=dict(merged), meta={"rounds_used": int(state.meta["rounds_used"]) + 1}
        )

    def _sbn_batches(self) -> list[Tensor]:
        assert self.client_data is not None
        cap = self.config.sbn_samples
        batches = []
        for data in self.client_data:
            x = data.x if cap is None else data.x[:cap]
            for start in range(0, len(x), 512):
                batches.append(x[start:start + 512])
        return batches

    def eval_submodel(self, state: ServerState, submodel: str) -> SubModel:
        """The global width-1 model with sBN statistics (or test-batch statistics)."""
        model = copy.deepcopy(self._global())
        model.load_state_dict(state.weights, strict=False)
        if self.client_data is not None:
            calibrate_bn(model, self._sbn_batches())
        else:
            make_static_bn(model)
        names = [*model.block_names(), "head"]
        return SubModel(modules={n: model.get_submodule(n) for n in names}, prefix=(),
                        student=tuple(names), trainable=frozenset())

    def is_finished(self, state: ServerState) -> bool:
        """True after ``rounds`` rounds."""
        return int(state.meta["rounds_used"]) >= self.config.rounds

    def round_metrics(self, state: ServerState) -> dict[str, float | None]:
        """No method-specific numbers."""
        return {}
