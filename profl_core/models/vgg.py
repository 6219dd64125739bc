"""VGG11 and VGG16 with batch norm (Simonyan & Zisserman 2015), CIFAR variant.

Blocks are the five convolution stages, each ending with its 2x2 max-pool. The head is global
average pooling plus one linear classifier (the common CIFAR head), not the 4096-wide ImageNet
classifier, so the head does not dominate the parameter count of a 32x32 model.
"""

from __future__ import annotations

from torch import nn

from profl_core.errors import ConfigError
from profl_core.models.base import ConvBlockedModel, ModelSpec, PoolHead, scaled
from profl_core.models.cnn import conv_bn_relu

STAGES = {
    "vgg11": ((64,), (128,), (256, 256), (512, 512), (512, 512)),
    "vgg16": ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512)),
}


class VGG(ConvBlockedModel):
    """VGG with batch norm; one block per pooling stage."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        if spec.input_size < 32:
            raise ConfigError(
                f"model {spec.name}: input_size={spec.input_size}; five 2x2 pools need at least 32"
            )
        blocks: list[nn.Module] = []
        in_ch = spec.in_channels
        out_channels = []
        for widths in STAGES[spec.name]:
            layers: list[nn.Module] = []
            for width in widths:
                out_ch = scaled(width, spec.width)
                layers.extend(conv_bn_relu(in_ch, out_ch, 1))
                in_ch = out_ch
            layers.append(nn.MaxPool2d(2))
            blocks.append(nn.Sequential(*layers))
            out_channels.append(in_ch)
        self.stage_channels = tuple(out_channels)
        self._set_blocks(blocks, PoolHead(in_ch, spec.num_classes))
