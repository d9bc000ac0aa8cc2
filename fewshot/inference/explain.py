"""Grad-CAM heatmaps (Selvaraju et al. 2017) over query images, for ``fewshot predict --explain``.

The heatmap weights each channel of the backbone's last feature map by the mean gradient of the predicted class's
evidence (its logit minus the mean of the other classes' logits: :func:`class_evidence`), keeps the positive part
and upsamples it to the image. Its resolution is the feature map's: ResNets at 224 px give 7x7; a 1x1 map (Conv4 at
28 px) would be flat and is refused (:mod:`fewshot.model.capabilities`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from ..atomic import atomic_write
from ..heads.base import Network
from ..model.network import FewShotModel, FittedClassifier


def class_evidence(logits: torch.Tensor) -> torch.Tensor:
    """What a heatmap explains, summed over queries: each query's predicted-class logit minus the mean of its
    other logits (``(Q, ways)`` -> scalar). Contrastive, so distance heads (whose raw logit only says "close
    to this prototype", often with negative evidence everywhere) highlight what separates the classes, and
    unlike log-probabilities it does not vanish when a prediction is confident."""
    chosen = logits.argmax(1, keepdim=True)
    others = (logits.sum(1, keepdim=True) - logits.gather(1, chosen)) / max(logits.shape[1] - 1, 1)
    return (logits.gather(1, chosen) - others).sum()


def grad_cam(network: Network, images: torch.Tensor, probabilities: Callable[[torch.Tensor], torch.Tensor]
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmaps ``(Q, H, W)`` in [0, 1] and class probabilities ``(Q, ways)`` for normalized images
    ``(Q, C, H, W)`` through an episode's ``network`` (:meth:`fewshot.heads.Head.adapted`). Each feature map
    the network returns (one per ensemble member, at its own resolution) gets its Grad-CAM, upsampled to the
    image and scaled to peak 1; the heatmap is their mean, scaled to peak 1 again."""
    images = images.detach().clone().requires_grad_(True)  # gradients reach the maps even if no weight trains
    maps, logits = network(images)  # [(Q, D_i, h_i, w_i)], (Q, ways)
    gradients = torch.autograd.grad(class_evidence(logits.float()), maps)
    heatmap = images.new_zeros(images.shape[0], *images.shape[-2:])
    for member_maps, member_gradients in zip(maps, gradients):
        weights = member_gradients.mean(dim=(2, 3), keepdim=True)
        deviation = member_maps - member_maps.mean(dim=(2, 3), keepdim=True)
        cam = F.relu((weights * deviation).sum(dim=1, keepdim=True)).float()
        cam = F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False)[:, 0]
        heatmap = heatmap + cam / cam.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    peak = heatmap.flatten(1).amax(dim=1).clamp_min(1e-12)[:, None, None]
    return (heatmap / peak).detach(), probabilities(logits.float()).detach()


def explain(model: FewShotModel, support: torch.Tensor, support_labels: torch.Tensor, ways: int,
            queries: torch.Tensor, chunk: int = 16, fitted: FittedClassifier | None = None
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Heatmaps ``(Q, H, W)`` and probabilities ``(Q, ways)`` for uint8 ``queries`` ``(Q, C, H, W)``, through
    the network the head uses for this support set: adapted first for heads that adapt it (fine-tuning,
    MAML, ANIL), so a heatmap explains the prediction that is printed; the others classify with ``fitted``
    (the classifier's fitted state, calibrated) or a state fitted here. Heads with batch-statistics
    BatchNorm (MAML, ANIL) see all queries in one batch, as in prediction; others in chunks."""
    model.eval()
    with torch.inference_mode(False), torch.enable_grad():
        with model.adapted(support.clone(), support_labels.clone(), ways, fitted) as network:
            size = len(queries) if model.head.adapts_backbone else chunk
            parts = [grad_cam(network, model.prepare(queries[i:i + size].clone()), model.head.probabilities)
                     for i in range(0, len(queries), size)]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])


def save_explanation(image: torch.Tensor, heatmap: torch.Tensor, title: str, out_path: str | os.PathLike) -> Path:
    """One PNG: the query image with its heatmap over it, the predicted class in the title."""
    from ..plots import pyplot

    plt = pyplot()
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
