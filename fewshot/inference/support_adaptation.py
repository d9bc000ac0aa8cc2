"""What a :class:`~fewshot.FewShotClassifier` holds when it adapts to its examples (``adapt="top"`` or ``"auto"``,
:mod:`fewshot.inference.adaptation`): the model its predictions use, the examples' embeddings by that model, the
``auto`` decision with its reason, and the held-out predictions that make its estimate honest.

An adapted model has seen every support image, so classifying those same images proves nothing: the estimate,
the per-support calibration and the open-set threshold of an adapted classifier read the predictions of
:func:`~fewshot.inference.adaptation.fold_predictions` instead (each fold's copy adapted without the images it is tested
on), as :func:`fold_cross_validation` lays them out.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from ..model.network import FewShotModel
from .adaptation import AdaptDecision, AdaptSettings, FoldPredictions, fold_predictions, model_for_support
from .estimate import CrossValidation


@dataclass
class SupportAdaptation:
    """``model``: what predictions use (the shared model when nothing was adapted); ``features``: the examples'
    embeddings ``(S, E)`` by it, or None when it is the shared model (the examples' own embeddings hold);
    ``decision``: the ``auto`` decision (None under ``top``); ``folds``: held-out predictions on the distinct
    examples ``rows`` ``(D,)`` (made on first need under ``top``)."""

    model: FewShotModel
    features: torch.Tensor | None
    decision: AdaptDecision | None
    folds: FoldPredictions | None
    rows: torch.Tensor

    @property
    def adapted(self) -> bool:
        return self.features is not None

    def describe(self) -> dict:
        """JSON: whether the model was adapted, and why (``auto``'s measured decision)."""
        found = {"adapted": self.adapted}
        if self.decision is not None:
            found.update({k: v for k, v in self.decision.to_json().items() if k != "adapt"})
        elif self.adapted:
            found["reason"] = "adapt='top' adapts to every support set"
        return found


def adapt_to_examples(base: FewShotModel, adapt: str, images: torch.Tensor, labels: torch.Tensor,
                      rows: torch.Tensor, embed: Callable[[torch.Tensor, FewShotModel], torch.Tensor],
                      step_done: Callable[[], None] = lambda: None) -> SupportAdaptation:
    """Adapt ``base`` (the shared model, unchanged) to the examples ``images`` (uint8 ``(S, C, H, W)``, labels
    ``(S,)``) as ``adapt`` says; ``auto`` decides on the distinct ``rows``. ``embed(images, model)`` embeds."""
    ways = int(labels.max()) + 1
    model, decision, folds = model_for_support(base, images[rows], labels[rows], ways, step_done, adapt)
    if model is base:
        return SupportAdaptation(base, None, decision, folds, rows)
    return SupportAdaptation(model, embed(images, model), decision, folds, rows)


def fold_cross_validation(state: SupportAdaptation, base: FewShotModel, images: torch.Tensor,
                          labels: torch.Tensor, names: list[str], notes: list[str],
                          step_done: Callable[[], None] = lambda: None) -> CrossValidation:
    """The held-out predictions of the adapted classifier as a :class:`~fewshot.inference.estimate.CrossValidation`
    (``repeats`` = folds, each distinct image held out once), folds made now if ``auto`` did not make them."""
    distinct = labels[state.rows]
    if state.folds is None:
        settings = AdaptSettings(steps=int(getattr(base, "adapt_steps", AdaptSettings.steps)))
        state.folds = fold_predictions(base, images[state.rows], distinct, len(names), settings, step_done=step_done)
    folds = state.folds
    sizes = {n: int((distinct == i).sum()) for i, n in enumerate(names)}
    shots = {n: sizes[n] - -(-sizes[n] // folds.folds) for n in names}  # support images per class in each fold
    return CrossValidation(folds.rows, distinct, folds.adapted, shots, list(notes), folds.folds)


__all__ = ["SupportAdaptation", "adapt_to_examples", "fold_cross_validation"]
