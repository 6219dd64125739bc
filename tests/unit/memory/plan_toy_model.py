"""Small user models for the planner tests, on 16x16 inputs: two stages of two units each."""

from __future__ import annotations

from torch import nn


def _unit(c_in: int, c_out: int, stride: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(c_out), nn.ReLU()]


def build(num_classes: int = 10) -> nn.Module:
    """Stage 1 (two units at 16x16), stage 2 (two units at 8x8), head: 4 layer units."""
    return nn.Sequential(
        nn.Sequential(*_unit(3, 16, 1), *_unit(16, 16, 1)),
        nn.Sequential(*_unit(16, 24, 2), *_unit(24, 24, 1)),
        nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(24, num_classes)),
    )


def build_linear(num_classes: int = 10) -> nn.Module:
    """Linear layers on the 16x16 image's last dimension (each reshapes its input: the first
    one's is the batch), two stages of two units each."""
    return nn.Sequential(
        nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU()),
        nn.Sequential(nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU()),
        nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 8, num_classes)),
    )
