"""ResNet-12, the few-shot standard (Oreshkin et al. 2018; Lee et al. 2019): four residual blocks of
three conv3x3 layers, 64-160-320-640 channels, each followed by a 2x2 max-pool; leaky ReLU 0.1."""

from __future__ import annotations

import torch
from torch import nn

from .base import Backbone


class ResidualBlock(nn.Module):
    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        layers = []
        for i in range(3):
            layers += [nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, padding=1, bias=False),
                       nn.BatchNorm2d(out_channels)]
            if i < 2:
                layers.append(nn.LeakyReLU(0.1, inplace=True))
        self.body = nn.Sequential(*layers)
        self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels))
        self.out = nn.Sequential(nn.LeakyReLU(0.1, inplace=True), nn.MaxPool2d(2, ceil_mode=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.body(x) + self.shortcut(x))


class ResNet12(Backbone):
    """``(B, C, H, W)`` -> ``(B, channels[-1], H/16, W/16)`` (5x5 at 84 px); 640-d pooled embedding."""

    def __init__(self, in_channels: int = 3, channels: tuple[int, ...] | list[int] = (64, 160, 320, 640)):
        super().__init__()
        widths = [in_channels, *channels]
        self.blocks = nn.Sequential(*[ResidualBlock(a, b) for a, b in zip(widths[:-1], widths[1:])])
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="leaky_relu")

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)

    def stages(self) -> list[nn.Module]:
        return list(self.blocks)
