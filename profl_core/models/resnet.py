"""CIFAR ResNet18 and ResNet34 (He et al. 2016, CIFAR variant) as four stage-blocks.

The stem is a 3x3 convolution (stride 1, no max-pool), as in the ProFL authors' code. Block 1 is
stem + layer1; blocks 2..4 are layer2..layer4 (strides 2). Post-activation BasicBlocks with a
1x1 projection shortcut where the shape changes. The head is global average pooling plus a
linear classifier. A CIFAR ResNet18 with 10 classes has 11,173,962 parameters.
"""

from __future__ import annotations

from torch import Tensor, nn

from profl_core.models.base import ConvBlockedModel, ModelSpec, PoolHead, scaled

STAGE_WIDTHS = (64, 128, 256, 512)
DEPTHS = {"resnet18": (2, 2, 2, 2), "resnet34": (3, 4, 6, 3)}


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and an identity or projection shortcut."""

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 1, stride=stride, bias=False), nn.BatchNorm2d(out_ch)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


def stage(in_ch: int, out_ch: int, depth: int, stride: int) -> list[nn.Module]:
    """``depth`` BasicBlocks, the first with the given stride."""
    return [BasicBlock(in_ch if i == 0 else out_ch, out_ch, stride if i == 0 else 1)
            for i in range(depth)]


class ResNet(ConvBlockedModel):
    """CIFAR ResNet with four stage-blocks; ``spec.name`` picks the depths."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        widths = tuple(scaled(c, spec.width) for c in STAGE_WIDTHS)
        depths = DEPTHS[spec.name]
        stem = [
            nn.Conv2d(spec.in_channels, widths[0], 3, stride=1, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        blocks: list[nn.Module] = [nn.Sequential(*stem, *stage(widths[0], widths[0], depths[0], 1))]
        for i in range(1, 4):
            blocks.append(nn.Sequential(*stage(widths[i - 1], widths[i], depths[i], 2)))
        self.stage_channels = widths
        self._set_blocks(blocks, PoolHead(widths[-1], spec.num_classes))
