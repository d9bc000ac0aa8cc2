"""How a :class:`~fewshot.inference.classifier.FewShotClassifier` adapts the backbone to its examples (``adapt``:
``none``, ``top`` or ``auto``, :mod:`fewshot.inference.adaptation`): the adapted model made on first need, its
held-out folds, and the server's paced variant (:meth:`AdaptationMixin.adapt_and_validate`)."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Callable, ContextManager

from tqdm import tqdm

from ..model.network import FewShotModel
from .estimate import CrossValidation

if TYPE_CHECKING:
    from .support_adaptation import SupportAdaptation


class AdaptationMixin:
    """The adaptation side of :class:`~fewshot.inference.classifier.FewShotClassifier`: which model its predictions use
    (the shared one or a copy adapted to the examples), made once per change of the examples."""

    @property
    def model_(self) -> FewShotModel:
        """The model predictions use: the shared model (``base_model_``), or its copy adapted to the examples
        (``adapt``; adapted on first use after the examples change)."""
        if self._adapt == "none" or len(self._examples) < 2:
            return self.base_model_
        return self.adaptation_.model

    @property
    def adapt(self) -> str:
        """``none``, ``top`` or ``auto`` (:mod:`fewshot.inference.adaptation`); settable."""
        return self._adapt

    @adapt.setter
    def adapt(self, adapt: str) -> None:
        from .adaptation import check_adapt

        self._adapt = check_adapt(adapt)
        self._changed()

    @property
    def adaptation_(self) -> "SupportAdaptation":
        """The adaptation to the current examples (:class:`fewshot.inference.support_adaptation.SupportAdaptation`): the
        model, the examples' embeddings by it, ``auto``'s decision with its reason; made once per change."""
        return self.adapt_examples()

    def adapt_examples(self, step_done: Callable[[], None] | None = None) -> "SupportAdaptation":
        """:attr:`adaptation_`, made now if needed; ``step_done`` is called after every training step instead of
        the progress bar (how the server runs it as short background passes, :mod:`fewshot.serve.adapting`)."""
        from .estimate import distinct_rows
        from .support_adaptation import SupportAdaptation, adapt_to_examples

        self._check_fitted()
        if self._adaptation is None:
            _, labels = self._examples_features()
            rows, _ = distinct_rows(self)
            if self._adapt == "none":
                self._adaptation = SupportAdaptation(self.base_model_, None, None, None, rows)
            else:
                with self._adapt_progress() as bar_step:
                    self._adaptation = adapt_to_examples(self.base_model_, self._adapt, self.support_images(),
                                                         labels, rows, lambda x, m: self._embed(x, m),
                                                         step_done or bar_step)
        return self._adaptation

    def _adapt_progress(self):
        """A progress bar over the adaptation's training steps (shown when ``progress`` is on)."""
        from .adaptation import AdaptSettings, adapt_steps

        steps = adapt_steps(self.base_model_, AdaptSettings(steps=self.base_model_.adapt_steps))
        total = steps * (4 if self._adapt == "auto" else 1)  # auto: three folds, then all the examples
        bar = tqdm(total=total, desc="adapting", unit="step", disable=not self.progress, leave=False)

        @contextlib.contextmanager
        def running():
            try:
                yield lambda: bar.update(1)
            finally:
                bar.close()

        return running()

    def _adapted_cross_validation(self, step: Callable[[], ContextManager] | None = None,
                                  step_done: Callable[[], None] | None = None) -> CrossValidation:
        """An adapted classifier's held-out predictions: one fold per part of the distinct examples, each fold's
        model adapted without the images it holds out (:func:`fewshot.inference.support_adaptation.fold_cross_validation`);
        ``repeats`` and ``holdout`` do not apply. ``step``: the folds run inside one ``with step():``;
        ``step_done``: called after every training step instead of the progress bar."""
        from .estimate import distinct_rows
        from .support_adaptation import fold_cross_validation

        key = ("adapted",)
        if key not in self._cross_validations:
            _, notes = distinct_rows(self)
            _, labels = self._examples_features()
            with step() if step is not None else contextlib.nullcontext(), self._adapt_progress() as bar_step:
                self._cross_validations[key] = fold_cross_validation(self.adaptation_, self.base_model_,
                                                                     self.support_images(), labels, self.classes_,
                                                                     notes, step_done or bar_step)
        return self._cross_validations[key]

    def adapt_and_validate(self, step_done: Callable[[], None]) -> "SupportAdaptation":
        """Adapt to the examples now and, when the model was adapted, make the held-out folds its estimate,
        calibration and threshold read, calling ``step_done`` after every training step (the server runs this
        as short background passes); the examples' adaptation, as :attr:`adaptation_`."""
        found = self.adapt_examples(step_done)
        if found.adapted and self._saved_adaptation is None:
            self._adapted_cross_validation(step_done=step_done)
        return found
