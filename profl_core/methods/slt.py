"""SLT: Successive Layer Training.

Paper: Kilian Pfeiffer, Ramin Khalili, Jörg Henkel, "Aggregating Capacity in FL through
Successive Layer Training for Computationally-Constrained Devices", NeurIPS 2023
(openreview nXNsqB4Yr1); public code ``k1l1/SLT`` (read, not copied; reference/baselines.md
§7b).

The model is cut into blocks ``B_1 .. B_T`` plus a head. All clients train the same part of the
network at a time; the part moves on by a schedule fixed before training. Stage t (sub-model and
memory-table key ``slt:t``) trains ``B_t`` on the frozen ``B_1 .. B_{t-1}`` and, instead of the
real later blocks, a scaled-down head: ``S_{t+1} .. S_T`` then the model's head, where ``S_k``
is the cheap stand-in for block k (``basic<k>``, from the model's ``output_module(1)``: for
convolutional models one 3x3 stride-2 conv + BN + ReLU, the layer ProFL's output modules use).
Stage T trains ``B_T`` and the head: the full model.

Pseudo-code::

    sizes[t] = state-dict entries of what stage t trains (B_t, S_{t+1} .. S_T, head)
    ends[t]  = floor(R * (sizes[1] + .. + sizes[t]) / (sizes[1] + .. + sizes[T]))
    for round r = 0 .. R-1:
        t = the first stage with r < ends[t]
        draw per_round devices whose budget fits slt:t's measured peak
        each trains B_t, S_{t+1} .. S_T and the head, B_1 .. B_{t-1} frozen (BN fixed)
        the server averages what was trained (FedAvg; frozen blocks keep their weights)

**The schedule** (``stage_rounds="params"``, the code's rule, ``SLTServer.initialize``):
stage t's share of the round budget R is its share of the trained sizes, so the switching
points are ``ends`` above (integer floor; the last is R). One change: when R >= T every stage
gets at least one round (each ``end`` is raised to the previous one + 1 and capped at
``R - (T - t)``); in the code a stage whose share floors to zero rounds is skipped, which would
leave its block at its random init for ever. ``stage_rounds="equal"`` gives every stage the
same share (sizes all 1). See :func:`stage_ends`.

The scaled head is shared across stages, as in the code: the head (classifier) is the model's
own and is trained in every stage; ``S_{k}`` keeps the weights it learned in earlier stages
while it is still in use (stage t uses ``S_{t+1} .. S_T``).

Departures from the paper and the code, with the reason:

* **The scaled head is the model's cheap stand-ins, not the later layers at a reduced width.**
  In SLT the layers after the trained part are the real layers at width ``s`` (channel prefix
  of the global weights, chosen per stage so that the step fits the memory constraint), and
  they grow to full width as the trained part moves on. This suite's models (zoo, torchvision,
  user models cut into blocks) have one generic cheap continuation, ``output_module``, and no
  mixed-width construction (width slicing builds whole models at one level, and only for the
  sliceable ones); so the stage's peak is whatever ``slt:t`` measures (the same sub-model as
  ProFL's ``grow:t``), not tuned to a budget, and ``S_k`` never becomes part of block k.
* **A stage is a block**, not one conv layer (the code's ResNet20 steps through its convs with
  8-16 width/depth configurations per constraint): the suite's unit of memory is a block.
* **No width-scaled pre-training stage.** The code first trains the whole network at the first
  configuration's width ``s_0`` for ``s_0 * R`` rounds; this needs the mixed-width model above.
* **All clients train the same stage** (the paper's homogeneous case). In the code's
  heterogeneous case a stronger device trains more layers at once (its ``training_depth``
  table); here every selected device trains exactly stage t, and devices that do not fit
  ``slt:t`` are not selected (the suite's budget rule, as in ProFL).
* **Sizes** count the state-dict entries of the trained modules (the code counts bytes of the
  same entries at 4 bytes each: the same shares).
* Selection draws from the devices that fit the stage (the code draws from all devices, which
  all fit by construction); aggregation weights by examples by default (``weighting``).

Server weights: ``block<i>.*``, ``head.*`` (the model) and ``scaled.basic<k>.*`` for k = 2 .. T
(the stand-ins of the scaled head); :meth:`SLT.model_weights` drops the latter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from profl_core.errors import ConfigError
from profl_core.fl.aggregate import Weighting, fedavg
from profl_core.fl.method import LocalTraining
from profl_core.fl.types import ClientTask, ClientUpdate, ServerState, SubModel
from profl_core.methods.module_cache import ModuleCache
from profl_core.methods.profl_steps import blocked_copy
from profl_core.methods.stage_rounds import StageMethod

#: The memory kind (and sub-model name prefix) of SLT's stages: ``slt:t``.
KIND = "slt"
#: The module of the server weights that holds the scaled head's stand-ins.
SCALED = "scaled"

StageRounds = Literal["params", "equal"]


@dataclass(frozen=True, kw_only=True)
class SLTConfig(LocalTraining):
    """SLT's settings: the local training (``rounds`` is the budget of all stages together), and

    Attributes:
        stage_rounds: How the stages share the round budget: ``"params"`` (each stage's
            rounds in proportion to the size of what it trains: the code's rule) or
            ``"equal"`` (the same rounds per stage).
        weighting: FedAvg weights: ``"examples"`` or ``"uniform"``.
    """

    where: ClassVar[str] = "slt"

    stage_rounds: StageRounds = "params"
    weighting: Weighting = "examples"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stage_rounds not in ("params", "equal"):
            raise ConfigError(f"slt: stage_rounds={self.stage_rounds!r}; use 'params' or "
                              "'equal'")
        if self.weighting not in ("examples", "uniform"):
            raise ConfigError(f"slt: weighting={self.weighting!r}; use 'examples' or 'uniform'")


def stage_ends(sizes: Sequence[int], rounds: int) -> tuple[int, ...]:
    """The round (0-based, exclusive) at which each stage ends: stage t trains the rounds
    ``ends[t-2] .. ends[t-1] - 1`` (from 0 for t = 1).

    ``ends[t] = floor(rounds * (sizes[1] + .. + sizes[t]) / sum(sizes))``; when ``rounds`` is at
    least the number of stages, each end is raised to the previous end + 1 and capped at
    ``rounds - (stages after it)``, so every stage trains at least one round.
    """
    if not sizes or any(s < 1 for s in sizes):
        raise ConfigError(f"slt: stage sizes {list(sizes)}; each must be 1 or more")
    total, stages = sum(sizes), len(sizes)
    ends: list[int] = []
    done = cumulative = 0
    for t, size in enumerate(sizes, start=1):
        cumulative += size
        end = rounds * cumulative // total
        if rounds >= stages:
            end = min(max(end, done + 1), rounds - (stages - t))
        ends.append(end)
        done = end
    return tuple(ends)


def stage_of(ends: Sequence[int], rounds_used: int) -> int:
    """The stage (1-based) that trains round ``rounds_used`` (0-based); the last stage once
    the budget is spent."""
    return next((t for t, end in enumerate(ends, start=1) if rounds_used < end), len(ends))


def stage_paths(t: int, blocks: int) -> tuple[list[str], list[str]]:
    """Module names of stage t of a T-block model: the frozen prefix ``B_1 .. B_{t-1}``, and
    the trained path ``B_t``, ``S_{t+1} .. S_T``, head."""
    prefix = [f"block{i}" for i in range(1, t)]
    scaled = [f"{SCALED}.basic{k}" for k in range(t + 1, blocks + 1)]
    return prefix, [f"block{t}", *scaled, "head"]


@dataclass(frozen=True)
class SLTStructure:
    """A run's structure: the template modules (blocks, head, ``scaled.basic<k>``), T, the
    stages' ends and the clients' copies."""

    modules: nn.Module
    num_blocks: int
    ends: tuple[int, ...]
    copies: ModuleCache = field(default_factory=ModuleCache)

    def paths(self, t: int) -> tuple[list[str], list[str]]:
        """(frozen prefix, trained path) of stage t."""
        return stage_paths(t, self.num_blocks)

    def build(self, weights: Mapping[str, Tensor], t: int) -> SubModel:
        """Stage t's sub-model (reused copies) loaded with ``weights``."""
        prefix, student = self.paths(t)
        modules = self.copies.load_named(self.modules, [*prefix, *student], weights)
        return SubModel(modules=modules, prefix=tuple(prefix), student=tuple(student),
                        trainable=frozenset(student))


def structure_of(state: ServerState) -> SLTStructure:
    """The :class:`SLTStructure` of an SLT state."""
    if not isinstance(state.structure, SLTStructure):
        raise ConfigError("slt: this state has no SLT structure; build it with init_state")
    return state.structure


def stage_sizes(weights: Mapping[str, Tensor], trained: Sequence[Sequence[str]]) -> list[int]:
    """Per stage, the number of state-dict values of the modules it trains (``trained``: the
    module names of each stage)."""
    return [sum(v.numel() for k, v in weights.items()
                if any(k.startswith(name + ".") for name in names))
            for names in trained]


class SLT(StageMethod):
    """Successive Layer Training (``slt``)."""

    name = "slt"
    kind = KIND
    config: SLTConfig

    # ----------------------------------------------------------------- the client half

    def memory_plan(self, state: ServerState) -> dict[str, ClientTask]:
        """Every stage's task, ``slt:1 .. slt:T``."""
        structure = structure_of(state)
        return {self.stage_name(t): self.stage_task(state, t, 0, 0)
                for t in range(1, structure.num_blocks + 1)}

    def submodel(self, state: ServerState, task: ClientTask) -> SubModel:
        """Stage t's sub-model: ``B_1 .. B_{t-1}`` frozen, ``B_t``, the scaled head."""
        structure = structure_of(state)
        return structure.build(state.weights, self.parse_stage(task.submodel, structure.num_blocks))

    # ----------------------------------------------------------------- the server half

    def init_state(self, model: nn.Module, rng: np.random.Generator) -> ServerState:
        """The model's weights plus fresh stand-ins ``scaled.basic2 .. basic<T>``; the
        schedule's stage ends for ``config.rounds``."""
        base, container = blocked_copy(model, "slt")
        scaled = nn.Module()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**62)))
            output_module = base.output_module(1)
        for name, child in output_module.named_children():
            if name == "head":
                own = {k: tuple(v.shape) for k, v in base.head.state_dict().items()}
                if own != {k: tuple(v.shape) for k, v in child.state_dict().items()}:
                    raise ConfigError(f"slt: {base.spec.name}'s output module has a head unlike "
                                      "the model's; SLT shares the model's head across stages")
            else:
                scaled.add_module(name, child)
        container.add_module(SCALED, scaled)
        weights = {k: v.detach().clone() for k, v in container.state_dict().items()}
        blocks = base.num_blocks
        sizes = (stage_sizes(weights, [stage_paths(t, blocks)[1] for t in range(1, blocks + 1)])
                 if self.config.stage_rounds == "params" else [1] * blocks)
        structure = SLTStructure(container, blocks, stage_ends(sizes, self.config.rounds))
        return ServerState(weights=weights, meta={"rounds_used": 0, "step_end": None},
                           structure=structure)

    def stage(self, state: ServerState) -> int:
        """The stage of the next (or, once finished, the last) round."""
        return stage_of(structure_of(state).ends, int(state.meta["rounds_used"]))

    def aggregate(
        self, rnd: int, state: ServerState, updates: Sequence[ClientUpdate]
    ) -> ServerState:
        """FedAvg of the trained part (clients send only it; the rest keeps its weights)."""
        used = int(state.meta["rounds_used"]) + 1
        ends = structure_of(state).ends
        weights = fedavg(state.weights, updates, weighting=self.config.weighting)
        return replace(state, weights=weights,
                       meta={"rounds_used": used, "step_end": "fixed" if used in ends else None})

    def round_metrics(self, state: ServerState) -> dict[str, float | str | None]:
        """``step_end``: ``"fixed"`` when the round just aggregated ended its stage."""
        return {"step_end": state.meta.get("step_end")}

    def model_weights(self, state: ServerState) -> dict[str, Tensor]:
        """The trained model's ``block<i>.*`` and ``head.*``, without the stand-ins."""
        return {k: v for k, v in state.weights.items() if not k.startswith(SCALED + ".")}

    def stage_task(self, state: ServerState, t: int, client_id: int,
                   required_bytes: int) -> ClientTask:
        """Client ``client_id``'s task of stage ``t``."""
        structure = structure_of(state)
        return self.config.task(client_id, self.stage_name(t), frozenset(structure.paths(t)[1]),
                                required_bytes)
