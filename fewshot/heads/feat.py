"""FEAT (Ye et al., CVPR 2020, "Few-shot learning via embedding adaptation with set-to-set functions"): the
episode's prototypes are adapted to each other by a transformer layer before nearest-prototype classification."""

from __future__ import annotations

import torch
from torch import nn

from .base import Head, episode_class_means


class FEAT(Head):
    """Prototypes ``(ways, E)`` (support class means) pass through one self-attention layer with a residual
    connection and layer norm (the paper's set-to-set function: each prototype adapted in the context of the
    others, permutation-equivariant over classes); logits ``-||q - p||^2 / temperature``. Meta-trained end to end
    (the paper's auxiliary contrastive loss is not included). The attention's output projection starts at zero, so
    an untrained FEAT is exactly ProtoNet."""

    def __init__(self, embedding_dim: int, feature_shape: tuple[int, ...], heads: int = 1, dropout: float = 0.0,
                 temperature: float = 64.0):
        super().__init__(embedding_dim, feature_shape)
        self.attention = nn.MultiheadAttention(embedding_dim, heads, dropout=dropout, batch_first=True)
        nn.init.zeros_(self.attention.out_proj.weight)
        nn.init.zeros_(self.attention.out_proj.bias)
        self.norm = nn.LayerNorm(embedding_dim)
        self.norm_gain = nn.Parameter(torch.zeros(()))  # the normalized branch fades in as training learns it
        self.temperature = float(temperature)

    def fit(self, support, support_labels, ways):
        """``{"prototypes": (..., ways, E)}``: the class means, adapted by the set-to-set transformer."""
        prototypes = episode_class_means(support.float(), support_labels, ways)
        flat = prototypes.reshape(-1, *prototypes.shape[-2:])  # (B, ways, E)
        attended, _ = self.attention(flat, flat, flat, need_weights=False)
        adapted = flat + attended
        adapted = adapted + self.norm_gain * (self.norm(adapted) - adapted)
        return {"prototypes": adapted.reshape(prototypes.shape)}

    def classify(self, state, query):
        return -torch.cdist(query.float(), state["prototypes"]).pow(2) / self.temperature

    def forward_episodes(self, support, support_labels, query, ways):
        """Batched over episodes."""
        return self(support, support_labels, query, ways)
