"""Calibrated probabilities: the temperature a fitted classifier multiplies its logits by before the softmax.

A recipe carries a table ``model.temperature`` = {shots per class: temperature}, each value the temperature
that minimises the negative log-likelihood of its classifier on 5-way episodes of classes it is never
evaluated on (tinyimagenet-fs *val*; ``benchmarks/calibration.py`` fits them and reports the expected
calibration error on the *test* classes). A support set with another number of shots per class gets the
temperature interpolated linearly in ``log(shots)`` between the nearest entries (the first or last entry
beyond them). Why a table measured on other classes rather than one fitted on the user's support set: at one
shot there is nothing to hold out, and a leave-one-out fit on a few dozen support images is too noisy to
trust (a 5-shot episode is often classified without a single error, which pushes the fit to infinity).
An empty table (models that are not recipes) keeps the head's own logit scale: temperature 1.
"""

from __future__ import annotations

import math

import torch

from .model import FittedClassifier


def temperature_for(table: dict, shots: float) -> float:
    """The temperature of ``table`` ({shots: temperature}) at ``shots`` per class (any positive number)."""
    if not table:
        return 1.0
    points = sorted((int(k), float(v)) for k, v in table.items())
    if shots <= points[0][0]:
        return points[0][1]
    for (low, t_low), (high, t_high) in zip(points, points[1:]):
        if shots <= high:
            where = (math.log(shots) - math.log(low)) / (math.log(high) - math.log(low))
            return t_low + where * (t_high - t_low)
    return points[-1][1]


def calibrated(fitted: FittedClassifier, labels: torch.Tensor, table: dict) -> FittedClassifier:
    """``fitted`` with the temperature of ``table`` for its support set (labels ``(S,)``: mean shots per class)."""
    shots = len(labels) / max(int(torch.unique(labels).numel()), 1)
    fitted.temperature = temperature_for(table, shots)
    fitted.info = {"temperature": fitted.temperature, "shots_per_class": shots,
                   "calibration": "recipe table" if table else "none (temperature 1)"}
    return fitted
