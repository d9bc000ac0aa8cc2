"""Image decoding and transforms.

Decoding is explicit about colour: ``channels=1`` converts everything (1-bit Omniglot, RGB) to
8-bit grayscale, ``channels=3`` converts everything (grayscale Tiny-ImageNet JPEGs, palettes,
RGBA) to RGB. Images are resized once, at decode time, to ``(size, size)``; the decoded form is a
``(H, W, C)`` uint8 array, which the cache stores as ``(C, H, W)``. Training augmentation uses torchvision
transforms v2 on ``(C, H, W)`` uint8 tensors; evaluation applies no random transform.
"""

from __future__ import annotations

import os
import re
from typing import Callable

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from .errors import CorruptImageError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
GRAY_MEAN = (0.5,)
GRAY_STD = (0.5,)

AUGMENTATION_OPS = ("flip", "rotate", "crop", "jitter", "erase", "noise")
PRESETS = {"none": (), "flip": ("flip",), "standard": ("crop", "flip", "jitter"),
           "strong": ("crop", "flip", "jitter", "rotate", "erase", "noise")}


def decode_image(path: str | os.PathLike, size: int, channels: int) -> np.ndarray:
    """Decode one image file to a ``(size, size, channels)`` uint8 array.

    Raises :class:`CorruptImageError` naming the file when it cannot be read or decoded, is a broken
    symbolic link, or has more pixels than PIL's decompression-bomb limit (twice
    ``PIL.Image.MAX_IMAGE_PIXELS``; between one and two times that limit PIL only warns, and the image
    is decoded).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    try:
        with Image.open(path) as image:
            if image.format == "JPEG":
                image.draft("L" if channels == 1 else "RGB", (size, size))
            return pil_to_array(image, size, channels)
    except Image.DecompressionBombError as exc:
        raise CorruptImageError(f"cannot decode image {path}: refused, {_bomb_reason(exc)} "
                                "(decompression-bomb protection)") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        if os.path.islink(path) and not os.path.exists(path):
            reason = f"it is a broken symbolic link (to {os.readlink(path)})"
        else:
            reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CorruptImageError(f"cannot decode image {path}: {reason}") from None


def pil_to_array(image: Image.Image, size: int, channels: int) -> np.ndarray:
    """A decoded PIL image, prepared as every model input is: converted to RGB (or L for one channel),
    resized to ``size`` x ``size`` with bilinear filtering -> ``(size, size, channels)`` uint8."""
    if image.mode in ("I", "I;16", "I;16L", "I;16B", "I;16N", "F"):  # 16-bit / 32-bit grey: scale to 8 bits
        values = np.asarray(image, dtype=np.float64)
        top = 1.0 if image.mode == "F" and values.max(initial=0) <= 1.0 else 255.0 if image.mode == "F" else 65535.0
        image = Image.fromarray(np.clip(np.round(values * 255.0 / top), 0, 255).astype(np.uint8), "L")
    image = image.convert("L" if channels == 1 else "RGB")
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BILINEAR)
    array = np.asarray(image, dtype=np.uint8)
    return array[:, :, None] if channels == 1 else array


def _bomb_reason(exc: Exception) -> str:
    """``N pixels, more than PIL's limit of M`` from PIL's DecompressionBombError message."""
    found = re.search(r"\((\d+) pixels\) exceeds limit of (\d+)", str(exc))
    if not found:
        return str(exc).splitlines()[0] if str(exc) else "too many pixels"
    return f"{found[1]} pixels, more than PIL's limit of {found[2]}"


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


class GaussianNoise:
    """Add Gaussian noise of standard deviation ``sigma`` (fraction of 255) to a uint8 image."""

    def __init__(self, sigma: float = 0.05):
        self.sigma = sigma

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        noisy = image.float() + torch.randn(image.shape) * (255.0 * self.sigma)
        return noisy.round_().clamp_(0, 255).to(image.dtype)


def augmentation_op(name: str, size: int, channels: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """One named augmentation on ``(C, H, W)`` uint8 tensors (see ``AUGMENTATION_OPS``)."""
    from torchvision.transforms import v2

    ops = {
        "flip": lambda: v2.RandomHorizontalFlip(),
        "rotate": lambda: v2.RandomRotation(15),
        "crop": lambda: v2.RandomResizedCrop(size, scale=(0.6, 1.0), antialias=True),
        "jitter": lambda: v2.ColorJitter(0.4, 0.4, 0.4 if channels == 3 else 0.0),
        "erase": lambda: v2.RandomErasing(p=0.5, scale=(0.02, 0.2), value=0),
        "noise": lambda: GaussianNoise(0.05),
    }
    if name not in ops:
        raise ValueError(f"unknown augmentation '{name}'; choose presets {', '.join(PRESETS)} or operations "
                         f"{', '.join(AUGMENTATION_OPS)}")
    return ops[name]()


def train_augmentation(spec: str | list[str] | tuple[str, ...], size: int,
                       channels: int) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A per-image training augmentation on ``(C, H, W)`` uint8 tensors, or None for ``"none"``.

    ``spec`` is a preset name or a list of operations applied in order:

    * ``flip``: horizontal flip; ``rotate``: up to 15 degrees; ``crop``: random resized crop (scale 0.6-1);
      ``jitter``: brightness, contrast (and saturation for RGB) 0.4; ``erase``: random erasing
      (probability 0.5); ``noise``: Gaussian noise, sigma 5 % of the range;
    * presets: ``none``; ``flip``; ``standard`` = crop, flip, jitter; ``strong`` = standard + rotate, erase, noise.
    """
    from torchvision.transforms import v2

    names = PRESETS.get(spec, None) if isinstance(spec, str) else tuple(spec)
    if names is None:
        names = (spec,)
    if not names:
        return None
    steps = [augmentation_op(name, size, channels) for name in names]
    return steps[0] if len(steps) == 1 else v2.Compose(steps)


def apply_per_image(transform: Callable[[torch.Tensor], torch.Tensor], batch: torch.Tensor) -> torch.Tensor:
    """Apply ``transform`` to each image of a ``(N, C, H, W)`` batch with its own random draw."""
    return torch.stack([transform(image) for image in batch])
