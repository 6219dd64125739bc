"""``cnn``: four convolutional stages for 28x28 grayscale images, the CPU default.

Stage i is conv3x3-BN-ReLU twice; stages 2..4 start with stride 2 (28 -> 14 -> 7 -> 4).
Widths 32, 64, 128, 256; the head is global average pooling plus a linear classifier.
"""

from __future__ import annotations

from torch import nn

from profl_core.models.base import ConvBlockedModel, ModelSpec, PoolHead, scaled

CNN_WIDTHS = (32, 64, 128, 256)


def conv_bn_relu(in_ch: int, out_ch: int, stride: int) -> list[nn.Module]:
    """A 3x3 convolution without bias, batch norm and ReLU."""
    return [
        nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_ch),
        nn.ReLU(inplace=True),
    ]


class CNN(ConvBlockedModel):
    """Four conv stages, one block each."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        widths = tuple(scaled(c, spec.width) for c in CNN_WIDTHS)
        blocks: list[nn.Module] = []
        in_ch = spec.in_channels
        for i, out_ch in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers = [*conv_bn_relu(in_ch, out_ch, stride), *conv_bn_relu(out_ch, out_ch, 1)]
            blocks.append(nn.Sequential(*layers))
            in_ch = out_ch
        self.stage_channels = widths
        self._set_blocks(blocks, PoolHead(widths[-1], spec.num_classes))
