"""How accurate a fitted classifier is likely to be on new images of its classes, from its own examples:
episodic cross-validation (:func:`estimate`, what :meth:`fewshot.FewShotClassifier.estimate` and the server run),
with Wilson's interval over the held-out images, and exact duplicates within a class left out.

The classifier is used through its public methods only (``classes_``, ``examples_``, ``support``,
``support_features``, ``probabilities_for``); this module does not import it."""

from __future__ import annotations

import contextlib
import hashlib
import warnings
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Protocol

import numpy as np
import torch
from tqdm import tqdm

from .errors import FewshotError, SupportSetError
from .evaluate import per_class_report


class Classifier(Protocol):
    """What an estimate uses of :class:`fewshot.FewShotClassifier` (its public methods)."""

    classes_: list[str]
    examples_: dict
    unknown_score: str

    def support_images(self, rows: torch.Tensor | None = None) -> torch.Tensor: ...

    def support_features(self) -> tuple[torch.Tensor | None, torch.Tensor]: ...

    def probabilities_for(self, queries: torch.Tensor | None, support: tuple | None = None,
                          query_features: torch.Tensor | None = None) -> torch.Tensor: ...

    def scores_for(self, query_features: torch.Tensor, support: tuple | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]: ...


@dataclass
class OpenSetEstimate:
    """What :func:`estimate_open_set` measured (percentages in 0-100)."""

    score: str  # the unknown score (fewshot.open_set.SCORES)
    auroc: float  # how often an image of an unseen class scores above one of a known class
    low: float  # the AUROC's 95% interval
    high: float
    threshold: float  # the ``auto`` threshold: scores above it are answered ``unknown``
    recall: float  # the target fraction of known images kept (0-1)
    known_kept: float  # held-out images of known classes scored at or below the threshold
    known_accuracy: float  # held-out images of known classes kept and named right
    unknown_rejected: float  # images of held-out classes scored above the threshold
    folds: int
    known_images: int  # distinct images held out as knowns
    unknown_images: int  # distinct images held out as unknowns
    warnings: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (f"'none of these': AUROC {self.auroc:.1f} % (95% interval {self.low:.1f}-{self.high:.1f} %, "
                f"{self.score} score); threshold {self.threshold:.4g} keeps {self.known_kept:.1f} % of your classes' "
                f"images ({self.known_accuracy:.1f} % kept and named right) and answers 'unknown' for "
                f"{self.unknown_rejected:.1f} % of images of a class it was not shown ({self.folds} folds, each "
                "class held out in turn)")

    def to_json(self) -> dict:
        return {"score": self.score, "auroc": self.auroc, "low": self.low, "high": self.high,
                "threshold": self.threshold, "recall": self.recall, "known_kept": self.known_kept,
                "known_accuracy": self.known_accuracy, "unknown_rejected": self.unknown_rejected,
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

    def summary(self) -> str:
        return (f"estimated accuracy {self.accuracy:.1f} % (95% interval {self.low:.1f}-{self.high:.1f} %, from "
                f"{self.images} held-out images over {self.repeats} random splits)")

    def to_json(self) -> dict:
        found = {"accuracy": self.accuracy, "low": self.low, "high": self.high, "repeats": self.repeats,
                 "images": self.images,
                 "shots": self.shots, "per_class": self.report["classes"], "confusion": self.report["confusion"],
                 "class_names": self.report["class_names"], "warnings": self.warnings}
        if self.open_set is not None:
            found["open_set"] = self.open_set.to_json()
        elif self.open_set_refused:
            found["open_set"] = {"refused": self.open_set_refused}
        return found


def estimate(classifier: Classifier, repeats: int = 50, holdout: float = 0.2, seed: int = 0,
             progress: bool = False, step: Callable[[], ContextManager] | None = None) -> Estimate:
    """How accurate this classifier is likely to be on new images of its classes, from its own examples:
    episodic cross-validation by repeated random sub-sampling. Each of ``repeats`` splits holds out
    ``max(1, floor(holdout * n))`` of every class's ``n`` images as queries (walking through random
    permutations of the class, so each image is held out about equally often) and classifies them with the
    rest as the support set (so each split has one or a few shots fewer than the fitted classifier:
    the estimate leans pessimistic). Every held-out image's rate of correct answers is averaged; the
    95% interval is Wilson's score interval for that mean over the number of distinct images: it
    reflects how many images there are, not how many splits were drawn, and it stays honest at 100 %
    (25 images all right still give 86.7-100 %). Needs at least two images in every class; with fewer than five
    in a class the estimate is noisy and a warning says so. ``progress``: a progress bar on stderr; ``step``:
    each split runs inside ``with step():`` (the server paces and cancels the estimate with it)."""
    classifier.classes_  # raises NotFittedError before fit
    check_estimate_arguments(repeats, holdout, seed)
    names = classifier.classes_
    rows, notes = distinct_rows(classifier)
    features, labels = classifier.support_features()
    images = classifier.support_images(rows) if features is None else None  # only a head that adapts needs them
    labels, features = labels[rows], None if features is None else features[rows]
    sizes = {n: int((labels == i).sum()) for i, n in enumerate(names)}
    too_few = [f"'{n}' ({sizes[n]})" for n in names if sizes[n] < 2]
    if too_few:
        raise SupportSetError(f"class {', '.join(too_few)} has a single image"
                              f"{' once duplicates are left out' if notes else ''}: it can be used to predict, but "
                              "an estimate needs at least 2 images per class (one to learn from, one to test); "
                              "add images to it")
    notes += [f"class '{n}' has only {sizes[n]} images: its part of the estimate is noisy (5 or more help)"
              for n in names if sizes[n] < 5]
    for note in notes:
        warnings.warn(note, UserWarning, stacklevel=3)  # the caller of FewShotClassifier.estimate
    starts = np.concatenate([[0], np.cumsum([sizes[n] for n in names])[:-1]])
    held = {n: max(1, int(holdout * sizes[n])) for n in names}
    held_out = HoldOut(sizes, held, seed)
    right = np.zeros(len(labels))
    tried = np.zeros(len(labels))
    truth, guessed = [], []
    for _ in tqdm(range(repeats), desc="estimate", unit="split", disable=not progress, leave=False):
        with step() if step is not None else contextlib.nullcontext():
            query_rows, predicted = estimate_split(classifier, images, features, labels, names, starts, held_out)
        correct = predicted == labels[query_rows].numpy()
        right[query_rows.numpy()] += correct
        tried[query_rows.numpy()] += 1
        truth.append(labels[query_rows].numpy())
        guessed.append(predicted)
    rates = right[tried > 0] / tried[tried > 0]
    low, high = wilson_interval(float(rates.mean()), len(rates))
    report = per_class_report(names, np.concatenate(truth), np.concatenate(guessed))
    return Estimate(float(rates.mean() * 100), 100 * low, 100 * high, repeats, int(len(rates)),
                    {n: sizes[n] - held[n] for n in names}, report, notes)


def estimate_split(classifier: Classifier, images, features, labels, names, starts, held_out
                   ) -> tuple[torch.Tensor, np.ndarray]:
    """One split of :meth:`estimate`: (the held-out rows, their predicted labels)."""
    query_rows = []
    for i, n in enumerate(names):
        query_rows += [starts[i] + j for j in held_out(n)]
    is_query = np.zeros(len(labels), dtype=bool)
    is_query[query_rows] = True
    support_rows = torch.from_numpy(np.flatnonzero(~is_query))
    query_rows = torch.from_numpy(np.flatnonzero(is_query))
    if features is None:  # the head adapts the backbone to the support images
        subset = (images[support_rows], None, labels[support_rows])
        probabilities = classifier.probabilities_for(images[query_rows], subset)
    else:
        subset = (None, features[support_rows], labels[support_rows])
        probabilities = classifier.probabilities_for(None, subset, features[query_rows])
    return query_rows, probabilities.argmax(1).numpy()


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


def wilson_interval(proportion: float, count: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson's score interval for a proportion observed over ``count`` items (fractions, not percent)."""
    centre = (proportion + z * z / (2 * count)) / (1 + z * z / count)
    half = z * np.sqrt(proportion * (1 - proportion) / count + z * z / (4 * count * count)) / (1 + z * z / count)
    return max(0.0, centre - half), min(1.0, centre + half)
