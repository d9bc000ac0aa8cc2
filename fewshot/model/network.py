"""A few-shot classifier: backbone + head, taking uint8 images and normalizing them on its device, with
optional test-time augmentation of the embeddings (``model.tta``) and a feature transform between
embedding and head (``model.transform``, see :mod:`fewshot.model.transforms`)."""

from __future__ import annotations

import contextlib
import warnings
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from episodes import normalization, normalize

from ..backbones import Backbone, build_backbone
from ..config import ModelConfig
from ..errors import FewshotError
from ..heads import Head, build_head
from ..heads.base import HeadState, Network
from ..inference.open_set import fit_scores, unknown_scores
from .transforms import TRANSFORMS, TTA, TransformState, apply_transform, fit_transform, transform_features


@dataclass
class FittedClassifier:
    """A classifier fitted once on a support set, to classify any number of queries one at a time: the feature
    transform's statistics, the head's state (small tensors, :meth:`fewshot.heads.Head.fit`) and the
    temperature that calibrates its probabilities (``softmax(temperature * logits)``)."""

    transform: TransformState
    head: HeadState
    ways: int
    temperature: float = 1.0
    info: dict = field(default_factory=dict)  # how the temperature was chosen, for reports
    unknown_score: str = ""  # the "none of these" score fitted in ``unknown`` (see fewshot.inference.open_set); "" for none
    unknown: dict[str, torch.Tensor] = field(default_factory=dict)

    def detached(self) -> "FittedClassifier":
        """A copy whose tensors are fresh clones outside autograd and inference mode (usable in a backward pass)."""
        with torch.inference_mode(False):
            return FittedClassifier({k: v.detach().clone() for k, v in self.transform.items()},
                                    {k: v.detach().clone() for k, v in self.head.items()}, self.ways,
                                    self.temperature, dict(self.info), self.unknown_score,
                                    {k: v.detach().clone() for k, v in self.unknown.items()})

    def tensors(self) -> dict[str, torch.Tensor]:
        """Every tensor of the state, named ``transform.<key>`` / ``head.<key>`` / ``unknown.<key>``."""
        return {**{f"transform.{k}": v for k, v in self.transform.items()},
                **{f"head.{k}": v for k, v in self.head.items()},
                **{f"unknown.{k}": v for k, v in self.unknown.items()}}


class FewShotModel(nn.Module):
    """``forward(support, support_labels, query, ways)`` -> logits ``(Q, ways)``.

    ``support``: ``(ways*shots, C, H, W)`` and ``query``: ``(Q, C, H, W)``, uint8 (normalized here) or
    already-normalized float. Support and query go through the backbone in one batch.
    """

    def __init__(self, backbone: Backbone, head: Head, channels: int, transform: str = "none", tta: str = "none"):
        super().__init__()
        self.backbone, self.head, self.channels = backbone, head, channels
        self.set_test_time(transform, tta)
        default_mean, default_std = normalization(channels)
        mean, std = backbone.mean or default_mean, backbone.std or default_std
        if len(mean) != channels:  # RGB statistics of pretrained weights, grey input: their channel average
            mean, std = (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels
        self.mean, self.std = tuple(mean), tuple(std)
        self.adapt, self.adapt_steps = "none", 40  # fewshot.inference.adaptation: set from model.adapt / model.adapt_steps

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, C, H, W)`` -> normalized float; float input is returned as it is."""
        if images.dtype == torch.uint8:
            images = normalize(images, self.mean, self.std)
        return images.contiguous(memory_format=torch.channels_last)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, E)`` embeddings (averaged with the mirrored image's under ``tta: flip``),
        or ``(B, D, h, w)`` maps for a feature-map head."""
        images = self.prepare(images)
        if self.head.feature_map:
            return self.backbone.forward_features(images)
        embedded = self.backbone(images)
        if self.tta == "flip":
            embedded = (embedded + self.backbone(images.flip(-1))) / 2
        return embedded

    def classify(self, support_features: torch.Tensor, support_labels: torch.Tensor, query_features: torch.Tensor,
                 ways: int) -> torch.Tensor:
        """Logits ``(Q, ways)`` of one episode from features already embedded by :meth:`embed` (transformed
        here); transductive heads use the other queries (the episodic path)."""
        support, query = apply_transform(self.transform, support_features.float(), query_features.float())
        return self.head(support, support_labels, query, ways)

    def fit(self, support_features: torch.Tensor, support_labels: torch.Tensor, ways: int,
            temperature: float = 1.0, unknown_score: str = "") -> FittedClassifier:
        """Fit the transform and the head once on embedded support features ``(S, *F)``, labels ``(S,)``
        (the head's inductive form for a transductive head), and the ``unknown_score``'s state when one is named
        (:func:`fewshot.inference.open_set.fit_scores`); see :meth:`fitted_logits` and :meth:`fitted_scores`."""
        support = support_features.float()
        transform = fit_transform(self.transform, support)
        transformed = transform_features(self.transform, transform, support)
        head = self.head.fit(transformed, support_labels, ways)
        unknown = fit_scores(transformed, support_labels, ways, unknown_score) if unknown_score else {}
        return FittedClassifier(transform, {k: v.detach() for k, v in head.items()}, ways, float(temperature),
                                unknown_score=unknown_score, unknown=unknown)

    def fitted_logits(self, fitted: FittedClassifier, query_features: torch.Tensor) -> torch.Tensor:
        """Uncalibrated logits ``(Q, ways)`` of embedded queries ``(Q, *F)``, each classified on its own."""
        query = transform_features(self.transform, fitted.transform, query_features.float())
        return self.head.classify(fitted.head, query)

    def fitted_probabilities(self, fitted: FittedClassifier, query_features: torch.Tensor) -> torch.Tensor:
        """Calibrated class probabilities ``(Q, ways)`` of embedded queries ``(Q, *F)``."""
        return self.head.probabilities(self.fitted_logits(fitted, query_features) * fitted.temperature)

    def fitted_scores(self, fitted: FittedClassifier, query_features: torch.Tensor
                      ) -> tuple[torch.Tensor, torch.Tensor]:
        """(calibrated class probabilities ``(Q, ways)``, "none of these" scores ``(Q,)``, higher = less like any
        class) of embedded queries ``(Q, *F)``; the probabilities are :meth:`fitted_probabilities`'."""
        if not fitted.unknown_score:
            raise FewshotError("this classifier was fitted without an unknown score")
        query = transform_features(self.transform, fitted.transform, query_features.float())
        logits = self.head.classify(fitted.head, query) * fitted.temperature
        return self.head.probabilities(logits), unknown_scores(fitted.unknown_score, fitted.unknown, query, logits)

    def set_test_time(self, transform: str, tta: str) -> None:
        """Set the feature transform and test-time augmentation (neither changes any weight), checked."""
        if transform not in TRANSFORMS or tta not in TTA:
            raise FewshotError(f"model.transform must be one of {', '.join(TRANSFORMS)} and model.tta one of "
                               f"{', '.join(TTA)}; got '{transform}' and '{tta}'")
        if (transform != "none" or tta != "none") and (self.head.feature_map or self.head.adapts_backbone):
            raise FewshotError(f"model.transform and model.tta work on pooled embeddings; head "
                               f"'{type(self.head).__name__}' uses feature maps or adapts the network: set both "
                               "to none")
        self.transform, self.tta = transform, tta

    def classify_episodes(self, support_features: torch.Tensor, support_labels: torch.Tensor,
                          query_features: torch.Tensor, ways: int) -> torch.Tensor:
        """Logits ``(E, Q, ways)`` for ``E`` episodes of embedded features ``(E, S, *F)`` / ``(E, Q, *F)``."""
        support, query = apply_transform(self.transform, support_features.float(), query_features.float())
        return self.head.forward_episodes(support, support_labels, query, ways)

    @contextlib.contextmanager
    def adapted(self, support: torch.Tensor, support_labels: torch.Tensor, ways: int,
                fitted: FittedClassifier | None = None) -> Iterator[Network]:
        """The network this model uses for a support set ``(S, C, H, W)``, inside the ``with`` block:
        normalized images -> (the backbone's feature maps, logits), the logits computed from the maps (for
        Grad-CAM). Heads that adapt the backbone give their adapted network; otherwise the queries go through
        the same TTA, transform and fitted head as :meth:`fitted_probabilities` (``fitted``, or one fitted here
        on the support set), calibrated logits included."""
        if self.head.adapts_backbone:
            with self.head.adapted(self.backbone, support, support_labels, ways, prepare=self.prepare) as network:
                yield network
            return
        if fitted is None:
            with torch.no_grad():
                fitted = self.fit(self.embed(support).float(), support_labels, ways)
        fitted = fitted.detached()  # normal tensors (a state fitted under inference_mode cannot join autograd)

        def network(images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
            with torch.no_grad():  # Grad-CAM differentiates by the maps: no graph through the backbone is needed
                maps = [m.detach().requires_grad_(True) for m in self.backbone.forward_maps(images)]
                flipped = self.backbone(images.flip(-1)) if self.tta == "flip" and not self.head.feature_map else None
            embedded = maps[0] if self.head.feature_map else self.backbone.pool_maps(maps)
            if flipped is not None:
                embedded = (embedded + flipped) / 2
            return maps, self.fitted_logits(fitted, embedded) * fitted.temperature

        yield network

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                ways: int) -> torch.Tensor:
        if self.head.adapts_backbone:  # raw images: the head augments or normalizes them itself
            return self.head.adapt(self.backbone, support, support_labels, query, ways, prepare=self.prepare)
        features = self.embed(torch.cat([support, query]))
        count = support.shape[0]
        return self.classify(features[:count], support_labels, features[count:], ways)


def build_model(config: ModelConfig, channels: int, image_size: int) -> FewShotModel:
    """Backbone and head from the config; the head is sized by one dummy pass at ``image_size``."""
    backbone = build_backbone(config.backbone, channels, config.weights, **config.backbone_options)
    trained = getattr(backbone, "trained_image_size", None)
    if trained and trained != image_size:
        warnings.warn(f"the weights in {config.weights} were trained at {trained} px and are used at {image_size} px; "
                      "features change with scale, so set data.image_size to "
                      f"{trained} unless the change is intended", stacklevel=2)
    backbone = backbone.to(memory_format=torch.channels_last)
    was_training = backbone.training
    backbone.eval()
    with torch.no_grad():
        features = backbone.forward_features(torch.zeros(1, channels, image_size, image_size))
        embedding_dim = backbone.pool_features(features).shape[1]
    backbone.train(was_training)
    head = build_head(config.head, embedding_dim, tuple(features.shape[1:]), **config.head_options)
    head.check_backbone(backbone)
    model = FewShotModel(backbone, head, channels, config.transform, config.tta)
    model.adapt, model.adapt_steps = config.adapt, config.adapt_steps
    return model
