"""What a fitted :class:`~fewshot.inference.classifier.FewShotClassifier` measures about itself on the user's own
images (:mod:`fewshot.inference.estimate`, :mod:`fewshot.inference.open_set_estimate`,
:mod:`fewshot.inference.calibration`): every number it prints comes from held-out predictions of its examples."""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Callable, ContextManager

from ..errors import FewshotError, SupportSetError
from ..model.capabilities import require, unsupported
from .calibration import PRIOR_WIDTH, UNANCHORED_WIDTH, support_factor, temperature_for
from .estimate import DEFAULT_HOLDOUT, CrossValidation, Estimate, OpenSetEstimate, cross_validate, estimate
from .open_set import DEFAULT_RECALL, UNKNOWN_NAME, check_recall, check_unknown
from .open_set_estimate import estimate_open_set, remembered_estimate

if TYPE_CHECKING:
    from .scoring import Score


class EstimatesMixin:
    """The numbers a :class:`~fewshot.inference.classifier.FewShotClassifier` says about itself, all measured on its
    own examples: cross-validation, the accuracy estimate, the calibration factor, the unknown threshold, the
    score on a labelled folder."""

    def unknown_threshold(self, unknown: str | float | None = "auto", recall: float = DEFAULT_RECALL,
                          unknown_name: str = UNKNOWN_NAME) -> float | None:
        """The unknown score above which :meth:`predict` answers ``unknown_name``: None for ``unknown=None``, the
        number given, or for ``"auto"`` the threshold of :meth:`open_set_estimate` (it keeps ``recall`` of the
        known classes' images). ``unknown_name`` must not be one of the classes."""
        unknown = check_unknown(unknown)
        if unknown is None:
            return None
        if not isinstance(unknown_name, str) or not unknown_name.strip() or unknown_name in self.classes_:
            raise FewshotError(f"the answer for 'none of these' must be a name that is not a class, got "
                               f"{unknown_name!r}: choose another unknown name")
        require(self.model_, "open_set")
        return self.open_set_estimate(recall).threshold if unknown == "auto" else unknown

    def open_set_estimate(self, recall: float = DEFAULT_RECALL, repeats: int = 50, holdout: float = DEFAULT_HOLDOUT,
                          seed: int = 0, progress: bool = False,
                          step: Callable[[], ContextManager] | None = None) -> OpenSetEstimate:
        """How well this classifier tells images of unseen classes apart, and the ``auto`` threshold, from its own
        examples, each class held out in turn (:func:`fewshot.inference.open_set_estimate.estimate_open_set`); computed
        once per set of examples and arguments, and with :attr:`cache_dir` kept there for the next process with
        the same embeddings, model and settings (the CLI's ``--unknown auto`` reuses it)."""
        self._check_fitted()
        require(self.model_, "open_set")
        key = (recall, repeats, holdout, seed)
        if key not in self._open_set:
            def compute() -> OpenSetEstimate:
                return estimate_open_set(self, recall, repeats, holdout, seed, progress or self.progress, step)

            if self.cache_dir is None:
                self._open_set[key] = compute()
            else:
                from ..version import __version__

                settings = {"key": key, "score": self.unknown_score, "calibration": self.calibration,
                            "config": self.config_.to_dict(), "classes": self.classes_, "fewshot": __version__}
                self._open_set[key] = remembered_estimate(self.cache_dir, *self.support_features(), settings, compute)
        return self._open_set[key]

    def calibration_factor(self) -> tuple[float, str]:
        """(the factor the recipe's temperature table is multiplied by for these examples, why): fitted on the
        held-out predictions of :meth:`cross_validation` with ``calibration="support"``
        (:func:`fewshot.inference.calibration.support_factor`), 1 with ``table`` or where no image can be held out."""
        if self._factor is None:
            self._factor = (1.0, "calibration='table'")
            if self.calibration == "support":
                try:
                    found = self.cross_validation()
                except SupportSetError:
                    source = "the recipe's temperature table" if self.config_.model.temperature else "the head's scale"
                    self._factor = (1.0, f"{source} alone: a class has a single image, so none can be held out "
                                         "to check the probabilities on your images")
                    warnings.warn(f"probabilities come from {source} alone (a class has a single image, so none can "
                                  "be held out to check them); on classes unlike ImageNet's they run overconfident "
                                  "(benchmarks/RESULTS.md, 'Promises'): add a second image per class",
                                  UserWarning, stacklevel=4)
                else:
                    table = self.config_.model.temperature
                    factor = support_factor(found.logits, found.truth, temperature_for(table, found.split_shots),
                                            PRIOR_WIDTH if table else UNANCHORED_WIDTH)
                    self._factor = (factor, f"fitted on {len(found.truth)} held-out predictions of your images")
        return self._factor

    def cross_validation(self, repeats: int = 50, holdout: float = DEFAULT_HOLDOUT, seed: int = 0,
                         progress: bool = False, step: Callable[[], ContextManager] | None = None) -> CrossValidation:
        """The held-out predictions of episodic cross-validation on the examples
        (:func:`fewshot.inference.estimate.cross_validate`), computed once per set of examples and arguments: the accuracy
        estimate, the per-support calibration and the known side of the ``auto`` threshold all read them."""
        self._check_fitted()
        if self._saved_adaptation is not None:  # loaded adapted: the folds it was estimated on when adapted
            return self._saved_adaptation[1]
        if self._adapt != "none" and self.adaptation_.adapted:  # folds adapted without what they hold out
            return self._adapted_cross_validation(step)
        key = (repeats, holdout, seed)
        if key not in self._cross_validations:
            self._cross_validations[key] = cross_validate(self, repeats, holdout, seed, progress or self.progress,
                                                          step)
        return self._cross_validations[key]

    # ------------------------------------------------------------------ estimating
    def estimate(self, repeats: int = 50, holdout: float = DEFAULT_HOLDOUT, seed: int = 0, progress: bool = False,
                 step: Callable[[], ContextManager] | None = None, open_set: bool = True,
                 recall: float = DEFAULT_RECALL) -> Estimate:
        """How accurate this classifier is likely to be on new images of its classes, from its own examples
        (episodic cross-validation with an honest interval: :func:`fewshot.inference.estimate.estimate`); with ``open_set``,
        also how well it says "none of these" and the ``auto`` threshold for ``recall`` (:meth:`open_set_estimate`;
        ``open_set_refused`` says why not when the classes or the head cannot give one)."""
        check_recall(recall)
        found = estimate(self, repeats, holdout, seed, progress, step)
        if self._saved_adaptation is not None:
            found.adaptation = self._saved_adaptation[0]
        elif self._adapt != "none":
            found.adaptation = self.adaptation_.describe()
        if open_set:
            found.open_set_refused = unsupported(self.model_, "open_set") or ""
            if not found.open_set_refused:
                try:
                    found.open_set = self.open_set_estimate(recall, repeats, holdout, seed, progress, step)
                except SupportSetError as exc:
                    found.open_set_refused = str(exc)
        return found

    def score(self, folder: str | os.PathLike) -> "Score":
        """Accuracy on a labelled test folder (one subfolder per class, named like the classes) with its 95%
        interval, per-class precision / recall / F1 and the confusion matrix (:func:`fewshot.inference.scoring.score`)."""
        from .scoring import score

        return score(self, folder)

    def threshold_record(self, step: Callable[[], ContextManager] | None = None) -> dict | None:
        """The ``auto`` unknown threshold as an export stores it (:meth:`OpenSetEstimate.to_json`), ``{"refused":
        reason}`` when the examples cannot give one, None when the head has no unknown score; ``step`` as for
        :meth:`open_set_estimate` (the server paces and cancels each fold with it)."""
        if unsupported(self.model_, "open_set"):
            return None
        try:
            return self.open_set_estimate(step=step).to_json()
        except SupportSetError as exc:
            return {"refused": str(exc)}
