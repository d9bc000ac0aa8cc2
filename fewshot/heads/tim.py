"""TIM (Boudiaf et al. 2020), the gradient-descent form: transductive information maximization.

A classifier ``W`` ``(ways, D)``, initialized with the support class means of the L2-normalized
embeddings, gives logits ``-temperature / 2 * ||z - w||^2`` (``logits: l2``, the paper's form) or
``temperature * cos(z, w)`` (``logits: cosine``, the authors' code's other option; measured in
``benchmarks/imbalanced.py``). It is fitted per episode by Adam on
``ce_weight * cross-entropy(support) + conditional_weight * mean entropy of the query predictions -
marginal_weight * entropy of their mean``: confident query predictions, spread over all classes.
Transductive: a query's prediction depends on the other queries. Batched over episodes.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Head, episode_class_means


def entropy(probabilities: torch.Tensor) -> torch.Tensor:
    return -(probabilities * probabilities.clamp_min(1e-12).log()).sum(-1)


class TIM(Head):
    meta_trainable = False
    exportable = False
    transductive = True  # explained, predicted and estimated one image at a time by its inductive form
    inductive_form = "its starting classifier: normalized support class means, with its logits (l2 or cosine)"
    quick_options = {"steps": 5}

    def __init__(self, embedding_dim: int, feature_shape: tuple[int, ...], steps: int = 300, lr: float = 1e-3,
                 temperature: float = 15.0, ce_weight: float = 0.1, marginal_weight: float = 1.0,
                 conditional_weight: float = 0.1, logits: str = "l2"):
        super().__init__(embedding_dim, feature_shape)
        from ..errors import FewshotError

        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
            raise FewshotError(f"tim steps must be an integer >= 0, got {steps!r}")
        if not (lr > 0 and temperature > 0 and min(ce_weight, marginal_weight, conditional_weight) >= 0):
            raise FewshotError("tim needs lr > 0, temperature > 0 and non-negative loss weights")
        if logits not in ("l2", "cosine"):
            raise FewshotError(f"tim logits must be l2 or cosine, got {logits!r}")
        self.steps, self.lr, self.temperature, self.logit_form = steps, float(lr), float(temperature), logits
        self.weights = (float(ce_weight), float(marginal_weight), float(conditional_weight))

    def logits(self, features: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
        """``(E, N, D)`` features, ``(E, ways, D)`` classifier -> ``(E, N, ways)``."""
        if self.logit_form == "cosine":
            return self.temperature * F.normalize(features, dim=-1) @ F.normalize(classifier, dim=-1).transpose(-1, -2)
        return -self.temperature / 2 * torch.cdist(features, classifier).pow(2)

    def fit(self, support, support_labels, ways):
        """The inductive form: ``{"prototypes": (..., ways, D)}``, class means of the L2-normalized support."""
        return {"prototypes": episode_class_means(F.normalize(support.float(), dim=-1), support_labels, ways)}

    def classify(self, state, query):
        return self.logits(F.normalize(query.float(), dim=-1), state["prototypes"])

    def entropy(self, probabilities: torch.Tensor) -> torch.Tensor:
        """The entropy the loss uses, ``(...)`` of distributions ``(..., ways)``: Shannon's."""
        return entropy(probabilities)

    def forward(self, support, support_labels, query, ways):
        return self.forward_episodes(support[None], support_labels, query[None], ways)[0]

    def forward_episodes(self, support, support_labels, query, ways):
        """Support ``(E, S, D)`` with shared labels ``(S,)``, queries ``(E, Q, D)`` -> logits ``(E, Q, ways)``."""
        ce_weight, marginal_weight, conditional_weight = self.weights
        with torch.inference_mode(False), torch.enable_grad():
            support = F.normalize(support.detach().float().clone(), dim=-1)
            query = F.normalize(query.detach().float().clone(), dim=-1)
            labels = support_labels.clone()
            one_hot = F.one_hot(labels, ways).to(support.dtype)
            initial = torch.einsum("sw,esd->ewd", one_hot / one_hot.sum(0).clamp_min(1), support)
            classifier = initial.clone().requires_grad_(True)
            optimizer = torch.optim.Adam([classifier], lr=self.lr)
            for _ in range(self.steps):
                cross_entropy = F.cross_entropy(self.logits(support, classifier).flatten(0, 1),
                                                labels.repeat(len(support)))
                probabilities = self.logits(query, classifier).softmax(-1)  # (E, Q, ways)
                loss = (ce_weight * cross_entropy + conditional_weight * self.entropy(probabilities).mean()
                        - marginal_weight * self.entropy(probabilities.mean(1)).mean())
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            return self.logits(query, classifier).detach()
