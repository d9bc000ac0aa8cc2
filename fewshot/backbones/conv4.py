"""Conv4 (Vinyals et al. 2016; Snell et al. 2017): four conv3x3-BN-ReLU-maxpool blocks of 64 filters."""

from __future__ import annotations

import torch
from torch import nn

from .base import Backbone


def conv_block(in_channels: int, out_channels: int, pool: bool) -> nn.Sequential:
    layers = [nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False), nn.BatchNorm2d(out_channels),
              nn.ReLU(inplace=True)]
    if pool:
        layers.append(nn.MaxPool2d(2))
    return nn.Sequential(*layers)


class Conv4(Backbone):
    """``(B, C, H, W)`` -> feature map ``(B, width, H/2^p, W/2^p)`` with ``p = pooled_blocks``.

    The embedding is the flattened map (1600-d at 84 px, 64-d at 28 px), as in Prototypical Networks.
    ``pooled_blocks=2`` keeps a 7x7 map at 28 px, the embedding of Relation Networks (Sung et al.).
    """

    pool = "flatten"

    def __init__(self, in_channels: int = 3, width: int = 64, pooled_blocks: int = 4, depth: int = 4):
        super().__init__()
        self.blocks = nn.Sequential(*[
            conv_block(in_channels if i == 0 else width, width, pool=i < pooled_blocks) for i in range(depth)
        ])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)

    def stages(self) -> list[nn.Module]:
        return list(self.blocks)
