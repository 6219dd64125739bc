"""The BlockedModel contract (DESIGN §3).

A BlockedModel is an ordered list of named blocks ``block1 .. blockT`` followed by a ``head``.
Block names are state_dict prefixes, so ``model.state_dict()`` keys start with ``block<i>.`` or
``head.``. Block *indices* passed to :meth:`BlockedModel.forward_blocks` are 0-based and
half-open like Python slices; ProFL *steps* ``t`` are 1-based as in the paper (step t trains
block t).
"""

from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import unset_fake_temporarily
from torch.utils._python_dispatch import TorchDispatchMode

from profl_core.errors import ConfigError, build_config


@dataclass(frozen=True, kw_only=True)
class ModelSpec:
    """Everything needed to build one model.

    Attributes:
        name: a zoo model (:data:`profl_core.models.MODEL_NAMES`), ``torchvision:NAME``
            (:data:`profl_core.models.TORCHVISION_MODELS`) or ``pkg.module:factory`` (a user
            callable, :mod:`profl_core.models.external`).
        num_classes: classifier outputs.
        in_channels: input image channels.
        input_size: input height and width in pixels (square images).
        width: channel multiplier; every hidden width ``c`` becomes ``ceil(c * width)``
            (HeteroFL's rule, so a narrow model is a channel prefix of the wide one). A user
            factory receives it as ``width=`` and a torchvision family as its own multiplier.
        blocks: block groups (:func:`~profl_core.models.block_groups.parse_blocks` syntax), the
            last one the head; empty: the model's default partition (a zoo model's stages). For
            a zoo model they are groups over its ``block<i>`` children (a planned partition,
            :mod:`profl_core.memory.plan`).
        identity_standins: ProFL's stand-in for a block whose output has the shape of its
            input is the identity (a residual block's skip path) instead of a convolution,
            batch norm and ReLU, so ProFL has no basic layer to fit for it and its output
            modules hold no activations at that block's resolution (a deviation from the
            authors, docs/planner.md). The output modules are then the
            generic ones of :mod:`profl_core.models.wrapper`, also for a zoo model's stages.
    """

    name: str
    num_classes: int = 10
    in_channels: int = 3
    input_size: int = 32
    width: float = 1.0
    blocks: tuple[str, ...] = ()
    identity_standins: bool = False

    def __post_init__(self) -> None:
        if isinstance(self.blocks, list):  # JSON and TOML have no tuples
            object.__setattr__(self, "blocks", tuple(self.blocks))
        if not isinstance(self.blocks, tuple) or not all(
            isinstance(group, str) and group.strip() for group in self.blocks
        ):
            raise ConfigError(f"model spec: blocks={self.blocks!r}; use a list of module names "
                              "such as ['features.0-3', 'features.4-6', 'classifier']")
        if not isinstance(self.identity_standins, bool):
            raise ConfigError(f"model spec: identity_standins={self.identity_standins!r}; use "
                              "true or false")
        if self.num_classes < 2:
            raise ConfigError(f"model spec: num_classes={self.num_classes}; use 2 or more")
        if self.in_channels < 1 or self.input_size < 1:
            raise ConfigError("model spec: in_channels and input_size must be positive")
        if not 0.0 < self.width <= 1.0:
            raise ConfigError(f"model spec: width={self.width}; use a value in (0, 1]")

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, where: str = "model spec") -> ModelSpec:
        """Build a spec from a mapping, rejecting unknown keys."""
        return build_config(cls, data, where)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """The (C, H, W) shape of one sample."""
        return (self.in_channels, self.input_size, self.input_size)


def scaled(channels: int, width: float) -> int:
    """Scale a channel count by a width multiplier (HeteroFL's ceil rule)."""
    return max(1, math.ceil(channels * width))


class BlockedModel(nn.Module):
    """An ordered list of named blocks plus a head.

    Subclasses build their blocks and head and call :meth:`_set_blocks`. They implement
    :meth:`output_module` because only they know their stage shapes.
    """

    spec: ModelSpec

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__()
        self.spec = spec
        self._block_names: tuple[str, ...] = ()

    def _set_blocks(self, blocks: Sequence[nn.Module], head: nn.Module) -> None:
        names = []
        for i, block in enumerate(blocks, start=1):
            name = f"block{i}"
            self.add_module(name, block)
            names.append(name)
        self.head = head
        self._block_names = tuple(names)

    def block_names(self) -> tuple[str, ...]:
        """Block names in forward order; each is a state_dict prefix."""
        return self._block_names

    @property
    def num_blocks(self) -> int:
        """T, the number of blocks."""
        return len(self._block_names)

    def block(self, index: int) -> nn.Module:
        """The block at a 0-based index."""
        module = getattr(self, self._block_names[index])
        assert isinstance(module, nn.Module)
        return module

    def forward_blocks(self, x: Tensor, start: int = 0, stop: int | None = None) -> Tensor:
        """Run blocks ``start .. stop-1`` (0-based, half-open) on ``x``; the head is not run."""
        stop = self.num_blocks if stop is None else stop
        if not 0 <= start <= stop <= self.num_blocks:
            raise IndexError(f"blocks [{start}, {stop}) out of range for {self.num_blocks} blocks")
        for i in range(start, stop):
            x = self.block(i)(x)
        return x

    def forward(self, x: Tensor) -> Tensor:
        """The full model: every block, then the head."""
        return self.head(self.forward_blocks(x))

    def block_output_shapes(self) -> list[tuple[int, ...]]:
        """Per-sample output shape of every block, computed on the meta device."""
        return meta_shapes([self.block(i) for i in range(self.num_blocks)],
                           self.spec.input_shape)

    def output_module(self, step: int) -> nn.Module:
        """ProFL's output module for growing step ``step`` (1-based).

        It maps the output of block ``step`` to logits. For ``step < T`` it is one basic layer
        per missing block followed by the head's pooling and classifier; for ``step == T`` it is
        a fresh head.
        """
        raise NotImplementedError

    def _check_step(self, step: int) -> None:
        if not 1 <= step <= self.num_blocks:
            raise ConfigError(f"step {step} out of range; use 1..{self.num_blocks}")


#: In-place fills an initialiser makes (``torch.nn.init``, ``reset_parameters``,
#: ``reset_running_stats``); none changes a tensor's shape, so on the meta device (no values)
#: :class:`SkipMetaFills` skips them.
INIT_FILLS: frozenset[Any] = frozenset(getattr(torch.ops.aten, name) for name in (
    "normal_", "uniform_", "zero_", "fill_", "random_", "exponential_", "bernoulli_",
    "log_normal_", "cauchy_", "geometric_", "erfinv_", "clamp_", "mul_", "add_", "sub_",
    "div_", "copy_",
))


class SkipMetaFills(TorchDispatchMode):
    """Within it, an :data:`INIT_FILLS` op on a meta tensor returns the tensor without running:
    PyTorch's meta kernels of ``normal_``, ``clamp_`` or ``erfinv_`` are Python references of
    0.1-1 ms a call, half of a torchvision model's construction on the meta device. Real
    tensors are filled as usual. Every op pays a Python call while it is active, so it wraps
    only constructors whose initialisers use those fills (torchvision's)."""

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple[Any, ...] = (),
                           kwargs: dict[str, Any] | None = None) -> Any:
        if func.overloadpacket in INIT_FILLS and args and isinstance(args[0], Tensor) \
                and args[0].is_meta:
            return args[0]
        return func(*args, **(kwargs or {}))


@contextmanager
def on_meta() -> Iterator[None]:
    """Build modules on the meta device, outside any fake mode: parameters and buffers have
    shapes and dtypes but no storage."""
    with unset_fake_temporarily(), torch.device("meta"):
        yield


def meta_copy(module: nn.Module) -> nn.Module:
    """A copy of ``module`` on the meta device, in eval mode (for shapes: nothing is computed)."""
    clone = copy.deepcopy(module)
    return clone.to_empty(device="meta").eval()


def meta_shapes(modules: Sequence[nn.Module], input_shape: Sequence[int]) -> list[tuple[int, ...]]:
    """Per-sample output shape of each of ``modules`` run in order on one sample of per-sample
    shape ``input_shape`` (meta copies in eval mode: nothing is computed or changed)."""
    shapes: list[tuple[int, ...]] = []
    with torch.no_grad():
        x = torch.zeros((1, *input_shape), device="meta")
        for module in modules:
            x = meta_copy(module)(x)
            shapes.append(tuple(x.shape[1:]))
    return shapes


class PoolHead(nn.Module):
    """Global average pooling followed by a linear classifier."""

    def __init__(self, in_channels: int, num_classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(torch.flatten(self.pool(x), 1))


class ConvBlockedModel(BlockedModel):
    """A convolutional BlockedModel whose blocks are stages that halve the resolution.

    ``stage_channels[i]`` is the output channel count of block ``i``. The output module of step
    t is one basic layer per missing stage, then a :class:`PoolHead`. A basic layer is a 3x3
    stride-2 convolution without bias followed by batch norm and ReLU (:func:`basic_layer`).
    The authors' basic layer is the bare convolution; measured on Fashion-MNIST (docs/training.md,
    "ProFL's shrinking stage"), a chain of bare convolutions multiplies its gains, so fitting
    a stand-in and training the block before it blew up to NaN, while batch norm keeps each
    stand-in's output at unit scale and ReLU gives it the block's nonlinearity.
    """

    stage_channels: tuple[int, ...]

    def output_module(self, step: int) -> nn.Module:
        """See :meth:`BlockedModel.output_module`.

        The basic layer standing in for block ``k`` is named ``basic<k>``, so the output module
        of step t-1 is the one of step t plus ``basic<t>`` (what ProFL's shrinking builds).
        """
        self._check_step(step)
        channels = self.stage_channels
        layers: dict[str, nn.Module] = {}
        for i in range(step, self.num_blocks):
            layers[f"basic{i + 1}"] = basic_layer(channels[i - 1], channels[i])
        layers["head"] = PoolHead(channels[-1], self.spec.num_classes)
        return nn.Sequential(OrderedDict(layers))


def fitted_basic_layers(first_output_module: nn.Module, num_blocks: int) -> tuple[int, ...]:
    """The shrinking steps t (2..T) whose basic layer ``basic<t>`` in the output module of step
    1 has parameters to fit: all of them unless identity stand-ins
    (:attr:`ModelSpec.identity_standins`) replace some."""
    return tuple(t for t in range(2, num_blocks + 1)
                 if any(True for _ in first_output_module.get_submodule(f"basic{t}").parameters()))


def basic_layer(in_channels: int, out_channels: int) -> nn.Sequential:
    """ProFL's stand-in for a conv stage: 3x3 stride-2 conv (no bias), batch norm, ReLU."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )
