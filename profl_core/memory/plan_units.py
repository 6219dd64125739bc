"""The planner's layer units and the partitions made of them (``profl plan``; issue 14).

A *unit* is a run of children of one block of the model: cut so that a unit starts at each
child holding a weight layer (convolution, linear, attention) and the parameter-free children
(batch norm, ReLU, pooling) stay with the weight layer before them (``conv, bn, relu`` is one
unit; a ResNet BasicBlock is one unit). A partition is a list of block *groups* over those
units (:mod:`profl_core.models.block_groups` syntax, ``+`` joining pieces of different stages)
plus the model's head: an ordinary :class:`~profl_core.models.ModelSpec` with ``blocks`` set.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass, replace

from torch import nn

from profl_core.errors import ConfigError
from profl_core.models import BlockedModel, ModelSpec

#: Layers that start a unit: the weight layers. Everything else joins the unit before it.
WEIGHT_LAYERS: tuple[type[nn.Module], ...] = (
    nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear, nn.MultiheadAttention,
)


@dataclass(frozen=True)
class Unit:
    """One layer unit: children ``first..last`` of module ``parent`` (dotted names).

    Attributes:
        parent: the module path (``block1``, ``features``; ``""`` for the top level).
        first: the first child's name.
        last: the last child's name (``""``: the unit is ``first`` alone, a leaf block).
    """

    parent: str
    first: str
    last: str

    @property
    def text(self) -> str:
        """The unit as a block group: ``block1.3``, ``block1.0-2`` or ``conv1-maxpool``."""
        name = f"{self.parent}.{self.first}" if self.parent else self.first
        return name if self.last in ("", self.first) else f"{name}-{self.last}"


def _has_weight_layer(module: nn.Module) -> bool:
    return any(isinstance(m, WEIGHT_LAYERS) for m in module.modules())


def _group_parent(group: str) -> str:
    """The module path whose children a block group's block holds: the range's parent for
    ``features.1-3`` (``""`` at the top level), the module itself for a name."""
    if "-" not in group:
        return group
    left = group.rsplit("-", 1)[0]
    return left.rpartition(".")[0]


def block_units(model: BlockedModel) -> list[list[Unit]]:
    """The layer units of every block of the model, in forward order (see the module doc),
    named by their paths in the module the model's block groups refer to."""
    groups = getattr(model, "groups", None) or model.block_names()
    out: list[list[Unit]] = []
    for index, group in enumerate(groups[:model.num_blocks]):
        if "+" in group:
            raise ConfigError(f"block group {group!r} joins pieces; plan from the model's own "
                              "partition")
        children = list(model.block(index).named_children())
        if len(children) < 2:
            parent, _, name = group.rpartition(".")  # a leaf block: one unit, its own group
            out.append([Unit(parent, name, "")])
            continue
        parent = _group_parent(group)
        units: list[Unit] = []
        start = 0
        for k in range(1, len(children) + 1):
            if k == len(children) or _has_weight_layer(children[k][1]):
                units.append(Unit(parent, children[start][0], children[k - 1][0]))
                start = k
        out.append(units)
    return out


def layer_units(model: BlockedModel) -> list[Unit]:
    """Every block's layer units, in forward order (:func:`block_units`)."""
    return [unit for units in block_units(model) for unit in units]


def join(units: Sequence[Unit]) -> str:
    """The block group of consecutive units: runs inside one parent merge into a range and
    runs of different parents are joined with ``+`` (``block1.3-4+block2.0``)."""
    pieces: list[Unit] = []
    for unit in units:
        if pieces and pieces[-1].parent == unit.parent:
            pieces[-1] = Unit(unit.parent, pieces[-1].first, unit.last or unit.first)
        else:
            pieces.append(unit)
    return "+".join(piece.text for piece in pieces)


def head_group(model: BlockedModel) -> str:
    """The block group of the model's head (``head`` for a zoo model)."""
    groups = getattr(model, "groups", None)
    return groups[-1] if groups else "head"


def partition_spec(spec: ModelSpec, units: Sequence[Unit], bounds: Sequence[int], *,
                   head: str = "head") -> ModelSpec:
    """``spec`` cut at unit boundaries ``bounds`` (``0 < b_1 < ... < L``, the end excluded),
    the head group ``head`` last."""
    cuts = [0, *bounds, len(units)]
    groups = [join(units[a:b]) for a, b in itertools.pairwise(cuts)]
    return replace(spec, blocks=(*groups, head))
