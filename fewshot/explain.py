"""Grad-CAM heatmaps (Selvaraju et al. 2017) over query images, for ``fewshot predict --explain``.

The heatmap weights each channel of the backbone's last feature map by the mean gradient of the
predicted class's logit, keeps the positive part and upsamples it to the image. Its resolution is the
feature map's: 1x1 for Conv4 at 28 px says nothing; ResNets at 224 px give 7x7.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F

from .atomic import atomic_write
from .model import FewShotModel


def grad_cam(model: FewShotModel, support_features: torch.Tensor, support_labels: torch.Tensor, ways: int,
             query: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmaps ``(Q, H, W)`` in [0, 1] and probabilities ``(Q, ways)`` for uint8 queries ``(Q, C, H, W)``."""
    model.eval()
    with torch.inference_mode(False), torch.enable_grad():
        images = model.prepare(query.clone())
        features = model.backbone.forward_features(images)  # (Q, D, h, w)
        embedded = features if model.head.feature_map else model.backbone.pool_features(features)
        logits = model.classify(support_features.clone(), support_labels, embedded, ways)
        chosen = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
        (gradients,) = torch.autograd.grad(chosen, features)
        weights = gradients.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * features).sum(dim=1, keepdim=True))
        cam = F.interpolate(cam, size=query.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12)[:, None, None]
        return (cam / peak).detach(), model.head.probabilities(logits).detach()


def save_explanation(image: torch.Tensor, heatmap: torch.Tensor, title: str, out_path: str | os.PathLike) -> Path:
    """One PNG: the query image with its heatmap over it, the predicted class in the title."""
    from .plots import _pyplot

    plt = _pyplot()
    pixels = image.permute(1, 2, 0).cpu().numpy()
    fig, (left, right) = plt.subplots(1, 2, figsize=(7, 3.8))
    kwargs = {"cmap": "gray"} if pixels.shape[2] == 1 else {}
    shown = pixels[:, :, 0] if pixels.shape[2] == 1 else pixels
    left.imshow(shown, **kwargs)
    left.set_title("query")
    right.imshow(shown, **kwargs)
    right.imshow(heatmap.cpu().numpy(), cmap="jet", alpha=0.5, vmin=0, vmax=1)
    right.set_title("Grad-CAM")
    for axis in (left, right):
        axis.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    atomic_write(out_path, lambda handle: fig.savefig(handle, format="png", dpi=100))
    plt.close(fig)
    return Path(out_path)


def explain_queries(model: FewShotModel, support: torch.Tensor, support_labels: torch.Tensor, names: list[str],
                    queries: torch.Tensor, query_files: list[Path], out_dir: str | os.PathLike,
                    device: torch.device) -> list[Path]:
    """Write ``OUT_DIR/<query name>.gradcam.png`` for every query; return the paths."""
    out = Path(out_dir)
    with torch.inference_mode():
        support_features = model.embed(support.to(device)).float()
    written = []
    used: set[str] = set()
    for image, path in zip(queries, query_files):
        heatmap, probabilities = grad_cam(model, support_features, support_labels.to(device), len(names),
                                          image[None].to(device))
        best = int(probabilities[0].argmax())
        stem = path.stem if path.stem not in used else f"{path.parent.name}-{path.stem}"
        used.add(stem)
        title = f"predicted: {names[best]} (p={float(probabilities[0, best]):.2f})"
        written.append(save_explanation(image, heatmap[0], title, out / f"{stem}.gradcam.png"))
    return written


