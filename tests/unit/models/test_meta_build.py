"""Building on the meta device (``on_meta``, ``SkipMetaFills`` in profl_core/models/base.py).

Oracles: the same constructor without the mode (shapes and dtypes of every parameter and
buffer, values of real tensors from the same seed).
"""

from __future__ import annotations

import torch
import torchvision.models as tvm
from torch import nn

from profl_core.models import native_spec, on_meta
from profl_core.models.base import SkipMetaFills
from profl_core.models.torchvision_zoo import torchvision_net


def _layout(module: nn.Module) -> dict[str, tuple[tuple[int, ...], torch.dtype, str]]:
    return {k: (tuple(v.shape), v.dtype, v.device.type) for k, v in module.state_dict().items()}


def test_a_meta_build_skipping_fills_has_every_tensor_of_the_plain_one() -> None:
    with torch.device("meta"):
        plain = tvm.mobilenet_v3_small(weights=None, num_classes=10)
    with on_meta():
        skipped = torchvision_net(native_spec("torchvision:mobilenet_v3_small"))
    assert _layout(skipped) == _layout(plain)


def test_real_tensors_are_filled_as_usual() -> None:
    torch.manual_seed(3)
    expected = nn.Conv2d(4, 8, 3)
    nn.init.kaiming_normal_(expected.weight)
    torch.manual_seed(3)
    with SkipMetaFills():
        got = nn.Conv2d(4, 8, 3)
        nn.init.kaiming_normal_(got.weight)
    assert torch.equal(got.weight, expected.weight)
    assert torch.equal(got.bias, expected.bias)

