"""How well a fitted classifier can say "none of these", the ``auto`` threshold, and what that threshold promises,
from the classifier's own examples (:func:`estimate_open_set`, what :meth:`fewshot.FewShotClassifier.estimate` and
``predict(unknown="auto")`` run). Every classifier below is fitted and calibrated by the fitted classifier's own
rule (:meth:`fewshot.FewShotClassifier.scores_for`), so their scores are on its scale.

* **The threshold and what it keeps.** The cross-validation splits of the accuracy estimate (every class present,
  one image per class held out, a tenth of a class of 20 or more) score held-out images of the user's classes. A
  threshold at the ``k``-th lowest of ``m`` exchangeable held-out scores keeps a fraction of new images that varies
  from one support set to another as Beta(k, m+1-k) (conformal prediction), so ``k`` is chosen to keep at least
  ``recall`` - 5 points on 9 support sets in 10 (:func:`threshold_rank`; ``m`` the distinct images held out, each
  scored by the mean of its splits' scores), and the threshold is the ``k``-th lowest image score. The 2.5 % point
  of that Beta is the low end of the promise's interval. The high end is 100 %: the splits' classifiers learn from
  fewer images per class than the fitted one, which scores new images of your classes lower, so the threshold
  keeps at least as many as promised (``benchmarks/promises.py``: often more).
* **What it rejects.** Each class is held out in turn as the unseen one, and the procedure above is repeated one
  level down on the other classes: a classifier of all their images scores the held-out class's images against a
  threshold chosen, as above, from cross-validation splits of their images. So the rate is read at the operating
  point the user's threshold really has (its splits have fewer images per class than the classifier it is applied
  to, as the user's do), not at the fitted classifier's threshold on another classifier's scores. The promise is
  the mean over the classes; its interval covers both the spread between classes (Student's t over them) and the
  count of images (Wilson's interval).
* **How well unseen classes are told apart**: the AUROC of known against unknown scores pooled over the folds, with
  Hanley & McNeil's 95% interval over the distinct images (widened to Wilson's interval for a proportion over the
  smaller of the two counts, so that a perfect separation of a few images does not claim certainty).

``benchmarks/promises.py`` checks each promise against new images of the user's classes and of other classes, over
many random support sets."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import warnings
from pathlib import Path
from typing import Callable, ContextManager

import torch
from tqdm import tqdm

from ..errors import SupportSetError
from .estimate import (DEFAULT_HOLDOUT, Classifier, OpenSetEstimate, check_estimate_arguments, check_sizes,
                       distinct_rows, splits, wilson_interval)
from .open_set import DEFAULT_RECALL, auroc, auroc_interval, check_recall

WEAK_AUROC = 70.0  # below this (percent) the estimate warns that unknowns are told apart only weakly
KEPT_TOLERANCE = 0.05  # the threshold keeps at least recall minus this of new known images ...
KEPT_CONFIDENCE = 0.9  # ... on this fraction of support sets (threshold_rank)
REJECTION_WIDENING = 1.5  # the rejection interval is this much wider than the classes' spread and the image count
# give: the held-out classes are few, so that spread is itself uncertain (1x covered the rate on new classes for 80 %
# of support sets in the worst row, 1.5x for >= 90 % in every row: benchmarks/promises.py)


def estimate_open_set(classifier: Classifier, recall: float = DEFAULT_RECALL, repeats: int = 50,
                      holdout: float = DEFAULT_HOLDOUT, seed: int = 0, progress: bool = False,
                      step: Callable[[], ContextManager] | None = None) -> OpenSetEstimate:
    """The "none of these" estimate (see the module's text): ``repeats`` cross-validation splits for the known
    side, at least ``repeats`` leave-one-class-out folds (rounded up so every class is held out equally often) for
    the unknown side. Needs 3 classes with 2 distinct images each (refused with the reason otherwise); warns when
    unknowns are told apart weakly or not at all."""
    names = classifier.classes_
    check_estimate_arguments(repeats, holdout, seed)
    recall = check_recall(recall)
    if len(names) < 3:
        raise SupportSetError(f"telling 'none of these' apart needs at least 3 classes (each is held out in turn as "
                              f"the unknown while the others are classified), got {len(names)}: add a class, or "
                              "give a score threshold instead of 'auto'")
    rows, notes = distinct_rows(classifier)
    features, labels = classifier.support_features()
    features, labels = features[rows], labels[rows]
    sizes = check_sizes(names, labels, bool(notes))
    held = {n: max(1, int(holdout * sizes[n])) for n in names}
    bar = tqdm(total=repeats + len(names) * math.ceil(repeats / len(names)), desc="open-set estimate", unit="fold",
               disable=not progress, leave=False)
    paced = step if step is not None else contextlib.nullcontext
    with bar:
        known = known_side(classifier, features, labels, names, sizes, held, seed, repeats, paced, bar)
        unknown = unknown_side(classifier, features, labels, names, sizes, held, seed, repeats, recall, paced, bar)
    return summarize(classifier.unknown_score, known, unknown, recall, len(labels))


def known_side(classifier: Classifier, features: torch.Tensor, labels: torch.Tensor, names: list[str],
               sizes: dict[str, int], held: dict[str, int], seed: int, repeats: int, paced, bar
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Over the cross-validation splits (all classes present): (scores of the held-out images ``(N,)``, whether
    each was named right ``(N,)``, which image each score is of ``(N,)``)."""
    scores, right, rows = [], [], []
    for support, queries in splits(names, sizes, held, seed, repeats):
        with paced():
            probabilities, found = classifier.scores_for(features[queries], (features[support], labels[support]))
        scores.append(found)
        right.append(probabilities.argmax(1) == labels[queries])
        rows.append(queries)
        bar.update()
    return torch.cat(scores), torch.cat(right), torch.cat(rows)


def unknown_side(classifier: Classifier, features: torch.Tensor, labels: torch.Tensor, names: list[str],
                 sizes: dict[str, int], held: dict[str, int], seed: int, repeats: int, recall: float, paced, bar
                 ) -> dict:
    """Each class ``c`` held out in turn, the user's procedure repeated on the other classes: their classifier
    (all their images) scores ``c``'s images, its threshold comes from cross-validation splits of their images.
    ``rates`` ``(C,)``: the fraction of each class's images above its threshold; ``known`` / ``unknown``: the
    pooled split and held-out-class scores (for the AUROC); ``known_images``: distinct known images held out."""
    per_class = math.ceil(repeats / len(names))
    rates, known_scores, unknown_scores, seen = [], [], [], set()
    for c in range(len(names)):
        others = torch.nonzero(labels != c).flatten()
        relabel = labels[others] - (labels[others] > c).long()  # the other classes renumbered 0..ways-2
        kept_names = [n for i, n in enumerate(names) if i != c]
        with paced():
            _, unknown = classifier.scores_for(features[labels == c], (features[others], relabel))
        fold_known, fold_rows = [], []
        kept_sizes = {n: sizes[n] for n in kept_names}
        for support, queries in splits(kept_names, kept_sizes, held, seed + 1 + c, per_class):
            with paced():
                _, found = classifier.scores_for(features[others[queries]],
                                                 (features[others[support]], relabel[support]))
            fold_known.append(found)
            fold_rows.append(queries)
            seen.update(others[queries].tolist())
            bar.update()
        fold_known = torch.cat(fold_known)
        threshold = recall_threshold(fold_known, torch.cat(fold_rows), recall)[0]
        rates.append(float((unknown > threshold).double().mean()))
        known_scores.append(fold_known)
        unknown_scores.append(unknown)
    return {"rates": torch.tensor(rates, dtype=torch.float64), "folds": per_class * len(names),
            "known_images": len(seen), "known": torch.cat(known_scores), "unknown": torch.cat(unknown_scores)}


def binomial_tail(count: int, probability: float, at_least: int) -> float:
    """P(Binomial(``count``, ``probability``) >= ``at_least``)."""
    if at_least <= 0:
        return 1.0
    if probability <= 0:
        return 0.0
    if probability >= 1:
        return 1.0
    logs = [math.lgamma(count + 1) - math.lgamma(j + 1) - math.lgamma(count - j + 1) + j * math.log(probability)
            + (count - j) * math.log1p(-probability) for j in range(at_least, count + 1)]
    top = max(logs)
    return min(1.0, math.exp(top) * sum(math.exp(v - top) for v in logs))


def threshold_rank(recall: float, images: int) -> int:
    """Which of ``images`` held-out scores, counted from the lowest, the threshold sits at: the lowest rank ``k``
    whose threshold keeps at least ``recall`` - :data:`KEPT_TOLERANCE` of new images on :data:`KEPT_CONFIDENCE`
    of support sets (its kept fraction follows Beta(k, m+1-k), whose CDF at x is P(Binomial(m, x) >= k):
    training-conditional conformal prediction, Vovk 2012), and never below split-conformal's ceil(recall (m+1));
    ``images`` when no rank is enough (too few images: the interval then says how little is promised)."""
    floor = max(recall - KEPT_TOLERANCE, 0.0)
    low, high = min(images, math.ceil(recall * (images + 1))), images
    while low < high:  # the binomial tail falls as the rank rises
        middle = (low + high) // 2
        if binomial_tail(images, floor, middle) <= 1 - KEPT_CONFIDENCE:
            high = middle
        else:
            low = middle + 1
    return max(low, 1)


def recall_threshold(scores: torch.Tensor, rows: torch.Tensor, recall: float) -> tuple[float, int, int]:
    """(the ``auto`` threshold, its rank, the distinct images) from held-out known scores ``(N,)`` of the images
    ``rows`` ``(N,)`` (an image held out in several splits has several scores: their mean stands for it): the
    :func:`threshold_rank`-th lowest of the images' scores."""
    distinct, inverse = torch.unique(rows, return_inverse=True)
    sums = torch.zeros(len(distinct), dtype=torch.float64).index_add_(0, inverse, scores.double())
    counts = torch.zeros(len(distinct), dtype=torch.float64).index_add_(0, inverse, torch.ones_like(sums[inverse]))
    per_image = (sums / counts).sort().values
    rank = threshold_rank(recall, len(distinct))
    return float(per_image[rank - 1]), rank, len(distinct)


def kept_interval(rank: int, images: int, level: float = 0.95) -> tuple[float, float]:
    """The central ``level`` interval of the fraction of new images kept by a threshold at the ``rank``-th lowest
    of ``images`` exchangeable held-out scores: Beta(rank, images + 1 - rank)."""
    a, b = rank, images + 1 - rank
    x = torch.linspace(0, 1, 40001, dtype=torch.float64)[1:-1]
    log_density = (a - 1) * x.log() + (b - 1) * (-x).log1p()
    cdf = (log_density - log_density.max()).exp().cumsum(0)
    cdf /= cdf[-1].clone()
    tail = (1 - level) / 2
    return float(x[torch.searchsorted(cdf, tail)]), float(x[min(int(torch.searchsorted(cdf, 1 - tail)), len(x) - 1)])


T_95 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228)  # Student's t, 1-10 freedoms


def student_t(freedom: int) -> float:
    """The two-sided 95 % quantile of Student's t with ``freedom`` degrees of freedom: the table up to 10, then the
    Cornish-Fisher expansion around the normal quantile (within 0.1 % there)."""
    if freedom <= len(T_95):
        return T_95[max(freedom, 1) - 1]
    z, v = 1.959963984540054, freedom
    return (z + (z ** 3 + z) / (4 * v) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * v ** 2)
            + (3 * z ** 7 + 19 * z ** 5 + 17 * z ** 3 - 15 * z) / (384 * v ** 3))


def rejected_interval(rates: torch.Tensor, unknown_images: int) -> tuple[float, float]:
    """The 95% interval of the rejection rate: the wider of Student's t over the held-out classes' ``rates``
    ``(C,)`` and Wilson's interval over ``unknown_images`` images, each widened by :data:`REJECTION_WIDENING`."""
    mean = float(rates.mean())
    half = REJECTION_WIDENING * student_t(len(rates) - 1) * float(rates.std()) / math.sqrt(len(rates))
    edge = wilson_interval(mean, unknown_images, widening=REJECTION_WIDENING)
    return max(0.0, min(mean - half, edge[0])), min(1.0, max(mean + half, edge[1]))


def summarize(score: str, known: tuple[torch.Tensor, torch.Tensor, int], unknown: dict, recall: float,
              unknown_images: int) -> OpenSetEstimate:
    """The estimate from :func:`known_side` and :func:`unknown_side`, with its warnings."""
    known_scores, right, known_rows = known
    area = auroc(unknown["known"], unknown["unknown"])
    half = auroc_interval(area, unknown["known_images"], unknown_images)
    edge = wilson_interval(area, min(unknown["known_images"], unknown_images))  # honest near 0 and 1
    low, high = float(min(area - half, edge[0])), float(max(area + half, edge[1]))
    threshold, rank, known_images = recall_threshold(known_scores, known_rows, recall)
    kept_low, kept_high = kept_interval(rank, known_images)[0], 1.0  # the high end: see the module's text
    rejected_low, rejected_high = rejected_interval(unknown["rates"], unknown_images)
    kept_right = (known_scores <= threshold) & right
    found = OpenSetEstimate(
        score, 100 * area, 100 * max(0.0, low), 100 * min(1.0, high), threshold, recall, 100 * recall,
        100 * kept_low, 100 * kept_high, 100 * float(kept_right.double().mean()),
        100 * float(unknown["rates"].mean()), 100 * rejected_low, 100 * rejected_high, unknown["folds"],
        known_images, unknown_images)
    if found.low <= 50:
        found.warnings.append(f"your images do not tell an unseen class apart from yours: the AUROC's 95% interval "
                              f"{found.low:.1f}-{found.high:.1f} % reaches 50 % (chance), so 'unknown' answers would "
                              "be guesses; add images per class, or use a recipe whose features separate them")
    elif found.auroc < WEAK_AUROC:
        found.warnings.append(f"unseen classes are told apart only weakly (AUROC {found.auroc:.1f} %): the "
                              f"threshold answers 'unknown' for just {found.unknown_rejected:.0f} % of them")
    for note in found.warnings:
        warnings.warn(note, UserWarning, stacklevel=4)
    return found


def estimate_key(features: torch.Tensor, labels: torch.Tensor, settings: dict) -> str:
    """A name for one estimate: the support embeddings ``(S, E)`` (they change with the images and the weights),
    their labels ``(S,)`` and everything else the estimate depends on (``settings``: JSON-able)."""
    digest = hashlib.sha1(features.contiguous().float().numpy().tobytes())
    digest.update(labels.contiguous().numpy().tobytes())
    digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return digest.hexdigest()


def stored_estimate(folder: Path, key: str) -> OpenSetEstimate | None:
    """The estimate saved under ``key`` in ``folder`` (its warnings said again), or None."""
    try:
        fields = json.loads((folder / f"{key}.json").read_text())
        found = OpenSetEstimate(**fields)
    except (OSError, ValueError, TypeError):
        return None
    for note in found.warnings:
        warnings.warn(note, UserWarning, stacklevel=4)
    return found


def store_estimate(folder: Path, key: str, found: OpenSetEstimate) -> None:
    """Save ``found`` under ``key`` (atomically; a cache that cannot be written is skipped)."""
    from ..atomic import atomic_write_text
    from ..errors import FewshotError

    try:
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / f"{key}.json", json.dumps(found.to_json()))
    except (OSError, FewshotError):
        pass


def remembered_estimate(folder: Path, features: torch.Tensor, labels: torch.Tensor, settings: dict,
                        compute: Callable[[], OpenSetEstimate]) -> OpenSetEstimate:
    """The estimate kept in ``folder`` for these support embeddings ``(S, E)``, labels ``(S,)`` and ``settings``,
    else ``compute()``, kept there for the next process (:func:`estimate_key`)."""
    key = estimate_key(features, labels, settings)
    found = stored_estimate(folder, key)
    if found is None:
        found = compute()
        store_estimate(folder, key, found)
    return found


__all__ = ["estimate_key", "estimate_open_set", "remembered_estimate", "store_estimate", "stored_estimate", "kept_interval", "recall_threshold", "rejected_interval", "student_t",
           "threshold_rank"]
