"""The interface every head implements, and the shared pieces (class means, cross-entropy)."""

from __future__ import annotations

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


class Head(nn.Module):
    """Classifies query features given labelled support features of one episode.

    ``forward(support, support_labels, query, ways)``: ``support`` is ``(ways*shots, *F)``, ``query``
    ``(Q, *F)``, where ``F`` is ``(E,)`` for pooled embeddings or ``(D, h, w)`` for feature maps
    (heads that set ``feature_map = True``). Returns logits ``(Q, ways)``.

    ``adapts_backbone`` is False for heads that leave the backbone as it is at test time: the
    evaluator then embeds each image once and reuses the embedding in every episode.
    """

    feature_map: bool = False
    adapts_backbone: bool = False

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
