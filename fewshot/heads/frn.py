"""FRN (Wertheimer et al., CVPR 2021, "Few-shot classification with feature map reconstruction networks"): a query
belongs to the class whose support feature maps reconstruct its own map best, by ridge regression in closed form."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .base import Head


class FRN(Head):
    """For class ``c`` with support descriptors ``S_c`` ``(n_c, D)`` (all ``h*w`` positions of its images), a
    query map ``Q`` ``(h*w, D)`` is reconstructed as ``rho * Q S_c^T (S_c S_c^T + lambda_c I)^-1 S_c``, computed
    as ``rho * Q (G_c + lambda_c I)^-1 G_c`` with ``G_c = S_c^T S_c`` (so the state is one ``(D, D)`` matrix per
    class, whatever the shots); ``lambda_c = n_c / D * exp(alpha)``, ``rho = exp(beta)``; logits are
    ``-scale`` times the mean squared reconstruction error over the query's positions. ``alpha``, ``beta`` and
    ``scale`` are learned (the paper's parametrisation)."""

    feature_map = True
    quick_backbone_options = {"pooled_blocks": 2}

    def __init__(self, embedding_dim: int, feature_shape: tuple[int, ...], scale: float = 1.0):
        super().__init__(embedding_dim, feature_shape)
        self.alpha, self.beta = nn.Parameter(torch.zeros(())), nn.Parameter(torch.zeros(()))
        self.log_scale = nn.Parameter(torch.tensor(float(scale)).log())

    def fit(self, support, support_labels, ways):
        """``{"projection": (..., ways, D, D)}``: ``rho (G_c + lambda_c I)^-1 G_c`` from support maps
        ``(..., S, D, h, w)``."""
        descriptors = rearrange(support.float(), "... s d h w -> ... (s h w) d")
        per_image = support.shape[-1] * support.shape[-2]
        owner = F.one_hot(support_labels, ways).repeat_interleave(per_image, 0).to(descriptors.dtype)
        gram = torch.einsum("...nd,nw,...ne->...wde", descriptors, owner, descriptors)
        dim = descriptors.shape[-1]
        ridge = owner.sum(0) / dim * self.alpha.exp()  # (ways,)
        eye = torch.eye(dim, dtype=gram.dtype, device=gram.device)
        projection = torch.linalg.solve(gram + ridge[:, None, None] * eye, gram)
        return {"projection": self.beta.exp() * projection}

    def classify(self, state, query):
        local = rearrange(query.float(), "... q d h w -> ... q (h w) d")
        rebuilt = torch.einsum("...qpd,...wde->...qwpe", local, state["projection"])  # (..., Q, ways, hw, D)
        error = (local.unsqueeze(-3) - rebuilt).pow(2).sum(-1).mean(-1)  # (..., Q, ways)
        return -self.log_scale.exp() * error
