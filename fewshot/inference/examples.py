"""The examples a :class:`fewshot.FewShotClassifier` holds, and the two checks around them: how a support set given
as a folder, a mapping or images with labels is grouped by class (:func:`group_support`), and what examples
prepared elsewhere must look like (:func:`check_examples`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import torch

from ..errors import SupportSetError
from ..paths import folder_classes
from .inputs import is_single_image


@dataclass
class ClassExamples:
    """One class's examples as the classifier holds them."""

    images: torch.Tensor  # (n, C, H, W) uint8
    features: torch.Tensor | None  # (n, E) float32; None when the head adapts the backbone (it needs images)
    names: list[str]
    digests: list[str]


def check_examples(examples: Mapping[str, ClassExamples], size: int, channels: int, adapts_backbone: bool) -> None:
    """Raise ValueError unless every class holds ``(n, channels, size, size)`` uint8 images and, unless the head
    adapts the backbone, ``(n, E)`` embeddings; and there are at least two classes."""
    for name, e in examples.items():
        if (e.images.dtype != torch.uint8 or e.images.ndim != 4 or tuple(e.images.shape[1:]) != (channels, size, size)
                or (e.features is None) != adapts_backbone
                or (e.features is not None and len(e.features) != len(e.images))
                or len(e.names) != len(e.images) or len(e.digests) != len(e.images)):
            raise ValueError(f"class '{name}' holds images or embeddings of the wrong kind")
    if len(examples) < 2:
        raise ValueError("fewer than two classes")


def group_support(support: Any, labels: Sequence[str] | None) -> dict[str, list]:
    """``{class: [images]}`` from a folder, a mapping, or images with parallel labels."""
    if isinstance(support, (str, os.PathLike)):
        if labels is not None:
            raise SupportSetError("labels are given by the folder's subfolders: drop labels=")
        return folder_classes(Path(support).expanduser())
    if isinstance(support, Mapping):
        if labels is not None:
            raise SupportSetError("labels are the mapping's keys: drop labels=")
        grouped = {}
        for name, items in support.items():
            if not isinstance(name, str) or not name.strip():
                raise SupportSetError(f"class names must be non-empty strings, got {name!r}")
            grouped[name] = [items] if is_single_image(items) else list(items)
            if not grouped[name]:
                raise SupportSetError(f"class '{name}' has no images: add a few or leave the class out")
        return grouped
    if labels is None:
        raise SupportSetError("give a folder of class subfolders, a {class: [images]} mapping, or images with labels=")
    images, labels = list(support), list(labels)
    if len(images) != len(labels):
        raise SupportSetError(f"{len(images)} images but {len(labels)} labels: give one label per image")
    grouped: dict[str, list] = {}
    for image, label in zip(images, labels):
        if not isinstance(label, str) or not label.strip():
            raise SupportSetError(f"labels must be non-empty strings (class names), got {label!r}")
        grouped.setdefault(label, []).append(image)
    return grouped


__all__ = ["ClassExamples", "check_examples", "group_support"]
