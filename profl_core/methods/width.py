"""Width slicing shared by HeteroFL, FedRolex and AllSmall (reference/baselines.md §2.2, §2.7, §3).

A width-``beta`` sub-model is the same architecture built with ``ModelSpec.width = beta``: every
hidden dimension of size ``C`` becomes ``c = ceil(C * beta)``. Which ``c`` of the ``C`` global
channels a client holds is an *index rule* ``(C, c) -> indices``:

* :func:`static_indices`: the first ``c`` channels (HeteroFL);
* :func:`rolling_indices`: a cyclic window of ``c`` channels starting at the round's offset
  (FedRolex).

Because a rule depends only on ``(C, c)``, linked dimensions (a conv's output channels, the
following norm's channels and the next conv's input channels) always get the same indices; the
input image channels and the classifier's class dimension are never narrowed (``c == C``), so
they are kept whole. The machinery is shape-driven and name-keyed:

1. :func:`slice_plan` maps every key of the sub-model's state dict to one index tensor per
   dimension (the global positions of the local entries);
2. :func:`extract` cuts the client's sub-state-dict out of the global one;
3. :func:`scatter_mean` writes client states back: every global entry becomes the (weighted)
   mean over the clients that hold it; entries nobody holds keep their value (HeteroFL's
   ``combine``, element-wise count mean).

Static batch norm (sBN, HeteroFL §3 / baselines.md §2.5): during local training BN layers keep no
running statistics (:func:`make_static_bn`), so clients send only weights; for evaluation
:func:`calibrate_bn` recomputes cumulative statistics of the global model in one no-grad pass.
The :class:`Scaler` rule divides a layer's input by the client's rate before every norm layer
in training (:func:`add_scaler`).

Known limitations: only convolutional families (``cnn``, ``resnet*``, ``vgg*``) are sliced; the
ViT's fused ``qkv`` projection is not a channel prefix of the wide one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from profl_core.errors import ConfigError
from profl_core.models import BlockedModel, ConvBlockedModel, ModelSpec, build_model

#: HeteroFL's levels a..e: shrinkage 0.5 per level (``model_split_rate``).
LEVELS: tuple[float, ...] = (1.0, 0.5, 0.25, 0.125, 0.0625)

IndexRule = Callable[[int, int], Tensor]
"""``(global_size, local_size) -> LongTensor`` of ``local_size`` distinct global positions."""

Plan = dict[str, tuple[Tensor, ...]]
"""State-dict key -> for every dimension, the global position of each local entry."""


def static_indices(global_size: int, local_size: int) -> Tensor:
    """HeteroFL: the first ``local_size`` channels."""
    return torch.arange(local_size)


def rolling_indices(shift: int) -> IndexRule:
    """FedRolex: the cyclic window ``{s, s+1, .., s+c-1} mod C`` with ``s = shift mod C``."""

    def rule(global_size: int, local_size: int) -> Tensor:
        return (torch.arange(local_size) + shift) % global_size

    return rule


def width_name(level: float) -> str:
    """Sub-model name of a width level: ``full`` for 1, else ``w0.5``, ``w0.25`` ..."""
    return "full" if level == 1.0 else f"w{level:g}"


def check_levels(levels: Sequence[float]) -> tuple[float, ...]:
    """Levels sorted widest first; each in (0, 1], no duplicates."""
    if not levels or any(not 0.0 < w <= 1.0 for w in levels) or len(set(levels)) != len(levels):
        raise ConfigError(f"width levels {list(levels)}: use distinct values in (0, 1]")
    return tuple(sorted(levels, reverse=True))


def level_spec(spec: ModelSpec, level: float) -> ModelSpec:
    """The spec of the width-``level`` sub-model of ``spec`` (widths multiply)."""
    return replace(spec, width=spec.width * level)


def require_sliceable(model: nn.Module, method: str) -> ConvBlockedModel:
    """The model as a ConvBlockedModel, or a one-line ConfigError."""
    if not isinstance(model, ConvBlockedModel):
        raise ConfigError(f"{method}: width slicing supports cnn, resnet and vgg models, "
                          f"not {type(model).__name__}; pick a convolutional --model")
    return model


def build_width_model(spec: ModelSpec, level: float) -> BlockedModel:
    """A freshly built width-``level`` model (its weights are overwritten by :func:`extract`)."""
    with torch.random.fork_rng(devices=[]):
        return build_model(level_spec(spec, level))


# --- plans, extraction, aggregation ------------------------------------------------------------


def slice_plan(
    global_shapes: Mapping[str, Sequence[int]],
    local_shapes: Mapping[str, Sequence[int]],
    rule: IndexRule,
) -> Plan:
    """Index tensors placing every local entry in the global tensors.

    Args:
        global_shapes: Shapes of the global state dict.
        local_shapes: Shapes of a sub-model's state dict (any subset of the keys).
        rule: Chooses ``c`` of ``C`` positions for every narrowed dimension; dimensions of
            equal size are kept whole (``arange``).

    Raises:
        ConfigError: A key the server does not know or a shape that is not a sub-shape.
    """
    plan: Plan = {}
    for key, local in local_shapes.items():
        if key not in global_shapes:
            raise ConfigError(f"slice plan: sub-model key {key!r} is not in the global model")
        glob = tuple(global_shapes[key])
        if len(glob) != len(local) or any(c > g for c, g in zip(local, glob, strict=True)):
            raise ConfigError(f"slice plan: {key!r} of shape {tuple(local)} is not a slice of "
                              f"{glob}")
        plan[key] = tuple(
            torch.arange(g) if c == g else rule(g, c) for g, c in zip(glob, local, strict=True)
        )
    return plan


def shapes(state: Mapping[str, Tensor]) -> dict[str, tuple[int, ...]]:
    """Key -> shape of a state dict."""
    return {k: tuple(v.shape) for k, v in state.items()}


def _mesh(index: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Broadcastable index tensors selecting the outer product of ``index``."""
    n = len(index)
    return tuple(ix.view([-1 if d == k else 1 for d in range(n)]) for k, ix in enumerate(index))


def extract(global_state: Mapping[str, Tensor], plan: Plan) -> dict[str, Tensor]:
    """The sub-state-dict the plan selects (fresh tensors)."""
    out: dict[str, Tensor] = {}
    for key, index in plan.items():
        value = global_state[key]
        out[key] = value[_mesh(index)].clone() if index else value.clone()
    return out


def restrict(
    state: Mapping[str, Tensor], plan: Plan, keys: Iterable[str], dim: int, keep: Tensor
) -> tuple[dict[str, Tensor], Plan]:
    """Drop the entries of ``keys`` outside local positions ``keep`` along ``dim``.

    HeteroFL's masked classifier: only the rows of a client's labels are aggregated from it.
    """
    new_state, new_plan = dict(state), dict(plan)
    for key in keys:
        if key in state:
            new_state[key] = state[key].index_select(dim, keep)
            index = list(plan[key])
            index[dim] = index[dim][keep]
            new_plan[key] = tuple(index)
    return new_state, new_plan


def scatter_mean(
    global_state: Mapping[str, Tensor],
    contributions: Sequence[tuple[Mapping[str, Tensor], Plan]],
    weights: Sequence[float] | None = None,
) -> dict[str, Tensor]:
    """Write client sub-states back into the global state (HeteroFL's ``combine``).

    For every global entry ``v``: ``v = sum_m w_m * W_m[v] / sum_m w_m`` over the clients m
    whose plan covers ``v``; entries no client covers keep their value. Accumulated in float64;
    integer tensors are rounded back.

    Args:
        global_state: Current server weights.
        contributions: ``(client state, its plan)`` pairs.
        weights: One weight per client; ``None``: 1 each (HeteroFL's count mean).
    """
    ws = [1.0] * len(contributions) if weights is None else [float(w) for w in weights]
    if len(ws) != len(contributions) or any(w <= 0 for w in ws):
        raise ConfigError("scatter_mean: need one positive weight per contribution")
    acc: dict[str, Tensor] = {}
    count: dict[str, Tensor] = {}
    for (state, plan), w in zip(contributions, ws, strict=True):
        for key, value in state.items():
            if key not in plan:
                raise ConfigError(f"scatter_mean: no plan for client key {key!r}")
            base = global_state[key]
            if key not in acc:
                acc[key] = torch.zeros(base.shape, dtype=torch.float64)
                count[key] = torch.zeros(base.shape, dtype=torch.float64)
            mesh = _mesh(plan[key])
            contrib = value.detach().to("cpu", torch.float64) * w
            if mesh:
                acc[key].index_put_(mesh, contrib, accumulate=True)
                count[key].index_put_(mesh, torch.full_like(contrib, w), accumulate=True)
            else:
                acc[key] += contrib
                count[key] += w
    out = dict(global_state)
    for key, total in acc.items():
        base = global_state[key]
        merged = base.detach().to("cpu", torch.float64).clone()
        held = count[key] > 0
        merged[held] = total[held] / count[key][held]
        if not (base.dtype.is_floating_point or base.dtype.is_complex):
            merged = merged.round()
        out[key] = merged.to(base.dtype).to(base.device)
    return out


# --- static batch norm and the scaler ----------------------------------------------------------


def bn_stat_keys(model: nn.Module) -> set[str]:
    """State-dict keys of every BN layer's running statistics."""
    keys = set()
    for name, module in model.named_modules():
        if isinstance(module, _BatchNorm):
            prefix = f"{name}." if name else ""
            keys |= {f"{prefix}running_mean", f"{prefix}running_var",
                     f"{prefix}num_batches_tracked"}
    return keys


def make_static_bn(model: nn.Module) -> nn.Module:
    """sBN for training: every BN uses batch statistics and keeps no running statistics."""
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            module.track_running_stats = False
            module.running_mean = None
            module.running_var = None
            module.num_batches_tracked = None
    return model


def calibrate_bn(model: nn.Module, batches: Iterable[Tensor]) -> nn.Module:
    """sBN for evaluation: cumulative BN statistics of ``model`` over ``batches``, then eval mode.

    Every BN gets ``momentum=None`` (a cumulative average) and fresh statistics; the batches
    run in train mode under ``no_grad`` (weights do not change). HeteroFL's code does this on
    the whole training set every round; the paper describes querying the clients in turn.
    """
    for module in model.modules():
        if isinstance(module, _BatchNorm):
            if module.running_mean is None:
                raise ConfigError("calibrate_bn: build the model with running statistics")
            module.momentum = None
            module.reset_running_stats()
    model.train()
    with torch.no_grad():
        for x in batches:
            model(x)
    return model.eval()


class Scaler:
    """HeteroFL's Scaler: divide a norm layer's input by ``rate`` in training, identity in eval.

    Attached as a forward pre-hook so state-dict names do not change. With batch-statistics
    norms the division cancels exactly (up to BN's epsilon); it is kept for fidelity and matters
    for norm-free layers.
    """

    def __init__(self, rate: float) -> None:
        self.rate = rate

    def __call__(self, module: nn.Module, args: tuple[Tensor, ...]) -> tuple[Tensor, ...] | None:
        """Scale the first input when the module is training."""
        if not module.training:
            return None
        return (args[0] / self.rate, *args[1:])


def add_scaler(model: nn.Module, rate: float) -> nn.Module:
    """Attach a :class:`Scaler` with ``rate`` before every BN layer (no-op when rate is 1)."""
    if not math.isclose(rate, 1.0):
        for module in model.modules():
            if isinstance(module, _BatchNorm):
                module.register_forward_pre_hook(Scaler(rate))
    return model


def classifier_keys(model: BlockedModel) -> list[str]:
    """State-dict keys of the head's linear layers that output the classes (weight and bias)."""
    keys = []
    for name, module in model.head.named_modules():
        if isinstance(module, nn.Linear) and module.out_features == model.spec.num_classes:
            prefix = f"head.{name}." if name else "head."
            keys += [prefix + p for p, _ in module.named_parameters()]
    return keys
