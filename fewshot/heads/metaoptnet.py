"""MetaOptNet-SVM (Lee et al. 2019, "Meta-learning with differentiable convex optimization"): per episode, a
multi-class (Crammer-Singer) linear SVM on the support embeddings, solved in its dual, differentiably."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Head


def project_to_simplex(values: torch.Tensor, total: float) -> torch.Tensor:
    """Euclidean projection of each row ``(..., k)`` onto ``{b >= 0, sum(b) = total}`` (sort-based)."""
    ordered = values.sort(dim=-1, descending=True).values
    cumulative = ordered.cumsum(-1) - total
    ranks = torch.arange(1, values.shape[-1] + 1, device=values.device, dtype=values.dtype)
    active = (ordered - cumulative / ranks > 0).to(values.dtype)
    count = active.sum(-1, keepdim=True).clamp_min(1)
    shift = (cumulative.gather(-1, (count - 1).long())) / count
    return (values - shift).clamp_min(0)


class MetaOptNetSVM(Head):
    """The dual ``min_a 1/2 sum_k a_k^T K a_k - sum_ik y_ik a_ik`` s.t. ``a_ik <= C y_ik`` and
    ``sum_k a_ik = 0`` (``K`` the support Gram matrix, ``y`` one-hot), solved by accelerated projected
    gradient (FISTA, step ``1 / ||K||``) until the iterates move less than ``tolerance`` (relative) or after
    ``max_steps``; ``w_k = sum_i a_ik x_i`` and logits ``scale * q w``, ``scale`` learned. Gradients reach the
    backbone through the unrolled solver (not implicit differentiation). ``C`` is the paper's 0.1."""

    quick_options = {"max_steps": 20}

    def __init__(self, embedding_dim: int, feature_shape: tuple[int, ...], C: float = 0.1,  # noqa: N803
                 max_steps: int = 200, tolerance: float = 1e-4, scale: float = 1.0):
        super().__init__(embedding_dim, feature_shape)
        self.C, self.max_steps, self.tolerance = float(C), int(max_steps), float(tolerance)
        self.log_scale = nn.Parameter(torch.tensor(float(scale)).log())

    def project(self, dual: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The feasible dual nearest ``dual``: ``a_i = C y_i - b_i`` with ``b_i`` on the simplex of mass ``C``."""
        return self.C * targets - project_to_simplex(self.C * targets - dual, self.C)

    def solve(self, gram: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The dual ``(..., S, ways)`` for the Gram matrix ``(..., S, S)`` and one-hot targets ``(..., S, ways)``."""
        step = 1.0 / torch.linalg.matrix_norm(gram.detach(), ord=2).clamp_min(1e-6)[..., None, None]
        dual = previous = torch.zeros_like(targets)
        momentum = 1.0
        for _ in range(self.max_steps):
            next_momentum = (1 + (1 + 4 * momentum**2) ** 0.5) / 2
            look = dual + (momentum - 1) / next_momentum * (dual - previous)
            previous, dual = dual, self.project(look - step * (gram @ look - targets), targets)
            momentum = next_momentum
            change = (dual - previous).detach().norm() / previous.detach().norm().clamp_min(1e-12)
            if change < self.tolerance:
                break
        return dual

    def fit(self, support, support_labels, ways):
        """``{"weight": (..., E, ways)}``: the SVM's class weight vectors from support embeddings ``(..., S, E)``."""
        x = support.float()
        targets = F.one_hot(support_labels, ways).to(x.dtype).expand(*x.shape[:-1], ways)
        dual = self.solve(x @ x.transpose(-1, -2), targets)
        return {"weight": x.transpose(-1, -2) @ dual}

    def classify(self, state, query):
        return self.log_scale.exp() * (query.float() @ state["weight"])

    def forward_episodes(self, support, support_labels, query, ways):
        """Batched over episodes: one solver run for all of them."""
        return self(support, support_labels, query, ways)
