"""The block-structured model zoo (DESIGN §3), torchvision's models and user models.

``build_model(spec)`` builds any model by name; ``native_spec(name)`` gives the input each
model is meant for (28x28 grayscale for ``cnn``, 32x32 RGB with 10 classes for the others).
A name is one of three kinds:

* a zoo model (:data:`MODEL_NAMES`): ``cnn``, ``resnet18`` ...; its blocks are fixed;
* ``torchvision:NAME`` (:data:`TORCHVISION_MODELS`, :mod:`profl_core.models.torchvision_zoo`):
  torchvision's model with random weights, cut into resolution stages (or ``spec.blocks``);
* ``pkg.module:factory`` (:mod:`profl_core.models.external`): a user callable returning a
  BlockedModel or a plain module whose blocks are ``spec.blocks`` or its top-level children.

Torchvision and user models are checked once per spec (blocks compose to the forward on a
small real input, :mod:`profl_core.models.composition`) before they are built; their blocks are
block groups (:mod:`profl_core.models.block_groups`) of the model's own modules, wrapped with
generic output modules (:mod:`profl_core.models.wrapper`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch
from torch import nn

from profl_core.errors import ConfigError
from profl_core.models.base import (
    BlockedModel,
    ConvBlockedModel,
    ModelSpec,
    PoolHead,
    fitted_basic_layers,
    on_meta,
)
from profl_core.models.block_groups import parse_blocks
from profl_core.models.cnn import CNN
from profl_core.models.composition import Builder, verify
from profl_core.models.external import build_factory_model, is_factory_name, load_factory
from profl_core.models.resnet import ResNet
from profl_core.models.torchvision_zoo import (
    TORCHVISION_MODELS,
    build_torchvision_model,
    family_of,
    is_torchvision_name,
)
from profl_core.models.vgg import VGG
from profl_core.models.vit import ViT
from profl_core.models.wrapper import ExternalModel, wrap

BUILDERS: dict[str, Callable[[ModelSpec], BlockedModel]] = {
    "cnn": CNN,
    "resnet18": ResNet,
    "resnet34": ResNet,
    "vgg11": VGG,
    "vgg16": VGG,
    "vit": ViT,
}
MODEL_NAMES: tuple[str, ...] = tuple(BUILDERS)


def native_spec(name: str, **overrides: object) -> ModelSpec:
    """The spec of a model on its native input, with optional field overrides.

    Torchvision and user models default to 3x32x32 inputs (CIFAR, like the zoo) and 10 classes.
    """
    check_model_name(name)
    base = ModelSpec(name=name, in_channels=1, input_size=28) if name == "cnn" else ModelSpec(
        name=name
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def check_model_name(name: str) -> None:
    """Raise a one-line ConfigError for a name that is no zoo, torchvision or user model.

    A user model's module is imported and its factory looked up (not called).
    """
    if name in BUILDERS:
        return
    if is_torchvision_name(name):
        family_of(name)
        return
    if is_factory_name(name):
        load_factory(name)
        return
    raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}, "
                      "torchvision:NAME or pkg.module:factory")


def _builder(spec: ModelSpec) -> Callable[[ModelSpec], BlockedModel]:
    """How to build ``spec``: a zoo class, or a checked torchvision/user builder."""
    check_model_name(spec.name)
    if spec.name in BUILDERS and not spec.blocks and not spec.identity_standins:
        return BUILDERS[spec.name]
    external: Builder = (_regrouped_zoo_model if spec.name in BUILDERS
                         else build_torchvision_model if is_torchvision_name(spec.name)
                         else build_factory_model)
    verify(spec, external)
    return lambda s: external(s)[0]


def _regrouped_zoo_model(spec: ModelSpec) -> tuple[BlockedModel, nn.Module]:
    """A zoo model cut into ``spec.blocks`` (groups over its ``block<i>`` children, e.g. a
    planned partition, :mod:`profl_core.memory.plan`; its own stages when empty), with generic
    output modules."""
    zoo = BUILDERS[spec.name](replace(spec, blocks=(), identity_standins=False))
    return wrap(spec, zoo, spec.blocks or (*zoo.block_names(), "head")), zoo


def partition_blocks(spec: ModelSpec) -> int | None:
    """The block count of a spec whose groups are its blocks (``len(spec.blocks) - 1``: a
    torchvision, user or regrouped zoo model cut into ``spec.blocks``), after the checks
    :func:`build_model` makes (the composition check, the stand-ins), without building it;
    None when only building tells (a zoo model's own stages, a user's BlockedModel).

    With groups the model is an :class:`ExternalModel`, whose stand-ins all have weights unless
    identity stand-ins replace some, so every shrinking step of such a spec fits a basic
    layer (:func:`profl_core.memory.case.fitted_steps`)."""
    _builder(spec)
    return len(spec.blocks) - 1 if spec.blocks else None


def build_model(spec: ModelSpec, *, generator: torch.Generator | None = None) -> BlockedModel:
    """Build a model; with a generator, its initial weights depend only on that generator."""
    build = _builder(spec)
    if generator is None:
        return build(spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        return build(spec)


__all__ = [
    "MODEL_NAMES",
    "TORCHVISION_MODELS",
    "BlockedModel",
    "ConvBlockedModel",
    "ExternalModel",
    "ModelSpec",
    "PoolHead",
    "build_model",
    "check_model_name",
    "fitted_basic_layers",
    "native_spec",
    "on_meta",
    "parse_blocks",
    "partition_blocks",
]
