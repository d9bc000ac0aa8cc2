"""Matching networks (Vinyals et al. 2016): a query's class distribution is the attention-weighted vote of the
support labels, the attention a softmax over cosine similarities; optionally with full-context embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Head


class MatchingNet(Head):
    """``P(c | q) = sum_j softmax_j(t * cos(f(q), g(s_j))) [y_j = c]``; logits ``log P`` (so the softmax of
    :meth:`probabilities` gives ``P`` back). ``t`` is a learnable temperature. ``full_context: true`` adds the
    paper's full-context embeddings: ``g`` a bidirectional LSTM over the support set (added to the embeddings),
    ``f`` an LSTM that attends over ``g(S)`` for ``steps`` steps; each query is still classified on its own."""

    normalized_logits = True  # log P: the energy score would be constant

    def __init__(self, embedding_dim: int, feature_shape: tuple[int, ...], temperature: float = 10.0,
                 full_context: bool = False, steps: int = 3):
        super().__init__(embedding_dim, feature_shape)
        self.log_temperature = nn.Parameter(torch.tensor(float(temperature)).log())
        self.full_context, self.steps = bool(full_context), int(steps)
        if self.full_context:
            self.support_lstm = nn.LSTM(embedding_dim, embedding_dim, batch_first=True, bidirectional=True)
            self.query_cell = nn.LSTMCell(2 * embedding_dim, embedding_dim)

    def fit(self, support, support_labels, ways):
        """``{"support": (..., S, E) unit-norm embeddings (after g), "labels": (S, ways) one-hot}``."""
        if self.full_context:
            flat = support.float().reshape(-1, *support.shape[-2:])  # (B, S, E)
            context, _ = self.support_lstm(flat)  # (B, S, 2E): forward and backward halves
            dim = support.shape[-1]
            support = (flat + context[..., :dim] + context[..., dim:]).reshape(support.shape)
        labels = F.one_hot(support_labels, ways).to(support.dtype)
        return {"support": F.normalize(support.float(), dim=-1), "labels": labels}

    def embed_query(self, query: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        """``f(q)``: with full context, ``steps`` of an LSTM reading attention over ``g(S)`` ``(..., S, E)``."""
        if not self.full_context:
            return query.float()
        flat = query.float().reshape(-1, query.shape[-1])  # (B*Q, E) under one support set per leading index
        keys = support.reshape(-1, *support.shape[-2:])  # (B, S, E)
        per = flat.shape[0] // keys.shape[0]
        keys = keys.repeat_interleave(per, 0)  # (B*Q, S, E)
        hidden, cell = torch.zeros_like(flat), torch.zeros_like(flat)
        for _ in range(self.steps):
            state = flat + hidden
            read = ((state.unsqueeze(1) @ keys.transpose(1, 2)).softmax(-1) @ keys).squeeze(1)
            hidden, cell = self.query_cell(torch.cat([flat, read], -1), (hidden, cell))
        return (flat + hidden).reshape(query.shape)

    def classify(self, state, query):
        support, labels = state["support"], state["labels"]
        queries = F.normalize(self.embed_query(query, support), dim=-1)
        attention = (queries @ support.transpose(-1, -2) * self.log_temperature.exp()).softmax(-1)  # (..., Q, S)
        return (attention @ labels).clamp_min(1e-8).log()
