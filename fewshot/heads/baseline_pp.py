"""Baseline++ (Chen et al., ICLR 2019, "A closer look at few-shot classification"): after pretraining
(``fewshot pretrain`` with ``pretrain.classifier: cosine``), a cosine classifier is fine-tuned on each episode's
support set. (Baseline, its linear counterpart, is ``linear_probe`` after ``pretrain.classifier: linear``.)"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..errors import FewshotError
from .base import Head, episode_class_means


class BaselinePP(Head):
    """Class weight vectors ``W`` ``(ways, E)``, started at the normalized support class means and fitted by
    ``steps`` of Adam (``lr``) on the support cross-entropy of ``scale * cos(x, w)``; logits of a query
    ``scale * cos(q, w)``. Inductive, an evaluation-time head (the fit runs an optimiser; not meta-trained)."""

    meta_trainable = False
    quick_options = {"steps": 5}

    def __init__(self, embedding_dim: int, feature_shape: tuple[int, ...], steps: int = 100, lr: float = 0.01,
                 scale: float = 10.0):
        super().__init__(embedding_dim, feature_shape)
        if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0 or not lr > 0 or not scale > 0:
            raise FewshotError(f"baseline_pp needs steps >= 0, lr > 0 and scale > 0, got {steps!r}, {lr!r}, {scale!r}")
        self.steps, self.lr, self.scale = steps, float(lr), float(scale)

    def logits(self, features: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self.scale * F.normalize(features, dim=-1) @ F.normalize(weight, dim=-1).transpose(-1, -2)

    def fit(self, support, support_labels, ways):
        """``{"weight": (..., ways, E)}`` fitted on support embeddings ``(..., S, E)``."""
        with torch.inference_mode(False), torch.enable_grad():
            features = F.normalize(support.detach().float().clone(), dim=-1)
            labels = support_labels.clone()
            weight = episode_class_means(features, labels, ways).detach().requires_grad_(True)
            optimizer = torch.optim.Adam([weight], lr=self.lr)
            for _ in range(self.steps):
                loss = F.cross_entropy(self.logits(features, weight).reshape(-1, ways),
                                       labels.repeat(features.numel() // features.shape[-1] // len(labels)))
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            return {"weight": weight.detach()}

    def classify(self, state, query):
        return self.logits(query.float(), state["weight"])
