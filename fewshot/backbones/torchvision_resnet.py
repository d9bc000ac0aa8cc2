"""Shared code of the torchvision ResNets: ImageNet weights through torchvision's own cache, with one
clear line when they are neither cached nor downloadable; a first convolution for 1-channel input."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.error import URLError

import torch
from torch import nn

from episodes.images import IMAGENET_MEAN, IMAGENET_STD

from ..errors import FewshotError
from .base import Backbone, load_weights_file


def imagenet_state_dict(weights_enum, name: str) -> dict:
    """The ImageNet state dict of ``weights_enum`` from torchvision's cache, downloading it if needed."""
    filename = os.path.basename(weights_enum.url)
    target = Path(torch.hub.get_dir()) / "checkpoints" / filename
    try:
        return weights_enum.get_state_dict(progress=True, check_hash=False)
    except (URLError, OSError, RuntimeError) as exc:
        reason = str(getattr(exc, "reason", exc)).splitlines()[0]
        raise FewshotError(
            f"ImageNet weights for {name} are not cached and cannot be downloaded ({reason}): download "
            f"{weights_enum.url} on a machine with internet access and place it at {target}, or set "
            "model.weights to a local file or to none"
        ) from None


class TorchvisionResNet(Backbone):
    """A torchvision ResNet without its classifier: ``(B, C, H, W)`` -> ``(B, D, H/32, W/32)``."""

    def __init__(self, factory: str, weights_enum: str, name: str, in_channels: int = 3, weights: str = "none"):
        """``factory`` / ``weights_enum``: names in ``torchvision.models`` (``resnet50``,
        ``ResNet50_Weights.IMAGENET1K_V2``), imported here when a ResNet is built, not when the registry is read."""
        super().__init__()
        import torchvision.models

        net = getattr(torchvision.models, factory)(weights=None)
        enum_name, member = weights_enum.split(".")
        weights_enum = getattr(getattr(torchvision.models, enum_name), member)
        if weights == "imagenet":
            net.load_state_dict(imagenet_state_dict(weights_enum, name))
            self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD  # what the weights expect, also for grey input
        if in_channels != 3:
            old = net.conv1
            net.conv1 = nn.Conv2d(in_channels, old.out_channels, old.kernel_size, old.stride, old.padding, bias=False)
            if weights == "imagenet":
                with torch.no_grad():
                    summed = old.weight.sum(dim=1, keepdim=True)  # (64, 1, 7, 7): the grey response
                    net.conv1.weight.copy_(summed.repeat(1, in_channels, 1, 1) / in_channels)
        self.stem = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool)
        self.layers = nn.Sequential(net.layer1, net.layer2, net.layer3, net.layer4)
        if weights not in ("none", "imagenet"):
            load_weights_file(self, weights, name)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(self.stem(x))

    def stages(self) -> list[nn.Module]:
        return [self.stem, *self.layers]
