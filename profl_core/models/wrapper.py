"""The wrapper: a BlockedModel over someone else's modules, with generic output modules.

:class:`ExternalModel` is a BlockedModel whose blocks *share* the modules of a user's (or
torchvision's, or a regrouped zoo) model, cut into block groups
(:mod:`profl_core.models.block_groups`; a range becomes an ``nn.Sequential`` of the same
children, keeping their names), so its state dict is ``block<i>.*`` and ``head.*``. ProFL's
output module of step t is generic: from the block output shapes (a meta-device forward), one
cheap stand-in per missing block k named ``basic<k>`` (:func:`stand_in`: a 3x3 convolution with
the stride that matches the shape, batch norm and ReLU for image-shaped outputs, adaptive
average pooling added only when no stride matches exactly; a linear map when only the last
dimension differs), then a fresh copy of the head (deep copy, every ``reset_parameters``
called).

The modules a model runs in order are its *atoms* (:func:`atoms`): every group's modules with
each plain ``nn.Sequential`` replaced by its children. Two partitions of the same model with
the same atoms compute the same function (a group runs its atoms in order), whatever their
block boundaries; the composition check is done once per atom chain
(:func:`profl_core.models.composition.verify`), and a block's output shape is remembered per
atom prefix (:func:`prefix_shapes`), so the partitions of one model that the planner measures
run their meta-device forward once per unit boundary, not once per partition.
"""

from __future__ import annotations

import copy
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import replace

from torch import nn
from torch._subclasses.fake_tensor import unset_fake_temporarily

from profl_core.errors import ConfigError
from profl_core.models.base import BlockedModel, ModelSpec, meta_shapes
from profl_core.models.block_groups import ResolvedGroup, check_disjoint, resolve_group

#: Per-sample output shapes by ``(spec with no blocks, atom prefix)`` (:func:`prefix_shapes`).
_SHAPES: dict[tuple[ModelSpec, tuple[str, ...]], tuple[int, ...]] = {}
#: Entries :data:`_SHAPES` keeps at most (it is emptied when full).
SHAPE_CACHE_SIZE = 65536


def _stride(size: int, target: int) -> tuple[int, bool]:
    """The stride of a 3x3, padding-1 convolution taking ``size`` to ``target`` and whether it
    is exact; else the largest stride that keeps at least ``target`` (pooling finishes it)."""
    best = 1
    for stride in range(1, max(size, 1) + 1):
        out = (size - 1) // stride + 1
        if out == target:
            return stride, True
        if out >= target:
            best = stride
    return best, False


def check_stand_in(in_shape: Sequence[int], out_shape: Sequence[int], *, model: str,
                   block: int) -> None:
    """Raise the one-line ConfigError of :func:`stand_in` when it has no stand-in for the
    pair of shapes (nothing is built)."""
    if len(in_shape) == 3 and len(out_shape) == 3:
        return
    if len(in_shape) == len(out_shape) >= 1 and tuple(in_shape[:-1]) == tuple(out_shape[:-1]):
        return
    raise ConfigError(f"model {model!r}: no stand-in for block{block}, which maps per-sample "
                      f"shape {tuple(in_shape)} to {tuple(out_shape)} (only (C,H,W) -> (C,H,W) "
                      "and last-dimension changes are supported); move the reshape into the "
                      "head or return a BlockedModel with its own output_module")


def stand_in(in_shape: Sequence[int], out_shape: Sequence[int], *, model: str,
             block: int, identity: bool = False) -> nn.Module:
    """ProFL's cheap stand-in for a block taking per-sample shape ``in_shape`` to ``out_shape``.

    With ``identity`` a block that keeps its input's shape is stood in for by ``nn.Identity``
    (:attr:`ModelSpec.identity_standins`).

    ``(C, H, W) -> (C', H', W')``: 3x3 convolution (no bias) with the stride that matches,
    batch norm, ReLU, plus adaptive average pooling to ``(H', W')`` when no stride matches
    exactly. Same rank, only the last dimension differs (or nothing does): one ``nn.Linear``.

    Raises:
        ConfigError: any other pair of shapes (:func:`check_stand_in`).
    """
    if identity and tuple(in_shape) == tuple(out_shape):
        return nn.Identity()
    check_stand_in(in_shape, out_shape, model=model, block=block)
    if len(in_shape) == 3:
        (c, h, w), (c_out, h_out, w_out) = in_shape, out_shape
        stride_h, exact_h = _stride(h, h_out)
        stride_w, exact_w = _stride(w, w_out)
        layers: list[nn.Module] = [
            nn.Conv2d(c, c_out, 3, stride=(stride_h, stride_w), padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        ]
        if not (exact_h and exact_w):
            layers.append(nn.AdaptiveAvgPool2d((h_out, w_out)))
        return nn.Sequential(*layers)
    return nn.Linear(in_shape[-1], out_shape[-1])


def _is_plain_sequential(module: nn.Module) -> bool:
    return isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward


def atoms(root: nn.Module, group: ResolvedGroup) -> tuple[str, ...]:
    """The dotted paths, in ``root``, of the modules ``group`` runs in order: its paths, each
    plain ``nn.Sequential`` (whose forward runs its children in order) replaced by its
    children's atoms."""
    out: list[str] = []

    def expand(path: str, module: nn.Module) -> None:
        children = list(module.named_children())
        if _is_plain_sequential(module) and children:
            for name, child in children:
                expand(f"{path}.{name}", child)
        else:
            out.append(path)

    for path in group.paths:
        expand(path, root.get_submodule(path))
    return tuple(out)


def prefix_shapes(spec: ModelSpec, blocks: Sequence[nn.Module],
                  block_atoms: Sequence[tuple[str, ...]]) -> list[tuple[int, ...]]:
    """Per-sample output shape of every block of a model of ``spec`` (on the meta device),
    remembered per atom prefix: the output of the blocks up to ``k`` is the output of their
    atoms, whatever the boundaries before it, so a shape known from another partition of the
    same model is not computed again, and only the blocks after the last known one run."""
    base = replace(spec, blocks=(), identity_standins=False)
    keys: list[tuple[ModelSpec, tuple[str, ...]]] = []
    prefix: tuple[str, ...] = ()
    for chain in block_atoms:
        prefix = (*prefix, *chain)
        keys.append((base, prefix))
    shapes: list[tuple[int, ...]] = []
    while len(shapes) < len(keys) and keys[len(shapes)] in _SHAPES:
        shapes.append(_SHAPES[keys[len(shapes)]])
    if len(shapes) < len(keys):
        if len(_SHAPES) >= SHAPE_CACHE_SIZE:
            _SHAPES.clear()
        with unset_fake_temporarily():
            new = meta_shapes(blocks[len(shapes):], shapes[-1] if shapes else spec.input_shape)
        _SHAPES.update(zip(keys[len(shapes):], new, strict=True))
        shapes += new
    return shapes


def fresh_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every submodule's ``reset_parameters`` called."""
    clone = copy.deepcopy(module)
    for sub in clone.modules():
        reset = getattr(sub, "reset_parameters", None)
        if callable(reset):
            reset()
    return clone


def stand_in_module(blocks: Sequence[Sequence[Sequence[int]]], head: nn.Module, *, model: str,
                    first: int, identity: bool = False) -> nn.Sequential:
    """An output module: ``basic<k>`` (:func:`stand_in`) for the missing blocks ``k = first,
    first + 1, ...`` whose per-sample (input, output) shapes are ``blocks``, then a fresh copy
    of ``head``."""
    layers: dict[str, nn.Module] = {}
    for k, (in_shape, out_shape) in enumerate(blocks, start=first):
        layers[f"basic{k}"] = stand_in(in_shape, out_shape, model=model, block=k,
                                       identity=identity)
    layers["head"] = fresh_copy(head)
    return nn.Sequential(OrderedDict(layers))


class ExternalModel(BlockedModel):
    """A BlockedModel over a user's (or torchvision's) modules, with generic output modules.

    Args:
        spec: the model spec (its name is the model string).
        blocks: the block modules in forward order (shared, not copied).
        head: the head module (shared).
        groups: the group text of every block and then the head (for tables and errors).
        atoms: the :func:`atoms` of every group, the head's last; ``()``: unknown (the blocks
            of a user's BlockedModel), and shapes are not remembered across partitions.
    """

    def __init__(self, spec: ModelSpec, blocks: Sequence[nn.Module], head: nn.Module, *,
                 groups: Sequence[str], atoms: Sequence[tuple[str, ...]] = ()) -> None:
        super().__init__(spec)
        self._set_blocks(blocks, head)
        self.groups: tuple[str, ...] = tuple(groups)
        self.atoms: tuple[tuple[str, ...], ...] = tuple(atoms)
        self._shapes: tuple[tuple[int, ...], ...] | None = None

    def block_output_shapes(self) -> list[tuple[int, ...]]:
        """Per-sample output shape of every block; remembered per atom prefix
        (:func:`prefix_shapes`) when the atoms are known."""
        if not self.atoms:
            return super().block_output_shapes()
        blocks = [self.block(i) for i in range(self.num_blocks)]
        return prefix_shapes(self.spec, blocks, self.atoms[:self.num_blocks])

    def output_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Per-sample output shape of every block (meta-device forward, computed once)."""
        if self._shapes is None:
            with unset_fake_temporarily():
                self._shapes = tuple(self.block_output_shapes())
        return self._shapes

    def check_stand_ins(self) -> None:
        """Raise what :meth:`output_module` of step 1 would for a block without a stand-in,
        building nothing (:func:`check_stand_in`)."""
        shapes = self.output_shapes()
        for k in range(2, self.num_blocks + 1):
            if not (self.spec.identity_standins and shapes[k - 2] == shapes[k - 1]):
                check_stand_in(shapes[k - 2], shapes[k - 1], model=self.spec.name, block=k)

    def output_module(self, step: int) -> nn.Module:
        """``basic<k>`` for every missing block k (:func:`stand_in`), then a fresh head."""
        self._check_step(step)
        shapes = self.output_shapes()
        return stand_in_module([shapes[k - 2:k] for k in range(step + 1, self.num_blocks + 1)],
                               self.head, model=self.spec.name, first=step + 1,
                               identity=self.spec.identity_standins)


def wrap(spec: ModelSpec, module: nn.Module, groups: Sequence[str]) -> ExternalModel:
    """The :class:`ExternalModel` of ``module`` cut into ``groups`` (the last is the head)."""
    model = spec.name
    if len(groups) < 3:
        raise ConfigError(f"model {model!r}: {len(groups)} block group(s) "
                          f"({', '.join(groups) or 'none'}); give at least two blocks and a "
                          "head, e.g. --blocks features.0-3,features.4-7,classifier")
    resolved = [resolve_group(module, group, model=model) for group in groups]
    check_disjoint(resolved, model=model)
    return ExternalModel(spec, [g.module for g in resolved[:-1]], resolved[-1].module,
                         groups=groups, atoms=[atoms(module, g) for g in resolved])
