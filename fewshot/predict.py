"""Query paths for ``fewshot predict``: folders expanded to their images, files decoded (the classifying is
:class:`fewshot.FewShotClassifier`'s)."""

from __future__ import annotations

from pathlib import Path

import torch

from episodes import EpisodesError, decode_image
from episodes.discovery import is_image_file

from .errors import FewshotError


def expand_queries(paths: list[str]) -> list[Path]:
    """Query paths, with folders replaced by the images they hold; a missing path is an error."""
    out: list[Path] = []
    for text in paths:
        path = Path(text).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and is_image_file(p.name))
            if not found:
                inner = [p.name for p in path.iterdir() if p.is_dir() and not p.name.startswith(".")]
                hint = (f"; its subfolders ({', '.join(sorted(inner)[:3])}{', ...' if len(inner) > 3 else ''}) "
                        "are not searched: give them, or their images, as queries") if inner else ""
                raise FewshotError(f"query folder {path} holds no images{hint}")
            out += found
        elif path.is_file():
            out.append(path)
        else:
            raise FewshotError(f"query {path} does not exist")
    return out


def read_images(files: list[Path], image_size: int, channels: int) -> torch.Tensor:
    """Decode query files to ``(Q, C, H, W)`` uint8; a file that is not an image is a one-line error."""
    try:
        return torch.stack([torch.from_numpy(decode_image(p, image_size, channels).transpose(2, 0, 1).copy())
                            for p in files])
    except EpisodesError as exc:
        raise FewshotError(f"{exc} (every query must be an image file)") from None
