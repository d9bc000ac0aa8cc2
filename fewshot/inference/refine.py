"""Semi-supervised and transductive refinement of an episode's predictions with its unlabelled queries.

* ``soft_kmeans`` (Ren et al. 2018): prototypes are refined by soft k-means steps in which each query
  counts towards every class in proportion to its softmax responsibility (squared Euclidean distance,
  as in the paper); logits are then distances to the refined prototypes.
* ``self_training``: queries the head labels with probability >= ``threshold`` join the support set
  with their pseudo-labels, and the head classifies again (works with any feature head).
"""

from __future__ import annotations

import torch

from ..errors import FewshotError
from ..heads import class_means
from ..model.network import FewShotModel
from ..model.transforms import apply_transform

REFINEMENTS = ("none", "soft_kmeans", "self_training")


def soft_kmeans(support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, ways: int,
                steps: int = 1) -> torch.Tensor:
    """Logits ``(Q, ways)`` after ``steps`` soft k-means refinements of the prototypes.

    ``support`` ``(S, E)``, ``query`` ``(Q, E)`` embeddings (feature maps are flattened).
    """
    support, query = support.flatten(1).float(), query.flatten(1).float()
    counts = torch.bincount(labels, minlength=ways).to(support.dtype)
    sums = class_means(support, labels, ways) * counts[:, None]
    prototypes = sums / counts[:, None]
    for _ in range(steps):
        responsibilities = (-torch.cdist(query, prototypes).pow(2)).softmax(dim=1)  # (Q, ways)
        prototypes = (sums + responsibilities.T @ query) / (counts + responsibilities.sum(0))[:, None]
    return -torch.cdist(query, prototypes).pow(2)


def self_training(model: FewShotModel, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, ways: int,
                  threshold: float = 0.9) -> torch.Tensor:
    """Logits ``(Q, ways)`` after adding confidently pseudo-labelled queries to the support set."""
    probabilities = model.head.probabilities(model.classify(support, labels, query, ways))
    confidence, predicted = probabilities.max(dim=1)
    keep = confidence >= threshold
    if not keep.any():
        return model.classify(support, labels, query, ways)
    return model.classify(torch.cat([support, query[keep]]), torch.cat([labels, predicted[keep]]), query, ways)


def classify_refined(model: FewShotModel, support: torch.Tensor, labels: torch.Tensor, query: torch.Tensor, ways: int,
                     method: str = "none", steps: int = 1, threshold: float = 0.9) -> torch.Tensor:
    """Query logits from embedded support and query, refined by ``method`` (see the module docstring)."""
    if method == "none":
        return model.classify(support, labels, query, ways)
    if model.head.transductive:
        raise FewshotError(f"head '{type(model.head).__name__}' is transductive already: use --refine none")
    if method == "soft_kmeans":  # on the model's transformed features, like its head
        support, query = apply_transform(model.transform, support.float(), query.float())
        return soft_kmeans(support, labels, query, ways, steps)
    if method == "self_training":
        return self_training(model, support, labels, query, ways, threshold)
    raise FewshotError(f"unknown refinement '{method}'; choose one of {', '.join(REFINEMENTS)}")
