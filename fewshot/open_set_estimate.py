"""How well a fitted classifier can say "none of these", and the ``auto`` threshold, from its own examples:
whole classes are held out in turn as the unknowns (:func:`estimate_open_set`, what
:meth:`fewshot.FewShotClassifier.estimate` and ``predict(unknown="auto")`` run).

Each fold holds one class out (the classes take turns) and, as :func:`fewshot.estimate.estimate` does, a fraction
of every other class's images; the classifier is fitted on the rest of the other classes and scores the held-out
images of the known classes (they should stay below the threshold) and every image of the held-out class (they
should rise above it). Pooled over the folds: the AUROC of known against unknown with Hanley & McNeil's 95%
interval over the distinct images (widened to Wilson's interval for a proportion over the smaller of the two
counts, so that a perfect separation of a few images does not claim certainty), and the threshold that keeps
``recall`` of the known images. Each fold's classifier has one class and a fifth of the images fewer than the
fitted one, so the threshold leans cautious (fewer images answered ``unknown``)."""

from __future__ import annotations

import contextlib
import math
import warnings
from typing import Callable, ContextManager

import numpy as np
import torch
from tqdm import tqdm

from .errors import SupportSetError
from .estimate import (Classifier, HoldOut, OpenSetEstimate, check_estimate_arguments, distinct_rows,
                       wilson_interval)
from .open_set import DEFAULT_RECALL, auroc, auroc_interval, check_recall, threshold_for_recall

WEAK_AUROC = 70.0  # below this (percent) the estimate warns that unknowns are told apart only weakly


def estimate_open_set(classifier: Classifier, recall: float = DEFAULT_RECALL, repeats: int = 50,
                      holdout: float = 0.2, seed: int = 0, progress: bool = False,
                      step: Callable[[], ContextManager] | None = None) -> OpenSetEstimate:
    """Leave-one-class-out estimate of the unknown score (see the module's text): at least ``repeats`` folds,
    rounded up so every class is held out equally often. Needs 3 classes with 2 distinct images each (refused
    with the reason otherwise); warns when unknowns are told apart weakly or not at all."""
    names = classifier.classes_
    check_estimate_arguments(repeats, holdout, seed)
    recall = check_recall(recall)
    if len(names) < 3:
        raise SupportSetError(f"telling 'none of these' apart needs at least 3 classes (each is held out in turn as "
                              f"the unknown while the others are classified), got {len(names)}: add a class, or "
                              "give a score threshold instead of 'auto'")
    rows, _ = distinct_rows(classifier)
    features, labels = classifier.support_features()
    features, labels = features[rows], labels[rows]
    sizes = {n: int((labels == i).sum()) for i, n in enumerate(names)}
    too_few = [f"'{n}' ({sizes[n]})" for n in names if sizes[n] < 2]
    if too_few:
        raise SupportSetError(f"class {', '.join(too_few)} has a single distinct image: a 'none of these' estimate "
                              "needs at least 2 per class (one to learn from, one to test); add images to it")
    folds = len(names) * math.ceil(repeats / len(names))
    held_out = HoldOut(sizes, {n: max(1, int(holdout * sizes[n])) for n in names}, seed)
    known, unknown, kept_right = [], [], []
    seen_known: set[int] = set()
    for fold in tqdm(range(folds), desc="open-set estimate", unit="fold", disable=not progress, leave=False):
        with step() if step is not None else contextlib.nullcontext():
            found = open_set_fold(classifier, features, labels, names, held_out, fold % len(names))
        known.append(found[0])
        unknown.append(found[1])
        kept_right.append(found[2])
        seen_known.update(found[3])
    return summarize(classifier, torch.cat(known), torch.cat(unknown), torch.cat(kept_right), recall, folds,
                     len(seen_known), len(labels))


def open_set_fold(classifier: Classifier, features: torch.Tensor, labels: torch.Tensor, names: list[str],
                  held_out: HoldOut, unknown_class: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[int]]:
    """One fold: (scores of the held-out known images ``(K,)``, scores of the unknown class's images ``(U,)``,
    whether each known image was named right ``(K,)``, the known rows held out)."""
    starts = np.concatenate([[0], np.cumsum([int((labels == i).sum()) for i in range(len(names))])[:-1]])
    known_rows = [int(starts[i]) + j for i, n in enumerate(names) if i != unknown_class for j in held_out(n)]
    is_unknown = labels == unknown_class
    in_support = ~is_unknown
    in_support[known_rows] = False
    relabel = torch.arange(len(names))
    relabel[unknown_class + 1:] -= 1  # the known classes renumbered 0..ways-2
    queries = torch.cat([torch.tensor(known_rows, dtype=torch.long), torch.nonzero(is_unknown).flatten()])
    probabilities, scores = classifier.scores_for(features[queries],
                                                  (features[in_support], relabel[labels[in_support]]))
    count = len(known_rows)
    right = probabilities[:count].argmax(1) == relabel[labels[known_rows]]
    return scores[:count], scores[count:], right, known_rows


def summarize(classifier: Classifier, known: torch.Tensor, unknown: torch.Tensor, right: torch.Tensor,
              recall: float, folds: int, known_images: int, unknown_images: int) -> OpenSetEstimate:
    """The pooled AUROC, its interval, the threshold for ``recall`` and what it does, with the warnings."""
    area = auroc(known, unknown)
    half = auroc_interval(area, known_images, unknown_images)
    edge = wilson_interval(area, min(known_images, unknown_images))  # keeps the interval honest near 0 and 1
    low, high = float(min(area - half, edge[0])), float(max(area + half, edge[1]))
    threshold = threshold_for_recall(known, recall)
    kept = known <= threshold
    found = OpenSetEstimate(
        classifier.unknown_score, 100 * area, 100 * max(0.0, low), 100 * min(1.0, high), threshold,
        recall, 100 * float(kept.double().mean()), 100 * float((kept & right).double().mean()),
        100 * float((unknown > threshold).double().mean()), folds, known_images, unknown_images)
    if found.low <= 50:
        found.warnings.append(f"your images do not tell an unseen class apart from yours: the AUROC's 95% interval "
                              f"{found.low:.1f}-{found.high:.1f} % reaches 50 % (chance), so 'unknown' answers would "
                              "be guesses; add images per class, or use a recipe whose features separate them")
    elif found.auroc < WEAK_AUROC:
        found.warnings.append(f"unseen classes are told apart only weakly (AUROC {found.auroc:.1f} %): the "
                              f"threshold answers 'unknown' for just {found.unknown_rejected:.1f} % of them")
    for note in found.warnings:
        warnings.warn(note, UserWarning, stacklevel=4)
    return found


__all__ = ["estimate_open_set"]
