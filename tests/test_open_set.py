"""Open-set scores (#27, first part): AUROC against a hand count, its interval, every candidate score on generated
features where the unknowns are separable, the Mahalanobis score against its formula, and the threshold for a
known-class recall."""

from __future__ import annotations

import pytest
import torch

from fewshot.errors import FewshotError
from fewshot.inference.open_set import (SHRINKAGE, auroc, auroc_interval, fit_scores, threshold_for_recall,
                              unknown_scores)


def test_auroc_counts_the_unknowns_ranked_above_the_knowns():
    known, unknown = torch.tensor([0.1, 0.4]), torch.tensor([0.35, 0.8])
    assert auroc(known, unknown) == pytest.approx(3 / 4)  # (0.35 > 0.1), (0.8 > 0.1), (0.8 > 0.4)
    assert auroc(torch.tensor([0.5, 0.5]), torch.tensor([0.5])) == pytest.approx(0.5)  # ties count half
    assert auroc(torch.tensor([0.0]), torch.tensor([1.0, 2.0])) == 1.0
    with pytest.raises(FewshotError, match="both known and unknown"):
        auroc(torch.tensor([0.1]), torch.tensor([]))


def test_auroc_interval_shrinks_with_more_queries_and_vanishes_at_perfect_separation():
    assert auroc_interval(1.0, 50, 50) == 0.0
    small, large = auroc_interval(0.8, 20, 20), auroc_interval(0.8, 200, 200)
    assert 0 < large < small < 0.3
    # the reference: Hanley & McNeil (1982), A = 0.80 from 50 + 50 cases: SE 0.0445 (their eqs. 1-3) ...
    assert auroc_interval(0.8, 50, 50) == pytest.approx(1.96 * 0.0445, abs=0.002)
    # ... and the spread of the AUROC of 50 + 50 binormal scores whose true AUROC is 0.8 (d' = 1.19), simulated
    generator = torch.Generator().manual_seed(0)
    areas = torch.tensor([auroc(torch.randn(50, generator=generator), torch.randn(50, generator=generator) + 1.19)
                          for _ in range(600)])
    assert float(areas.mean()) == pytest.approx(0.8, abs=0.01)
    assert 1.96 * float(areas.std()) == pytest.approx(auroc_interval(0.8, 50, 50), rel=0.15)


def clusters(seed: int = 0):
    generator = torch.Generator().manual_seed(seed)
    centres = torch.randn(4, 16, generator=generator) * 4  # classes 0-2 known, 3 unknown
    def draw(c, n):
        return centres[c] + torch.randn(n, 16, generator=generator)
    support = torch.cat([draw(c, 5) for c in range(3)])
    labels = torch.arange(3).repeat_interleave(5)
    known = torch.cat([draw(c, 10) for c in range(3)])
    unknown = draw(3, 10)
    return support, labels, known, unknown


@pytest.mark.parametrize("score", ["distance", "knn", "mahalanobis"])
def test_distance_scores_separate_unknowns_that_are_far_from_every_class(score):
    support, labels, known, unknown = clusters()
    state = fit_scores(support, labels, 3, score)
    query = torch.cat([known, unknown])
    logits = -torch.cdist(query, state["means"]) ** 2 / 8  # a prototype head's calibrated logits
    values = unknown_scores(score, state, query, logits)
    assert values.shape == (40,)
    assert auroc(values[:30], values[30:]) > 0.95, score


@pytest.mark.parametrize("score", ["msp", "energy"])
def test_confidence_scores_separate_unknowns_that_sit_between_the_classes(score):
    """Probability-based scores see ambiguity, not distance: an unknown between the classes is uncertain, while one
    far beyond a class can look certain (the distance scores are for that case)."""
    support, labels, known, _ = clusters()
    state = fit_scores(support, labels, 3, score)
    between = state["means"].mean(0) + 0.3 * torch.randn(10, 16, generator=torch.Generator().manual_seed(3))
    query = torch.cat([known, between])
    logits = -torch.cdist(query, state["means"]) ** 2 / 8
    values = unknown_scores(score, state, query, logits)
    assert auroc(values[:30], values[30:]) > 0.95, score


def test_mahalanobis_is_the_formula_with_the_shrunk_pooled_covariance():
    support, labels, known, _ = clusters(1)
    state = fit_scores(support, labels, 3, "mahalanobis")
    means = torch.stack([support[labels == c].mean(0) for c in range(3)])
    centred = support - means[labels]
    covariance = centred.T @ centred / (len(support) - 3)
    shrunk = (1 - SHRINKAGE) * covariance + SHRINKAGE * covariance.diagonal().mean() * torch.eye(16)
    expected = torch.stack([torch.stack([(q - m) @ torch.linalg.inv(shrunk) @ (q - m) for m in means]).min()
                            for q in known[:4]])
    got = unknown_scores("mahalanobis", state, known[:4], torch.zeros(4, 3))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


def test_threshold_keeps_the_asked_share_of_known_queries():
    scores = torch.arange(100, dtype=torch.float32)
    threshold = threshold_for_recall(scores, 0.95)
    assert (scores <= threshold).float().mean() == pytest.approx(0.95, abs=0.01)
    with pytest.raises(FewshotError, match="known-class recall"):
        threshold_for_recall(scores, 1.5)
    with pytest.raises(FewshotError, match="unknown score must be one of"):
        fit_scores(scores[:, None], torch.zeros(100, dtype=torch.long), 1, "entropy")
