"""Several backbones as one: ``model.backbone: ensemble:<a>+<b>`` (e.g.
``ensemble:efficientnet_lite0+efficientnet_lite2``).

Each member sees the image at its own native resolution (resized with antialiasing from the decoded
``data.image_size``, which defaults to the largest member's) and with its own normalization; the members'
embeddings are L2-normalized and concatenated, so each counts equally. ``weights: imagenet`` applies to
every member; a weights file (a pretrained or trained run of this ensemble) holds all members. The
feature map is that concatenation as a ``(D, 1, 1)`` map: heads that need spatial maps (``relation``) are
not for ensembles. Grad-CAM explains each member's own spatial maps (:meth:`Ensemble.forward_maps`, each at
its member's resolution) and combines their heatmaps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from episodes import normalization

from ..errors import FewshotError
from .base import AdaptablePart, Backbone, Family, Registry, load_weights_file

PREFIX = "ensemble:"


def member_names(name: str) -> list[str]:
    names = name.removeprefix(PREFIX).split("+")
    if len(names) < 2 or not all(names):
        raise FewshotError(f"'{name}': an ensemble names two or more backbones, e.g. "
                           "ensemble:efficientnet_lite0+efficientnet_lite2")
    return names


class Ensemble(Backbone):
    """``(B, C, H, W)`` images scaled to [0, 1] -> ``(B, D1 + D2 + ..., 1, 1)`` normalized embeddings."""

    mean = (0.0, 0.0, 0.0)  # the model only scales pixels to [0, 1]; each member normalizes its own way
    std = (1.0, 1.0, 1.0)

    def __init__(self, name: str, in_channels: int = 3, weights: str = "none", registry: Registry | None = None):
        super().__init__()
        if registry is None:
            raise FewshotError("an ensemble is built through fewshot.backbones.build_backbone('ensemble:a+b')")
        names = member_names(name)
        shared = weights if weights in ("none", "imagenet") else "none"  # a file holds the whole ensemble
        self.members = nn.ModuleList(registry.build(member, in_channels, shared) for member in names)
        self.sizes = [registry.native_size(member) for member in names]
        self.member_sizes = dict(zip(names, self.sizes))  # what an export's metadata says each member runs at
        default_mean, default_std = normalization(in_channels)
        for index, member in enumerate(self.members):
            mean, std = member.mean or default_mean, member.std or default_std
            if len(mean) != in_channels:
                mean, std = (sum(mean) / len(mean),) * in_channels, (sum(std) / len(std),) * in_channels
            self.register_buffer(f"mean{index}", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
            self.register_buffer(f"std{index}", torch.tensor(std).view(1, -1, 1, 1), persistent=False)
        if in_channels == 1:  # mean/std above are per channel of the input
            self.mean, self.std = (0.0,), (1.0,)
        if weights not in ("none", "imagenet"):
            load_weights_file(self, weights, name)

    def member_input(self, index: int, x: torch.Tensor) -> torch.Tensor:
        """``x`` ``(B, C, H, W)`` in [0, 1] resized and normalized for member ``index``."""
        size = self.sizes[index]
        if size and tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        x = (x - getattr(self, f"mean{index}")) / getattr(self, f"std{index}")
        return x.contiguous(memory_format=torch.channels_last)

    def forward_maps(self, x: torch.Tensor) -> list[torch.Tensor]:
        """Each member's feature maps ``(B, D_i, h_i, w_i)``, at its own resolution."""
        return [member.forward_features(self.member_input(i, x)) for i, member in enumerate(self.members)]

    def pool_maps(self, maps: list[torch.Tensor]) -> torch.Tensor:
        """The members' pooled embeddings, each L2-normalized, concatenated: ``(B, D1 + D2 + ...)``."""
        return torch.cat([F.normalize(member.pool_features(m), dim=-1) for member, m in zip(self.members, maps)], 1)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool_maps(self.forward_maps(x))[:, :, None, None]

    def stages(self) -> list[nn.Module]:
        return list(self.members)

    def adaptable_parts(self) -> list[AdaptablePart]:
        """The first member's parts (its trunk fed the member's own input, :meth:`member_input`); the others stay
        frozen. Adapting Lite2 as well took the default ensemble's adaptation on 5 x 5 images from about 8 s to
        about 60 s on two CPU cores, past what a user waits (benchmarks/RESULTS.md, "Beyond ImageNet")."""
        first = self.members[0]
        return [AdaptablePart(lambda x, trunk=part.trunk: trunk(self.member_input(0, x)), part.top)
                for part in first.adaptable_parts()]


def build(name: str, in_channels: int, weights: str, options: dict, registry: Registry) -> Ensemble:
    if options:
        raise FewshotError(f"unknown model.backbone_options option '{next(iter(options))}' for Ensemble; it takes: "
                           "no options")
    return Ensemble(name, in_channels, weights, registry)


def largest_member_size(name: str, registry: Registry) -> int | None:
    """The default image size of an ensemble: its largest member's native size."""
    return max((registry.native_size(member) or 0 for member in member_names(name)), default=0) or None


FAMILY = Family(PREFIX, build, largest_member_size, "ensemble:<a>+<b>")
