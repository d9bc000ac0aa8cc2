"""alpha-TIM (Veilleux et al., NeurIPS 2021, "Realistic evaluation of transductive few-shot learning"): TIM with
Shannon's entropies replaced by Tsallis alpha-entropies, which penalise a query marginal far from uniform much
less, so it does not force the balanced class proportions that realistic (Dirichlet) query sets lack."""

from __future__ import annotations

import torch

from ..errors import FewshotError
from .tim import TIM


class AlphaTIM(TIM):
    """TIM-GD (``fewshot.heads.tim``: same classifier, optimiser, options and inductive form) whose loss uses
    ``H_alpha(p) = (1 - sum_k p_k ** alpha) / (alpha - 1)`` for both the conditional and the marginal entropy
    (``alpha`` -> 1 gives Shannon's back). The paper's defaults: ``alpha = 2``, 1000 steps."""

    inductive_form = "TIM's starting classifier: normalized support class means, with its logits (l2 or cosine)"
    quick_options = {"steps": 5}

    def __init__(self, embedding_dim: int, feature_shape: tuple[int, ...], alpha: float = 2.0, steps: int = 1000,
                 lr: float = 1e-4, temperature: float = 15.0, ce_weight: float = 1.0, marginal_weight: float = 1.0,
                 conditional_weight: float = 1.0, logits: str = "l2"):
        super().__init__(embedding_dim, feature_shape, steps, lr, temperature, ce_weight, marginal_weight,
                         conditional_weight, logits)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0 or alpha == 1:
            raise FewshotError(f"alpha_tim alpha must be a number > 0 other than 1 (that is TIM), got {alpha!r}")
        self.alpha = float(alpha)

    def entropy(self, probabilities: torch.Tensor) -> torch.Tensor:
        return (1 - probabilities.clamp_min(0).pow(self.alpha).sum(-1)) / (self.alpha - 1)
