"""Prototypical networks (Snell et al. 2017): a class is the mean of its support embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import FewshotError
from .base import Head, episode_class_means


class ProtoNet(Head):
    """Logits are negative squared Euclidean distances to the prototypes, or cosine similarities
    scaled by a learnable temperature (``distance: cosine``)."""

    def __init__(self, embedding_dim: int, feature_shape: tuple[int, ...], distance: str = "euclidean",
                 temperature: float = 10.0):
        super().__init__(embedding_dim, feature_shape)
        if distance not in ("euclidean", "cosine"):
            raise FewshotError(f"protonet distance must be euclidean or cosine, got '{distance}'")
        self.distance = distance
        if distance == "cosine":
            self.log_temperature = nn.Parameter(torch.tensor(float(temperature)).log())

    def fit(self, support, support_labels, ways):
        """``{"prototypes": (..., ways, E)}``: the class means of the support embeddings."""
        return {"prototypes": episode_class_means(support, support_labels, ways)}

    def classify(self, state, query):
        prototypes = state["prototypes"]
        if self.distance == "cosine":
            similarity = F.normalize(query, dim=-1) @ F.normalize(prototypes, dim=-1).transpose(-1, -2)
            return similarity * self.log_temperature.exp()
        return -torch.cdist(query, prototypes).pow(2)  # (..., Q, ways)

    def forward_episodes(self, support, support_labels, query, ways):
        """Batched over episodes: prototypes ``(E, ways, D)`` from one matrix product, distances by one
        batched ``cdist``."""
        return self(support, support_labels, query, ways)
