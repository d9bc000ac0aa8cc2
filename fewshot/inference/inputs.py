"""Turn whatever an application holds into model input: a file path, a PIL image, an array or a tensor.

Every form ends as a ``(size, size, channels)`` uint8 array prepared exactly as the CLI prepares an image
file (:func:`episodes.images.pil_to_array`: convert to RGB or L, bilinear resize), so the Python API, the
CLI and the server classify the same pixels.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from episodes import EpisodesError, decode_image
from episodes.images import pil_to_array

from ..errors import InvalidImageError

ImageLike = Any  # str | os.PathLike | PIL.Image.Image | np.ndarray | torch.Tensor
"""A file path, a PIL image, an ``(H, W)`` / ``(H, W, C)`` array (uint8, or float in 0..1) or a ``(C, H, W)``
/ ``(H, W)`` tensor (uint8, or float in 0..1, torchvision's convention); ``C`` is 1, 3 or 4 (alpha dropped)."""


@dataclass
class PreparedImage:
    pixels: np.ndarray  # (size, size, channels) uint8
    name: str  # the file path, or "<kind #index>" for an in-memory image
    digest: str  # sha1 of the file's bytes or of the decoded pixels, to spot duplicates


def is_single_image(item: Any) -> bool:
    """True for one image (a path, a PIL image, an array or tensor of up to 3 dimensions), False for a list."""
    if isinstance(item, (str, os.PathLike, Image.Image)):
        return True
    return isinstance(item, (np.ndarray, torch.Tensor)) and item.ndim <= 3


def prepare_image(item: ImageLike, size: int, channels: int, index: int = 0) -> PreparedImage:
    """One input -> :class:`PreparedImage`; anything that is not an image is an :class:`InvalidImageError`."""
    if isinstance(item, (str, os.PathLike)):
        path = Path(item).expanduser()
        if not path.is_file():
            raise InvalidImageError(f"image {path} does not exist (or is not a file)")
        try:
            pixels = decode_image(path, size, channels)
        except EpisodesError as exc:
            raise InvalidImageError(str(exc)) from None
        return PreparedImage(pixels, str(path), hashlib.sha1(path.read_bytes()).hexdigest())
    if isinstance(item, Image.Image):
        if min(item.size) < 1:
            raise InvalidImageError(f"PIL image {index} is empty ({item.size[0]}x{item.size[1]} pixels)")
        try:
            pixels = pil_to_array(item, size, channels)
            digest = hashlib.sha1(item.tobytes() + f"{item.mode}{item.size}".encode()).hexdigest()
        except (OSError, ValueError) as exc:
            raise InvalidImageError(f"PIL image {index} cannot be converted: {exc}") from None
        return PreparedImage(pixels, f"PIL image {index}", digest)
    if isinstance(item, torch.Tensor):
        array = item.detach().cpu()
        if array.dtype not in (torch.uint8, torch.bool):
            array = array.float()  # bfloat16, float16, float64, integers: numpy-convertible float32
        if array.ndim == 3 and array.shape[0] in (1, 3, 4):
            array = array.permute(1, 2, 0)  # (C, H, W) -> (H, W, C): torchvision's channels-first convention
        return _from_array(array.numpy(), size, channels, f"tensor {index}")
    if isinstance(item, np.ndarray):
        return _from_array(item, size, channels, f"array {index}")
    raise InvalidImageError(f"input {index} is a {type(item).__name__}, not an image: give a file path, a PIL image, "
                            "an (H, W[, C]) array or a (C, H, W) tensor")


def _from_array(array: np.ndarray, size: int, channels: int, name: str) -> PreparedImage:
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)) or min(array.shape[:2]) < 1:
        raise InvalidImageError(f"{name} has shape {tuple(array.shape)}: an image is (H, W), (H, W, 1|3|4) or, for "
                                "tensors, (1|3|4, H, W)")
    if array.dtype == np.uint8:
        pass
    elif np.issubdtype(array.dtype, np.floating) or array.dtype == np.bool_:
        array = array.astype(np.float64)
        if not np.isfinite(array).all() or array.min() < 0 or array.max() > 1:
            raise InvalidImageError(f"{name} is a float image with values outside 0..1 (or NaN): scale it to 0..1, "
                                    "or pass uint8 0..255")
        array = np.round(array * 255).astype(np.uint8)
    else:
        raise InvalidImageError(f"{name} has dtype {array.dtype}: pass uint8 (0..255) or float (0..1)")
    image = Image.fromarray(np.ascontiguousarray(array))  # mode L, RGB or RGBA from the shape
    return PreparedImage(pil_to_array(image, size, channels), name, _digest(array))


def _digest(array: np.ndarray) -> str:
    return hashlib.sha1(np.ascontiguousarray(array).tobytes() + str(array.shape).encode()).hexdigest()


def prepare_images(items: Any, size: int, channels: int) -> list[PreparedImage]:
    """One image or a sequence of them -> prepared images; a folder stands for the image files directly in
    it (sorted); an empty sequence, or a folder without images, is an error."""
    items = [items] if is_single_image(items) else list(items) if _iterable(items) else [items]
    if not items:
        raise InvalidImageError("no images given")
    expanded = []
    for item in items:
        if isinstance(item, (str, os.PathLike)) and Path(item).expanduser().is_dir():
            expanded += _folder_images(Path(item).expanduser())
        else:
            expanded.append(item)
    return [prepare_image(item, size, channels, i) for i, item in enumerate(expanded)]


def _folder_images(folder: Path) -> list[Path]:
    from episodes.discovery import is_image_file

    found = sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p.name))
    if not found:
        raise InvalidImageError(f"folder {folder} holds no image files (class subfolders are not looked into)")
    return found


def _iterable(items: Any) -> bool:
    try:
        iter(items)
    except TypeError:
        return False
    return True


def as_batch(prepared: list[PreparedImage]) -> torch.Tensor:
    """Prepared images -> ``(N, C, H, W)`` uint8, the models' input."""
    return torch.from_numpy(np.stack([p.pixels for p in prepared])).permute(0, 3, 1, 2).contiguous()
