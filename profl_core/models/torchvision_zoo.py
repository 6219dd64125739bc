"""``torchvision:NAME``: torchvision classification models cut into resolution stages.

The model is torchvision's own (``weights=None``: random weights, nothing is downloaded), built
with ``num_classes``; ``in_channels != 3`` replaces the stem convolution by one with that many
input channels (same shape otherwise, Kaiming-normal fan-out init like torchvision's convs).
Width: only ``mobilenet_v2`` has a multiplier (``width_mult``, rounded to multiples of 8 by
torchvision, not the zoo's ``ceil`` rule); any other family with ``width != 1`` is a
ConfigError.

torchvision's forwards end in glue code (``torch.flatten(x, 1)``, ShuffleNet's
``x.mean([2, 3])``), so each model is *restructured* into an ``nn.Sequential`` of the same
modules whose forward is torchvision's: the feature modules under their torchvision names, then
``head`` = ``pool`` (the model's pooling), ``flatten`` and ``classifier`` (its classifier or
``fc``). Block groups (``spec.blocks``, ``--blocks``) are names in that module, e.g.
``features.0-3``; the composition check compares against torchvision's forward.

**Default partition: resolution stages.** The stage modules (``features.*`` for MobileNet and
EfficientNet; ``conv1 .. layer4`` for ResNet; ``conv1 .. conv5`` for ShuffleNet) are run once
on the meta device; a new block starts at every module that changes the spatial resolution,
except that a module without parameters (a max-pool) stays in the block before it. At 32x32
input, T is 5 for the MobileNets and EfficientNet-B0 and 4 for ResNet18 (stem + layer1, layer2,
layer3, layer4, as in the zoo) and ShuffleNetV2 (conv1 + maxpool, stage2, stage3, stage4 +
conv5); :func:`default_groups` gives the group strings.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, replace

import torch
import torchvision.models as tvm
from torch import Tensor, nn
from torch._subclasses.fake_tensor import unset_fake_temporarily

from profl_core.errors import ConfigError
from profl_core.models.base import BlockedModel, ModelSpec, SkipMetaFills, on_meta
from profl_core.models.wrapper import wrap

PREFIX = "torchvision:"


class SpatialMean(nn.Module):
    """``x.mean([2, 3])``: ShuffleNetV2's global pooling, as a module."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean([2, 3])


def _head(pool: nn.Module, classifier: nn.Module) -> nn.Sequential:
    return nn.Sequential(OrderedDict(pool=pool, flatten=nn.Flatten(1), classifier=classifier))


def _features_body(net: nn.Module, pool: nn.Module) -> nn.Sequential:
    return nn.Sequential(OrderedDict(features=net.features,
                                     head=_head(pool, net.get_submodule("classifier"))))


def _mobilenet_v2(net: nn.Module) -> nn.Sequential:
    return _features_body(net, nn.AdaptiveAvgPool2d((1, 1)))  # functional in torchvision


def _pooled_features(net: nn.Module) -> nn.Sequential:
    return _features_body(net, net.get_submodule("avgpool"))


def _resnet(net: nn.Module) -> nn.Sequential:
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    body = OrderedDict((n, net.get_submodule(n)) for n in names)
    body["head"] = _head(net.get_submodule("avgpool"), net.get_submodule("fc"))
    return nn.Sequential(body)


def _shufflenet(net: nn.Module) -> nn.Sequential:
    names = ("conv1", "maxpool", "stage2", "stage3", "stage4", "conv5")
    body = OrderedDict((n, net.get_submodule(n)) for n in names)
    body["head"] = nn.Sequential(OrderedDict(pool=SpatialMean(),
                                             classifier=net.get_submodule("fc")))
    return nn.Sequential(body)


@dataclass(frozen=True)
class Family:
    """How one torchvision model is restructured and staged.

    Attributes:
        restructure: torchvision model -> the ``nn.Sequential`` of its modules (see module doc).
        stages: the module in the restructured model whose children are staged (``""``: the
            top level, head excluded).
        width_argument: the constructor's width multiplier argument, if it has one.
    """

    restructure: Callable[[nn.Module], nn.Sequential]
    stages: str
    width_argument: str | None = None


FAMILIES: dict[str, Family] = {
    "mobilenet_v2": Family(_mobilenet_v2, "features", width_argument="width_mult"),
    "mobilenet_v3_small": Family(_pooled_features, "features"),
    "mobilenet_v3_large": Family(_pooled_features, "features"),
    "efficientnet_b0": Family(_pooled_features, "features"),
    "shufflenet_v2_x1_0": Family(_shufflenet, ""),
    "resnet18": Family(_resnet, ""),
}
TORCHVISION_MODELS: tuple[str, ...] = tuple(PREFIX + name for name in FAMILIES)


def is_torchvision_name(name: str) -> bool:
    """Whether ``name`` is written as ``torchvision:NAME``."""
    return name.startswith(PREFIX)


def family_of(name: str) -> str:
    """The torchvision builder name of ``torchvision:NAME`` (a one-line ConfigError if unknown)."""
    family = name[len(PREFIX):] if is_torchvision_name(name) else name
    if family not in FAMILIES:
        raise ConfigError(f"model {name!r}: not a supported torchvision model; choose one of "
                          f"{', '.join(TORCHVISION_MODELS)}")
    return family


def _replace_stem(net: nn.Module, in_channels: int, name: str) -> None:
    """Swap the first convolution for one taking ``in_channels`` channels."""
    path, conv = next((p, m) for p, m in net.named_modules() if isinstance(m, nn.Conv2d))
    if conv.groups != 1:
        raise ConfigError(f"model {name!r}: its stem {path} is a grouped convolution; "
                          "in_channels must stay 3")
    stem = nn.Conv2d(in_channels, conv.out_channels, conv.kernel_size,  # type: ignore[arg-type]
                     stride=conv.stride, padding=conv.padding,  # type: ignore[arg-type]
                     dilation=conv.dilation, bias=conv.bias is not None)  # type: ignore[arg-type]
    nn.init.kaiming_normal_(stem.weight, mode="fan_out")
    if stem.bias is not None:
        nn.init.zeros_(stem.bias)
    parent_path, _, child = path.rpartition(".")
    net.get_submodule(parent_path).add_module(child, stem)


def torchvision_net(spec: ModelSpec) -> nn.Module:
    """torchvision's model for ``spec`` (random weights; stem changed for ``in_channels``)."""
    family = family_of(spec.name)
    kwargs: dict[str, object] = {"weights": None, "num_classes": spec.num_classes}
    if spec.width != 1.0:
        argument = FAMILIES[family].width_argument
        if argument is None:
            with_width = [PREFIX + n for n, f in FAMILIES.items() if f.width_argument]
            raise ConfigError(f"model {spec.name!r}: width={spec.width:g}, but this family "
                              f"has no width multiplier (only {', '.join(with_width)}); "
                              "use width 1")
        kwargs[argument] = spec.width
    with SkipMetaFills():
        net = getattr(tvm, family)(**kwargs)
    if spec.in_channels != 3:
        _replace_stem(net, spec.in_channels, spec.name)
    return net


def _groups_of(stage_path: str, names: list[str]) -> str:
    prefix = f"{stage_path}." if stage_path else ""
    if len(names) == 1:
        return prefix + names[0]
    return f"{prefix}{names[0]}-{names[-1]}"


@functools.lru_cache(maxsize=64)
def default_groups(spec: ModelSpec) -> tuple[str, ...]:
    """The resolution-stage partition of a torchvision model (module doc), head last."""
    family = FAMILIES[family_of(spec.name)]
    with on_meta():
        body = family.restructure(torchvision_net(replace(spec, blocks=())))
    stage_root = body.get_submodule(family.stages)
    children = [(n, m) for n, m in stage_root.named_children() if n != "head"]
    x = torch.zeros((1, *spec.input_shape), device="meta")
    stages: list[list[str]] = []
    resolution: tuple[int, ...] | None = None
    with unset_fake_temporarily(), torch.no_grad():
        for child_name, child in children:
            x = child.eval()(x)
            new = tuple(x.shape[2:])
            has_params = any(True for _ in child.parameters())
            if stages and (new == resolution or not has_params):
                stages[-1].append(child_name)
            else:
                stages.append([child_name])
            resolution = new
    return (*(_groups_of(family.stages, names) for names in stages), "head")


def build_torchvision_model(spec: ModelSpec) -> tuple[BlockedModel, nn.Module]:
    """The BlockedModel of ``torchvision:NAME`` and torchvision's model (a
    :data:`~profl_core.models.composition.Builder`)."""
    net = torchvision_net(spec)
    body = FAMILIES[family_of(spec.name)].restructure(net)
    return wrap(spec, body, spec.blocks or default_groups(spec)), net
