"""The block-structured model zoo (DESIGN §3).

``build_model(spec)`` builds any model by name; ``native_spec(name)`` gives the input each
model is meant for (28x28 grayscale for ``cnn``, 32x32 RGB for the others).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import torch

from profl_core.errors import ConfigError
from profl_core.models.base import BlockedModel, ConvBlockedModel, ModelSpec, PoolHead
from profl_core.models.cnn import CNN
from profl_core.models.resnet import ResNet
from profl_core.models.vgg import VGG
from profl_core.models.vit import ViT

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
    """The spec of a model on its native input, with optional field overrides."""
    check_model_name(name)
    base = ModelSpec(name=name, in_channels=1, input_size=28) if name == "cnn" else ModelSpec(
        name=name
    )
    return replace(base, **overrides)  # type: ignore[arg-type]


def check_model_name(name: str) -> None:
    """Raise a one-line ConfigError for an unknown model name."""
    if name not in BUILDERS:
        raise ConfigError(f"unknown model {name!r}; choose one of {', '.join(MODEL_NAMES)}")


def build_model(spec: ModelSpec, *, generator: torch.Generator | None = None) -> BlockedModel:
    """Build a model; with a generator, its initial weights depend only on that generator."""
    check_model_name(spec.name)
    if generator is None:
        return BUILDERS[spec.name](spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(torch.randint(0, 2**62, (1,), generator=generator)))
        return BUILDERS[spec.name](spec)


__all__ = [
    "MODEL_NAMES",
    "BlockedModel",
    "ConvBlockedModel",
    "ModelSpec",
    "PoolHead",
    "build_model",
    "check_model_name",
    "native_spec",
]
