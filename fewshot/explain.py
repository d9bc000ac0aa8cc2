"""Grad-CAM heatmaps (Selvaraju et al. 2017) over query images, for ``fewshot predict --explain``.

The heatmap weights each channel of the backbone's last feature map by the mean gradient of the
predicted class's logit, keeps the positive part and upsamples it to the image. Its resolution is the
feature map's: 1x1 for Conv4 at 28 px says nothing; ResNets at 224 px give 7x7.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from .atomic import atomic_write
from .heads.base import Network
from .model import FewShotModel


def grad_cam(network: Network, images: torch.Tensor, probabilities: Callable[[torch.Tensor], torch.Tensor]
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmaps ``(Q, H, W)`` in [0, 1] and class probabilities ``(Q, ways)`` for normalized images
    ``(Q, C, H, W)`` through an episode's ``network`` (:meth:`fewshot.heads.Head.adapted`)."""
    images = images.detach().clone().requires_grad_(True)  # gradients reach the maps even if no weight trains
    maps, logits = network(images)  # (Q, D, h, w), (Q, ways)
    chosen = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
    (gradients,) = torch.autograd.grad(chosen, maps)
    weights = gradients.mean(dim=(2, 3), keepdim=True)
    cam = F.relu((weights * maps).sum(dim=1, keepdim=True))
    cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
    peak = cam.flatten(1).max(dim=1).values.clamp_min(1e-12)[:, None, None]
    return (cam / peak).detach(), probabilities(logits.float()).detach()


def explain(model: FewShotModel, support: torch.Tensor, support_labels: torch.Tensor, ways: int,
            queries: torch.Tensor, chunk: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmaps ``(Q, H, W)`` and probabilities ``(Q, ways)`` for uint8 ``queries`` ``(Q, C, H, W)``, through
    the network the head uses for this support set: adapted first for heads that adapt it (fine-tuning,
    MAML, ANIL), so a heatmap explains the prediction that is printed. Heads with batch-statistics
    BatchNorm (MAML, ANIL) see all queries in one batch, as in prediction; others in chunks."""
    model.eval()
    with torch.inference_mode(False), torch.enable_grad():
        with model.adapted(support.clone(), support_labels.clone(), ways) as network:
            size = len(queries) if model.head.adapts_backbone else chunk
            parts = [grad_cam(network, model.prepare(queries[i:i + size].clone()), model.head.probabilities)
                     for i in range(0, len(queries), size)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


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


def save_explanations(queries: torch.Tensor, heatmaps: torch.Tensor, probabilities: torch.Tensor, names: list[str],
                      query_files: list[Path], out_dir: str | os.PathLike) -> list[Path]:
    """Write ``OUT_DIR/<query name>.gradcam.png`` for every query (titled with its predicted class)."""
    out = Path(out_dir)
    written = []
    used: set[str] = set()
    for image, heatmap, probs, path in zip(queries, heatmaps, probabilities, query_files):
        best = int(probs.argmax())
        stem = path.stem if path.stem not in used else f"{path.parent.name}-{path.stem}"
        used.add(stem)
        title = f"predicted: {names[best]} (p={float(probs[best]):.2f})"
        written.append(save_explanation(image, heatmap, title, out / f"{stem}.gradcam.png"))
    return written


def heatmap_overlay_png(image: torch.Tensor, heatmap: torch.Tensor, alpha: float = 0.45) -> bytes:
    """PNG bytes of ``image`` ``(C, H, W)`` uint8 with its heatmap ``(H, W)`` in [0, 1] blended over it in
    the 'jet' colour map (the server's ``explain`` answer; :func:`save_explanation` draws the two-panel figure)."""
    import io

    import matplotlib
    import numpy as np
    from PIL import Image

    pixels = image.permute(1, 2, 0).cpu().numpy().astype(np.float32)
    if pixels.shape[2] == 1:
        pixels = np.repeat(pixels, 3, axis=2)
    colours = matplotlib.colormaps["jet"](heatmap.clamp(0, 1).cpu().numpy())[:, :, :3] * 255.0
    blended = np.clip((1 - alpha) * pixels + alpha * colours, 0, 255).astype(np.uint8)
    out = io.BytesIO()
    Image.fromarray(blended, "RGB").save(out, format="PNG")
    return out.getvalue()
