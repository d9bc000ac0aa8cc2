"""R2D2 (Bertinetto et al. 2019, "Meta-learning with differentiable closed-form solvers"): per episode, ridge
regression from support embeddings to one-hot labels, solved in closed form, with a learned regulariser, scale
and bias."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Head


class R2D2(Head):
    """``W = X^T (X X^T + lambda I)^-1 Y``: the ridge solution through the ``(S, S)`` Gram matrix (Woodbury),
    so its cost does not grow with the embedding size; logits ``scale * (q W) + bias``. ``lambda``, ``scale``
    and ``bias`` are learned when meta-training (log-parametrised where they must stay positive); gradients
    flow through the linear solve exactly (no unrolled solver)."""

    def __init__(self, embedding_dim: int, feature_shape: tuple[int, ...], regularization: float = 1.0,
                 scale: float = 1.0):
        super().__init__(embedding_dim, feature_shape)
        self.log_lambda = nn.Parameter(torch.tensor(float(regularization)).log())
        self.log_scale = nn.Parameter(torch.tensor(float(scale)).log())
        self.bias = nn.Parameter(torch.zeros(()))

    def fit(self, support, support_labels, ways):
        """``{"weight": (..., E, ways)}`` from support embeddings ``(..., S, E)``."""
        x = support.float()
        gram = x @ x.transpose(-1, -2)  # (..., S, S)
        eye = torch.eye(gram.shape[-1], dtype=gram.dtype, device=gram.device)
        targets = F.one_hot(support_labels, ways).to(x.dtype).expand(*x.shape[:-1], ways)
        coefficients = torch.linalg.solve(gram + self.log_lambda.exp() * eye, targets)  # (..., S, ways)
        return {"weight": x.transpose(-1, -2) @ coefficients}

    def classify(self, state, query):
        return self.log_scale.exp() * (query.float() @ state["weight"]) + self.bias

    def forward_episodes(self, support, support_labels, query, ways):
        """Batched over episodes: one batched solve."""
        return self(support, support_labels, query, ways)
