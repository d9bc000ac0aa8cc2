"""BD-CSPN (Liu et al. 2020): prototypes rectified with the episode's queries, transductively.

Two biases of support-only prototypes are reduced. *Cross-class bias*: the queries are shifted by the
difference between the support mean and the query mean. *Intra-class bias*: each query gets the pseudo
label of its nearest prototype (cosine), and each prototype becomes the mean of its support embeddings and
pseudo-labelled queries, every one weighted by ``exp(temperature * cosine)`` to the initial prototype.
Logits are ``temperature * cosine`` to the rectified prototypes. ``temperature`` defaults to 1: at 10 (this
head's earlier default) the weights ``exp(10 * cosine)`` let the single support image of a 1-shot class outweigh
its pseudo-labelled queries and the rectification does almost nothing; 1 is +5.3 points at 1 shot on balanced
and +4.2 on Dirichlet(2) query sets (benchmarks/imbalanced.py, 400 episodes; easyfsl's cross-check found 4.7).
Unlike PT-MAP it assumes nothing about how the queries spread over the classes, but a query's prediction still
depends on the other queries (with fewer queries than classes the shift is skipped: it would move a lone query
onto the support mean).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import FewshotError
from .base import Head, episode_class_means


class BDCSPN(Head):
    meta_trainable = False
    exportable = False
    transductive = True  # explained, predicted and estimated one image at a time by its inductive form
    inductive_form = "cosine to the support class means, times temperature (no rectification)"

    def __init__(self, embedding_dim: int, feature_shape: tuple[int, ...], temperature: float = 1.0):
        super().__init__(embedding_dim, feature_shape)
        if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
            raise FewshotError(f"bd_cspn temperature must be a number > 0, got {temperature!r}")
        self.temperature = float(temperature)

    def fit(self, support, support_labels, ways):
        """The inductive form: ``{"prototypes": (..., ways, D)}``, normalized means of the normalized support."""
        means = episode_class_means(F.normalize(support.float(), dim=-1), support_labels, ways)
        return {"prototypes": F.normalize(means, dim=-1)}

    def classify(self, state, query):
        return self.temperature * F.normalize(query.float(), dim=-1) @ state["prototypes"].transpose(-1, -2)

    def forward(self, support, support_labels, query, ways):
        return self.forward_episodes(support[None], support_labels, query[None], ways)[0]

    def forward_episodes(self, support, support_labels, query, ways):
        """Support ``(E, S, D)`` with shared labels ``(S,)``, queries ``(E, Q, D)`` -> logits ``(E, Q, ways)``."""
        rectified, query = rectified_prototypes(support, support_labels, query, ways, self.temperature)
        return self.temperature * query @ rectified.transpose(1, 2)


def rectified_prototypes(support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor, ways: int,
                         temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """BD-CSPN's two corrections of support-only prototypes, for any head that wants them.

    Support ``(E, S, D)`` with shared labels ``(S,)`` and queries ``(E, Q, D)`` (any scale: both are L2-normalized
    here) -> ``(prototypes (E, ways, D), queries (E, Q, D))``, both L2-normalized: the rectified prototypes, and the
    queries shifted by the support mean minus the query mean (unshifted with fewer queries than classes)."""
    support, query = F.normalize(support.float(), dim=-1), F.normalize(query.float(), dim=-1)
    if query.shape[1] >= ways:  # fewer queries than classes say nothing about the query distribution
        query = query + support.mean(dim=1, keepdim=True) - query.mean(dim=1, keepdim=True)
    one_hot = F.one_hot(support_labels, ways).to(support.dtype)  # (S, ways)
    prototypes = F.normalize(torch.einsum("sw,esd->ewd", one_hot / one_hot.sum(0).clamp_min(1), support), dim=-1)

    def cosine(x: torch.Tensor) -> torch.Tensor:  # (E, N, D) -> (E, N, ways)
        return F.normalize(x, dim=-1) @ prototypes.transpose(1, 2)

    query_cosine = cosine(query)
    pseudo = F.one_hot(query_cosine.argmax(-1), ways).to(query.dtype)  # (E, Q, ways)
    weights = torch.cat([one_hot.expand(len(support), -1, -1) * (temperature * cosine(support)).exp(),
                         pseudo * (temperature * query_cosine).exp()], dim=1)  # (E, S+Q, ways)
    joint = torch.cat([support, query], dim=1)
    rectified = torch.einsum("enw,end->ewd", weights, joint) / weights.sum(1).unsqueeze(-1)
    return F.normalize(rectified, dim=-1), F.normalize(query, dim=-1)
