"""A few-shot classifier: backbone + head, taking uint8 images and normalizing them on its device."""

from __future__ import annotations

import warnings

import torch
from torch import nn

from episodes import normalization, normalize

from .backbones import Backbone, build_backbone
from .config import ModelConfig
from .heads import Head, build_head


class FewShotModel(nn.Module):
    """``forward(support, support_labels, query, ways)`` -> logits ``(Q, ways)``.

    ``support``: ``(ways*shots, C, H, W)`` and ``query``: ``(Q, C, H, W)``, uint8 (normalized here) or
    already-normalized float. Support and query go through the backbone in one batch.
    """

    def __init__(self, backbone: Backbone, head: Head, channels: int):
        super().__init__()
        self.backbone, self.head, self.channels = backbone, head, channels
        default_mean, default_std = normalization(channels)
        mean, std = backbone.mean or default_mean, backbone.std or default_std
        if len(mean) != channels:  # RGB statistics of pretrained weights, grey input: their channel average
            mean, std = (sum(mean) / len(mean),) * channels, (sum(std) / len(std),) * channels
        self.mean, self.std = tuple(mean), tuple(std)

    def prepare(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 ``(B, C, H, W)`` -> normalized float; float input is returned as it is."""
        if images.dtype == torch.uint8:
            images = normalize(images, self.mean, self.std)
        return images.contiguous(memory_format=torch.channels_last)

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``(B, C, H, W)`` -> ``(B, E)`` embeddings, or ``(B, D, h, w)`` maps for a feature-map head."""
        images = self.prepare(images)
        return self.backbone.forward_features(images) if self.head.feature_map else self.backbone(images)

    def classify(self, support_features: torch.Tensor, support_labels: torch.Tensor, query_features: torch.Tensor,
                 ways: int) -> torch.Tensor:
        """Logits ``(Q, ways)`` from features already embedded by :meth:`embed`."""
        return self.head(support_features.float(), support_labels, query_features.float(), ways)

    def classify_episodes(self, support_features: torch.Tensor, support_labels: torch.Tensor,
                          query_features: torch.Tensor, ways: int) -> torch.Tensor:
        """Logits ``(E, Q, ways)`` for ``E`` episodes of embedded features ``(E, S, *F)`` / ``(E, Q, *F)``."""
        return self.head.forward_episodes(support_features.float(), support_labels, query_features.float(), ways)

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
    return FewShotModel(backbone, head, channels)
