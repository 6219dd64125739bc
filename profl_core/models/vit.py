"""``vit``: a small Vision Transformer for 32x32 inputs with 4x4 patches (64 tokens).

Eight pre-norm encoder layers of width 192 with 3 heads and an MLP ratio of 2, grouped two per
block (T = 4). Block 1 also holds the patch embedding and the learned position embedding; there
is no class token, the head is LayerNorm + mean over tokens + a linear classifier.

Output modules. ViT blocks keep the token shape, so there is no spatial reduction for a strided
convolution to mimic. The "basic layer" that stands in for a missing block is therefore one
token-wise linear map (dim -> dim, no attention): the cheapest layer with the block's input and
output shape, trained by ProFL's shrinking to mimic the block, just as a stride-2 convolution
mimics a ResNet stage.
"""

from __future__ import annotations

import math
from collections import OrderedDict

import torch
from torch import Tensor, nn

from profl_core.models.base import BlockedModel, ModelSpec

DIM, HEADS, LAYERS_PER_BLOCK, NUM_BLOCKS, MLP_RATIO, PATCH = 192, 3, 2, 4, 2, 4


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens, plus a learned position embedding."""

    def __init__(self, in_channels: int, dim: int, input_size: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, PATCH, stride=PATCH)
        num_tokens = (input_size // PATCH) ** 2
        self.pos = nn.Parameter(torch.zeros(1, num_tokens, dim))
        nn.init.trunc_normal_(self.pos, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        return self.proj(x).flatten(2).transpose(1, 2) + self.pos


class TokenHead(nn.Module):
    """LayerNorm, mean over tokens, linear classifier."""

    def __init__(self, dim: int, num_classes: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.norm(x).mean(dim=1))


def encoder_layer(dim: int) -> nn.Module:
    """One pre-norm transformer encoder layer with GELU and no dropout."""
    return nn.TransformerEncoderLayer(
        dim, HEADS, dim_feedforward=MLP_RATIO * dim, dropout=0.0, activation="gelu",
        batch_first=True, norm_first=True,
    )


class ViT(BlockedModel):
    """Small ViT; block i = encoder layers 2i-1 and 2i (block 1 also embeds patches)."""

    def __init__(self, spec: ModelSpec) -> None:
        super().__init__(spec)
        self.dim = HEADS * math.ceil(DIM * spec.width / HEADS)
        blocks: list[nn.Module] = []
        for i in range(NUM_BLOCKS):
            layers = [encoder_layer(self.dim) for _ in range(LAYERS_PER_BLOCK)]
            if i == 0:
                layers.insert(0, PatchEmbed(spec.in_channels, self.dim, spec.input_size))
            blocks.append(nn.Sequential(*layers))
        self._set_blocks(blocks, TokenHead(self.dim, spec.num_classes))

    def output_module(self, step: int) -> nn.Module:
        """One token-wise linear layer per missing block, then the head (see module doc)."""
        self._check_step(step)
        layers: dict[str, nn.Module] = {
            f"basic{i + 1}": nn.Linear(self.dim, self.dim) for i in range(step, self.num_blocks)
        }
        layers["head"] = TokenHead(self.dim, self.spec.num_classes)
        return nn.Sequential(OrderedDict(layers))
