"""Classify images of brand-new classes from a folder of a few support images per class."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from episodes import EpisodesError, decode_image
from episodes.discovery import is_image_file

from .errors import FewshotError
from .model import FewShotModel


def read_support_folder(folder: str | os.PathLike, image_size: int, channels: int
                        ) -> tuple[torch.Tensor, torch.Tensor, list[str], list[Path]]:
    """``folder/<class>/*`` -> images ``(S, C, H, W)`` uint8, labels ``(S,)``, class names, files.

    Every subfolder is a class and must hold at least one image; at least two classes are needed.
    """
    from .classifier import _folder_classes

    grouped = _folder_classes(Path(folder).expanduser())
    images, labels, files = [], [], []
    for label, class_files in enumerate(grouped.values()):
        for path in class_files:
            images.append(torch.from_numpy(decode_image(path, image_size, channels).transpose(2, 0, 1).copy()))
            labels.append(label)
            files.append(path)
    return torch.stack(images), torch.tensor(labels), list(grouped), files


def expand_queries(paths: list[str]) -> list[Path]:
    """Query paths, with folders replaced by the images they hold; a missing path is an error."""
    out: list[Path] = []
    for text in paths:
        path = Path(text).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and is_image_file(p.name))
            if not found:
                raise FewshotError(f"query folder {path} holds no images")
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


def classify_images(model: FewShotModel, support: torch.Tensor, labels: torch.Tensor, names: list[str],
                    query_images: torch.Tensor, query_files: list[Path], device: torch.device | str = "cpu",
                    batch_size: int = 256, explain_dir: str | os.PathLike | None = None) -> list[dict]:
    """For each decoded query: ``{"query", "predicted", "probabilities": {class: p}}``.

    With ``explain_dir``, the probabilities come from the same (adapted) network as the Grad-CAM heatmaps
    written there, one ``<query>.gradcam.png`` each, so a heatmap's title always matches the prediction."""
    device = torch.device(device)
    model.eval()
    if explain_dir is not None:
        from .explain import explain, save_explanations

        heatmaps, probabilities = explain(model.to(device), support.to(device), labels.to(device), len(names),
                                          query_images.to(device))
        probabilities = probabilities.cpu()
        save_explanations(query_images, heatmaps.cpu(), probabilities, names, query_files, explain_dir)
    else:
        def embed(images: torch.Tensor) -> torch.Tensor:
            return torch.cat([model.embed(images[i:i + batch_size].to(device))
                              for i in range(0, len(images), batch_size)])

        with torch.inference_mode():
            if model.head.adapts_backbone:
                logits = model(support.to(device), labels.to(device), query_images.to(device), len(names))
            else:
                logits = model.classify(embed(support), labels.to(device), embed(query_images), len(names))
            probabilities = model.head.probabilities(logits).cpu()
    return [{"query": str(path), "predicted": names[int(probs.argmax())],
             "probabilities": {name: float(p) for name, p in zip(names, probs)}}
            for path, probs in zip(query_files, probabilities)]
