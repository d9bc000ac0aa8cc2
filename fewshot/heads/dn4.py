"""DN4 (Li et al. 2019, "Revisiting local descriptor based image-to-class measure"): the backbone's feature map
is a set of local descriptors; a query's score for a class sums, over its descriptors, the cosine similarities of
their ``k`` nearest descriptors among all of the class's support images."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from .base import Head


class DN4(Head):
    """Image-to-class k-NN: logits ``t * sum_i sum_{top-k j in class c} cos(q_i, s_j)`` over the query's
    ``h*w`` descriptors ``q_i`` and the class's ``shots*h*w`` descriptors ``s_j``, divided by ``h*w`` and
    scaled by a learnable temperature ``t``. Any number of shots per class; ``k`` is capped at a class's
    descriptor count (1x1 maps, one shot)."""

    feature_map = True
    quick_backbone_options = {"pooled_blocks": 2}

    def __init__(self, embedding_dim: int, feature_shape: tuple[int, ...], neighbors: int = 3,
                 temperature: float = 10.0):
        super().__init__(embedding_dim, feature_shape)
        self.neighbors = int(neighbors)
        self.log_temperature = nn.Parameter(torch.tensor(float(temperature)).log())

    def fit(self, support, support_labels, ways):
        """``{"descriptors": (..., S*h*w, D) unit-norm, "owner": (S*h*w, ways) one-hot}`` from support maps
        ``(..., S, D, h, w)``."""
        descriptors = F.normalize(rearrange(support.float(), "... s d h w -> ... (s h w) d"), dim=-1)
        per_image = support.shape[-1] * support.shape[-2]
        owner = F.one_hot(support_labels, ways).repeat_interleave(per_image, 0).to(descriptors.dtype)
        return {"descriptors": descriptors, "owner": owner}

    def classify(self, state, query):
        descriptors, owner = state["descriptors"], state["owner"]
        local = F.normalize(rearrange(query.float(), "... q d h w -> ... q (h w) d"), dim=-1)
        similarity = local @ descriptors.unsqueeze(-3).transpose(-1, -2)  # (..., Q, hw, S*hw)
        scores = []
        for c in range(owner.shape[-1]):  # each class's columns only: the work is one pass over the similarities
            mine = similarity.index_select(-1, owner[:, c].nonzero().squeeze(-1))  # (..., Q, hw, its S*hw)
            k = min(self.neighbors, mine.shape[-1])  # a class with fewer descriptors uses them all
            scores.append(mine.topk(k, dim=-1).values.sum(-1).mean(-1))  # (..., Q)
        return torch.stack(scores, -1) * self.log_temperature.exp()
