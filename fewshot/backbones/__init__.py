"""Backbones, one file each, registered by name. Adding one: a file and a line in ``BACKBONES``; adding a family
named by a prefix (``timm:``, ``ensemble:``): a file declaring its :class:`~.base.Family` and a line in
``FAMILIES``.

A backbone class takes ``in_channels`` first and may take ``weights`` (``none`` / ``imagenet`` /
PATH); any other constructor argument can be set from the config's ``model.backbone_options``.
"""

from __future__ import annotations

import inspect

from ..errors import FewshotError
from . import ensemble, timm_backbone
from .base import Backbone, Family, Registry, load_weights_file
from .conv4 import Conv4
from .efficientnet_lite import EfficientNetLite0, EfficientNetLite1, EfficientNetLite2
from .resnet12 import ResNet12
from .resnet18 import ResNet18
from .resnet50 import ResNet50

BACKBONES: dict[str, type[Backbone]] = {
    "resnet50": ResNet50,
    "resnet18": ResNet18,
    "resnet12": ResNet12,
    "conv4": Conv4,
    "efficientnet_lite0": EfficientNetLite0,
    "efficientnet_lite1": EfficientNetLite1,
    "efficientnet_lite2": EfficientNetLite2,
}
FAMILIES: list[Family] = [timm_backbone.FAMILY, ensemble.FAMILY]


def family_of(name: str) -> Family | None:
    return next((family for family in FAMILIES if name.startswith(family.prefix)), None)


def check_options(cls: type, options: dict, what: str, reserved: tuple[str, ...]) -> None:
    """Raise a one-line error for an option the constructor of ``cls`` does not take."""
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", *reserved)]
    for key in options:
        if key not in accepted:
            raise FewshotError(f"unknown {what} option '{key}' for {cls.__name__}; it takes: "
                               f"{', '.join(accepted) or 'no options'}")


def native_size(name: str) -> int | None:
    """The input side the backbone's pretrained weights were made for, if it declares one."""
    family = family_of(name)
    if family is not None:
        return family.native_size(name, REGISTRY)
    cls = BACKBONES.get(name)
    return getattr(cls, "native_size", None) if cls is not None else None


def build_backbone(name: str, in_channels: int = 3, weights: str = "none", **options) -> Backbone:
    """Instantiate the backbone registered as ``name``."""
    family = family_of(name)
    if family is not None:
        return family.build(name, in_channels, weights, options, REGISTRY)
    if name not in BACKBONES:
        raise FewshotError(f"unknown backbone '{name}'; choose one of {', '.join(BACKBONES)}, "
                           f"{', or '.join(family.describe for family in FAMILIES)}")
    cls = BACKBONES[name]
    check_options(cls, options, "model.backbone_options", ("in_channels", "weights"))
    takes_weights = "weights" in inspect.signature(cls.__init__).parameters
    if takes_weights:
        return cls(in_channels=in_channels, weights=weights, **options)
    if weights == "imagenet":
        raise FewshotError(f"backbone '{name}' has no ImageNet weights; use model.weights: none or a local file")
    backbone = cls(in_channels=in_channels, **options)
    if weights != "none":
        load_weights_file(backbone, weights, name)
    return backbone


REGISTRY = Registry(build_backbone, native_size)

__all__ = ["BACKBONES", "FAMILIES", "Backbone", "Family", "build_backbone", "check_options", "native_size"]
