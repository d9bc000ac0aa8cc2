"""The interface every head implements, and the shared pieces (class means, cross-entropy)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def class_means(features: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Per-class mean of ``features``: ``(S, *F)`` with labels ``(S,)`` in ``0..ways-1`` -> ``(ways, *F)``.

    Works for any number of shots per class (``predict`` support folders may be unbalanced).
    """
    flat = features.reshape(features.shape[0], -1)
    sums = flat.new_zeros(ways, flat.shape[1]).index_add_(0, labels, flat)
    counts = torch.bincount(labels, minlength=ways).clamp_min(1).to(flat.dtype)
    return (sums / counts[:, None]).reshape(ways, *features.shape[1:])


Network = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]]
"""An episode's network: normalized images ``(B, C, H, W)`` -> (last feature maps ``(B, D, h, w)``,
logits ``(B, ways)``); the logits are computed from the maps, so Grad-CAM can differentiate one by the other."""


class FeatureMaps(nn.Module):
    """``backbone.forward_features`` as a module's forward, so ``torch.func.functional_call`` can run it
    on other weights (named ``backbone.*``)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(images)


class Head(nn.Module):
    """Classifies query features given labelled support features of one episode.

    ``forward(support, support_labels, query, ways)``: ``support`` is ``(ways*shots, *F)``, ``query``
    ``(Q, *F)``, where ``F`` is ``(E,)`` for pooled embeddings or ``(D, h, w)`` for feature maps
    (heads that set ``feature_map = True``). Returns logits ``(Q, ways)``.

    Capabilities, declared by each head class (nothing elsewhere lists heads by name):

    * ``adapts_backbone``: the head needs the episode's raw images, because it changes the network per
      episode (:meth:`adapt`); False means the evaluator may embed each image once and reuse it.
    * ``meta_trainable``: ``fewshot train`` can meta-train through it.
    * ``exportable``: it classifies fixed support embeddings, so a model can be exported with them built in.
    * ``explainable``: ``predict --explain`` can draw Grad-CAM heatmaps of its predictions.
    * ``transductive``: a query's prediction uses the other queries of its episode (or of its ``predict``
      batch), so it needs several queries per class.
    * ``max_ways``: the most classes an episode may have (None: any number; MAML's fixed output layer sets it).
    """

    feature_map: bool = False
    adapts_backbone: bool = False
    meta_trainable: bool = True
    exportable: bool = True
    explainable: bool = True
    transductive: bool = False
    max_ways: int | None = None

    def __init__(self, embedding_dim: int, feature_shape: tuple[int, ...]):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.feature_shape = tuple(feature_shape)

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                ways: int) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward_episodes(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                         ways: int) -> torch.Tensor:
        """Several episodes of one shape at once: ``support`` ``(E, ways*shots, *F)``, ``query``
        ``(E, Q, *F)``, labels shared -> logits ``(E, Q, ways)``. One episode at a time by default; heads
        with a batched form override it (the evaluator calls this)."""
        return torch.stack([self(s, support_labels, q, ways) for s, q in zip(support, query)])

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Training loss for logits ``(Q, ways)`` and labels ``(Q,)``: cross-entropy by default."""
        return F.cross_entropy(logits, labels)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(Q, ways)`` from logits: softmax by default."""
        return logits.softmax(dim=-1)

    def check_backbone(self, backbone: nn.Module) -> None:
        """Raise a one-line error when the head's options do not fit ``backbone`` (called when the model is
        built); nothing to check by default."""

    def adapted(self, backbone: nn.Module, support: torch.Tensor, support_labels: torch.Tensor, ways: int,
                prepare: Callable[[torch.Tensor], torch.Tensor] | None = None):
        """Heads that adapt the backbone (``adapts_backbone``) return a context manager giving the episode's
        adapted :data:`Network` for ``support`` ``(S, C, H, W)``; the others are served by
        :meth:`fewshot.model.FewShotModel.adapted`."""
        raise NotImplementedError(f"{type(self).__name__} does not adapt the backbone")
