"""Models from outside the zoo: ``pkg.module:factory`` names, block groups, a generic wrapper.

A *user model* is named ``pkg.module:factory``: ``factory`` (a dotted attribute path inside the
importable module ``pkg.module``) is called with ``num_classes=spec.num_classes`` (and
``width=spec.width`` only when the width is not 1) and returns one of

* a :class:`~profl_core.models.base.BlockedModel`: used as it is when it implements
  ``output_module``, else its blocks and head are wrapped (generic output modules);
* a plain ``nn.Module``: its blocks are ``spec.blocks`` when given, else its top-level children
  in order (the last child is the head);
* a tuple ``(nn.Module, [block groups])``: the groups are its default partition
  (``spec.blocks`` still wins).

**Block groups** (:func:`parse_blocks`; also ``--blocks`` and ``blocks = [...]`` in TOML) are
comma-separated; each is a dotted module name (``layer2``, ``features.3``) or a range of
children of one module, ``features.1-3`` (children 1 to 3 of ``features``, both included) or
``conv1-layer1`` at the top level, or such pieces of different modules joined by ``+``
(``layer1.1+layer2.0``, what the partition planner writes). A range's ends are child names,
or positions among the children when no child has that name (for an ``nn.Sequential`` the two
agree). The last group
is the head; the others are ``block1 .. blockT`` (T >= 2). Groups must exist, be disjoint (no
module or parameter in two groups) and compose to the model's forward:
``head(block_T(...block_1(x)))`` equals ``model(x)`` (``torch.allclose``) on a small real
input in eval mode, and the output is ``(batch, num_classes)``. Glue code between modules in a
forward (``torch.flatten(x, 1)``) is not a module and breaks that: put an ``nn.Flatten`` in the
model, or return a BlockedModel. Every error is one line naming the model string and what is
wrong with it.

**The wrapper** (:class:`ExternalModel`) is a BlockedModel whose blocks *share* the user's
modules (a range becomes an ``nn.Sequential`` of the same children, keeping their names), so its
state dict is ``block<i>.*`` and ``head.*``. ProFL's output module of step t is generic: from
the block output shapes (a meta-device forward), one cheap stand-in per missing block k named
``basic<k>`` (:func:`stand_in`: a 3x3 convolution with the stride that matches the shape, batch
norm and ReLU for image-shaped outputs, adaptive average pooling added only when no stride
matches exactly; a linear map when only the last dimension differs), then a fresh copy of the
head (deep copy, every ``reset_parameters`` called).
"""

from __future__ import annotations

import copy
import importlib
import inspect
import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch._subclasses.fake_tensor import unset_fake_temporarily

from profl_core.errors import ConfigError
from profl_core.models.base import BlockedModel, ModelSpec

_NAME = r"[A-Za-z0-9_]+"
GROUP_RE = re.compile(rf"^{_NAME}(?:\.{_NAME})*(?:-{_NAME})?$")
FACTORY_RE = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")
#: Samples of the real input the composition check runs (eval mode, so batch norm is fine).
CHECK_BATCH = 2
#: ``torch.allclose`` tolerances of the composition check: the same kernels on the same input
#: give identical results; the slack only absorbs a different but equivalent reduction order.
CHECK_RTOL, CHECK_ATOL = 1e-4, 1e-5

Builder = Callable[[ModelSpec], "tuple[BlockedModel, nn.Module]"]
"""Builds a model for a spec: the BlockedModel and the module whose forward it must equal."""


def one_line(err: BaseException, limit: int = 160) -> str:
    """An exception as ``Type: message`` on one line, at most ``limit`` characters."""
    text = " ".join(str(err).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


# --- block groups -----------------------------------------------------------------------------


def parse_blocks(text: str, *, where: str = "--blocks") -> tuple[str, ...]:
    """``"features.0-3,features.4,classifier"`` -> ``("features.0-3", "features.4", ...)``.

    Raises:
        ConfigError: an empty group or one that is neither a dotted name nor a range.
    """
    groups = tuple(g.strip() for g in text.split(","))
    check_group_syntax(groups, where=where)
    return groups


def check_group_syntax(groups: Sequence[str], *, where: str) -> None:
    """Raise a one-line ConfigError for a group that is not names or ranges joined by ``+``."""
    for group in groups:
        if not all(GROUP_RE.match(piece) for piece in group.split("+")):
            raise ConfigError(f"{where}: block group {group!r} is not a module name or a range; "
                              "write e.g. layer2, features.3, features.1-3 or layer1.1+layer2.0, "
                              "comma-separated")


@dataclass(frozen=True)
class ResolvedGroup:
    """One block group found in a module.

    Attributes:
        text: the group as written.
        module: the module it names, or an ``nn.Sequential`` of the range's children.
        paths: the dotted names of the modules it covers (one for a name, one per child of a
            range).
    """

    text: str
    module: nn.Module
    paths: tuple[str, ...]


def _children_text(module: nn.Module) -> str:
    names = [name for name, _ in module.named_children()]
    if not names:
        return "it has no children"
    shown = ", ".join(names[:12]) + (", ..." if len(names) > 12 else "")
    return f"its children: {shown}"


def _submodule(root: nn.Module, path: str, *, model: str, group: str) -> nn.Module:
    module = root
    walked: list[str] = []
    for part in path.split(".") if path else []:
        children = dict(module.named_children())
        if part not in children:
            owner = ".".join(walked) or "the model"
            raise ConfigError(f"model {model!r}: block group {group!r}: {owner} has no "
                              f"submodule {part!r} ({_children_text(module)})")
        module = children[part]
        walked.append(part)
    return module


def _child_index(names: list[str], end: str, *, model: str, group: str, owner: str) -> int:
    if end in names:
        return names.index(end)
    if end.isdigit() and int(end) < len(names):
        return int(end)
    raise ConfigError(f"model {model!r}: block group {group!r}: {owner} has no child {end!r} "
                      f"(children: {', '.join(names[:12])}{', ...' if len(names) > 12 else ''})")


def resolve_group(root: nn.Module, group: str, *, model: str) -> ResolvedGroup:
    """Find one group in ``root`` (see the module doc for the syntax)."""
    check_group_syntax([group], where=f"model {model!r}")
    if "+" in group:  # pieces of different parents, run in order: an nn.Sequential of them
        pieces = [resolve_group(root, piece, model=model) for piece in group.split("+")]
        paths = tuple(path for piece in pieces for path in piece.paths)
        modules = [m for piece in pieces
                   for m in (piece.module.children() if "-" in piece.text else [piece.module])]
        # children named by their paths (``layer1_1``): unique, and the state dict says where
        # each came from
        return ResolvedGroup(group, nn.Sequential(OrderedDict(
            (path.replace(".", "_"), m) for path, m in zip(paths, modules, strict=True))),
            paths)
    if "-" not in group:
        return ResolvedGroup(group, _submodule(root, group, model=model, group=group), (group,))
    left, stop = group.rsplit("-", 1)
    parent_path, _, start = left.rpartition(".")
    parent = _submodule(root, parent_path, model=model, group=group)
    owner = parent_path or "the model"
    children = list(parent.named_children())
    names = [name for name, _ in children]
    first = _child_index(names, start, model=model, group=group, owner=owner)
    last = _child_index(names, stop, model=model, group=group, owner=owner)
    if first > last:
        raise ConfigError(f"model {model!r}: block group {group!r}: {start!r} comes after "
                          f"{stop!r} in {owner}; write the range in forward order")
    picked = children[first:last + 1]
    prefix = f"{parent_path}." if parent_path else ""
    return ResolvedGroup(group, nn.Sequential(OrderedDict(picked)),
                         tuple(prefix + name for name, _ in picked))


def _covers(a: str, b: str) -> bool:
    return a == b or b.startswith(a + ".") or a.startswith(b + ".")


def check_disjoint(groups: Sequence[ResolvedGroup], *, model: str) -> None:
    """Raise when two groups name the same module (or one inside the other) or share a
    parameter (tied weights)."""
    for i, first in enumerate(groups):
        for second in groups[i + 1:]:
            for a in first.paths:
                for b in second.paths:
                    if _covers(a, b):
                        raise ConfigError(
                            f"model {model!r}: block groups {first.text!r} and {second.text!r} "
                            f"overlap (both hold {max(a, b, key=len)}); make them disjoint")
    owner: dict[int, str] = {}
    for group in groups:
        for tensor in [*group.module.parameters(), *group.module.buffers()]:
            other = owner.setdefault(id(tensor), group.text)
            if other != group.text:
                raise ConfigError(f"model {model!r}: block groups {other!r} and {group.text!r} "
                                  "share a parameter (tied weights); put both users in one group")


# --- the wrapper and its output modules ---------------------------------------------------------


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


def stand_in(in_shape: Sequence[int], out_shape: Sequence[int], *, model: str,
             block: int, identity: bool = False) -> nn.Module:
    """ProFL's cheap stand-in for a block taking per-sample shape ``in_shape`` to ``out_shape``.

    With ``identity`` a block that keeps its input's shape is stood in for by ``nn.Identity``
    (:attr:`ModelSpec.identity_standins`).

    ``(C, H, W) -> (C', H', W')``: 3x3 convolution (no bias) with the stride that matches,
    batch norm, ReLU, plus adaptive average pooling to ``(H', W')`` when no stride matches
    exactly. Same rank, only the last dimension differs (or nothing does): one ``nn.Linear``.

    Raises:
        ConfigError: any other pair of shapes.
    """
    if identity and tuple(in_shape) == tuple(out_shape):
        return nn.Identity()
    if len(in_shape) == 3 and len(out_shape) == 3:
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
    if len(in_shape) == len(out_shape) >= 1 and tuple(in_shape[:-1]) == tuple(out_shape[:-1]):
        return nn.Linear(in_shape[-1], out_shape[-1])
    raise ConfigError(f"model {model!r}: no stand-in for block{block}, which maps per-sample "
                      f"shape {tuple(in_shape)} to {tuple(out_shape)} (only (C,H,W) -> (C,H,W) "
                      "and last-dimension changes are supported); move the reshape into the "
                      "head or return a BlockedModel with its own output_module")


def fresh_copy(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` with every submodule's ``reset_parameters`` called."""
    clone = copy.deepcopy(module)
    for sub in clone.modules():
        reset = getattr(sub, "reset_parameters", None)
        if callable(reset):
            reset()
    return clone


class ExternalModel(BlockedModel):
    """A BlockedModel over a user's (or torchvision's) modules, with generic output modules.

    Args:
        spec: the model spec (its name is the model string).
        blocks: the block modules in forward order (shared, not copied).
        head: the head module (shared).
        groups: the group text of every block and then the head (for tables and errors).
    """

    def __init__(self, spec: ModelSpec, blocks: Sequence[nn.Module], head: nn.Module, *,
                 groups: Sequence[str]) -> None:
        super().__init__(spec)
        self._set_blocks(blocks, head)
        self.groups: tuple[str, ...] = tuple(groups)
        self._shapes: tuple[tuple[int, ...], ...] | None = None

    def output_shapes(self) -> tuple[tuple[int, ...], ...]:
        """Per-sample output shape of every block (meta-device forward, computed once)."""
        if self._shapes is None:
            with unset_fake_temporarily():
                self._shapes = tuple(self.block_output_shapes())
        return self._shapes

    def output_module(self, step: int) -> nn.Module:
        """``basic<k>`` for every missing block k (:func:`stand_in`), then a fresh head."""
        self._check_step(step)
        shapes = self.output_shapes()
        layers: dict[str, nn.Module] = {}
        for k in range(step + 1, self.num_blocks + 1):
            layers[f"basic{k}"] = stand_in(shapes[k - 2], shapes[k - 1], model=self.spec.name,
                                           block=k, identity=self.spec.identity_standins)
        layers["head"] = fresh_copy(self.head)
        return nn.Sequential(OrderedDict(layers))


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
                         groups=groups)


# --- user factories ---------------------------------------------------------------------------


def is_factory_name(name: str) -> bool:
    """Whether ``name`` is written as a user factory (``pkg.module:factory``)."""
    return ":" in name and not name.startswith("torchvision:")


def load_factory(name: str) -> Callable[..., Any]:
    """Import ``pkg.module`` and return its attribute ``factory`` (a callable).

    Raises:
        ConfigError: malformed name, module not importable, attribute missing, not callable.
    """
    if not FACTORY_RE.match(name):
        raise ConfigError(f"model {name!r}: not a model name; use a zoo name, "
                          "torchvision:NAME or pkg.module:factory")
    module_name, _, attr = name.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
    except Exception as err:  # user code: anything can go wrong while importing it
        raise ConfigError(f"model {name!r}: cannot import {module_name} ({one_line(err)}); "
                          "put its folder on PYTHONPATH or install it") from None
    parts = attr.split(".")
    for i, part in enumerate(parts):
        if not hasattr(target, part):
            owner = ":".join([module_name, ".".join(parts[:i])]) if i else module_name
            raise ConfigError(f"model {name!r}: {owner} has no attribute {part!r}; name a "
                              "function or class defined there")
        target = getattr(target, part)
    if not callable(target):
        raise ConfigError(f"model {name!r}: {attr} is a {type(target).__name__}, not "
                          "callable; name a function or class that returns the model")
    return target  # type: ignore[no-any-return]


def _accepts(factory: Callable[..., Any], argument: str) -> bool:
    try:
        parameters = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):  # no signature (a builtin): let the call decide
        return True
    return any(p.name == argument or p.kind is inspect.Parameter.VAR_KEYWORD
               for p in parameters)


def call_factory(spec: ModelSpec) -> Any:
    """Call the spec's factory with ``num_classes`` (and ``width`` when it is not 1)."""
    factory = load_factory(spec.name)
    kwargs: dict[str, Any] = {"num_classes": spec.num_classes}
    if not _accepts(factory, "num_classes"):
        raise ConfigError(f"model {spec.name!r}: the factory takes no num_classes argument; "
                          "add a num_classes parameter")
    if spec.width != 1.0:
        if not _accepts(factory, "width"):
            raise ConfigError(f"model {spec.name!r}: width={spec.width:g} but the factory takes "
                              "no width argument; use width 1 or add a width parameter")
        kwargs["width"] = spec.width
    call = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
    try:
        return factory(**kwargs)
    except ConfigError:
        raise
    except Exception as err:  # user code
        raise ConfigError(f"model {spec.name!r}: the factory({call}) raised "
                          f"{one_line(err)}") from None


def _overrides_output_module(model: BlockedModel) -> bool:
    return type(model).output_module is not BlockedModel.output_module


def build_factory_model(spec: ModelSpec) -> tuple[BlockedModel, nn.Module]:
    """A user model and the module whose forward its blocks must compose to (a
    :data:`Builder`)."""
    made = call_factory(spec)
    groups: Sequence[str] = ()
    if isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module):
        made, groups = made
        if isinstance(groups, str) or not isinstance(groups, Sequence) or not all(
            isinstance(g, str) for g in groups
        ):
            raise ConfigError(f"model {spec.name!r}: the factory returned (module, "
                              f"{type(groups).__name__}); the second item must be a list of "
                              "block-group strings")
        check_group_syntax(groups, where=f"model {spec.name!r}")
    if not isinstance(made, nn.Module):
        raise ConfigError(f"model {spec.name!r}: the factory returned a {type(made).__name__}, "
                          "not an nn.Module, a BlockedModel or (nn.Module, [block groups])")
    if isinstance(made, BlockedModel):
        if spec.blocks or groups:
            raise ConfigError(f"model {spec.name!r}: the factory returns a BlockedModel, whose "
                              "blocks are fixed; drop --blocks / blocks = [...]")
        if made.num_blocks < 2:
            raise ConfigError(f"model {spec.name!r}: the BlockedModel has {made.num_blocks} "
                              "block(s); ProFL needs at least two")
        if _overrides_output_module(made):
            made.spec = spec
            return made, made
        blocks = [made.block(i) for i in range(made.num_blocks)]
        return ExternalModel(spec, blocks, made.head,
                             groups=[*made.block_names(), "head"]), made
    chosen = spec.blocks or tuple(groups) or tuple(name for name, _ in made.named_children())
    return wrap(spec, made, chosen), made


# --- the composition check --------------------------------------------------------------------


_VERIFIED: set[ModelSpec] = set()


def verify(spec: ModelSpec, builder: Builder) -> None:
    """Check once per spec that the builder's blocks compose to the model's forward.

    Builds the model on the CPU from a private seed (outside any fake mode and whatever the
    default device), runs the reference module and the blocks-then-head on one random batch of
    :data:`CHECK_BATCH` samples in eval mode, compares them with ``torch.allclose`` and builds
    the output module of step 1 (every stand-in). The global RNG is not touched.

    Raises:
        ConfigError: naming the model string and what is wrong.
    """
    if spec in _VERIFIED:
        return
    name = spec.name
    shape = "x".join(map(str, (CHECK_BATCH, *spec.input_shape)))
    with unset_fake_temporarily(), torch.device("cpu"), torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model, reference = builder(spec)
        model.eval()
        reference.eval()
        dtype = next(model.parameters()).dtype
        x = torch.randn((CHECK_BATCH, *spec.input_shape),
                        generator=torch.Generator().manual_seed(0), dtype=dtype)
        with torch.no_grad():
            try:
                expected = reference(x)
            except Exception as err:  # user code
                raise ConfigError(f"model {name!r}: its forward failed on a {shape} input "
                                  f"({one_line(err)}); set the input with --in-channels and "
                                  "--input-size") from None
            if not isinstance(expected, Tensor):
                raise ConfigError(f"model {name!r}: its forward returned a "
                                  f"{type(expected).__name__}, not a Tensor of logits")
            want = (CHECK_BATCH, spec.num_classes)
            if tuple(expected.shape) != want:
                raise ConfigError(f"model {name!r}: output shape {tuple(expected.shape)} on a "
                                  f"{shape} input, not (batch, classes) = {want}; set "
                                  "--num-classes or fix the head")
            h = x
            for i, part in enumerate([*model.block_names(), "head"]):
                module = model.head if part == "head" else model.block(i)
                try:
                    h = module(h)
                except Exception as err:  # user code
                    raise ConfigError(
                        f"model {name!r}: the blocks do not compose to its forward: {part} "
                        f"failed on the output of the group before it ({one_line(err)}); "
                        "list the modules in forward order with no glue code between "
                        "them") from None
            if not isinstance(h, Tensor) or h.shape != expected.shape:
                got = tuple(h.shape) if isinstance(h, Tensor) else type(h).__name__
                raise ConfigError(f"model {name!r}: the blocks do not compose to its forward: "
                                  f"blocks then head give {got}, the forward "
                                  f"{tuple(expected.shape)}")
            if not torch.allclose(h, expected, rtol=CHECK_RTOL, atol=CHECK_ATOL):
                diff = float((h - expected).abs().max())
                raise ConfigError(f"model {name!r}: the blocks do not compose to its forward "
                                  f"(max abs diff {diff:.3g} on a {shape} input in eval "
                                  "mode); list every module the forward runs, in order, with "
                                  "no glue code between them")
        model.output_module(1)  # every stand-in can be built
    _VERIFIED.add(spec)
