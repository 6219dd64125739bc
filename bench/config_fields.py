"""Dataclass fields as settings: their type, default and help, for CLI flags and TOML values.

A config dataclass is the one list of its settings. :func:`field_specs` reads each field's type
from its annotation, its default from the field and its help from the "Attributes:" section of
the class docstring; :func:`add_flag` turns one into an argparse flag (``per_round`` ->
``--per-round``) and :func:`check_value` checks a TOML value against it (bool is not int).
"""

from __future__ import annotations

import argparse
import inspect
import re
import types
from collections.abc import Mapping
from dataclasses import MISSING, dataclass, fields
from pathlib import Path
from typing import Any, Literal, Union, get_args, get_origin, get_type_hints

from profl_core.errors import ConfigError

#: Scalar types a setting may have (``many``: a tuple of them).
KINDS: tuple[type, ...] = (bool, int, float, str, Path)
_NAMES = {bool: "bool (true/false)", int: "an integer", float: "a number", str: "a string",
          Path: "a path string"}


@dataclass(frozen=True)
class FieldSpec:
    """One setting: ``kind`` in :data:`KINDS` (None: not a scalar, e.g. a mapping)."""

    name: str
    kind: type | None
    default: Any
    help: str = ""
    optional: bool = False  # None is a valid value
    many: bool = False  # a tuple of ``kind``
    choices: tuple[str, ...] | None = None

    @property
    def flag(self) -> str:
        """The command-line flag: ``per_round`` -> ``--per-round``."""
        return "--" + self.name.replace("_", "-")


def attribute_docs(cls: type) -> dict[str, str]:
    """``{name: text}`` from the "Attributes:" section of ``cls``'s docstring (one line each)."""
    doc = inspect.getdoc(cls) or ""
    out: dict[str, str] = {}
    inside, current = False, ""
    for line in doc.splitlines():
        if line.strip() == "Attributes:":
            inside = True
            continue
        if not inside:
            continue
        if line and not line.startswith(" "):
            break
        match = re.match(r"^ {4}(\w+):\s*(.*)$", line)
        if match:
            current = match.group(1)
            out[current] = match.group(2)
        elif current and line.strip():
            out[current] += " " + line.strip()
    return {k: v.replace("``", "").strip() for k, v in out.items()}


def _unwrap(hint: Any) -> tuple[type | None, bool, bool, tuple[str, ...] | None]:
    """(kind, optional, many, choices) of a type hint."""
    optional = False
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        optional = len(args) < len(get_args(hint))
        if len(args) != 1:
            return None, optional, False, None
        hint, origin = args[0], get_origin(args[0])
    if origin is Literal:
        values = get_args(hint)
        if all(isinstance(v, str) for v in values):
            return str, optional, False, tuple(values)
        return None, optional, False, None
    if origin is tuple:
        items = get_args(hint)
        if len(items) == 2 and items[1] is Ellipsis and items[0] in KINDS:
            return items[0], optional, True, None
        return None, optional, False, None
    if hint in KINDS:
        return hint, optional, False, None
    return None, optional, False, None


def field_specs(cls: type) -> dict[str, FieldSpec]:
    """Every field of dataclass ``cls`` as a :class:`FieldSpec`, in field order."""
    hints = get_type_hints(cls)
    docs = attribute_docs(cls)
    out: dict[str, FieldSpec] = {}
    for f in fields(cls):
        kind, optional, many, choices = _unwrap(hints[f.name])
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else MISSING)
        out[f.name] = FieldSpec(name=f.name, kind=kind, default=default,
                                help=docs.get(f.name, ""), optional=optional, many=many,
                                choices=choices)
    return out


def check_value(spec: FieldSpec, value: Any, where: str) -> Any:
    """``value`` (from TOML or a caller) checked against ``spec``; lists become tuples.

    Raises:
        ConfigError: One line, ``<where> <name> = <value>; use ...``.
    """
    if spec.kind is None:
        raise ConfigError(f"{where} {spec.name}: not a plain setting here")

    def one(item: Any) -> Any:
        kind = spec.kind
        if kind is bool:
            ok = isinstance(item, bool)
        elif kind is float:
            ok = isinstance(item, int | float) and not isinstance(item, bool)
            item = float(item) if ok else item
        elif kind is Path:
            ok = isinstance(item, str | Path)
            item = Path(item) if ok else item
        else:
            ok = isinstance(item, kind) and not isinstance(item, bool)  # type: ignore[arg-type]
        if ok and spec.choices is not None and item not in spec.choices:
            raise ConfigError(f"{where} {spec.name} = {item!r}; use one of "
                              f"{', '.join(map(repr, spec.choices))}")
        if not ok:
            raise ConfigError(f"{where} {spec.name} = {value!r}; use {_use(spec)}")
        return item

    if spec.many:
        if not isinstance(value, list | tuple) or not value:
            raise ConfigError(f"{where} {spec.name} = {value!r}; use {_use(spec)}")
        return tuple(one(v) for v in value)
    return one(value)


def _use(spec: FieldSpec) -> str:
    name = _NAMES[spec.kind] if spec.kind is not None else "a value"
    return f"a non-empty list of {name.removeprefix('a ').removeprefix('an ')}s" \
        if spec.many else name


def add_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    spec: FieldSpec,
    *,
    help: str | None = None,
    suppress: bool = False,
) -> None:
    """Add ``spec`` as ``--name`` (bools: ``--name/--no-name``); ``suppress``: no default, so
    the attribute is set only when the flag is given."""
    text = (spec.help if help is None else help).replace("%", "%%")
    kwargs: dict[str, Any] = {"dest": spec.name}
    if suppress:
        kwargs["default"] = argparse.SUPPRESS
    else:
        kwargs["default"] = spec.default
        if spec.kind is bool:
            shown = spec.flag if spec.default else "--no-" + spec.flag[2:]
        else:
            shown = " ".join(map(str, spec.default)) if spec.many else str(spec.default)
        if spec.default not in (None, "") and "default" not in text:
            text += f" (default: {shown})".replace("%", "%%")
    if spec.kind is bool:
        parser.add_argument(spec.flag, action=argparse.BooleanOptionalAction, help=text,
                            **kwargs)
        return
    if spec.kind is None:
        raise TypeError(f"{spec.name}: no command-line form for this field type")
    kwargs["type"] = spec.kind
    if spec.many:
        kwargs["nargs"] = "+"
        kwargs["metavar"] = spec.name.upper()
    if spec.choices is not None:
        kwargs["choices"] = spec.choices
    parser.add_argument(spec.flag, help=text, **kwargs)


def merge_specs(owners: Mapping[str, Mapping[str, FieldSpec]]) -> dict[str, FieldSpec]:
    """One spec per name over several classes' specs (``{owner: specs}``): the first owner's
    type and help; choices joined. Raises TypeError when two owners disagree on the type."""
    out: dict[str, FieldSpec] = {}
    for specs in owners.values():
        for name, spec in specs.items():
            seen = out.get(name)
            if seen is None:
                out[name] = spec
                continue
            if (seen.kind, seen.many) != (spec.kind, spec.many):
                raise TypeError(f"option {name}: different types in different methods")
            choices = None if seen.choices is None or spec.choices is None else tuple(
                dict.fromkeys((*seen.choices, *spec.choices)))
            out[name] = FieldSpec(name=name, kind=seen.kind, default=seen.default,
                                  help=seen.help, optional=seen.optional or spec.optional,
                                  many=seen.many, choices=choices)
    return out


__all__ = ["KINDS", "FieldSpec", "add_flag", "attribute_docs", "check_value", "field_specs",
           "merge_specs"]
