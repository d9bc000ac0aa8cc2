"""Linear probe: per episode, multinomial logistic regression on L2-normalised support embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .base import Head


class LinearProbe(Head):
    """Fits ``W (E, ways)``, ``b (ways,)`` by ``steps`` of Nesterov-accelerated gradient descent from zero,
    with L2 penalty ``weight_decay``: deterministic, batched over classes, no autograd needed (so it runs
    under ``torch.inference_mode``), and differentiable when the backbone is being trained through it.

    With unit-norm inputs the loss gradient is ``(0.5 + weight_decay)``-Lipschitz, so the step
    ``1 / (0.5 + weight_decay)`` is safe.
    """

    def __init__(self, embedding_dim: int, feature_shape: tuple[int, ...], steps: int = 100,
                 weight_decay: float = 1e-3, scale: float = 1.0):
        super().__init__(embedding_dim, feature_shape)
        self.steps, self.weight_decay, self.scale = int(steps), float(weight_decay), float(scale)

    def fit(self, support: torch.Tensor, support_labels: torch.Tensor, ways: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Weights ``(E, ways)`` and bias ``(ways,)`` fitted on ``(S, E)`` support embeddings."""
        x = F.normalize(support.float(), dim=-1) * self.scale
        targets = F.one_hot(support_labels, ways).to(x.dtype)
        count = x.shape[0]
        step = 1.0 / (0.5 * self.scale**2 + self.weight_decay)
        weight = x.new_zeros(x.shape[1], ways)
        bias = x.new_zeros(ways)
        prev_weight, prev_bias = weight, bias
        for t in range(1, self.steps + 1):
            momentum = (t - 1) / (t + 2)
            look_w = weight + momentum * (weight - prev_weight)
            look_b = bias + momentum * (bias - prev_bias)
            residual = ((x @ look_w + look_b).softmax(dim=-1) - targets) / count  # (S, ways)
            prev_weight, prev_bias = weight, bias
            weight = look_w - step * (x.T @ residual + self.weight_decay * look_w)
            bias = look_b - step * residual.sum(dim=0)
        return weight, bias

    def forward(self, support, support_labels, query, ways):
        weight, bias = self.fit(support, support_labels, ways)
        return (F.normalize(query.float(), dim=-1) * self.scale) @ weight + bias
