"""How a fitted classifier does on a labelled test folder (:func:`score`, what :meth:`FewShotClassifier.score` and
``fewshot eval --support DIR --test DIR`` run): accuracy with Wilson's 95% interval over the test images (each
classified once, independently), per-class precision / recall / F1 and the confusion matrix.

The classifier is used through its public methods only (``classes_``, ``predict_proba``); this module does not
import it."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np

from ..errors import SupportSetError
from ..evaluation.episodic import per_class_report
from ..paths import folder_classes
from .estimate import wilson_interval


class Classifier(Protocol):
    classes_: list[str]

    def predict_proba(self, images, return_unknown_score: bool = False): ...


@dataclass
class Score:
    """What :func:`score` measured (percentages in 0-100)."""

    accuracy: float
    low: float  # Wilson's 95% interval over the test images
    high: float
    images: int
    report: dict  # per-class precision / recall / F1 and the confusion matrix (fewshot.evaluation.episodic.per_class_report)

    def summary(self) -> str:
        return (f"accuracy {self.accuracy:.1f} % (95% interval {self.low:.1f}-{self.high:.1f} %, {self.images} test "
                "images)")

    def to_json(self) -> dict:
        return {"accuracy": self.accuracy, "low": self.low, "high": self.high, "images": self.images,
                "per_class": self.report["classes"], "confusion": self.report["confusion"],
                "class_names": self.report["class_names"]}


def score(classifier: Classifier, folder: str | os.PathLike) -> Score:
    """Classify every image of ``folder`` (one subfolder per class, each named like a class of ``classifier``;
    a test folder may hold only some of them) and compare with its subfolder."""
    names = classifier.classes_
    grouped = folder_classes(Path(folder).expanduser(), role="test", least=1)
    strangers = sorted(set(grouped) - set(names))
    if strangers:
        raise SupportSetError(f"test class{'es' if len(strangers) > 1 else ''} {', '.join(map(repr, strangers))} "
                              f"{'are' if len(strangers) > 1 else 'is'} not among the classifier's ({', '.join(names)}):"
                              " rename the folder or fit with it")
    files = [file for name in grouped for file in grouped[name]]
    truth = np.array([names.index(name) for name in grouped for _ in grouped[name]])
    guessed = np.asarray(classifier.predict_proba(files)).argmax(1)
    right = float((guessed == truth).mean())
    low, high = wilson_interval(right, len(truth))
    return Score(100 * right, 100 * low, 100 * high, len(truth), per_class_report(names, truth, guessed))


__all__ = ["Score", "score"]
