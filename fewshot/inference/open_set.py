""""None of these": a score per query that grows as the query looks like none of the support classes, and the
threshold above which a classifier answers ``unknown``.

Scores (``SCORES``), each ``(Q,)``, higher = more likely unknown, computed from the transformed support and query
embeddings (what the head sees) and the calibrated logits:

* ``msp``: one minus the largest class probability (Hendrycks & Gimpel 2017)
* ``energy``: minus the log-sum-exp of the calibrated logits (Liu et al. 2020)
* ``distance``: Euclidean distance to the nearest class mean
* ``knn``: Euclidean distance to the nearest support image
* ``mahalanobis``: squared Mahalanobis distance to the nearest class mean under the pooled within-class covariance
  shrunk towards its mean variance (Lee et al. 2018; shrinkage because a few images per class cannot estimate it)

``benchmarks/open_set.py`` measures them (AUROC of known against unknown queries); :data:`DEFAULT_SCORE` ``auto`` is
the best there that works for the model's head (:func:`resolve_score`: ``energy``, or ``distance`` for a head whose
logits are log-probabilities, where energy is constant). A threshold is chosen from the user's own images
(:mod:`fewshot.inference.open_set_estimate`).
"""

from __future__ import annotations

import math

import torch

from ..errors import CapabilityError, FewshotError
from ..heads.base import Head, class_means

SCORES = ("msp", "energy", "distance", "knn", "mahalanobis")
AUTO_SCORE = "auto"  # energy, or distance where the head's logits are normalized (resolve_score)
SCORE_CHOICES = ("auto", "msp", "energy", "distance", "knn", "mahalanobis")  # what users may ask for (literal: the
# CLI reads it without importing torch)
DEFAULT_SCORE = "auto"
SHRINKAGE = 0.5  # weight of the isotropic part of the Mahalanobis covariance
DEFAULT_RECALL = 0.95  # the fraction of known-class images an ``auto`` threshold keeps
UNKNOWN_NAME = "unknown"  # what predict answers for an image past the threshold


def check_unknown(unknown: object) -> str | float | None:
    """``unknown`` as :meth:`fewshot.FewShotClassifier.predict` takes it: None (always name a class), ``"auto"``
    (the threshold chosen from the support images) or a score threshold (a finite number); one-line error else."""
    if unknown is None or unknown == "auto":
        return unknown
    if isinstance(unknown, str):
        try:
            unknown = float(unknown)
        except ValueError:
            pass
    if isinstance(unknown, bool) or not isinstance(unknown, (int, float)) or not math.isfinite(unknown):
        raise FewshotError(f"unknown must be 'auto' or a score threshold (a number), or left out, got {unknown!r}")
    return float(unknown)


def check_recall(recall: object) -> float:
    if isinstance(recall, bool) or not isinstance(recall, (int, float)) or not 0 < recall < 1:
        raise FewshotError(f"the known-class recall must be a fraction between 0 and 1 (e.g. 0.95), got {recall!r}")
    return float(recall)


def check_score(score: str) -> str:
    """``score`` if it is one of :data:`SCORE_CHOICES` (``auto`` included), else a one-line error."""
    if score not in SCORE_CHOICES:
        raise FewshotError(f"unknown score must be one of {', '.join(SCORE_CHOICES)}, got '{score}'")
    return score


def resolve_score(score: str, head: Head) -> str:
    """The score a model with ``head`` uses for ``score``: ``auto`` is ``energy``, or ``distance`` when the head
    declares ``normalized_logits`` (its logits are log-probabilities, so their log-sum-exp, the energy, is the same
    for every image); asking for ``energy`` on such a head is refused with the reason (the one rule, used by the
    classifier, the CLI, the server and the open-set evaluation)."""
    check_score(score)
    normalized = bool(getattr(head, "normalized_logits", False))
    if score == AUTO_SCORE:
        return "distance" if normalized else "energy"
    if score == "energy" and normalized:
        raise CapabilityError(f"head '{type(head).__name__}' gives log-probabilities, so the energy score "
                              "(-logsumexp of them) is the same for every image and cannot tell 'none of these'; "
                              "use unknown score auto, distance, knn, msp or mahalanobis")
    return score


def fit_scores(support: torch.Tensor, labels: torch.Tensor, ways: int, score: str) -> dict[str, torch.Tensor]:
    """The state ``score`` needs, from transformed support embeddings ``(S, E)`` and labels ``(S,)``: class means
    ``(ways, E)``, the support itself for ``knn``, the shrunk precision ``(E, E)`` for ``mahalanobis``."""
    if score not in SCORES:
        raise FewshotError(f"unknown score must be one of {', '.join(SCORES)}, got '{score}'")
    support = support.float().flatten(1)
    means = class_means(support, labels, ways)
    state = {"means": means}
    if score == "knn":
        state["support"] = support
    if score == "mahalanobis":
        centred = support - means[labels]
        covariance = centred.T @ centred / max(len(support) - ways, 1)
        variance = covariance.diagonal().mean().clamp_min(1e-6)
        shrunk = (1 - SHRINKAGE) * covariance + SHRINKAGE * variance * torch.eye(len(covariance))
        state["precision"] = torch.linalg.inv(shrunk)
    return state


def unknown_scores(score: str, state: dict[str, torch.Tensor], query: torch.Tensor,
                   logits: torch.Tensor) -> torch.Tensor:
    """``(Q,)`` scores of transformed query embeddings ``(Q, E)`` with calibrated ``logits`` ``(Q, ways)``."""
    query = query.float().flatten(1)
    if score == "msp":
        return 1 - logits.float().softmax(-1).amax(-1)
    if score == "energy":
        return -torch.logsumexp(logits.float(), -1)
    if score == "distance":
        return torch.cdist(query, state["means"]).amin(-1)
    if score == "knn":
        return torch.cdist(query, state["support"]).amin(-1)
    if score == "mahalanobis":
        difference = query[:, None, :] - state["means"][None]  # (Q, ways, E)
        return torch.einsum("qwe,ef,qwf->qw", difference, state["precision"], difference).amin(-1)
    raise FewshotError(f"unknown score must be one of {', '.join(SCORES)}, got '{score}'")


def auroc(known: torch.Tensor, unknown: torch.Tensor) -> float:
    """Area under the ROC curve of scores separating ``unknown`` (positives, higher) from ``known``, in [0, 1]:
    the probability that a random unknown scores above a random known (ties count half)."""
    scores = torch.cat([known, unknown]).double()
    ranks = rank_average(scores)
    positives, negatives = len(unknown), len(known)
    if not positives or not negatives:
        raise FewshotError("AUROC needs both known and unknown queries")
    return float((ranks[negatives:].sum() - positives * (positives + 1) / 2) / (positives * negatives))


def rank_average(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks of ``values`` ``(N,)``, ties given their average rank."""
    order = values.argsort()
    ranks = torch.empty_like(values)
    ranks[order] = torch.arange(1, len(values) + 1, dtype=values.dtype)
    unique, inverse = torch.unique(values, return_inverse=True)
    sums = torch.zeros(len(unique), dtype=values.dtype).index_add_(0, inverse, ranks)
    counts = torch.zeros(len(unique), dtype=values.dtype).index_add_(0, inverse, torch.ones_like(ranks))
    return (sums / counts)[inverse]


def auroc_interval(area: float, known: int, unknown: int) -> float:
    """Half-width of the 95% interval of an AUROC from ``known`` negatives and ``unknown`` positives (Hanley &
    McNeil 1982)."""
    q1, q2 = area / (2 - area), 2 * area * area / (1 + area)
    variance = (area * (1 - area) + (unknown - 1) * (q1 - area * area) + (known - 1) * (q2 - area * area)) / \
        max(known * unknown, 1)
    return 1.96 * math.sqrt(max(variance, 0.0))


def threshold_for_recall(known_scores: torch.Tensor, recall: float) -> float:
    """The score at or below which a fraction ``recall`` of known queries fall (those are kept as known)."""
    check_recall(recall)
    return float(torch.quantile(known_scores.double(), recall))
