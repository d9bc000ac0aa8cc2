"""Query files decoded for tests and tools (``fewshot predict`` classifies through :class:`fewshot.FewShotClassifier`;
its paths are checked in :mod:`fewshot.paths`)."""

from __future__ import annotations

from pathlib import Path

import torch

from episodes import EpisodesError, decode_image

from ..errors import FewshotError


def read_images(files: list[Path], image_size: int, channels: int) -> torch.Tensor:
    """Decode query files to ``(Q, C, H, W)`` uint8; a file that is not an image is a one-line error."""
    try:
        return torch.stack([torch.from_numpy(decode_image(p, image_size, channels).transpose(2, 0, 1).copy())
                            for p in files])
    except EpisodesError as exc:
        raise FewshotError(f"{exc} (every query must be an image file)") from None
