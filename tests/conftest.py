"""Shared fixtures: tiny generated image folders and an isolated image cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Every test gets its own decoded-image cache folder."""
    cache = tmp_path_factory.mktemp("cache")
    monkeypatch.setenv("FEWSHOT_CACHE_DIR", str(cache))
    return cache


def class_template(seed: int, size: int, channels: int) -> np.ndarray:
    """A fixed random blob pattern for one class, ``(size, size, channels)`` float in [0, 255]."""
    rng = np.random.default_rng(seed)
    coarse = rng.random((4, 4, channels))
    big = np.kron(coarse, np.ones((size // 4 + 1, size // 4 + 1, 1)))[:size, :size]
    return big * 255.0


def make_image_folder(root: Path, classes: int = 6, per_class: int = 10, size: int = 16, mode: str = "RGB",
                      ext: str = "png", seed: int = 0, nested: bool = False, noise: float = 40.0) -> list[str]:
    """Write ``classes`` class folders of ``per_class`` images each; return the class names.

    Images of a class share a random template plus noise, so classes are separable but not trivially.
    ``nested`` gives an Omniglot-like ``Alphabet/characterNN`` layout.
    """
    rng = np.random.default_rng(seed + 1000)
    channels = 1 if mode in ("L", "1") else 3
    names = []
    for c in range(classes):
        name = f"alpha{c % 2}/char{c:02d}" if nested else f"class{c:02d}"
        folder = root / name
        folder.mkdir(parents=True, exist_ok=True)
        template = class_template(seed * 100 + c, size, channels)
        for i in range(per_class):
            pixels = np.clip(template + rng.normal(0, noise, template.shape), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels[:, :, 0] if channels == 1 else pixels, "L" if channels == 1 else "RGB")
            if mode == "1":
                image = image.convert("1")
            image.save(folder / f"img{i:03d}.{ext}")
        names.append(name)
    return names


@pytest.fixture
def image_folder(tmp_path) -> Path:
    """A flat ImageFolder tree: 6 classes x 10 RGB PNGs of 16x16."""
    root = tmp_path / "data"
    make_image_folder(root)
    return root
