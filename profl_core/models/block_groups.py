"""The block-group grammar: which modules of a model make up each block.

**Block groups** (:func:`parse_blocks`; also ``--blocks`` and ``blocks = [...]`` in TOML and
suites) are comma-separated; each is a dotted module name (``layer2``, ``features.3``) or a range
of children of one module, ``features.1-3`` (children 1 to 3 of ``features``, both included) or
``conv1-layer1`` at the top level, or such pieces of different modules joined by ``+``
(``layer1.1+layer2.0``, what the partition planner writes). A range's ends are child names,
or positions among the children when no child has that name (for an ``nn.Sequential`` the two
agree). The last group is the head; the others are ``block1 .. blockT`` (T >= 2). Groups must
exist (:func:`resolve_group`) and be disjoint (:func:`check_disjoint`: no module or parameter in
two groups); that they compose to the model's forward is
:func:`profl_core.models.composition.verify`'s check. Every error is one line naming the model
string (or the option) and what is wrong with it.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from torch import nn

from profl_core.errors import ConfigError

_NAME = r"[A-Za-z0-9_]+"
GROUP_RE = re.compile(rf"^{_NAME}(?:\.{_NAME})*(?:-{_NAME})?$")

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
