"""Backbones, one file each, registered by name. Adding one: a file and a line in ``BACKBONES``.

A backbone class takes ``in_channels`` first and may take ``weights`` (``none`` / ``imagenet`` /
PATH); any other constructor argument can be set from the config's ``model.backbone_options``.
"""

from __future__ import annotations

import inspect

from ..errors import FewshotError
from . import ensemble, timm_backbone
from .base import Backbone, load_weights_file
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


def check_options(cls: type, options: dict, what: str, reserved: tuple[str, ...]) -> None:
    """Raise a one-line error for an option the constructor of ``cls`` does not take."""
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p not in ("self", *reserved)]
    for key in options:
        if key not in accepted:
            raise FewshotError(f"unknown {what} option '{key}' for {cls.__name__}; it takes: "
                               f"{', '.join(accepted) or 'no options'}")


def native_size(name: str) -> int | None:
    """The input side the backbone's pretrained weights were made for, if it declares one."""
    if name.startswith(timm_backbone.PREFIX):
        return timm_backbone.native_size(name)
    if name.startswith(ensemble.PREFIX):
        return max((native_size(member) or 0 for member in ensemble.member_names(name)), default=0) or None
    cls = BACKBONES.get(name)
    return getattr(cls, "native_size", None) if cls is not None else None


def build_backbone(name: str, in_channels: int = 3, weights: str = "none", **options) -> Backbone:
    """Instantiate the backbone registered as ``name``."""
    if name.startswith(ensemble.PREFIX):
        check_options(ensemble.Ensemble, options, "model.backbone_options", ("name", "in_channels", "weights"))
        return ensemble.Ensemble(name, in_channels, weights)
    if name.startswith(timm_backbone.PREFIX):
        return timm_backbone.TimmBackbone(name.removeprefix(timm_backbone.PREFIX), in_channels, weights, **options)
    if name not in BACKBONES:
        raise FewshotError(f"unknown backbone '{name}'; choose one of {', '.join(BACKBONES)}, timm:<name> for "
                           "any timm model, or ensemble:<a>+<b>")
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


__all__ = ["BACKBONES", "Backbone", "build_backbone", "check_options", "native_size"]
