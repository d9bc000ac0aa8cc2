"""How accurate a fitted classifier is likely to be on new images of its classes, from its own examples:
episodic cross-validation (:func:`estimate`, what :meth:`fewshot.FewShotClassifier.estimate` and the server run),
with Wilson's interval over the held-out images, and exact duplicates within a class left out.

One cross-validation (:func:`cross_validate`, cached by the classifier as :meth:`cross_validation`) gives the
held-out predictions that the accuracy estimate, the per-support calibration (:mod:`fewshot.inference.calibration`) and the
known side of the "none of these" threshold (:mod:`fewshot.inference.open_set_estimate`) are measured on.

The classifier is used through its public methods only (``classes_``, ``examples_``, ``support_images``,
``support_features``, ``logits_for``, ``cross_validation``); this module does not import it."""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Iterator, Protocol

import numpy as np
import torch
from tqdm import tqdm

from ..errors import FewshotError, SupportSetError
from ..evaluation.episodic import per_class_report

DEFAULT_HOLDOUT = 0.1  # the fraction of each class held out per split (at least one image): one image below 20,
# so the splits learn from one image fewer than the fitted classifier (0.2 held out two of 10 and the estimate
# sat further below the truth: benchmarks/promises.py)
INTERVAL_WIDENING = 1.75  # how much wider than Wilson's the accuracy interval is: Wilson's alone covered the
# accuracy on new images for 79 % of 5-way 5-shot support sets, 1.5x for 88 %, 1.75x for >= 90 % in every row
# (benchmarks/promises.py, RESULTS "Promises about one support set")


class Classifier(Protocol):
    """What an estimate uses of :class:`fewshot.FewShotClassifier` (its public methods)."""

    classes_: list[str]
    examples_: dict
    unknown_score: str

    def support_images(self, rows: torch.Tensor | None = None) -> torch.Tensor: ...

    def support_features(self) -> tuple[torch.Tensor | None, torch.Tensor]: ...

    def logits_for(self, queries: torch.Tensor | None, support: tuple,
                   query_features: torch.Tensor | None = None) -> torch.Tensor: ...

    def cross_validation(self, repeats: int = 50, holdout: float = DEFAULT_HOLDOUT, seed: int = 0,
                         progress: bool = False, step: Callable[[], ContextManager] | None = None) -> "CrossValidation": ...

    def scores_for(self, query_features: torch.Tensor, support: tuple | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass
class OpenSetEstimate:
    """What :func:`estimate_open_set` measured (percentages in 0-100); every promise with its 95% interval."""

    score: str  # the unknown score (fewshot.inference.open_set.SCORES)
    auroc: float  # how often an image of an unseen class scores above one of a known class
    low: float  # the AUROC's 95% interval
    high: float
    threshold: float  # the ``auto`` threshold: scores above it are answered ``unknown``
    recall: float  # the target fraction of known images kept (0-1)
    known_kept: float  # the promise: new images of your classes kept (the target recall, in percent)
    known_kept_low: float  # its 95% interval (what a threshold set on this many held-out images can promise)
    known_kept_high: float
    known_accuracy: float  # held-out images of known classes kept and named right (cross-validation)
    unknown_rejected: float  # the promise: images of a class it was not shown answered ``unknown``
    unknown_rejected_low: float  # its 95% interval (over the classes held out in turn and their images)
    unknown_rejected_high: float
    folds: int
    known_images: int  # distinct images held out as knowns
    unknown_images: int  # distinct images held out as unknowns
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"'none of these': AUROC {self.auroc:.1f} % (95% interval {self.low:.1f}-{self.high:.1f} %, "
                f"{self.score} score); threshold {self.threshold:.4g} keeps {self.known_kept:.0f} % "
                f"({self.known_kept_low:.0f}-{self.known_kept_high:.0f} %) of new images of your classes and answers "
                f"'unknown' for {self.unknown_rejected:.0f} % ({self.unknown_rejected_low:.0f}-"
                f"{self.unknown_rejected_high:.0f} %) of images of classes you did not add (95% intervals; "
                f"{self.folds} folds, each class held out in turn)")

    def to_json(self) -> dict:
        return {"score": self.score, "auroc": self.auroc, "low": self.low, "high": self.high,
                "threshold": self.threshold, "recall": self.recall, "known_kept": self.known_kept,
                "known_kept_low": self.known_kept_low, "known_kept_high": self.known_kept_high,
                "known_accuracy": self.known_accuracy, "unknown_rejected": self.unknown_rejected,
                "unknown_rejected_low": self.unknown_rejected_low,
                "unknown_rejected_high": self.unknown_rejected_high,
                "folds": self.folds, "known_images": self.known_images, "unknown_images": self.unknown_images,
                "warnings": self.warnings}


@dataclass
class Estimate:
    """What :meth:`FewShotClassifier.estimate` measured (accuracies in percent)."""

    accuracy: float  # mean over held-out images of how often each was classified right
    low: float  # the 95% interval (Wilson score interval over the held-out images)
    high: float
    repeats: int
    images: int  # distinct images that were held out at least once
    shots: dict[str, int]  # support images per class in each split
    report: dict  # per-class precision / recall / F1 and the confusion matrix (see per_class_report)
    warnings: list[str] = field(default_factory=list)
    open_set: OpenSetEstimate | None = None  # how well "none of these" works (None: not estimated, see below)
    open_set_refused: str = ""  # why there is no open-set estimate, when one was asked for
    adaptation: dict | None = None  # adapt="top"/"auto": whether the model was adapted and why (SupportAdaptation)

    def summary(self) -> str:
        adapted = bool(self.adaptation and self.adaptation.get("adapted"))
        how = (f"{self.repeats} folds, each fold's model adapted without the images it held out" if adapted
               else f"{self.repeats} random splits")
        line = (f"estimated accuracy {self.accuracy:.1f} % (95% interval {self.low:.1f}-{self.high:.1f} %, from "
                f"{self.images} held-out images over {how})")
        if self.adaptation is not None:
            line += f"\nadapting the features to your images: {self.adaptation.get('reason', 'adapted')}"
        return line

    def to_json(self) -> dict:
        found = {"accuracy": self.accuracy, "low": self.low, "high": self.high, "repeats": self.repeats,
                 "images": self.images,
                 "shots": self.shots, "per_class": self.report["classes"], "confusion": self.report["confusion"],
                 "class_names": self.report["class_names"], "warnings": self.warnings}
        if self.open_set is not None:
            found["open_set"] = self.open_set.to_json()
        elif self.open_set_refused:
            found["open_set"] = {"refused": self.open_set_refused}
        if self.adaptation is not None:
            found["adaptation"] = self.adaptation
        return found


@dataclass
class CrossValidation:
    """The held-out predictions of :func:`cross_validate` (``N`` = splits x images held out per split)."""

    rows: torch.Tensor  # (N,) which distinct support image each prediction is of (an index into ``labels``)
    labels: torch.Tensor  # (D,) the class of each distinct support image
    logits: torch.Tensor  # (N, ways) uncalibrated logits (log-probabilities for a head that adapts the backbone)
    shots: dict[str, int]  # support images per class in each split
    notes: list[str]  # duplicates left out, classes with few images
    repeats: int

    @property
    def truth(self) -> torch.Tensor:
        """``(N,)`` the class of each prediction."""
        return self.labels[self.rows]

    @property
    def split_shots(self) -> float:
        """Mean support images per class in each split (what the splits' classifiers were fitted on)."""
        return sum(self.shots.values()) / len(self.shots)


def estimate(classifier: Classifier, repeats: int = 50, holdout: float = DEFAULT_HOLDOUT, seed: int = 0,
             progress: bool = False, step: Callable[[], ContextManager] | None = None) -> Estimate:
    """How accurate this classifier is likely to be on new images of its classes, from its own examples:
    :meth:`cross_validation` (see :func:`cross_validate`). Every held-out image's rate of correct answers is
    averaged; the 95% interval is Wilson's score interval for that mean over the number of distinct images,
    widened by :data:`INTERVAL_WIDENING` (the splits reuse the same few images, so the estimate varies from one
    support set to another more than a sample of that many independent images would: ``benchmarks/promises.py``
    measured the coverage over many random support sets). It reflects how many images there are, not how many
    splits were drawn, and stays honest at 100 %. With fewer than five images in a class a warning says the
    estimate is noisy."""
    classifier.classes_  # raises NotFittedError before fit
    found = classifier.cross_validation(repeats, holdout, seed, progress, step)
    for note in found.notes:
        warnings.warn(note, UserWarning, stacklevel=3)  # the caller of FewShotClassifier.estimate
    names = classifier.classes_
    guessed = found.logits.argmax(1)
    truth = found.truth
    right = torch.zeros(len(found.labels), dtype=torch.float64).index_add_(0, found.rows, (guessed == truth).double())
    tried = torch.zeros(len(found.labels), dtype=torch.float64).index_add_(0, found.rows,
                                                                            torch.ones(len(truth), dtype=torch.float64))
    rates = (right[tried > 0] / tried[tried > 0]).numpy()
    low, high = wilson_interval(float(rates.mean()), len(rates), widening=INTERVAL_WIDENING)
    report = per_class_report(names, truth.numpy(), guessed.numpy())
    return Estimate(float(rates.mean() * 100), 100 * low, 100 * high, found.repeats, int(len(rates)),
                    dict(found.shots), report, list(found.notes))


def cross_validate(classifier: Classifier, repeats: int = 50, holdout: float = DEFAULT_HOLDOUT, seed: int = 0,
                   progress: bool = False, step: Callable[[], ContextManager] | None = None) -> CrossValidation:
    """Episodic cross-validation by repeated random sub-sampling: each of ``repeats`` splits holds out
    ``max(1, floor(holdout * n))`` of every class's ``n`` distinct images as queries (walking through random
    permutations of the class, so each image is held out about equally often) and classifies them with the rest
    as the support set (each split has one or a few shots fewer than the fitted classifier). Needs at least two
    distinct images in every class. ``progress``: a progress bar on stderr; ``step``: each split runs inside
    ``with step():`` (the server paces and cancels the estimate with it)."""
    check_estimate_arguments(repeats, holdout, seed)
    names = classifier.classes_
    rows, notes = distinct_rows(classifier)
    features, labels = classifier.support_features()
    images = classifier.support_images(rows) if features is None else None  # only a head that adapts needs them
    labels, features = labels[rows], None if features is None else features[rows]
    sizes = check_sizes(names, labels, bool(notes))
    notes += [f"class '{n}' has only {sizes[n]} images: its part of the estimate is noisy (5 or more help)"
              for n in names if sizes[n] < 5]
    held = {n: max(1, int(holdout * sizes[n])) for n in names}
    query_rows, logits = [], []
    for support_rows, queries in tqdm(splits(names, sizes, held, seed, repeats), total=repeats, desc="estimate",
                                      unit="split", disable=not progress, leave=False):
        with step() if step is not None else contextlib.nullcontext():
            if features is None:  # the head adapts the backbone to the support images
                found = classifier.logits_for(images[queries], (images[support_rows], None, labels[support_rows]))
            else:
                found = classifier.logits_for(None, (None, features[support_rows], labels[support_rows]),
                                              features[queries])
        query_rows.append(queries)
        logits.append(found)
    return CrossValidation(torch.cat(query_rows), labels, torch.cat(logits), {n: sizes[n] - held[n] for n in names},
                           notes, repeats)


def check_sizes(names: list[str], labels: torch.Tensor, deduplicated: bool) -> dict[str, int]:
    """Distinct images per class (``labels`` ``(D,)`` of the distinct rows); a one-line error when a class has one."""
    sizes = {n: int((labels == i).sum()) for i, n in enumerate(names)}
    too_few = [f"'{n}' ({sizes[n]})" for n in names if sizes[n] < 2]
    if too_few:
        raise SupportSetError(f"class {', '.join(too_few)} has a single image"
                              f"{' once duplicates are left out' if deduplicated else ''}: it can be used to predict, "
                              "but an estimate needs at least 2 images per class (one to learn from, one to test); "
                              "add images to it")
    return sizes


def splits(names: list[str], sizes: dict[str, int], held: dict[str, int], seed: int, repeats: int
           ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``repeats`` random splits of rows grouped by class (class ``names[i]``'s ``sizes`` rows in a block, in
    ``names`` order): (support rows, query rows), each ``held[name]`` rows of every class held out as queries."""
    starts = np.concatenate([[0], np.cumsum([sizes[n] for n in names])[:-1]])
    held_out = HoldOut(sizes, held, seed)
    total = sum(sizes.values())
    for _ in range(repeats):
        is_query = np.zeros(total, dtype=bool)
        for i, n in enumerate(names):
            is_query[[starts[i] + j for j in held_out(n)]] = True
        yield torch.from_numpy(np.flatnonzero(~is_query)), torch.from_numpy(np.flatnonzero(is_query))


def distinct_rows(classifier: Classifier) -> tuple[torch.Tensor, list[str]]:
    """Rows of :meth:`support` to estimate with: within each class, the first of images that are exact
    duplicates (same bytes, or same pixels at the model's size) is kept, the others dropped, since a held-out
    image whose copy stayed in the support set would inflate the estimate; with one note per class naming
    the files dropped."""
    kept, notes, start = [], [], 0
    for name in classifier.classes_:
        entry = classifier.examples_[name]
        seen: dict[str, str] = {}
        dropped = []
        for row, (file, digest, pixels) in enumerate(zip(entry.names, entry.digests, entry.images)):
            pixel_key = hashlib.sha1(pixels.contiguous().numpy().tobytes()).hexdigest()
            first = seen.get(digest) or seen.get(pixel_key)
            if first is not None:
                dropped.append(f"{file} (same as {first})")
                continue
            seen[digest] = seen[pixel_key] = file
            kept.append(start + row)
        start += len(entry.images)
        if dropped:
            shown = "; ".join(dropped[:5]) + (f"; and {len(dropped) - 5} more" if len(dropped) > 5 else "")
            notes.append(f"class '{name}' holds {len(dropped)} duplicate image{'s' if len(dropped) > 1 else ''}, "
                         f"left out of the estimate (a held-out copy would be found in the support set): {shown}")
    return torch.tensor(kept, dtype=torch.long), notes


def check_estimate_arguments(repeats: object, holdout: object, seed: object) -> None:
    """One-line errors for :meth:`FewShotClassifier.estimate`'s arguments."""
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise FewshotError(f"repeats must be an integer >= 1, got {repeats!r}")
    if isinstance(holdout, bool) or not isinstance(holdout, (int, float)) or not 0 < holdout < 1:
        raise FewshotError(f"holdout must be a fraction between 0 and 1, got {holdout!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise FewshotError(f"seed must be an integer >= 0, got {seed!r}")


class HoldOut:
    """``held_out(name)``: the next ``held[name]`` images of a class to hold out, walking through random
    permutations of the class (from one generator seeded with ``seed``), so every image is held out about
    equally often."""

    def __init__(self, sizes: dict[str, int], held: dict[str, int], seed: int):
        self.sizes, self.held = sizes, held
        self.generator = np.random.default_rng(seed)
        self.queues: dict[str, list[int]] = {n: [] for n in sizes}

    def __call__(self, name: str) -> list[int]:
        queue, pick, deferred = self.queues[name], [], []
        while len(pick) < self.held[name]:
            if not queue:
                queue.extend(int(i) for i in self.generator.permutation(self.sizes[name]))
            index = queue.pop(0)
            (deferred if index in pick else pick).append(index)
        queue[:0] = deferred
        return pick


def wilson_interval(proportion: float, count: int, z: float = 1.96, widening: float = 1.0) -> tuple[float, float]:
    """Wilson's score interval for a proportion observed over ``count`` items (fractions, not percent); with
    ``widening`` > 1 the items count as ``count / widening**2`` independent ones (the interval about that much
    wider)."""
    count = count / widening ** 2
    centre = (proportion + z * z / (2 * count)) / (1 + z * z / count)
    half = z * np.sqrt(proportion * (1 - proportion) / count + z * z / (4 * count * count)) / (1 + z * z / count)
    low, high = max(0.0, centre - half), min(1.0, centre + half)
    return (0.0 if proportion <= 0 else low), (1.0 if proportion >= 1 else high)  # exact at the edges (no 0.9999999)
