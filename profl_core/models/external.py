"""User models: loading and calling a ``pkg.module:factory``.

A *user model* is named ``pkg.module:factory``: ``factory`` (a dotted attribute path inside the
importable module ``pkg.module``) is called with ``num_classes=spec.num_classes`` (and
``width=spec.width`` only when the width is not 1) and returns one of

* a :class:`~profl_core.models.base.BlockedModel`: used as it is when it implements
  ``output_module``, else its blocks and head are wrapped
  (:class:`~profl_core.models.wrapper.ExternalModel`, generic output modules);
* a plain ``nn.Module``: its blocks are ``spec.blocks`` when given, else its top-level children
  in order (the last child is the head);
* a tuple ``(nn.Module, [block groups])``: the groups
  (:mod:`profl_core.models.block_groups` syntax) are its default partition (``spec.blocks``
  still wins).

Whatever goes wrong in user code (importing it, calling the factory) is a one-line ConfigError
naming the model string. That the blocks compose to the model's forward is checked by
:func:`profl_core.models.composition.verify`.
"""

from __future__ import annotations

import importlib
import inspect
import re
from collections.abc import Callable, Sequence
from typing import Any

from torch import nn

from profl_core.errors import ConfigError
from profl_core.models.base import BlockedModel, ModelSpec
from profl_core.models.block_groups import check_group_syntax
from profl_core.models.wrapper import ExternalModel, wrap

FACTORY_RE = re.compile(r"^[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*$")


def one_line(err: BaseException, limit: int = 160) -> str:
    """An exception as ``Type: message`` on one line, at most ``limit`` characters."""
    text = " ".join(str(err).split())
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return f"{type(err).__name__}: {text}" if text else type(err).__name__



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
    :data:`~profl_core.models.composition.Builder`)."""
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
