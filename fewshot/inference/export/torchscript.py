"""Export a trained model with the prototypes of a support folder built in, for applications that do
not install this framework.

The format is TorchScript (``torch.jit.trace``): it needs only ``torch`` to load
(``torch.jit.load(path)``), runs from C++ (libtorch) too, and keeps the exact PyTorch operations, so its
outputs match ``fewshot predict``. Why not the alternatives: ONNX needs the onnx packages, which are
not dependencies here; ``torch.export`` (TorchScript's announced successor) specialises these models to
batches no larger than the support set in torch 2.14, while the traced module takes any batch size
(checked at export). torch 2.14 marks TorchScript deprecated; its warnings are silenced here.
The module takes ``(B, C, H, W)`` uint8 images already resized to the training size and returns
``(B, classes)`` probabilities (no autograd graph); any other dtype, channel count or size is refused
with a message saying what it expects. A classifier with a "none of these" score (``FewShotClassifier`` always
has one) also gets the method ``with_unknown_score(images)`` -> ``(probabilities, unknown_score (B,))``; the
score's name and the ``auto`` threshold (answer "unknown" above it) are in ``meta.json``. Class names and the
expected image size are stored as extra files ``class_names.json`` and ``meta.json`` in the archive. An
application prepares an image exactly as ``fewshot predict`` does: decode, convert to RGB (or L for 1
channel), resize to ``image_size`` x ``image_size`` with bilinear filtering (PIL's ``Image.BILINEAR``), then
``(H, W, C) -> (C, H, W)``.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from ...atomic import atomic_write
from ...errors import FewshotError
from ...model.capabilities import require
from ...model.network import FewShotModel, FittedClassifier
from ...model.transforms import transform_features
from ..open_set import unknown_scores


class CheckedInput(nn.Module):
    """Scripted front of the exported model: checks the input, runs the traced classifier without autograd."""

    def __init__(self, traced: torch.jit.ScriptModule, channels: int, image_size: int):
        super().__init__()
        self.classifier, self.channels, self.image_size = traced, channels, image_size

    def check(self, images: torch.Tensor) -> None:
        """Raise ValueError saying what is expected unless ``images`` is uint8 ``(B, C, S, S)``."""
        if images.dtype != torch.uint8:
            raise ValueError(f"expected uint8 images (B, {self.channels}, {self.image_size}, {self.image_size}) "
                             "with values 0-255, got another dtype (scale to 0-255 and convert with .to(torch.uint8))")
        if images.dim() != 4 or images.shape[1] != self.channels or images.shape[2] != self.image_size or \
                images.shape[3] != self.image_size:
            raise ValueError(f"expected uint8 images (B, {self.channels}, {self.image_size}, {self.image_size}) "
                             f"(decode, resize to {self.image_size}x{self.image_size}, channels first), got shape "
                             f"{list(images.shape)}")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.check(images)
        with torch.no_grad():
            return self.classifier(images)


class CheckedScoredInput(CheckedInput):
    """:class:`CheckedInput` around a traced :class:`ScoredImageClassifier`: ``forward`` gives the probabilities,
    ``with_unknown_score`` the probabilities and the unknown scores ``(B,)``."""

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.with_unknown_score(images)[0]

    @torch.jit.export
    def with_unknown_score(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.check(images)
        with torch.no_grad():
            return self.classifier(images)


class FittedImageClassifier(nn.Module):
    """The one description of a fitted model that both exports trace: normalization, backbone (with TTA), the
    feature transform's statistics and the head's fitted state as buffers, the head's ``classify`` and the
    calibration temperature. ``forward(images)``: float pixels ``(B, C, S, S)`` in 0-255 -> probabilities
    ``(B, classes)``. No optimisation loop: the head was fitted once (:meth:`FewShotModel.fit`)."""

    def __init__(self, model: FewShotModel, fitted: FittedClassifier):
        super().__init__()
        self.backbone, self.head, self.ways = model.backbone, model.head, fitted.ways
        self.feature_map = model.head.feature_map
        self.tta, self.transform = model.tta, model.transform  # as FewShotModel.embed and fitted_logits apply them
        self.transform_keys, self.head_keys = sorted(fitted.transform), sorted(fitted.head)
        for key in self.transform_keys:
            self.register_buffer(f"transform_{key}", fitted.transform[key].detach().cpu().float().clone())
        for key in self.head_keys:
            self.register_buffer(f"head_{key}", fitted.head[key].detach().cpu().clone())
        self.unknown_score, self.unknown_keys = fitted.unknown_score, sorted(fitted.unknown)
        for key in self.unknown_keys:
            self.register_buffer(f"unknown_{key}", fitted.unknown[key].detach().cpu().float().clone())
        self.ops = contextlib.nullcontext  # the ONNX export sets its portable operations here
        self.temperature = float(fitted.temperature)
        std = torch.tensor(model.std).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std))
        self.register_buffer("shift", -torch.tensor(model.mean).view(1, -1, 1, 1) / std)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head.probabilities(self.calibrated_logits(images)[0])

    def calibrated_logits(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(calibrated logits ``(B, classes)``, transformed embeddings ``(B, *F)``) of float pixels."""
        x = images.float() * self.scale + self.shift
        features = self.backbone.forward_features(x) if self.feature_map else self.backbone(x)
        if self.tta == "flip":
            features = (features + self.backbone(x.flip(-1))) / 2
        transform = {key: getattr(self, f"transform_{key}") for key in self.transform_keys}
        state = {key: getattr(self, f"head_{key}") for key in self.head_keys}
        query = transform_features(self.transform, transform, features.float())
        return self.head.classify(state, query) * self.temperature, query


class ScoredImageClassifier(nn.Module):
    """``forward(images)``: float pixels ``(B, C, S, S)`` in 0-255 -> (probabilities ``(B, classes)``, "none of
    these" scores ``(B,)``) of a :class:`FittedImageClassifier` fitted with an unknown score."""

    def __init__(self, classifier: FittedImageClassifier):
        super().__init__()
        if not classifier.unknown_score:
            raise FewshotError("the classifier was fitted without an unknown score")
        self.classifier = classifier

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        classifier = self.classifier
        logits, query = classifier.calibrated_logits(images)
        state = {key: getattr(classifier, f"unknown_{key}") for key in classifier.unknown_keys}
        with classifier.ops():
            scores = unknown_scores(classifier.unknown_score, state, query, logits)
        return classifier.head.probabilities(logits), scores


def unknown_metadata(fitted: FittedClassifier, threshold: dict | None) -> dict:
    """What an export says of its "none of these" score: its name, and the ``auto`` threshold with the recall and
    AUROC it was chosen at (``threshold``: :meth:`fewshot.inference.estimate.OpenSetEstimate.to_json`, or None with the
    reason ``{"refused": ...}`` or nothing)."""
    if not fitted.unknown_score:
        return {}
    found = {"unknown_score": fitted.unknown_score,
             "unknown_output": "float32 (B,) score, higher = less like any class; above unknown_threshold answer "
                               "'unknown'"}
    if threshold and "threshold" in threshold:
        found.update(unknown_threshold=threshold["threshold"], unknown_recall=threshold["recall"],
                     unknown_auroc=threshold["auroc"])
    elif threshold and "refused" in threshold:
        found["unknown_threshold_refused"] = threshold["refused"]
    return found


def export_torchscript(model: FewShotModel, fitted: FittedClassifier, example: torch.Tensor, names: list[str],
                       out: str | os.PathLike, image_size: int, channels: int, threshold: dict | None = None) -> Path:
    """Trace ``model`` with its ``fitted`` classifier built in (:class:`FittedImageClassifier`, and
    :class:`ScoredImageClassifier` when it has an unknown score) and save it to ``out`` (atomically); ``example``:
    a few uint8 images ``(N, C, S, S)`` (the support images) to trace with; ``threshold``: see
    :func:`unknown_metadata`."""
    require(model, "export")
    model = model.cpu().eval()
    module = FittedImageClassifier(model, fitted).eval()
    if fitted.unknown_score:
        module = ScoredImageClassifier(module).eval()
    support = example
    example = support[: min(2, len(support))]
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(module, example, check_trace=False)
        larger = torch.cat([support] * (1 + 3 // len(support)))[:3]  # another batch size than the traced one
        if not all(torch.allclose(a, b, atol=1e-5) for a, b in zip(outputs(traced(larger)), outputs(module(larger)))):
            raise FewshotError("the traced model does not reproduce the model at another batch size")
        front = (CheckedScoredInput if fitted.unknown_score else CheckedInput)(traced, channels, image_size)
        checked = torch.jit.freeze(torch.jit.script(front).eval(), preserved_attrs=["with_unknown_score"]
                                   if fitted.unknown_score else None)  # BN folded
    extra = {"class_names.json": json.dumps(names),
             "meta.json": json.dumps({"image_size": image_size, "channels": channels, "input": "uint8 (B, C, H, W)",
                                      "output": "probabilities (B, classes)",
                                      **unknown_metadata(fitted, threshold)})}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return atomic_write(out, lambda handle: torch.jit.save(checked, handle, _extra_files=extra))


def outputs(found: torch.Tensor | tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    """A module's output as a tuple of tensors."""
    return found if isinstance(found, tuple) else (found,)
