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
    quick_options = {"steps": 10}

    def __init__(self, embedding_dim: int, feature_shape: tuple[int, ...], steps: int = 100,
                 weight_decay: float = 1e-3, scale: float = 1.0):
        super().__init__(embedding_dim, feature_shape)
        self.steps, self.weight_decay, self.scale = int(steps), float(weight_decay), float(scale)

    def fit(self, support: torch.Tensor, support_labels: torch.Tensor, ways: int) -> dict[str, torch.Tensor]:
        """``{"weight": (..., E, ways), "bias": (..., 1, ways)}`` fitted on support embeddings ``(..., S, E)``
        (any leading episode dimensions, one probe per episode, all fitted together).

        Gradient descent from zero keeps the weights in the span of the support embeddings, ``W = x^T A``,
        so the iterations run on ``A (..., S, ways)`` through the Gram matrix ``x x^T (..., S, S)``: the same
        iterates as in weight space, at a cost that does not grow with the embedding size.
        """
        x = F.normalize(support.float(), dim=-1) * self.scale  # (..., S, E)
        gram = x @ x.transpose(-1, -2)  # (..., S, S)
        targets = F.one_hot(support_labels, ways).to(x.dtype)
        count = x.shape[-2]
        step = 1.0 / (0.5 * self.scale**2 + self.weight_decay)
        coefficients = x.new_zeros(*x.shape[:-1], ways)  # (..., S, ways)
        bias = x.new_zeros(*x.shape[:-2], 1, ways)
        prev_coefficients, prev_bias = coefficients, bias
        for t in range(1, self.steps + 1):
            momentum = (t - 1) / (t + 2)
            look_a = coefficients + momentum * (coefficients - prev_coefficients)
            look_b = bias + momentum * (bias - prev_bias)
            residual = ((gram @ look_a + look_b).softmax(dim=-1) - targets) / count  # (..., S, ways)
            prev_coefficients, prev_bias = coefficients, bias
            coefficients = look_a - step * (residual + self.weight_decay * look_a)
            bias = look_b - step * residual.sum(dim=-2, keepdim=True)
        return {"weight": x.transpose(-1, -2) @ coefficients, "bias": bias}

    def classify(self, state, query):
        return (F.normalize(query.float(), dim=-1) * self.scale) @ state["weight"] + state["bias"]

    def forward_episodes(self, support, support_labels, query, ways):
        """``(E, S, D)`` support, ``(E, Q, D)`` queries -> ``(E, Q, ways)``: E probes fitted in one batch."""
        return self(support, support_labels, query, ways)
