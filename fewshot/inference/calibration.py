"""Calibrated probabilities: the temperature a fitted classifier multiplies its logits by before the softmax.

A recipe carries a table ``model.temperature`` = {shots per class: temperature}, each value the temperature
that minimises the negative log-likelihood of its classifier on 5-way episodes of classes it is never
evaluated on (tinyimagenet-fs *val*; ``benchmarks/calibration.py`` fits them and reports the expected
calibration error on the *test* classes). A support set with another number of shots per class gets the
temperature interpolated linearly in ``log(shots)`` between the nearest entries (the first or last entry
beyond them). An empty table (models that are not recipes) keeps the head's own logit scale: temperature 1.

That table is right on average over many episodes of ImageNet classes, and can be wrong for one user's support
set, above all on other domains. With ``calibration="support"`` (:class:`fewshot.FewShotClassifier`'s default)
the table is multiplied by a factor fitted to the user's own held-out predictions (the accuracy estimate's
cross-validation splits): :func:`support_factor` maximises their likelihood under a log-normal prior centred on 1
(:data:`PRIOR_WIDTH`; :data:`UNANCHORED_WIDTH` for a model without a table), so a few dozen held-out images move
it only as far as they give evidence for, and splits classified without an error cannot push it to infinity.
The table keeps the dependence on the number of shots (the splits have fewer shots than the fitted classifier);
the factor carries what the user's images say about the level. At one shot per class nothing can be held out:
the table alone. ``benchmarks/promises.py`` measures both, per support set.
"""

from __future__ import annotations

import math

import torch

from ..errors import FewshotError
from ..model.network import FittedClassifier


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


CALIBRATIONS = ("support", "table")  # how a FewShotClassifier calibrates (see the module's text)
DEFAULT_CALIBRATION = "support"
PRIOR_WIDTH = 0.5  # standard deviation of log(factor) under the prior (0.5: a factor of 1.65 is one sd) ...
UNANCHORED_WIDTH = 2.0  # ... and without a table (temperature 1 is the head's scale, not a measurement)


def check_calibration(calibration: object) -> str:
    if calibration not in CALIBRATIONS:
        raise FewshotError(f"calibration must be one of {', '.join(CALIBRATIONS)}, got {calibration!r}")
    return str(calibration)


def calibrated(fitted: FittedClassifier, labels: torch.Tensor, table: dict, factor: float = 1.0) -> FittedClassifier:
    """``fitted`` with the temperature of ``table`` for its support set (labels ``(S,)``: mean shots per class),
    times ``factor`` (:func:`support_factor`; 1: the table alone)."""
    shots = len(labels) / max(int(torch.unique(labels).numel()), 1)
    fitted.temperature = factor * temperature_for(table, shots)
    source = "recipe table" if table else "temperature 1"
    fitted.info = {"temperature": fitted.temperature, "shots_per_class": shots, "factor": factor,
                   "calibration": source if factor == 1.0 else f"{source} x {factor:.3g}, fitted on your images"}
    return fitted


def support_factor(logits: torch.Tensor, labels: torch.Tensor, temperature: float, width: float = PRIOR_WIDTH
                   ) -> float:
    """The factor ``f`` by which held-out predictions' temperature should be multiplied: the maximum of their
    likelihood (uncalibrated ``logits`` ``(N, ways)``, true ``labels`` ``(N,)``, calibrated as
    ``softmax(f * temperature * logits)``) times a log-normal prior on ``f`` (median 1, ``width`` = sd of log f).
    Found by golden-section search over ``log f`` within +-4 sd: the negative log-likelihood is convex in ``f``
    and the prior in ``log f``, so the objective has one minimum there."""
    logits = logits.double() * temperature
    labels = labels.long()[:, None]

    def objective(log_factor: float) -> float:  # the negative log posterior
        nll = -(math.exp(log_factor) * logits).log_softmax(-1).gather(-1, labels).sum()
        return float(nll) + 0.5 * (log_factor / width) ** 2

    low, high = -4 * width, 4 * width
    ratio = (math.sqrt(5) - 1) / 2
    a, b = high - ratio * (high - low), low + ratio * (high - low)
    value_a, value_b = objective(a), objective(b)
    while high - low > 1e-4:
        if value_a <= value_b:
            high, b, value_b = b, a, value_a
            a = high - ratio * (high - low)
            value_a = objective(a)
        else:
            low, a, value_a = a, b, value_b
            b = low + ratio * (high - low)
            value_b = objective(b)
    return math.exp((low + high) / 2)
