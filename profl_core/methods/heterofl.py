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
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from profl_core.data import ArrayDataset
from profl_core.devices import Fleet
from profl_core.errors import ConfigError
from profl_core.fl.method import LocalTraining, Method
from profl_core.fl.selection import required
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
class HeteroFLConfig(LocalTraining):
    """Settings of HeteroFL (and FedRolex, which shares them): the local training, and

    Attributes:
        levels: Width levels (HeteroFL's a..e: 1, 1/2, 1/4, 1/8, 1/16).
        masked_classifier: Mask absent classes' logits and aggregate classifier rows per label.
        scaler: Divide norm inputs by the client's width in training.
        weighting: ``"count"`` (the paper's element-wise mean) or ``"examples"``.
        sbn_samples: Training samples per client for the sBN pass (None: all of them).
    """

    where: ClassVar[str] = "heterofl"

    levels: tuple[float, ...] = LEVELS
    masked_classifier: bool = True
    scaler: bool = True
    weighting: Weighting = "count"
    sbn_samples: int | None = 64

    def __post_init__(self) -> None:
        super().__post_init__()
        check_levels(self.levels)
        if self.weighting not in ("count", "examples"):
            raise ConfigError(f"heterofl: weighting={self.weighting!r}; use 'count' or 'examples'")
        if self.sbn_samples is not None and self.sbn_samples < 1:
            raise ConfigError(f"heterofl: sbn_samples={self.sbn_samples}; use 1 or more or None")


def masked_cross_entropy(labels_present: Tensor) -> Any:
    """Cross-entropy with the logits of absent classes set to 0 (HeteroFL's masked classifier)."""

    def criterion(logits: Tensor, labels: Tensor) -> Tensor:
        mask = labels_present.to(logits.device)
        return F.cross_entropy(logits.masked_fill(~mask, 0.0), labels)

    return criterion


def global_model(state: ServerState) -> ConvBlockedModel:
    """The template width-1 model of a width method's state."""
    if not isinstance(state.structure, ConvBlockedModel):
        raise ConfigError("this state has no width-1 template; build it with init_state")
    return state.structure


class HeteroFL(Method):
    """HeteroFL.

    Args:
        config: The settings.
        client_data: The clients' training sets (index = client id). They give each client's
            label set (masked classifier) and the samples of the sBN pass, both taken once
            here (the method keeps no dataset). ``None``: IID classifier and test-batch BN
            statistics.
    """

    name = "heterofl"
    config: HeteroFLConfig

    def __init__(
        self, config: HeteroFLConfig, *, client_data: Sequence[ArrayDataset] | None = None
    ) -> None:
        super().__init__(config)
        self.levels = check_levels(config.levels)
        #: Per client: the classes its data holds (None: all of them, or masking off).
        self.labels: tuple[Tensor | None, ...] | None = None
        #: The sBN pass's input batches, or None (test-batch statistics).
        self.sbn_batches: tuple[Tensor, ...] | None = None
        if client_data is not None:
            if config.masked_classifier:
                self.labels = tuple(_labels_present(d) for d in client_data)
            self.sbn_batches = _sbn_batches(client_data, config.sbn_samples)

    # --- what makes HeteroFL HeteroFL (FedRolex overrides only this) ---------------------------

    def channel_rule(self, rounds_done: int) -> IndexRule:
        """Which channels a narrow client holds: always the first ones."""
        return static_indices

    # --- the client half --------------------------------------------------------------------------

    def options(self) -> list[str]:
        """Sub-model names, widest first."""
        return [width_name(w) for w in self.levels]

    def _task(self, state: ServerState, client_id: int, submodel: str,
              required_bytes: int) -> ClientTask:
        model = global_model(state)
        return self.config.task(client_id, submodel,
                                frozenset([*model.block_names(), "head"]), required_bytes)

    def memory_plan(self, state: ServerState) -> dict[str, ClientTask]:
        """Every width level's task, widest first."""
        return {name: self._task(state, 0, name, 0) for name in self.options()}

    def _level(self, submodel: str) -> float:
        for w in self.levels:
            if width_name(w) == submodel:
                return w
        raise ConfigError(f"{self.name}: unknown sub-model {submodel!r}; use {self.options()}")

    def _present(self, client_id: int) -> Tensor | None:
        return None if self.labels is None else self.labels[client_id]

    def submodel(self, state: ServerState, task: ClientTask) -> SubModel:
        """The client's slice with static BN, the Scaler and (on skewed labels) the mask."""
        level = self._level(task.submodel)
        local = make_static_bn(build_width_model(global_model(state).spec, level))
        plan = slice_plan(shapes(state.weights), shapes(local.state_dict()),
                          self.channel_rule(int(state.meta["rounds_used"])))
        local.load_state_dict(extract(state.weights, plan))
        if self.config.scaler:
            add_scaler(local, level)
        present = self._present(task.client_id)
        names = [*local.block_names(), "head"]
        return SubModel(
            modules={n: local.get_submodule(n) for n in names}, prefix=(), student=tuple(names),
            trainable=frozenset(names),
            criterion=None if present is None else masked_cross_entropy(present),
        )

    def eval_submodel(self, state: ServerState, submodel: str) -> SubModel:
        """The global width-1 model with sBN statistics (or test-batch statistics)."""
        model = copy.deepcopy(global_model(state))
        model.load_state_dict(state.weights, strict=False)
        if self.sbn_batches is not None:
            calibrate_bn(model, list(self.sbn_batches))
        else:
            make_static_bn(model)
        names = [*model.block_names(), "head"]
        return SubModel(modules={n: model.get_submodule(n) for n in names}, prefix=(),
                        student=tuple(names), trainable=frozenset())

    # --- the server half --------------------------------------------------------------------------

    def init_state(self, model: nn.Module, rng: np.random.Generator) -> ServerState:
        """The model's parameters and non-BN buffers (no BN statistics: sBN); ``meta``
        counts rounds."""
        template = copy.deepcopy(require_sliceable(model, self.name))
        drop = bn_stat_keys(template)
        weights = {k: v.detach().clone() for k, v in template.state_dict().items()
                   if k not in drop}
        return ServerState(weights=weights, meta={"rounds_used": 0}, structure=template)

    def position(self, state: ServerState) -> tuple[str, int, str]:
        """Always ``("width", 0, "full")``: the global model is evaluated."""
        return "width", 0, "full"

    def configure_round(
        self, rnd: int, state: ServerState, fleet: Fleet, memory_table: MemoryTable,
        rng: np.random.Generator,
    ) -> list[ClientTask]:
        """``per_round`` devices that fit some level, each with the widest level it fits."""
        return [
            self._task(state, cid, name, required(memory_table, name))
            for cid, name in tiers.select_tiered(fleet, self.options(), memory_table,
                                                 self.config.per_round, rng)
        ]

    def aggregate(
        self, rnd: int, state: ServerState, updates: Sequence[ClientUpdate]
    ) -> ServerState:
        """Element-wise mean over the clients holding each entry; the rest keeps its value."""
        rule = self.channel_rule(int(state.meta["rounds_used"]))
        global_shapes = shapes(state.weights)
        head_keys = classifier_keys(global_model(state))
        contributions = []
        for update in updates:
            plan = slice_plan(global_shapes, shapes(update.state), rule)
            client_state: Mapping[str, Tensor] = update.state
            present = self._present(update.client_id)
            if present is not None:
                rows = torch.nonzero(present).flatten()
                client_state, plan = restrict(client_state, plan, head_keys, 0, rows)
            contributions.append((client_state, plan))
        weights = None
        if self.config.weighting == "examples":
            weights = [float(u.num_examples) for u in updates]
        merged = scatter_mean(state.weights, contributions, weights) if updates else state.weights
        return replace(state, weights=dict(merged),
                       meta={"rounds_used": int(state.meta["rounds_used"]) + 1})


def _labels_present(data: ArrayDataset) -> Tensor | None:
    """Boolean class mask of a client's labels, or None when it holds every class."""
    present = torch.zeros(data.num_classes, dtype=torch.bool, device="cpu")
    present[torch.unique(data.y)] = True
    return None if bool(present.all()) else present


def _sbn_batches(client_data: Sequence[ArrayDataset], cap: int | None) -> tuple[Tensor, ...]:
    """The sBN pass's inputs: up to ``cap`` samples per client, in batches of 512."""
    batches = []
    for data in client_data:
        x = data.x if cap is None else data.x[:cap]
        for start in range(0, len(x), 512):
            batches.append(x[start:start + 512])
    return tuple(batches)
