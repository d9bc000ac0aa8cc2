"""Image decoding and transforms.

Decoding is explicit about colour: ``channels=1`` converts everything (1-bit Omniglot, RGB) to
8-bit grayscale, ``channels=3`` converts everything (grayscale Tiny-ImageNet JPEGs, palettes,
RGBA) to RGB. Images are resized once, at decode time, to ``(size, size)``; the decoded form is a
``(H, W, C)`` uint8 array, which the cache stores as ``(C, H, W)``. Training augmentation uses torchvision
transforms v2 on ``(C, H, W)`` uint8 tensors; evaluation applies no random transform.
"""

from __future__ import annotations

import os
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import CorruptImageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_MEAN = (0.5,)
GRAY_STD = (0.5,)

AUGMENTATIONS = ("none", "flip", "standard", "strong")


def decode_image(path: str | os.PathLike, size: int, channels: int) -> np.ndarray:
    """Decode one image file to a ``(size, size, channels)`` uint8 array.

    Raises :class:`CorruptImageError` naming the file when it cannot be read or decoded.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft("L" if channels == 1 else "RGB", (size, size))
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BILINEAR)
            array = np.asarray(image, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CorruptImageError(f"cannot decode image {path}: {reason}") from None
    if channels == 1:
        array = array[:, :, None]
    return array


def rotate(images: np.ndarray, degrees: int) -> np.ndarray:
    """Rotate ``(N, C, H, W)`` images counter-clockwise by a multiple of 90 degrees (a view)."""
    turns = (degrees // 90) % 4
    return np.rot90(images, k=turns, axes=(2, 3)) if turns else images


def normalization(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The (mean, std) used for ``channels``: ImageNet statistics for RGB, 0.5/0.5 for grayscale."""
    return (IMAGENET_MEAN, IMAGENET_STD) if channels == 3 else (GRAY_MEAN, GRAY_STD)


def normalize(images: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``(N, C, H, W)`` uint8 in [0, 255] -> float32 normalized with ``mean`` / ``std``.

    Done on the model's device so the host moves uint8 (4x less data than float).
    """
    scale = 1.0 / (255.0 * torch.tensor(std, device=images.device, dtype=torch.float32))
    shift = -torch.tensor(mean, device=images.device, dtype=torch.float32) / torch.tensor(std, device=images.device)
    out = images.float()
    return out.mul_(scale.view(1, -1, 1, 1)).add_(shift.view(1, -1, 1, 1))  # in place: addcmul is 10x slower


def train_augmentation(name: str, size: int, channels: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A per-image training augmentation on ``(C, H, W)`` uint8 tensors, or None for ``"none"``.

    * ``flip``: horizontal flip;
    * ``standard``: random resized crop (scale 0.6-1), flip, colour jitter (RGB only);
    * ``strong``: ``standard`` plus rotation up to 15 degrees and random erasing.
    """
    from torchvision.transforms import v2

    if name not in AUGMENTATIONS:
        raise ValueError(f"unknown augmentation '{name}'; choose one of {', '.join(AUGMENTATIONS)}")
    if name == "none":
        return None
    if name == "flip":
        return v2.RandomHorizontalFlip()
    steps: list = [v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True), v2.RandomHorizontalFlip()]
    if channels == 3:
        steps.append(v2.ColorJitter(0.4, 0.4, 0.4))
    if name == "strong":
        steps.append(v2.RandomRotation(15))
        steps.append(v2.RandomErasing(p=0.25, value=0))
    return v2.Compose(steps)


def apply_per_image(transform: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
    """Apply ``transform`` to each image of a ``(N, C, H, W)`` batch with its own random draw."""
    return torch.stack([transform(image) for image in batch])
