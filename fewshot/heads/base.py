"""The interface every head implements, and the shared pieces (class means, cross-entropy)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn


def class_means(features: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Per-class mean of ``features``: ``(S, *F)`` with labels ``(S,)`` in ``0..ways-1`` -> ``(ways, *F)``.

    Works for any number of shots per class (``predict`` support folders may be unbalanced).
    """
    flat = features.reshape(features.shape[0], -1)
    return episode_class_means(flat, labels, ways).reshape(ways, *features.shape[1:])


def episode_class_means(features: torch.Tensor, labels: torch.Tensor, ways: int) -> torch.Tensor:
    """Class means of one or several episodes' embeddings ``(..., S, E)`` with shared labels ``(S,)`` ->
    ``(..., ways, E)`` (one matrix product; any number of shots per class)."""
    one_hot = F.one_hot(labels, ways).to(features.dtype)  # (S, ways)
    return torch.einsum("sw,...se->...we", one_hot / one_hot.sum(0).clamp_min(1), features)


HeadState = dict[str, torch.Tensor]
"""What :meth:`Head.fit` learns from a support set: small tensors (prototypes, a weight matrix and bias...)."""

Network = Callable[[torch.Tensor], tuple[list[torch.Tensor], torch.Tensor]]
"""An episode's network: normalized images ``(B, C, H, W)`` -> (the backbone's last feature maps, one
``(B, D, h, w)`` tensor per member, logits ``(B, ways)``); the logits are computed from the maps, so Grad-CAM
can differentiate one by the other."""


class FeatureMaps(nn.Module):
    """``backbone.forward_features`` as a module's forward, so ``torch.func.functional_call`` can run it
    on other weights (named ``backbone.*``)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(images)


class Head(nn.Module):
    """Classifies query features given labelled support features of one episode.

    Two ways to use a head:

    * fitted once, classifying many: ``state = fit(support, support_labels, ways)`` then
      ``classify(state, query)`` as often as needed (one image at a time if need be). ``support`` is
      ``(..., S, *F)`` with labels ``(S,)`` (any leading episode dimensions), ``query`` ``(..., Q, *F)``, where
      ``F`` is ``(E,)`` for pooled embeddings or ``(D, h, w)`` for feature maps (heads that set
      ``feature_map = True``); logits ``(..., Q, ways)``. The state is small tensors; ``classify`` is plain tensor
      algebra, with no optimisation loop, so an export holds the state and ``classify`` only.
    * per episode: ``forward(support, support_labels, query, ways)`` -> logits ``(Q, ways)``, for meta-training
      and episodic evaluation; ``classify(fit(...), query)`` unless the head is transductive.

    Capabilities, declared by each head class (nothing elsewhere lists heads by name):

    * ``adapts_backbone``: the head needs the episode's raw images, because it changes the network per
      episode (:meth:`adapt`); False means the evaluator may embed each image once and reuse it.
    * ``meta_trainable``: ``fewshot train`` can meta-train through it.
    * ``exportable``: it classifies fixed support embeddings, so a model can be exported with them built in.
    * ``explainable``: ``predict --explain`` can draw Grad-CAM heatmaps of its predictions.
    * ``transductive``: ``forward`` uses the other queries of the episode, so it needs several queries per
      class (``inductive_form`` says what ``fit`` / ``classify`` do instead, on the same features: what is used
      wherever queries arrive one at a time).
    * ``max_ways``: the most classes an episode may have (None: any number; MAML's fixed output layer sets it).
    * ``needs_training``: the head classifies through a module of its own that must be (meta-)trained (RelationNet's
      comparison network): untrained, its answers are chance even on well separated features.
    * ``normalized_logits``: its logits are log-probabilities (their log-sum-exp is 0 for every query), so a score
      read from their scale (the ``energy`` "none of these" score) is constant: :func:`fewshot.inference.open_set.resolve_score`
      refuses it and picks another for ``auto``.
    """

    feature_map: bool = False
    adapts_backbone: bool = False
    meta_trainable: bool = True
    exportable: bool = True
    explainable: bool = True
    transductive: bool = False
    inductive_form: str = ""  # transductive heads: what fit / classify compute without the other queries
    max_ways: int | None = None
    normalized_logits: bool = False
    needs_training: bool = False  # a learned comparison (not only the backbone): untrained, it guesses at random
    quick_options: dict = {}  # head options that make it fast on tiny data (fewer steps): smoke tests use them
    quick_backbone_options: dict = {}  # backbone options it needs on tiny images (e.g. spatial maps)

    def __init__(self, embedding_dim: int, feature_shape: tuple[int, ...]):
        super().__init__()
        self.embedding_dim = embedding_dim
        self.feature_shape = tuple(feature_shape)

    def fit(self, support: torch.Tensor, support_labels: torch.Tensor, ways: int) -> HeadState:
        """The classifier learned from support features ``(..., S, *F)`` and labels ``(S,)``, as tensors.

        A head overrides :meth:`forward`, or :meth:`fit` and :meth:`classify`. This default, for a head that
        only has ``forward``, keeps the support set itself (features and one-hot labels ``(S, ways)``) and
        :meth:`classify` runs ``forward`` on it: correct for an inductive head, but it refits per call."""
        return {"support": support, "labels": F.one_hot(support_labels, ways).to(support.dtype)}

    def classify(self, state: HeadState, query: torch.Tensor) -> torch.Tensor:
        """Logits ``(..., Q, ways)`` of query features ``(..., Q, *F)`` under a state made by :meth:`fit`."""
        one_hot = state["labels"]
        return self(state["support"], one_hot.argmax(-1), query, one_hot.shape[-1])

    def forward(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                ways: int) -> torch.Tensor:
        return self.classify(self.fit(support, support_labels, ways), query)

    def forward_episodes(self, support: torch.Tensor, support_labels: torch.Tensor, query: torch.Tensor,
                         ways: int) -> torch.Tensor:
        """Several episodes of one shape at once: ``support`` ``(E, ways*shots, *F)``, ``query``
        ``(E, Q, *F)``, labels shared -> logits ``(E, Q, ways)``. One episode at a time by default; heads
        with a batched form override it (the evaluator calls this)."""
        return torch.stack([self(s, support_labels, q, ways) for s, q in zip(support, query)])

    def loss(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Training loss for logits ``(Q, ways)`` and labels ``(Q,)``: cross-entropy by default."""
        return F.cross_entropy(logits, labels)

    def probabilities(self, logits: torch.Tensor) -> torch.Tensor:
        """Class probabilities ``(Q, ways)`` from logits: softmax by default."""
        return logits.softmax(dim=-1)

    def check_backbone(self, backbone: nn.Module) -> None:
        """Raise a one-line error when the head's options do not fit ``backbone`` (called when the model is
        built); nothing to check by default."""

    def adapted(self, backbone: nn.Module, support: torch.Tensor, support_labels: torch.Tensor, ways: int,
                prepare: Callable[[torch.Tensor], torch.Tensor] | None = None):
        """Heads that adapt the backbone (``adapts_backbone``) return a context manager giving the episode's
        adapted :data:`Network` for ``support`` ``(S, C, H, W)``; the others are served by
        :meth:`fewshot.model.network.FewShotModel.adapted`."""
        raise NotImplementedError(f"{type(self).__name__} does not adapt the backbone")
