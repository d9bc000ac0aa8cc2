"""ANIL (Raghu et al. 2020): MAML whose inner loop adapts only the classifier.

The backbone embeds support and query once per episode (BatchNorm with batch statistics, as in
:mod:`fewshot.heads.maml`); the classifier takes the inner steps on the support embeddings; the query
loss trains the backbone and the classifier's initial weights (second order through the classifier
steps unless ``first_order: true``). Far cheaper than MAML: no backbone pass per inner step.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from .maml import MAML, batch_statistics


class ANIL(MAML):
    def adapt(self, backbone: nn.Module, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
              ways: int, prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Embed ``support`` ``(ways*shots, C, H, W)`` and ``query`` ``(Q, C, H, W)`` (normalized floats, or
        uint8 normalized by ``prepare``), adapt the classifier on the support embeddings and return query
        logits ``(Q, ways)``."""
        if prepare is not None:
            support, query = prepare(support), prepare(query)
        with torch.inference_mode(False), torch.enable_grad(), batch_statistics(backbone):
            state = {**dict(backbone.named_parameters()), **{n: b.clone() for n, b in backbone.named_buffers()}}
            support_features = functional_call(backbone, state, (support.clone(),))
            query_features = functional_call(backbone, state, (query.clone(),))
            return self(support_features, support_labels, query_features, ways)

    def adapted_support_weights(self, backbone, buffers, support, support_labels, ways):
        """The backbone's own weights and the classifier after the inner steps on the support embeddings."""
        state = {**dict(backbone.named_parameters()), **buffers}
        features = functional_call(backbone, state, (support,))
        classifier = self.inner_loop(self.classifier_weights(), lambda w: F.cross_entropy(
            self.linear_logits(w, features, ways), support_labels), self.inner_steps if self.training else self.eval_steps)
        return {**{f"backbone.{n}": p for n, p in backbone.named_parameters()}, **classifier}
