"""NeuLite: progressive block training with a Curriculum Mentor and a Training Harmonizer.

Paper: Yebo Wu et al., "NeuLite: Memory-Efficient Federated Learning via Elastic Progressive
Training" (v2: "Bridging Memory Gaps: Scaling
Federated Learning for Heterogeneous Clients"), arXiv 2408.10826: the ProFL authors'
successor. Public code ``Wuxiaobo315/NeuLiteCode`` (partial: one script,
``NeuLite_ResNet34_CIFAR10_IID.py``, with ``update.py`` and ``HSIC.py``; read, not copied;
reference/baselines.md §7b and §9). Only the paper's abstract could be read; where it is silent
the code's choice is followed.

The model is cut into blocks ``B_1 .. B_T`` plus a head. Stage t (sub-model and memory-table key
``neulite:t``) trains ``B_t`` with its own output module ``OM_t`` (ProFL's: the stand-ins
``basic<t+1> .. basic<T>`` then a head; ``OM_T`` is the model's head) on the frozen
``B_1 .. B_{t-1}``, with two additions:

* **Curriculum Mentor**: the loss of stage t adds, to the cross-entropy, two normalized HSIC
  terms (the Hilbert-Schmidt independence criterion with Gaussian kernels, as in the code's
  ``hsic_normalized``): one between the features ``Z_t`` that enter the head (the end of
  ``OM_t``) and the input X, one between the output and the labels Y::

      L_t = CE(f_t(x), y) - lx_t * nHSIC(Z_t, X) - ly_t * nHSIC(f_t(x), onehot(Y))

  Early blocks are pushed to keep what they know about the input, late ones to fit the labels:
  ``lx_t`` falls from ``lambda_x`` (stage 1) to 0 (stage T) and ``ly_t`` rises from 0 to
  ``lambda_y`` (:func:`curriculum_weights`).
* **Training Harmonizer**: the parameters of neighbouring blocks adapt to each other. Backward:
  in stage t >= 2 the last layer of ``B_{t-1}`` (its last convolution or linear layer and the
  norm layers after it; :func:`last_layer`) trains together with ``B_t`` (the code unfreezes
  ``conv2``/``bn2`` of the last residual unit of the previous layer group). Forward: every
  block has its own output module, kept and trained each time its stage comes round, and all
  stages share the blocks (the code hands block weights from one stage's model to the next).

Pseudo-code::

    stages[r] = r mod T + 1                      (stage_order="cyclic", the code's; default)
              | t while r < ends[t], ends = slt.stage_ends([1] * T, R)   (stage_order="sequential")
    for round r = 0 .. R-1:
        t = stages[r]
        draw per_round devices whose budget fits neulite:t's measured peak
        each trains B_t, OM_t and the last layer of B_{t-1} on L_t, B_1 .. B_{t-1} otherwise
            frozen (BN of frozen layers fixed)
        the server averages what was trained (FedAvg; the rest keeps its weights)

**The schedule** (:func:`stage_table`): the code trains stage ``r mod 4 + 1`` in round r (1600
rounds: 400 per stage, interleaved), each round with clients drawn from the devices able to
run that stage; ``stage_order="cyclic"`` does that for T stages. ``stage_order="sequential"`` gives
the stages equal consecutive shares of the budget (SLT's
:func:`~profl_core.methods.slt.stage_ends` with equal sizes), the progressive reading of the
abstract.

**Evaluation**: the code evaluates the model of the stage it just trained. Here a round is
evaluated on the deepest stage trained so far (cyclic: the full model from round T on;
sequential: the current stage, as ProFL evaluates ``grow:t``), so the last rounds' accuracy is
the full model's, as for every other method.

Departures from the paper and the code, with the reason:

* **X of the input term is the raw input, Z_t is the head's input flattened, and the label
  term uses the logits.** The code computes the label term on a three-layer linear
  projection (512 -> 2056 -> 1024 -> 512, no activation between the layers, trained along) of
  the pooled features. A chain of linear maps is one linear map of the pooled features, as the
  logits are; and the suite's heads are the models' own (pool + FC, a token head, a user
  model's head), so pooled features are not generically reachable. This drops the
  projection's 3.7M parameters (for ResNet) from every stage's memory.
* **The weights ``lx_t``, ``ly_t``**: the code takes one pair per stage from the command line
  with no default (``lambda1_stage<t>``, ``lambda2_stage<t>``) and the paper's values could
  not be read; the linear curriculum and ``lambda_x = lambda_y = 0.1`` are this suite's
  choice (not tuned). The code's extra ``mu * L2_regularization`` term is 0 in the code and
  left out.
* **A zero-variance kernel gives nHSIC 0** instead of the code's NaN (a batch whose labels are
  all one class, or a batch of one sample, has a centred label kernel of 0): the denominator
  is clamped at 1e-12, and the numerator is 0 then.
* **The kernels are computed as ``K - 1`` with ``expm1`` on batch-centred samples** (the
  code: ``exp`` in float32). HSIC is unchanged (centring removes constants); with the code's
  wide kernel (``2 sigma^2 d``) the logits' kernel is 1 to five digits, and ``exp`` in float32
  left nHSIC off by a factor of 10 or more against a float64 computation (the test's oracle).
* **Stand-ins are the model's** ``output_module`` (one 3x3 stride-2 conv + BN + ReLU per
  missing block for convolutional models, as ProFL) instead of the code's bare strided conv;
  the code's ``OM`` has no BN.
* **The frozen prefix runs inside the step**, not from the engine's feature cache, because
  the input term needs the raw batch; the bytes are the same (no activations kept), the time
  is one prefix forward per batch instead of one per round.
* **The "last layer" of a block** is found generically (:func:`last_layer`); for the code's
  ResNet it is the same ``conv2``/``bn2``.
* Selection draws from the devices that fit the stage (the code draws 10 clients from a
  per-stage device list that its published script leaves empty); aggregation weights by
  examples by default (the code averages uniformly: ``weighting="uniform"``).
* Frozen BN runs in eval mode (the engine's ``frozen_bn``); the code keeps the whole model in
  train mode (``frozen_bn="train"`` gives that).

Server weights: ``block<i>.*``, ``head.*`` (the model) and ``om<t>.*`` for t = 1 .. T-1 (the
output modules); :meth:`NeuLite.model_weights` drops the latter.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from profl_core.errors import ConfigError
from profl_core.fl.aggregate import Weighting, fedavg
from profl_core.fl.method import LocalTraining
from profl_core.fl.types import ClientTask, ClientUpdate, ServerState, SubModel
from profl_core.methods.module_cache import ModuleCache
from profl_core.methods.profl_steps import blocked_copy, output_module_names
from profl_core.methods.slt import stage_ends
from profl_core.methods.stage_rounds import StageMethod

#: The memory kind (and sub-model name prefix) of NeuLite's stages: ``neulite:t``.
KIND = "neulite"

Schedule = Literal["cyclic", "sequential"]

#: Layers whose parameters make a block's "last layer" (with the norm layers after it).
_LAYERS = (nn.modules.conv._ConvNd, nn.Linear)
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


@dataclass(frozen=True, kw_only=True)
class NeuLiteConfig(LocalTraining):
    """NeuLite's settings: the local training (``rounds`` is the budget of all stages), and

    Attributes:
        stage_order: ``"cyclic"`` (round r trains stage ``r mod T + 1``: the code's) or
            ``"sequential"`` (equal consecutive shares of the budget).
        lambda_x: Weight of the input term nHSIC(Z, X) at stage 1 (0 at stage T).
        lambda_y: Weight of the label term nHSIC(output, Y) at stage T (0 at stage 1).
        hsic_sigma: The Gaussian kernels' width: ``exp(-|a - b|^2 / (2 sigma^2 d))`` for
            d-dimensional samples (the code's 5).
        harmonize: Train the last layer of ``B_{t-1}`` in stage t (the Training Harmonizer's
            backward half); False freezes it.
        weighting: FedAvg weights: ``"examples"`` or ``"uniform"``.
    """

    where: ClassVar[str] = "neulite"

    stage_order: Schedule = "cyclic"
    lambda_x: float = 0.1
    lambda_y: float = 0.1
    hsic_sigma: float = 5.0
    harmonize: bool = True
    weighting: Weighting = "examples"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.stage_order not in ("cyclic", "sequential"):
            raise ConfigError(f"neulite: stage_order={self.stage_order!r}; use 'cyclic' or "
                              "'sequential'")
        for name in ("lambda_x", "lambda_y"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
                raise ConfigError(f"neulite: {name}={value!r}; use a number, 0 or more")
        if isinstance(self.hsic_sigma, bool) or not isinstance(self.hsic_sigma, int | float) \
                or self.hsic_sigma <= 0:
            raise ConfigError(f"neulite: hsic_sigma={self.hsic_sigma!r}; use a number above 0")
        if not isinstance(self.harmonize, bool):
            raise ConfigError(f"neulite: harmonize={self.harmonize!r}; use true or false")
        if self.weighting not in ("examples", "uniform"):
            raise ConfigError(f"neulite: weighting={self.weighting!r}; use 'examples' or "
                              "'uniform'")


# ----------------------------------------------------------------- the schedule


def stage_table(rounds: int, blocks: int, schedule: Schedule) -> tuple[int, ...]:
    """The stage (1-based) each round (0-based) trains: ``r mod T + 1`` for ``"cyclic"``;
    for ``"sequential"`` stage t trains the rounds before ``ends[t]`` (SLT's
    :func:`~profl_core.methods.slt.stage_ends` of equal sizes)."""
    if schedule == "cyclic":
        return tuple(r % blocks + 1 for r in range(rounds))
    ends = stage_ends([1] * blocks, rounds)
    return tuple(next((t for t, end in enumerate(ends, start=1) if r < end), blocks)
                 for r in range(rounds))


def curriculum_weights(t: int, blocks: int, lambda_x: float,
                       lambda_y: float) -> tuple[float, float]:
    """``(lx_t, ly_t)``: with ``s = (t - 1) / (T - 1)`` (1 when T = 1),
    ``lx_t = lambda_x (1 - s)`` and ``ly_t = lambda_y s``."""
    s = (t - 1) / (blocks - 1) if blocks > 1 else 1.0
    return lambda_x * (1.0 - s), lambda_y * s


# ----------------------------------------------------------------- the Curriculum Mentor


def gaussian_gram(v: Tensor, sigma: float) -> Tensor:
    """The Gaussian kernel matrix of a batch (flattened per sample, in float32) minus 1:
    ``K_ij - 1 = expm1(-|v_i - v_j|^2 / (2 sigma^2 d))``.

    HSIC centres its kernels, which removes the constant, and a wide kernel is close to 1
    everywhere: ``exp`` would keep few of its significant digits in float32, ``expm1`` keeps
    them. The samples are centred on the batch mean first (distances do not change), so the
    expansion ``|a|^2 - 2 a.b + |b|^2`` does not cancel large norms.
    """
    v = v.flatten(1).float()
    v = v - v.mean(dim=0, keepdim=True)
    sq = (v * v).sum(dim=1)
    dist = (sq[:, None] - 2.0 * (v @ v.T) + sq[None, :]).clamp_min(0.0)
    return torch.expm1(-dist / (2.0 * sigma * sigma * v.shape[1]))


def hsic(ka: Tensor, kb: Tensor) -> Tensor:
    """The biased HSIC estimate of two kernel matrices, ``tr(Ka H Kb H) / m^2``
    (H = I - 1/m: centring; a constant added to a kernel does not change it)."""
    m = ka.shape[0]
    h = torch.eye(m, dtype=ka.dtype, device=ka.device) - 1.0 / m
    return ((ka @ h) * (kb @ h).T).sum() / (m * m)


def normalized_hsic(a: Tensor, b: Tensor, sigma: float) -> Tensor:
    """``HSIC(a, b) / sqrt(HSIC(a, a) HSIC(b, b))`` with Gaussian kernels (0 when either
    kernel has no centred variance)."""
    ka, kb = gaussian_gram(a, sigma), gaussian_gram(b, sigma)
    return hsic(ka, kb) / torch.sqrt((hsic(ka, ka) * hsic(kb, kb)).clamp_min(1e-24))


def curriculum_loss(logits: Tensor, labels: Tensor, inputs: Tensor, features: Tensor, *,
                    lx: float, ly: float, sigma: float) -> Tensor:
    """``CE(logits, labels) - lx nHSIC(features, inputs) - ly nHSIC(logits, onehot(labels))``."""
    loss = F.cross_entropy(logits, labels)
    if lx:
        loss = loss - lx * normalized_hsic(features, inputs, sigma)
    if ly:
        onehot = F.one_hot(labels, logits.shape[1]).float()
        loss = loss - ly * normalized_hsic(logits, onehot, sigma)
    return loss


@dataclass(eq=False)
class CurriculumPath:
    """Stage t's forward and loss: the frozen blocks under ``no_grad``, then the trained path;
    :meth:`forward` keeps the batch's input and head features for :meth:`criterion`, which the
    step calls right after it (one pair per micro-batch)."""

    modules: Mapping[str, nn.Module]
    frozen: tuple[str, ...]
    path: tuple[str, ...]
    lx: float
    ly: float
    sigma: float
    saved: list[tuple[Tensor, Tensor]] = field(default_factory=list)

    def forward(self, x: Tensor) -> Tensor:
        """The logits of ``x``; the input and the head's input are kept for the loss."""
        inputs = x
        with torch.no_grad():
            for name in self.frozen:
                x = self.modules[name](x)
        for name in self.path[:-1]:
            x = self.modules[name](x)
        self.saved.append((inputs, x))
        return self.modules[self.path[-1]](x)

    def criterion(self, logits: Tensor, labels: Tensor) -> Tensor:
        """The curriculum loss of the last forward's batch."""
        inputs, features = self.saved.pop()
        return curriculum_loss(logits, labels, inputs, features, lx=self.lx, ly=self.ly,
                               sigma=self.sigma)


# ----------------------------------------------------------------- the Training Harmonizer


def last_layer(block: nn.Module) -> tuple[str, ...]:
    """Names (relative to ``block``; ``""`` is the block itself) of its last layer: the last
    module with parameters of its own that is a convolution or linear layer, and every norm
    layer registered after it; without such a layer, the last module with parameters."""
    leaves = [(name, module) for name, module in block.named_modules()
              if any(True for _ in module.parameters(recurse=False))]
    if not leaves:
        return ()
    layers = [i for i, (_, module) in enumerate(leaves) if isinstance(module, _LAYERS)]
    start = layers[-1] if layers else len(leaves) - 1
    return tuple(name for i, (name, module) in enumerate(leaves)
                 if i == start or (i > start and isinstance(module, _NORMS)))


@dataclass(frozen=True)
class NeuLiteStructure:
    """A run's structure: the template modules (blocks, head, output modules ``om<t>``), T,
    the per-round stage table, the last layer of each block, the class count and the clients'
    copies."""

    modules: nn.Module
    num_blocks: int
    stages: tuple[int, ...]
    last_layers: tuple[tuple[str, ...], ...]
    copies: ModuleCache = field(default_factory=ModuleCache)

    def om(self, t: int) -> list[str]:
        """Module names of the output module of block t (the model's head for t = T)."""
        return output_module_names(self.modules, self.num_blocks, t)

    def harmonized(self, t: int, harmonize: bool) -> list[str]:
        """Module names of the last layer of ``B_{t-1}`` that stage t trains."""
        if t < 2 or not harmonize:
            return []
        return [f"block{t - 1}" + (f".{name}" if name else "")
                for name in self.last_layers[t - 2]]

    def trainable(self, t: int, harmonize: bool) -> frozenset[str]:
        """What stage t trains: ``B_t``, ``OM_t`` and the harmonized layer of ``B_{t-1}``."""
        return frozenset([f"block{t}", *self.om(t), *self.harmonized(t, harmonize)])

    def modules_of(self, weights: Mapping[str, Tensor], t: int,
                   harmonize: bool) -> dict[str, nn.Module]:
        """Stage t's modules (reused copies) loaded with ``weights``; a harmonized layer
        inside ``B_{t-1}`` is listed after its block under its own name."""
        modules = self.copies.load_named(
            self.modules, [*(f"block{i}" for i in range(1, t + 1)), *self.om(t)], weights)
        for name in self.harmonized(t, harmonize):
            block, _, inner = name.partition(".")
            if inner:
                modules[name] = modules[block].get_submodule(inner)
        return modules


def structure_of(state: ServerState) -> NeuLiteStructure:
    """The :class:`NeuLiteStructure` of a NeuLite state."""
    if not isinstance(state.structure, NeuLiteStructure):
        raise ConfigError("neulite: this state has no NeuLite structure; build it with "
                          "init_state")
    return state.structure


class NeuLite(StageMethod):
    """NeuLite (``neulite``)."""

    name = "neulite"
    kind = KIND
    config: NeuLiteConfig

    # ----------------------------------------------------------------- the client half

    def memory_plan(self, state: ServerState) -> dict[str, ClientTask]:
        """Every stage's task, ``neulite:1 .. neulite:T``."""
        structure = structure_of(state)
        return {self.stage_name(t): self.stage_task(state, t, 0, 0)
                for t in range(1, structure.num_blocks + 1)}

    def submodel(self, state: ServerState, task: ClientTask) -> SubModel:
        """Stage t: ``B_1 .. B_{t-1}`` frozen but for the harmonized last layer of
        ``B_{t-1}``, then ``B_t`` and ``OM_t``, trained on the curriculum loss."""
        structure = structure_of(state)
        t = self.parse_stage(task.submodel, structure.num_blocks)
        harmonize = self.config.harmonize and bool(structure.harmonized(t, True))
        modules = structure.modules_of(state.weights, t, harmonize)
        first = t - 1 if harmonize else t  # the first block that runs with autograd
        frozen = tuple(f"block{i}" for i in range(1, first))
        path = (*(f"block{i}" for i in range(first, t + 1)), *structure.om(t))
        lx, ly = curriculum_weights(t, structure.num_blocks, self.config.lambda_x,
                                    self.config.lambda_y)
        step = CurriculumPath(modules, frozen, path, lx, ly, float(self.config.hsic_sigma))
        return SubModel(modules=modules, prefix=(),
                        student=(*frozen, *path, *structure.harmonized(t, harmonize)),
                        trainable=structure.trainable(t, harmonize),
                        forward=step.forward, criterion=step.criterion)

    def eval_submodel(self, state: ServerState, submodel: str) -> SubModel:
        """The deepest stage trained so far (``submodel``'s before any round): its blocks and
        output module, plain logits."""
        structure = structure_of(state)
        t = max(int(state.meta["deepest"]), self.parse_stage(submodel, structure.num_blocks))
        modules = structure.modules_of(state.weights, t, False)
        return SubModel(modules=modules, prefix=tuple(f"block{i}" for i in range(1, t)),
                        student=(f"block{t}", *structure.om(t)))

    # ----------------------------------------------------------------- the server half

    def init_state(self, model: nn.Module, rng: np.random.Generator) -> ServerState:
        """The model's weights plus fresh output modules ``om1 .. om<T-1>``; the stage table
        for ``config.rounds``."""
        base, container = blocked_copy(model, "neulite")
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(rng.integers(2**62)))
            for t in range(1, base.num_blocks):
                container.add_module(f"om{t}", base.output_module(t))
        blocks = base.num_blocks
        structure = NeuLiteStructure(
            container, blocks, stage_table(self.config.rounds, blocks, self.config.stage_order),
            tuple(last_layer(base.block(i)) for i in range(blocks)))
        weights = {k: v.detach().clone() for k, v in container.state_dict().items()}
        return ServerState(weights=weights,
                           meta={"rounds_used": 0, "deepest": 0, "step_end": None},
                           structure=structure)

    def stage(self, state: ServerState) -> int:
        """The stage of the next (or, once finished, the last) round."""
        stages = structure_of(state).stages
        return stages[min(int(state.meta["rounds_used"]), len(stages) - 1)]

    def aggregate(
        self, rnd: int, state: ServerState, updates: Sequence[ClientUpdate]
    ) -> ServerState:
        """FedAvg of the trained part (clients send only it; the rest keeps its weights)."""
        t = self.stage(state)
        used = int(state.meta["rounds_used"]) + 1
        stages = structure_of(state).stages
        ends = self.config.stage_order == "sequential" and (
            used == len(stages) or (used < len(stages) and stages[used] != t))
        weights = fedavg(state.weights, updates, weighting=self.config.weighting)
        return replace(state, weights=weights, meta={
            "rounds_used": used, "deepest": max(int(state.meta["deepest"]), t),
            "step_end": "fixed" if ends else None})

    def round_metrics(self, state: ServerState) -> dict[str, float | str | None]:
        """``step_end``: ``"fixed"`` when the round just aggregated ended its stage (the
        sequential schedule; the cyclic one has no stage ends)."""
        return {"step_end": state.meta.get("step_end")}

    def model_weights(self, state: ServerState) -> dict[str, Tensor]:
        """The trained model's ``block<i>.*`` and ``head.*``, without the output modules."""
        return {k: v for k, v in state.weights.items() if not k.startswith("om")}

    def stage_task(self, state: ServerState, t: int, client_id: int,
                   required_bytes: int) -> ClientTask:
        """Client ``client_id``'s task of stage ``t``."""
        structure = structure_of(state)
        harmonize = self.config.harmonize and bool(structure.harmonized(t, True))
        return self.config.task(client_id, self.stage_name(t),
                                structure.trainable(t, harmonize), required_bytes)
