"""MAML (Finn et al. 2017) and first-order MAML.

Per episode, the whole network (backbone and a linear classifier) takes ``inner_steps`` gradient steps
of size ``inner_lr`` on the support set from meta-learned initial weights; the query loss of the adapted
network trains the initial weights, through the inner steps (second order) or treating the inner
gradients as constants (``first_order: true``). Evaluation takes ``eval_steps`` steps.

The adapted weights are tensors computed from the initial ones (``torch.autograd.grad``) and the
network runs on them with ``torch.func.functional_call``: no module is copied.

Classifier: ``max_ways`` outputs; an N-way episode uses the first N (MAML's fixed N-way output layer;
the label order of an episode is random, so every row learns the same role).

BatchNorm, as in the MAML paper's code (the transductive setting its published numbers use): every
pass normalizes with the statistics of its own batch, the support batch during the inner steps and the
query batch for the predictions, in training and at test time alike. Running statistics are neither
used nor changed (each episode works on copies). A query's prediction therefore depends on the other
queries of its episode.
"""

from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ..errors import FewshotError
from .base import FeatureMaps, Head, Network


@contextlib.contextmanager
def batch_statistics(module: nn.Module):
    """BatchNorm layers of ``module`` normalize with batch statistics inside the block (train mode);
    their previous modes are restored on exit."""
    norms = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    modes = [m.training for m in norms]
    try:
        for m in norms:
            m.train()
        yield
    finally:
        for m, mode in zip(norms, modes):
            m.train(mode)


class MAML(Head):
    adapts_backbone = True
    meta_trainable = True
    exportable = False
    quick_options = {"inner_steps": 1, "eval_steps": 1}

    def __init__(self, embedding_dim: int, feature_shape: tuple[int, ...], inner_steps: int = 5,
                 inner_lr: float = 0.01, eval_steps: int = 10, first_order: bool = False, max_ways: int = 5):
        super().__init__(embedding_dim, feature_shape)
        for name, value in (("inner_steps", inner_steps), ("eval_steps", eval_steps), ("max_ways", max_ways)):
            if int(value) != value or value < (2 if name == "max_ways" else 0):
                raise FewshotError(f"{type(self).__name__.lower()} {name} must be a non-negative integer "
                                   f"(max_ways >= 2), got {value}")
        self.inner_steps, self.eval_steps, self.max_ways = int(inner_steps), int(eval_steps), int(max_ways)
        self.inner_lr, self.first_order = float(inner_lr), bool(first_order)
        self.classifier = nn.Linear(embedding_dim, self.max_ways)

    def check_ways(self, ways: int) -> None:
        if ways > self.max_ways:
            raise FewshotError(f"{ways}-way episodes but the {type(self).__name__} classifier has max_ways="
                               f"{self.max_ways} outputs: set model.head_options.max_ways={ways} when training")

    def inner_loop(self, weights: dict[str, torch.Tensor], loss_of, steps: int) -> dict[str, torch.Tensor]:
        """``steps`` SGD steps on ``loss_of(weights)``: returns the adapted weights (new tensors; the graph
        back to ``weights`` is kept through the steps when training second order)."""
        second_order = self.training and not self.first_order
        for _ in range(steps):
            grads = torch.autograd.grad(loss_of(weights), list(weights.values()), create_graph=second_order)
            weights = {name: w - self.inner_lr * g for (name, w), g in zip(weights.items(), grads)}
        return weights

    def linear_logits(self, weights: dict[str, torch.Tensor], features: torch.Tensor, ways: int) -> torch.Tensor:
        """Logits ``(B, ways)`` of pooled ``features`` ``(B, E)`` with the classifier ``weights``."""
        return F.linear(features, weights["classifier.weight"][:ways], weights["classifier.bias"][:ways])

    def classifier_weights(self) -> dict[str, torch.Tensor]:
        return {f"classifier.{name}": p for name, p in self.classifier.named_parameters()}

    def forward(self, support, support_labels, query, ways):
        """On features only (no backbone at hand): adapt the classifier alone, as ANIL does."""
        self.check_ways(ways)
        with torch.inference_mode(False), torch.enable_grad():
            # clones: inputs made under inference_mode cannot take part in autograd
            support, query, support_labels = support.clone(), query.clone(), support_labels.clone()
            weights = self.inner_loop(self.classifier_weights(),
                                      lambda w: F.cross_entropy(self.linear_logits(w, support, ways), support_labels),
                                      self.inner_steps if self.training else self.eval_steps)
            logits = self.linear_logits(weights, query, ways)
        return logits if self.training else logits.detach()

    def network_logits(self, backbone: nn.Module, weights: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                       images: torch.Tensor, ways: int) -> torch.Tensor:
        """Logits ``(B, ways)`` of the network at ``weights`` (``backbone.*`` and ``classifier.*``) for
        ``images`` ``(B, C, H, W)``, the backbone running on ``buffers``."""
        own = {name.removeprefix("backbone."): w for name, w in weights.items() if name.startswith("backbone.")}
        return self.linear_logits(weights, functional_call(backbone, {**own, **buffers}, (images,)), ways)

    def adapted_weights(self, backbone: nn.Module, buffers: dict[str, torch.Tensor], support: torch.Tensor,
                        support_labels: torch.Tensor, ways: int) -> dict[str, torch.Tensor]:
        """The network's weights after the inner steps on ``support`` ``(ways*shots, C, H, W)``."""
        initial = {f"backbone.{name}": p for name, p in backbone.named_parameters()}
        initial.update(self.classifier_weights())
        return self.inner_loop(initial, lambda w: F.cross_entropy(
            self.network_logits(backbone, w, buffers, support, ways), support_labels),
            self.inner_steps if self.training else self.eval_steps)

    def adapt(self, backbone: nn.Module, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
              ways: int, prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
        """Adapt backbone and classifier on ``support`` ``(ways*shots, C, H, W)`` (normalized floats, or uint8
        normalized by ``prepare``) and return the adapted network's query logits ``(Q, ways)``."""
        self.check_ways(ways)
        if prepare is not None:
            support, query = prepare(support), prepare(query)
        with torch.inference_mode(False), torch.enable_grad(), batch_statistics(backbone):
            buffers = {name: b.clone() for name, b in backbone.named_buffers()}
            weights = self.adapted_weights(backbone, buffers, support.clone(), support_labels.clone(), ways)
            result = self.network_logits(backbone, weights, buffers, query.clone(), ways)
        return result if self.training else result.detach()

    def maps_and_logits(self, backbone: nn.Module, weights: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
                        images: torch.Tensor, ways: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Feature maps ``(B, D, h, w)`` and logits ``(B, ways)`` of the network at ``weights``."""
        state = {**{n: w for n, w in weights.items() if n.startswith("backbone.")},
                 **{f"backbone.{n}": b for n, b in buffers.items()}}
        maps = functional_call(FeatureMaps(backbone), state, (images,))
        return [maps], self.linear_logits(weights, backbone.pool_features(maps), ways)

    @contextlib.contextmanager
    def adapted(self, backbone: nn.Module, support: torch.Tensor, support_labels: torch.Tensor, ways: int,
                prepare: Callable[[torch.Tensor], torch.Tensor] | None = None) -> Iterator[Network]:
        """The adapted network (batch-statistics BatchNorm, as in :meth:`adapt`: pass all the queries in
        one batch to get :meth:`adapt`'s predictions), valid inside the ``with`` block."""
        self.check_ways(ways)
        support = prepare(support) if prepare is not None else support
        with torch.inference_mode(False), torch.enable_grad(), batch_statistics(backbone):
            buffers = {name: b.clone() for name, b in backbone.named_buffers()}
            weights = self.adapted_support_weights(backbone, buffers, support.clone(), support_labels.clone(), ways)
            weights = {name: w.detach() for name, w in weights.items()}
            yield lambda images: self.maps_and_logits(backbone, weights, buffers, images.clone(), ways)

    def adapted_support_weights(self, backbone: nn.Module, buffers: dict[str, torch.Tensor], support: torch.Tensor,
                                support_labels: torch.Tensor, ways: int) -> dict[str, torch.Tensor]:
        """All weights after adaptation (``backbone.*`` and ``classifier.*``); ANIL adapts the classifier only."""
        return self.adapted_weights(backbone, buffers, support, support_labels, ways)
