"""ProFL: progressive block training under device memory limits.

Paper: Yebo Wu, Li Li, Cheng-zhong Xu, "Breaking the Memory Wall for Heterogeneous Federated
Learning via Progressive Training", KDD '25, arXiv 2404.13349. Details and what is inferred:
``reference/profl-paper.md``.

The model is cut into blocks ``B_1 .. B_T`` plus a head. Every round selects clients whose memory
budget fits the current step's measured peak (memory-table key ``grow:t`` or ``shrink:t``) and
averages the trained part with FedAvg.

1. *Progressive shrinking* (``shrink=True``), for t = T down to 2:
   a. train the real ``B_t`` and the current output module ``OM_t`` (the real head for t = T)
      on top of the frozen ``B_1 .. B_{t-1}`` (sub-model ``grow:t``);
   b. fit a basic layer ``basic<t>`` to mimic ``B_t``: distil the logits of
      ``OM_t(B_t(h))`` into ``OM_{t-1}(h)``, where ``h`` is the frozen prefix's output and
      ``OM_{t-1}`` is ``basic<t>`` followed by a copy of ``OM_t`` (sub-model ``shrink:t``; by
      default all of ``OM_{t-1}`` is trained, ``fit_scope``). ``OM_{t-1}`` is the output
      module of block t-1.
2. *Progressive growing*, for t = 1 .. T: train ``B_t`` and ``OM_t`` (from shrinking; the real
   head at t = T) with ``B_1 .. B_{t-1}`` frozen (sub-model ``grow:t``); ``OM_t`` is then
   discarded.

A step ends when the effective movement of its active block (``B_t``, or ``basic<t>`` while
fitting) has converged (:class:`~profl_core.methods.effective_movement.FreezeRule`) or when it
reaches its round cap; ``schedule="fixed"`` gives every step the same number of rounds.
``shrink=False`` skips stage 1 (an ablation: output modules keep their random init).

Choices where the paper is silent: while shrinking, the frozen prefix ``B_1 .. B_{t-1}`` is still
at its random init, so its batch norm runs in train mode and its statistics are averaged like
weights (``ClientTask.bn_update``); in eval mode its default statistics collapse the features
and the step cannot learn. While growing, frozen blocks are trained and their batch norm is
fixed (eval mode) by default.

Departures from the authors, each with the measurement that made it (docs/training.md):

* The basic-layer fit ("ProFL's shrinking stage"): the loss is soft-target distillation at
  temperature 2 (``distill_loss="kd"``; the authors' logit MSE is ``"mse"``), whose gradient is
  bounded whatever the logits' scale, and a basic layer is conv + batch norm + ReLU
  (:func:`~profl_core.models.base.basic_layer`). With bare convolutions and the logit MSE the
  fit blew up to NaN at lr 0.01 and stalled near chance at 0.001. The distillation lr defaults
  to 0.05 (the authors' 1e-5 barely moves a fresh layer). Matching the block's output features
  instead (``"features"``) left the stand-ins 25-35 points behind their blocks.
* What a fit trains ("The stand-ins' gap"): all of ``OM_{t-1}`` (``fit_scope="module"``:
  ``basic<t>``, then the copies of ``OM_t``'s stand-ins and head), not ``basic<t>`` alone (the
  authors' ``flash`` branches, which also train the head at t = T: ``"authors"``). Over 30
  rounds per fit it brought the stand-ins of blocks 3 and 2 from 6.5-14.5 to 4.5-7.2 points of
  their blocks; ``basic<T>`` stays 11-20 points behind (one layer against the only trained
  stage of a random prefix; a second layer would halve that but make ``grow:1`` as large as
  the full model).
* The freeze rule ("Effective movement"): the authors' ``window_size: 20, evaluation_number:
  15, slope_threshold: 0.2`` (their level is unpublished) ended 93% of the steps at their
  earliest round in ``profl em-study``; the defaults (H = 4, 8 values, change < 0.03, level
  1.5/sqrt(H)) end 57% of the steps within 25% of the plateau oracle's round.

Round budget: each step may use at most ``(rounds left) // (steps
left)`` rounds (capped by ``max_rounds``), so unused rounds of a step that converged early go to
later steps and growing always reaches step T. The last step (block T and the head on the frozen
B_1 .. B_{T-1}) is not ended by EM: it trains until the round budget (or ``max_rounds``) is
spent, so ProFL uses the same rounds as every other method and the memory of its largest step is
never exceeded.

With micro-batching (``accumulate=True``, method ``profl-accum``) every step's client runs the
step with the fewest micro-batches that make it fit its budget: step ``grow:t`` has the rungs
``grow:t``, ``grow:t+accum:2``, ``grow:t+accum:4``, .. (:mod:`profl_core.methods.alternatives`,
each measured in the memory table), a device gets the first rung that fits, and every device
that fits some rung of the step may take part. It trains the same sub-model with the same
batch size; rounds record the micro-batch sizes (``micro_batch``, ``micro_batch_min``).

Server weights: ``block<i>.*``, ``head.*`` (the model) and ``om<t>.*`` for t = 1 .. T-1 (the
output module of block t: ``basic<t+1> .. basic<T>`` then ``head``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from torch import Tensor, nn

from profl_core.devices import Fleet
from profl_core.errors import ConfigError
from profl_core.fl.aggregate import Weighting, fedavg
from profl_core.fl.method import LocalTraining, Method
from profl_core.fl.types import ClientTask, ClientUpdate, MemoryTable, ServerState, SubModel
from profl_core.methods import alternatives
from profl_core.methods.alternatives import PLAIN, Rung, check_min_micro_batch
from profl_core.methods.effective_movement import FreezeRule, effective_movement, sample_indices
from profl_core.methods.profl_steps import (
    ProFLStructure,
    blocked_copy,
    deepen_standins,
    model_weights,
    plan,
    structure_of,
    warm_start_keys,
)
from profl_core.models import fitted_basic_layers
from profl_core.models.exits import DISTILL_TEMPERATURE

Schedule = Literal["em", "fixed"]

#: The default EM level is this multiple of ``1/sqrt(H)``, the EM of a driftless random walk
#: over a window of H rounds (calibrated with ``profl em-study``, docs/training.md).
EM_NOISE_MULTIPLE = 1.5


@dataclass(frozen=True, kw_only=True)
class ProFLConfig(LocalTraining):
    """ProFL's settings (defaults from the authors' code and config, profl-paper.md §2): the
    local training (``rounds`` is the budget of all steps together, ``lr`` that of block
    training), and

    Attributes:
        distill_lr: SGD learning rate of the basic-layer fit (authors: 1e-5).
        distill_loss: Loss of the basic-layer fit: ``"kd"`` (soft targets), ``"mse"``
            (the authors' logit MSE) or ``"features"`` (MSE between ``basic<t>``'s and
            ``B_t``'s outputs).
        distill_temperature: Softmax temperature of the ``"kd"`` fit.
        standin_init: How a basic-layer fit starts ``basic<t>``: ``"block"``, as the first
            convolution and batch norm of ``B_t`` when their shapes match (a copy of part of
            the block it stands in for), or ``"random"`` (the authors).
        standin_depth: Conv + batch norm + ReLU layers per convolutional stand-in (1: the
            paper's single stride-2 layer; 2: a pair, the second at stride 1).
        fit_scope: What a basic-layer fit trains: ``"standin"`` (``basic<t>`` only),
            ``"authors"`` (``basic<t>``, and at t = T the head too: the authors' ``flash``
            branches) or ``"module"`` (all of ``OM_{t-1}``: ``basic<t> .. basic<T>`` and the
            head).
        schedule: ``"em"`` (effective movement) or ``"fixed"`` (equal rounds per step).
        shrink: Run the shrinking stage.
        em_window: EM window H (authors' ``window_size``: 20; default 4, calibrated).
        em_evaluation_number: EM values fitted by the freeze rule (authors: 15; default 8).
        em_slope_threshold: Freeze rule's flatness threshold: the most the line through those
            values may change over them (authors: 0.2; default 0.03).
        em_level: Freeze rule's level threshold; None (default): ``EM_NOISE_MULTIPLE /
            sqrt(em_window)``, 1.5 times the EM of a driftless random walk (0.75 at H = 4).
            The defaults were calibrated against the plateau oracle (``profl em-study``,
            docs/training.md "Effective movement"); the authors' reading is ``em_window=20,
            em_evaluation_number=15, em_slope_threshold=0.2, em_level=1``.
        em_samples: Scalars of the active block sampled for EM (fixed per step).
        min_rounds: Fewest rounds per step.
        max_rounds: Most rounds per step (None: only the budget rule).
        weighting: FedAvg weights: ``"examples"`` or ``"uniform"`` (authors: uniform count).
        accumulate: Each client runs its step with the fewest micro-batches that fit its
            budget (method ``profl-accum``); False: the plain step only (the paper).
        min_micro_batch: Fewest samples per micro-batch when accumulating.
    """

    where: ClassVar[str] = "profl"

    distill_lr: float = 0.05
    distill_loss: Literal["kd", "mse", "features"] = "kd"
    distill_temperature: float = DISTILL_TEMPERATURE
    standin_init: Literal["block", "random"] = "random"
    standin_depth: int = 1
    fit_scope: Literal["standin", "authors", "module"] = "module"
    schedule: Schedule = "em"
    shrink: bool = True
    em_window: int = 4
    em_evaluation_number: int = 8
    em_slope_threshold: float = 0.03
    em_level: float | None = None
    em_samples: int = 10_000
    min_rounds: int = 1
    max_rounds: int | None = None
    weighting: Weighting = "examples"
    accumulate: bool = False
    min_micro_batch: int = 2

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.schedule not in ("em", "fixed"):
            raise ConfigError(f"profl: schedule={self.schedule!r}; use 'em' or 'fixed'")
        if self.distill_loss not in ("kd", "mse", "features"):
            raise ConfigError(f"profl: distill_loss={self.distill_loss!r}; use 'kd', 'mse' or "
                              "'features'")
        if not self.distill_temperature > 0 or not self.distill_lr > 0:
            raise ConfigError("profl: distill_lr and distill_temperature must be positive")
        if self.standin_init not in ("block", "random"):
            raise ConfigError(f"profl: standin_init={self.standin_init!r}; use 'block' or "
                              "'random'")
        if not 1 <= self.standin_depth <= 8:
            raise ConfigError(f"profl: standin_depth={self.standin_depth}; use 1 to 8")
        if self.fit_scope not in ("standin", "authors", "module"):
            raise ConfigError(f"profl: fit_scope={self.fit_scope!r}; use 'standin', 'authors' "
                              "or 'module'")
        if self.weighting not in ("examples", "uniform"):
            raise ConfigError(f"profl: weighting={self.weighting!r}; use 'examples' or 'uniform'")
        if self.em_window < 1:
            raise ConfigError(f"profl: em_window={self.em_window}; use 1 or more")
        too_few = self.max_rounds is not None and self.max_rounds < self.min_rounds
        if self.min_rounds < 1 or too_few:
            raise ConfigError("profl: need 1 <= min_rounds <= max_rounds")
        check_min_micro_batch(self.min_micro_batch, "profl")

    def freeze_rule(self) -> FreezeRule:
        """The EM freeze rule of these settings."""
        return FreezeRule(
            window=self.em_window, evaluation_number=self.em_evaluation_number,
            slope_threshold=self.em_slope_threshold,
            em_level=self.em_level if self.em_level is not None
            else EM_NOISE_MULTIPLE / math.sqrt(self.em_window),
            min_rounds=self.min_rounds,
        )


class ProFL(Method):
    """ProFL (``profl``; ``profl-accum`` with ``accumulate``)."""

    config: ProFLConfig

    def __init__(self, config: ProFLConfig) -> None:
        super().__init__(config)
        #: How a step's client may run it: the plain step, or each micro-batch count too.
        self.rungs: tuple[Rung, ...] = alternatives.ladder(
            config.batch_size, min_micro_batch=config.min_micro_batch, checkpointing=False,
        ) if config.accumulate else (PLAIN,)

    @property
    def name(self) -> str:  # type: ignore[override]
        """``profl``, or ``profl-accum`` when accumulating."""
        return "profl-accum" if self.config.accumulate else "profl"

    # ----------------------------------------------------------------- the client half

    def _task(self, structure: ProFLStructure, stage: str, submodel: str) -> ClientTask:
        """The task of ``submodel`` in ``stage`` (client 0, no bytes yet)."""
        fitting = submodel.startswith("shrink:")
        prefix, _, _, trainable = structure.paths(submodel)
        # While shrinking, the frozen prefix has never been trained: its batch norm keeps
        # updating its statistics (as in the authors' code), else its features collapse.
        bn_update = frozenset(prefix) if stage == "shrink" else frozenset()
        cfg = self.config
        return cfg.task(0, submodel, trainable, 0,
                        lr=cfg.distill_lr if fitting else cfg.lr,
                        loss=cfg.distill_loss if fitting else "ce",
                        temperature=cfg.distill_temperature, bn_update=bn_update)

    def memory_plan(self, state: ServerState) -> dict[str, ClientTask]:
        """Every step's task (each of its rungs when accumulating), in plan order. ``grow:t``
        is the growing stage's task (frozen BN fixed); the shrinking stage's ``grow:t``
        differs only in updating the prefix's BN statistics, which holds no activations under
        ``no_grad``."""
        structure = structure_of(state)
        out: dict[str, ClientTask] = {}
        for phase in structure.phases:
            if phase.submodel not in out or phase.stage == "grow":
                task = self._task(structure, phase.stage, phase.submodel)
                out |= {rung.name(phase.submodel): rung.task(task) for rung in self.rungs}
        return out

    def submodel(self, state: ServerState, task: ClientTask) -> SubModel:
        """The client's sub-model (with the teacher path while fitting a basic layer)."""
        return structure_of(state).build(state.weights, alternatives.base_name(task.submodel),
                                         teacher=True)

    def eval_submodel(self, state: ServerState, submodel: str) -> SubModel:
        """The global sub-model ``submodel`` (block-trained or with the fitted basic layer)."""
        return structure_of(state).build(state.weights, submodel, teacher=False)

    # ----------------------------------------------------------------- the server half

    def init_state(self, model: nn.Module, rng: np.random.Generator) -> ServerState:
        """Model weights plus freshly initialized output modules ``om1 .. om<T-1>``."""
        base, container = blocked_copy(model, "profl")
        for i, name in enumerate(base.block_names()):
            if next(base.block(i).parameters(), None) is None:
                raise ConfigError(f"profl: {name} of the model has no parameters, and each "
                                  "ProFL step trains one block; join it to a neighbouring "
                                  "block (--blocks with a range, e.g. 0-1)")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**62)))
            for t in range(1, base.num_blocks):
                container.add_module(f"om{t}", base.output_module(t))
                deepen_standins(container.get_submodule(f"om{t}"), self.config.standin_depth)
        fitted = (fitted_basic_layers(container.get_submodule("om1"), base.num_blocks)
                  if base.num_blocks > 1 else ())
        structure = ProFLStructure(
            modules=container, num_blocks=base.num_blocks,
            phases=tuple(plan(base.num_blocks, shrink=self.config.shrink, fitted=fitted)),
            param_keys=frozenset(k for k, _ in container.named_parameters()),
            fit_scope=self.config.fit_scope)
        weights = {k: v.detach().clone() for k, v in container.state_dict().items()}
        meta: dict[str, Any] = {
            "em_seed": int(rng.integers(2**62)), "phase": 0, "rounds_used": 0,
            "finished": False, "last_em": None,
        }
        self._enter_phase(structure, weights, meta)
        return ServerState(weights=weights, meta=meta, structure=structure)

    def position(self, state: ServerState) -> tuple[str, int, str]:
        """``(stage, step, submodel)`` of the current phase."""
        phases = structure_of(state).phases
        phase = phases[min(int(state.meta["phase"]), len(phases) - 1)]
        return phase.stage, phase.step, phase.submodel

    def fit_fleet(self, state: ServerState, fleet: Fleet,
                  memory_table: MemoryTable) -> ServerState:
        """Every step must fit at least one device (on some rung)."""
        for phase in structure_of(state).phases:
            alternatives.require_some_fit(fleet, phase.submodel, self.rungs, memory_table)
        return state

    def eligible_share(self, state: ServerState, fleet: Fleet, memory_table: MemoryTable) -> float:
        """The share of the fleet whose budget fits the current step (on some rung)."""
        return alternatives.eligible_share(fleet, self.position(state)[2], self.rungs,
                                           memory_table)

    def model_weights(self, state: ServerState) -> dict[str, Tensor]:
        """The trained model's ``block<i>.*`` and ``head.*``, without output modules."""
        return model_weights(state)

    def configure_round(
        self, rnd: int, state: ServerState, fleet: Fleet, memory_table: MemoryTable,
        rng: np.random.Generator,
    ) -> list[ClientTask]:
        """Select clients whose budget fits the step's required bytes (of its first fitting
        rung); give each the step on that rung."""
        stage, _, submodel = self.position(state)
        chosen = alternatives.select(fleet, submodel, self.rungs, memory_table,
                                     self.config.per_round, rng)
        return alternatives.tasks(self._task(structure_of(state), stage, submodel), chosen,
                                  memory_table)

    def aggregate(
        self, rnd: int, state: ServerState, updates: Sequence[ClientUpdate]
    ) -> ServerState:
        """FedAvg the trained part; log the active block; end the step when it has converged."""
        structure = structure_of(state)
        weights = fedavg(state.weights, updates, weighting=self.config.weighting)
        meta = dict(state.meta)
        phase = structure.phases[int(meta["phase"])]
        meta["rounds_in_phase"] = int(meta["rounds_in_phase"]) + 1
        meta["rounds_used"] = int(meta["rounds_used"]) + 1
        row = structure.active_vector(weights, phase)[meta["em_indices"]]
        rule = self.config.freeze_rule()
        keep = rule.window + rule.evaluation_number
        trajectory = torch.cat([meta["em_trajectory"], row[None]])[-keep:]
        meta["em_trajectory"] = trajectory
        history = trajectory.double().numpy()
        meta["last_em"] = (
            effective_movement(history, rule.window) if history.shape[0] > rule.window else None
        )
        done_rounds, cap = int(meta["rounds_in_phase"]), int(meta["phase_max"])
        last = int(meta["phase"]) == len(structure.phases) - 1
        if self.config.schedule == "fixed":
            reason = "fixed" if done_rounds >= cap else None
        elif last:  # the final model keeps training until the budget is spent
            reason = "cap" if done_rounds >= cap else None
        else:
            reason = rule.decide(history, done_rounds, cap)
        meta["step_end"] = reason
        if self.config.accumulate:
            meta["cost"] = alternatives.cost_metrics(alternatives.rungs_of(updates),
                                                     self.config.batch_size)
        if reason is not None:
            meta["phase"] = int(meta["phase"]) + 1
            self._enter_phase(structure, weights, meta)
        return replace(state, weights=weights, meta=meta)

    def is_finished(self, state: ServerState) -> bool:
        """True after the last growing step."""
        return bool(state.meta["finished"])

    def round_metrics(self, state: ServerState) -> dict[str, float | str | None]:
        """The active block's latest effective movement (None before a full window) and
        ``step_end``: why this round ended its step (``em``, ``cap``, ``fixed``) or None; when
        accumulating, the round's micro-batch sizes (:data:`alternatives.COST_METRICS`)."""
        em = state.meta.get("last_em")
        out: dict[str, float | str | None] = {
            "em": None if em is None else float(em), "step_end": state.meta.get("step_end")}
        if self.config.accumulate:
            out |= state.meta.get("cost") or dict.fromkeys(alternatives.COST_METRICS)
        return out

    # ----------------------------------------------------------------- stage transitions

    def _enter_phase(self, structure: ProFLStructure, weights: dict[str, Tensor],
                     meta: dict[str, Any]) -> None:
        """Start ``meta["phase"]``: build OM_{t-1} when fitting, fix the EM sample, set the cap."""
        index = int(meta["phase"])
        if index >= len(structure.phases):
            meta["finished"] = True
            return
        phase = structure.phases[index]
        if phase.fitting:
            # OM_{t-1} = fresh basic<t> followed by a copy of OM_t (the real head for t = T).
            t = phase.step
            for src in structure.om(t):
                child = src.rsplit(".", 1)[-1] if "." in src else "head"
                for key in [k for k in weights if k.startswith(src + ".")]:
                    weights[f"om{t - 1}.{child}{key[len(src):]}"] = weights[key].clone()
            if self.config.standin_init == "block":
                for dst, src in warm_start_keys(structure, t).items():
                    weights[dst] = weights[src].clone()
        left = len(structure.phases) - index
        cap = max(1, (self.config.rounds - int(meta["rounds_used"])) // left)
        if self.config.max_rounds is not None:
            cap = min(cap, self.config.max_rounds)
        meta["phase_max"] = max(cap, 1)
        meta["rounds_in_phase"] = 0
        vector = structure.active_vector(weights, phase)
        rng = np.random.default_rng([int(meta["em_seed"]), index])
        indices = sample_indices(vector.numel(), self.config.em_samples, rng=rng)
        meta["em_indices"] = torch.from_numpy(indices)
        meta["em_trajectory"] = vector[meta["em_indices"]][None].clone()
