"""DepthFL: depth-scaled sub-models with an exit per stage and mutual self-distillation.

Paper: Minjae Kim, Sangyoon Yu, Suhyun Kim, Soo-Mook Moon, "DepthFL: Depthwise Federated
Learning for Heterogeneous Clients", ICLR 2023 (openreview pf8RIZTMU58). Details and the
authors' Flower code: ``reference/baselines.md`` §5.

The global model is the BlockedModel plus an exit (classifier) after every block
(:mod:`profl_core.models.exits`). Every round:

1. *Depths.* A device gets the deepest ``k`` whose **measured** peak training memory (memory
   table entry ``depth:k``: blocks 1..k and exits 1..k trained with the loss below, at the run's
   batch size) fits its budget, for the whole run; devices fitting no depth never take part.
2. *Selection.* ``per_round`` devices drawn uniformly from those that fit some depth.
3. *Local training* of blocks 1..k and exits 1..k on ``L = sum_i [CE(o_i, y)
   + w_t/(k-1) sum_{j!=i} KL(softmax(o_j).detach() + 1e-7 || softmax(o_i))]``
   (:func:`~profl_core.models.exits.mutual_distillation_loss`), with the ramped weight
   ``w_t = exp(-5 (1 - min(t, R)/R)^2)`` in round t.
4. *Aggregation.* Every tensor (weights and BN statistics) is the mean over the clients that hold
   it (equal weights, as the authors' code); tensors nobody held keep their value.
5. *Inference.* The global prediction is the mean of all exits' logits (the *ensemble*, the
   recorded accuracy); ``round_metrics`` adds every exit's accuracy (``exit<k>_acc``, the last
   is the single-head number comparable with other methods) when test data is given.

Exits: ProFL's output module of block k (basic stride-2 convs + pooling + linear) and the
model's head after block T, rather than DepthFL's SepConv/attention exits: the comparison then
varies only the training scheme, every model family has them, and they are smaller (DepthFL's
exit 1 alone is 2.2x ResNet18's layer1). Their memory is measured, not assumed.

Choices that differ from the paper: no FedDyn (the variant is the README's FedAvg-plus-KD;
FedDyn needs per-client state the suite's stateless clients do not keep); BN keeps running
statistics, averaged like weights (as the authors' code; no sBN); the suite's common optimizer
(SGD lr 0.01, momentum 0.9, weight decay 5e-4) instead of lr 0.1 x 0.998^t without momentum;
the KD ramp length ``R`` defaults to 30 % of the run's rounds (the paper's 300 of 1000) so that
short benchmark runs distil at all; depths come from measured memory, not 4 equal groups.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from profl_core.data import ArrayDataset
from profl_core.devices import Fleet
from profl_core.errors import ConfigError
from profl_core.fl.aggregate import fedavg
from profl_core.fl.method import LocalTraining, Method
from profl_core.fl.selection import required
from profl_core.fl.types import ClientTask, ClientUpdate, MemoryTable, ServerState, SubModel
from profl_core.methods import tiers
from profl_core.methods.module_cache import ModuleCache
from profl_core.models import BlockedModel
from profl_core.models.exits import add_exits, exit_name, mutual_distillation_loss

Weighting = Literal["count", "examples"]


@dataclass(frozen=True, kw_only=True)
class DepthFLConfig(LocalTraining):
    """Settings of DepthFL (and InclusiveFL, which shares them): the local training, and

    Attributes:
        kd: Mutual self-distillation between exits (DepthFL); False: sum of exit CEs.
        kd_ramp_rounds: ``R`` of the KD weight ramp; None: 30 % of ``rounds`` (at least 1).
        weighting: ``"count"`` (the authors' per-tensor mean) or ``"examples"``.
        metrics_every: Per-exit test accuracy every k rounds (and at the end) when test data
            is given.
    """

    where: ClassVar[str] = "depthfl"

    kd: bool = True
    kd_ramp_rounds: int | None = None
    weighting: Weighting = "count"
    metrics_every: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.metrics_every < 1:
            raise ConfigError(f"depthfl: metrics_every={self.metrics_every}; use 1 or more")
        if self.kd_ramp_rounds is not None and self.kd_ramp_rounds < 1:
            raise ConfigError(f"depthfl: kd_ramp_rounds={self.kd_ramp_rounds}; use 1 or more")
        if self.weighting not in ("count", "examples"):
            raise ConfigError(f"depthfl: weighting={self.weighting!r}; use 'count' or 'examples'")

    @property
    def ramp_rounds(self) -> int:
        """``R``: the configured value or 30 % of the rounds."""
        if self.kd_ramp_rounds is not None:
            return self.kd_ramp_rounds
        return max(1, round(0.3 * self.rounds))


def kd_weight(rnd: int, ramp_rounds: int) -> float:
    """DepthFL's KD weight in round ``rnd``: ``exp(-5 (1 - min(rnd, R)/R)^2)``."""
    return math.exp(-5.0 * (1.0 - min(rnd, ramp_rounds) / ramp_rounds) ** 2)


@dataclass(frozen=True)
class MultiExit:
    """A run's structure for the depth methods: the model with its exits, the number of
    blocks T and the clients' reused copy."""

    net: nn.Module
    blocks: int
    copies: ModuleCache = field(default_factory=ModuleCache)

    def loaded(self, weights: Mapping[str, Tensor]) -> nn.Module:
        """The clients' copy of the network, loaded with ``weights``."""
        return self.copies.loaded("net", self.net, weights)


def multi_exit(state: ServerState) -> MultiExit:
    """The :class:`MultiExit` of a depth method's state."""
    if not isinstance(state.structure, MultiExit):
        raise ConfigError("this state has no multi-exit structure; build it with init_state")
    return state.structure


class DepthFL(Method):
    """DepthFL.

    Args:
        config: The settings.
        test_data: When given, ``round_metrics`` reports every exit's and the ensemble's test
            accuracy.
    """

    name = "depthfl"
    #: Memory-table kind of a depth-k sub-model.
    kind: ClassVar[str] = "depth"
    config: DepthFLConfig

    def __init__(self, config: DepthFLConfig, *, test_data: ArrayDataset | None = None) -> None:
        super().__init__(config)
        self.test_data = test_data

    # --- the client half --------------------------------------------------------------------------

    def options(self, blocks: int) -> list[str]:
        """Sub-model names of a T-block model, deepest first."""
        return [f"{self.kind}:{k}" for k in range(blocks, 0, -1)]

    def module_names(self, k: int, blocks: int) -> list[str]:
        """Blocks 1..k and exits 1..k (the modules a depth-k client holds and trains)."""
        return [n for i in range(1, k + 1) for n in (f"block{i}", exit_name(i, blocks))]

    def _task(self, state: ServerState, client_id: int, submodel: str,
              required_bytes: int) -> ClientTask:
        blocks = multi_exit(state).blocks
        names = self.module_names(self._k(submodel, blocks), blocks)
        return self.config.task(client_id, submodel, frozenset(names), required_bytes)

    def memory_plan(self, state: ServerState) -> dict[str, ClientTask]:
        """Every depth's task, deepest first."""
        return {name: self._task(state, 0, name, 0)
                for name in self.options(multi_exit(state).blocks)}

    def _k(self, submodel: str, blocks: int) -> int:
        kind, _, depth = submodel.partition(":")
        if kind != self.kind or not depth.isdigit() or not 1 <= int(depth) <= blocks:
            raise ConfigError(f"{self.name}: unknown sub-model {submodel!r}; use "
                              f"{self.options(blocks)}")
        return int(depth)

    @staticmethod
    def _exits_forward(
        modules: Mapping[str, nn.Module], k: int, blocks: int
    ) -> Callable[[Tensor], Tensor]:
        """Forward of a depth-k model returning every exit's logits stacked: ``(k, B, classes)``."""
        def forward(x: Tensor) -> Tensor:
            outputs = []
            for i in range(1, k + 1):
                x = modules[f"block{i}"](x)
                outputs.append(modules[exit_name(i, blocks)](x))
            return torch.stack(outputs)

        return forward

    def submodel(self, state: ServerState, task: ClientTask) -> SubModel:
        """Blocks 1..k with all their exits, trained on the mutual-distillation loss."""
        structure = multi_exit(state)
        k = self._k(task.submodel, structure.blocks)
        net = structure.loaded(state.weights)
        names = self.module_names(k, structure.blocks)
        modules = {n: net.get_submodule(n) for n in names}
        rnd = int(state.meta["rounds_used"]) + 1
        weight = kd_weight(rnd, self.config.ramp_rounds) if self.config.kd else 0.0

        def criterion(stacked: Tensor, labels: Tensor) -> Tensor:
            return mutual_distillation_loss(list(stacked.unbind(0)), labels, kd_weight=weight)

        return SubModel(modules=modules, prefix=(), student=tuple(names),
                        trainable=frozenset(names),
                        forward=self._exits_forward(modules, k, structure.blocks),
                        criterion=criterion)

    def eval_submodel(self, state: ServerState, submodel: str) -> SubModel:
        """The full-depth model predicting the mean of all exits' logits (the ensemble)."""
        structure = multi_exit(state)
        t = structure.blocks
        net = structure.loaded(state.weights)
        names = self.module_names(t, t)
        modules = {n: net.get_submodule(n) for n in names}
        stacked = self._exits_forward(modules, t, t)
        return SubModel(modules=modules, prefix=(), student=tuple(names),
                        forward=lambda x: stacked(x).mean(dim=0))

    # --- the server half --------------------------------------------------------------------------

    def init_state(self, model: nn.Module, rng: np.random.Generator) -> ServerState:
        """The model's weights plus fresh exits ``exit1 .. exit<T-1>`` drawn from ``rng``."""
        if not isinstance(model, BlockedModel):
            raise ConfigError(f"{self.name} needs a BlockedModel")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(0, 2**62)))
            net = add_exits(copy.deepcopy(model))
        weights = {k: v.detach().clone() for k, v in net.state_dict().items()}
        return ServerState(weights=weights, meta={"rounds_used": 0},
                           structure=MultiExit(net, model.num_blocks))

    def position(self, state: ServerState) -> tuple[str, int, str]:
        """The whole multi-exit model is evaluated."""
        return "depth", 0, f"{self.kind}:{multi_exit(state).blocks}"

    def configure_round(
        self, rnd: int, state: ServerState, fleet: Fleet, memory_table: MemoryTable,
        rng: np.random.Generator,
    ) -> list[ClientTask]:
        """``per_round`` devices that fit some depth, each with the deepest depth it fits."""
        options = self.options(multi_exit(state).blocks)
        return [
            self._task(state, cid, name, required(memory_table, name))
            for cid, name in tiers.select_tiered(fleet, options, memory_table,
                                                 self.config.per_round, rng)
        ]

    def aggregate(
        self, rnd: int, state: ServerState, updates: Sequence[ClientUpdate]
    ) -> ServerState:
        """Per-tensor mean over the clients holding it; the rest keeps its value."""
        weighting: Literal["uniform", "examples"] = (
            "uniform" if self.config.weighting == "count" else "examples")
        return replace(state, weights=fedavg(state.weights, updates, weighting=weighting),
                       meta={"rounds_used": int(state.meta["rounds_used"]) + 1})

    def exit_accuracies(self, state: ServerState, data: ArrayDataset) -> dict[str, float]:
        """Test accuracy of every exit (``exit<k>_acc``) and of their mean (``ensemble_acc``)."""
        structure = multi_exit(state)
        t = structure.blocks
        net = structure.loaded(state.weights).eval()
        modules = {n: net.get_submodule(n) for n in DepthFL.module_names(self, t, t)}
        stacked = self._exits_forward(modules, t, t)
        correct = torch.zeros(t + 1, dtype=torch.long)
        with torch.no_grad():
            for start in range(0, len(data), 512):
                logits = stacked(data.x[start:start + 512])
                y = data.y[start:start + 512]
                correct[:t] += (logits.argmax(dim=2) == y).sum(dim=1)
                correct[t] += int((logits.mean(dim=0).argmax(dim=1) == y).sum())
        out = {f"exit{k}_acc": int(correct[k - 1]) / len(data) for k in range(1, t + 1)}
        out["ensemble_acc"] = int(correct[t]) / len(data)
        return out

    def round_metrics(self, state: ServerState) -> dict[str, float | None]:
        """Every exit's and the ensemble's test accuracy (when test data was given)."""
        done = int(state.meta["rounds_used"])
        due = done % self.config.metrics_every == 0 or self.is_finished(state)
        if self.test_data is None or not due:
            return {}
        return dict(self.exit_accuracies(state, self.test_data))
