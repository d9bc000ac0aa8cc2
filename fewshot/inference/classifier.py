"""``FewShotClassifier``: a few labelled images per class in, a classifier out, in three lines of Python.

    from fewshot import FewShotClassifier
    clf = FewShotClassifier().fit("my_support/")          # the 'default' recipe; one subfolder per class
    clf.predict(["new1.jpg", "new2.jpg"])                 # -> ['cat', 'dog']

Built from a recipe name (``default`` when nothing is given), a run directory or checkpoint, or a backbone
and head (:func:`fewshot.model.loading.load_model`, the CLI's own function). Support images are embedded once
when they are added; ``predict_proba`` embeds only the new images. ``fewshot predict`` is this class.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm import tqdm

from ..errors import FewshotError, NotFittedError, SupportSetError
from ..model.capabilities import require, single_image_note, unsupported
from ..model.network import FewShotModel, FittedClassifier
from .calibration import DEFAULT_CALIBRATION, calibrated, check_calibration
from .classifier_adaptation import AdaptationMixin
from .classifier_estimates import EstimatesMixin
from .classifier_examples import ExamplesMixin
from .classifier_explanations import ExplanationsMixin
from .classifier_files import FilesMixin
from .estimate import CrossValidation, OpenSetEstimate
from .examples import ClassExamples, group_support
from .inputs import ImageLike, PreparedImage, as_batch, prepare_images
from .open_set import DEFAULT_SCORE, UNKNOWN_NAME, resolve_score


class FewShotClassifier(ExamplesMixin, AdaptationMixin, EstimatesMixin, ExplanationsMixin, FilesMixin):
    """A classifier of the classes shown to :meth:`fit`, scikit-learn style.

    ``model``: a recipe name (``fewshot recipes`` lists them), a run directory or checkpoint file, or None for
    the ``default`` recipe; or give ``backbone`` and ``head`` (with ``weights``: ``none``, ``imagenet`` or a
    file). ``transform`` / ``tta`` override the recipe's or checkpoint's; ``head_options`` / ``backbone_options``
    are dicts. ``device``: ``cpu`` (default), ``cuda``, ``cuda:N`` or ``auto``. ``runtime``: how the frozen backbone
    embeds images, ``auto`` (default), ``eager``, ``jit`` or ``onnxruntime`` (see :mod:`fewshot.inference.embedding`).
    ``unknown_score``: how "none of these" is measured (:data:`fewshot.inference.open_set.SCORE_CHOICES`; ``auto`` picks the
    one that works for the head, :func:`fewshot.inference.open_set.resolve_score`); :meth:`predict` answers ``unknown`` only
    when asked (``unknown="auto"`` or a threshold). ``calibration``: ``support`` (default) checks the recipe's
    temperature table on the user's own held-out predictions, ``table`` uses the table alone
    (:mod:`fewshot.inference.calibration`).

    After :meth:`fit`: ``classes_`` (sorted class names: column ``j`` of :meth:`predict_proba` is
    ``classes_[j]``), ``model_`` (the :class:`~fewshot.model.network.FewShotModel`) and ``config_``.
    """

    def __init__(self, model: str | os.PathLike | None = None, *, backbone: str | None = None, head: str | None = None,
                 weights: str = "none", image_size: int | None = None, channels: int | None = None,
                 head_options: dict | None = None, backbone_options: dict | None = None,
                 transform: str | None = None, tta: str | None = None, device: str = "cpu", batch_size: int = 32,
                 runtime: str = "auto", unknown_score: str = DEFAULT_SCORE, calibration: str = DEFAULT_CALIBRATION,
                 adapt: str | None = None):
        from ..model.loading import load_model
        from ..model.recipes import RECIPES

        is_recipe = isinstance(model, str) and model in RECIPES and not Path(model).exists()
        built, config = load_model(
            None if is_recipe else model, recipe=model if is_recipe else None, backbone=backbone, head=head,
            weights=weights, image_size=image_size, channels=channels, head_options=head_options,
            backbone_options=backbone_options, transform=transform, tta=tta)
        source = (f"recipe '{model}'" if is_recipe else str(model) if model is not None
                  else f"{backbone} + {head}" if backbone or head else "recipe 'default'")
        self._setup(built, config, source, device, batch_size, runtime, unknown_score, calibration, adapt)

    @classmethod
    def from_model(cls, model: FewShotModel, config, source: str = "a model", device: str = "cpu",
                   batch_size: int = 32, runtime: str = "auto", unknown_score: str = DEFAULT_SCORE,
                   calibration: str = DEFAULT_CALIBRATION, adapt: str | None = None) -> "FewShotClassifier":
        """A classifier around an already built model and its config (what the CLI does after parsing flags)."""
        self = cls.__new__(cls)
        self._setup(model, config, source, device, batch_size, runtime, unknown_score, calibration, adapt)
        return self

    def _setup(self, model: FewShotModel, config, source: str, device: str, batch_size: int, runtime: str,
               unknown_score: str, calibration: str, adapt: str | None = None) -> None:
        from .adaptation import check_adapt
        from .embedding import check_runtime
        from ..runtime import resolve_device

        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise FewshotError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        self.base_model_, self.config_, self.source = model, config, source
        self.device, self.batch_size, self.runtime = resolve_device(device), batch_size, check_runtime(runtime)
        self.base_model_.to(self.device).eval()
        self._adapt = check_adapt(adapt or getattr(model, "adapt", "none"))
        self._examples: dict[str, ClassExamples] = {}
        self._saved_adaptation = None  # (description, held-out predictions) of a loaded adapted classifier
        self._unknown_score = resolve_score(unknown_score, model.head)
        self._calibration = check_calibration(calibration)
        self._changed()
        self.progress = False  # progress bars on stderr while embedding many images (the CLI sets it)
        self.cache_dir: Path | None = None  # where open-set estimates are kept across processes (the CLI sets it)
        note = single_image_note(model)
        if note:
            warnings.warn(note, UserWarning, stacklevel=3)

    # ------------------------------------------------------------------ properties
    @property
    def image_size(self) -> int:
        return self.config_.data.image_size

    @property
    def channels(self) -> int:
        return self.config_.data.channels

    @property
    def classes_(self) -> list[str]:
        self._check_fitted()
        return sorted(self._examples)

    @property
    def unknown_score(self) -> str:
        """How "none of these" is measured (one of :data:`fewshot.inference.open_set.SCORES`; settable, ``auto`` included)."""
        return self._unknown_score

    @unknown_score.setter
    def unknown_score(self, score: str) -> None:
        self._unknown_score = resolve_score(score, self.model_.head)
        self._changed()

    @property
    def calibration(self) -> str:
        """``support`` or ``table`` (:data:`fewshot.inference.calibration.CALIBRATIONS`); settable."""
        return self._calibration

    @calibration.setter
    def calibration(self, calibration: str) -> None:
        self._calibration = check_calibration(calibration)
        self._changed()

    def _changed(self) -> None:
        """Forget what was fitted on the examples (they, the score or the calibration changed)."""
        self._fitted: FittedClassifier | None = None  # fitted on the current examples; None: fit when needed
        self._open_set: dict[tuple, OpenSetEstimate] = {}  # open-set estimates by their arguments
        self._cross_validations: dict[tuple, CrossValidation] = {}  # held-out predictions by their arguments
        self._factor: tuple[float, str] | None = None  # (calibration factor, how it was chosen); None: not yet
        self._adaptation = None  # SupportAdaptation of the current examples; None: adapt when needed

    def _check_fitted(self) -> None:
        if len(self._examples) < 2:
            raise NotFittedError("this classifier has not been fitted: call fit(support) with at least two classes "
                                 "first")

    # ------------------------------------------------------------------ fitting
    def fit(self, support: str | os.PathLike | Mapping[str, Sequence[ImageLike]] | Sequence[ImageLike],
            labels: Sequence[str] | None = None) -> "FewShotClassifier":
        """Learn the classes of ``support``: a folder with one subfolder of images per class, a mapping
        ``{class: [images]}``, or a sequence of images with the parallel ``labels``. Images are file paths,
        PIL images, arrays or tensors (:data:`fewshot.inference.inputs.ImageLike`). Replaces earlier examples."""
        grouped = group_support(support, labels)
        if len(grouped) < 2:
            raise SupportSetError(f"a classifier needs at least two classes, got {len(grouped)}")
        examples: dict[str, ClassExamples] = {}
        for name, items in grouped.items():
            examples[name] = self._prepare_class(name, items)
        self._examples, self._saved_adaptation = examples, None
        self._changed()
        self._warn_duplicates()
        return self

    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` uint8 at the model's size -> embeddings ``(N, E)`` float32 on the CPU by the shared
        model (what :meth:`set_examples` takes; an adapting classifier adapts from the images itself)."""
        return self._embed(images, self.base_model_)

    def _embed(self, images: torch.Tensor, model: FewShotModel | None = None) -> torch.Tensor:
        """``(N, C, H, W)`` uint8 -> embeddings ``(N, E)`` float32 on the CPU by ``model`` (default :attr:`model_`),
        ``batch_size`` at a time."""
        from .embedding import shared_embedder

        embed = shared_embedder(self.model_ if model is None else model, self.runtime, self.device)
        embed.expect(len(images))
        starts = range(0, len(images), self.batch_size)
        shown = self.progress and len(starts) > 1
        with torch.inference_mode(), tqdm(total=len(images), desc="embedding", unit="image", disable=not shown,
                                          leave=False) as bar:
            parts = []
            for i in starts:
                parts.append(embed(images[i:i + self.batch_size]).cpu())
                bar.update(len(parts[-1]))
            return torch.cat(parts)

    # ------------------------------------------------------------------ predicting
    def predict_proba(self, images: ImageLike | Sequence[ImageLike], return_unknown_score: bool = False
                      ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Class probabilities ``(N, len(classes_))`` for one image or a sequence of them; with
        ``return_unknown_score``, also each image's "none of these" score ``(N,)`` (higher: less like any class;
        :meth:`unknown_threshold` says where ``unknown`` starts)."""
        queries = as_batch(self._prepare_queries(images))
        if not return_unknown_score:
            return self.probabilities_for(queries).numpy()
        require(self.model_, "open_set")
        probabilities, scores = self.scores_for(self._embed(queries))
        return probabilities.numpy(), scores.numpy()

    def predict(self, images: ImageLike | Sequence[ImageLike], unknown: str | float | None = None,
                unknown_name: str = UNKNOWN_NAME) -> list[str]:
        """The most probable class name of each image; with ``unknown`` (``"auto"``: the threshold
        :meth:`open_set_estimate` chose from the examples, or a score threshold), ``unknown_name`` for images whose
        unknown score is above the threshold: they look like none of the classes."""
        names = self.classes_
        threshold = self.unknown_threshold(unknown, unknown_name=unknown_name)
        if threshold is None:
            return [names[i] for i in self.predict_proba(images).argmax(axis=1)]
        probabilities, scores = self.predict_proba(images, return_unknown_score=True)
        return [unknown_name if score > threshold else names[i] for i, score in zip(probabilities.argmax(1), scores)]

    def scores_for(self, query_features: torch.Tensor, support: tuple[torch.Tensor, torch.Tensor] | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor]:
        """(probabilities ``(Q, ways)``, unknown scores ``(Q,)``) of embedded queries ``(Q, E)`` against
        ``support`` = (embeddings ``(S, E)``, labels ``(S,)``), default all examples (through :attr:`fitted_`). A
        classifier of part of the examples (an estimate's fold) uses the fitted classifier's temperature, so that
        its scores are on the scale of those the threshold is applied to."""
        require(self.model_, "open_set")
        fitted = self.fitted_
        if support is not None:
            temperature = fitted.temperature
            fitted = self._fit_state(*support)
            fitted.temperature = temperature
        with torch.inference_mode():
            probabilities, scores = self.model_.fitted_scores(fitted, query_features.to(self.device))
        return probabilities.float().cpu(), scores.float().cpu()

    def _prepare_queries(self, images: Any) -> list[PreparedImage]:
        self._check_fitted()
        return prepare_images(images, self.image_size, self.channels)

    @property
    def fitted_(self) -> FittedClassifier | None:
        """The classifier fitted on all examples (transform statistics, head state, calibrated temperature),
        fitted on first use after the examples change and reused for every prediction; None when the head
        adapts the backbone (it adapts the network to the support set for every batch instead)."""
        self._check_fitted()
        if self.model_.head.adapts_backbone:
            return None
        if self._fitted is None:
            features, labels = self.support_features()
            self._fitted = self._fit_state(features, labels)
        return self._fitted

    def _fit_state(self, features: torch.Tensor, labels: torch.Tensor) -> FittedClassifier:
        """Fit the model's transform and head on embeddings ``(S, E)`` with labels ``(S,)``, and calibrate (the
        table's temperature for its shots, times :meth:`calibration_factor`): every classifier of the examples,
        the fitted one and those of the estimates' folds, is calibrated by this one rule."""
        ways = int(labels.max()) + 1
        factor, reason = self.calibration_factor()
        with torch.inference_mode():
            fitted = self.model_.fit(features.to(self.device), labels.to(self.device), ways,
                                     unknown_score=self.unknown_score)
        fitted = calibrated(fitted, labels, self.config_.model.temperature, factor)
        fitted.info["calibration_reason"] = reason
        return fitted

    def logits_for(self, queries: torch.Tensor | None, support: tuple,
                   query_features: torch.Tensor | None = None) -> torch.Tensor:
        """Uncalibrated logits ``(Q, ways)`` of ``(Q, C, H, W)`` uint8 queries (or their embeddings
        ``query_features`` ``(Q, E)``) against ``support`` = (images or None, embeddings or None, labels ``(S,)``),
        each query classified on its own; log-probabilities for a head that adapts the backbone (it has no
        temperature)."""
        model = self.model_
        images, features, labels = support
        ways = int(labels.max()) + 1
        with torch.inference_mode():
            if model.head.adapts_backbone:
                logits = model(images.to(self.device), labels.to(self.device), queries.to(self.device), ways)
                return model.head.probabilities(logits).float().clamp_min(1e-12).log().cpu()
            query_features = self._embed(queries) if query_features is None else query_features
            fitted = model.fit(features.to(self.device), labels.to(self.device), ways)
            return model.fitted_logits(fitted, query_features.to(self.device)).float().cpu()

    def probabilities_for(self, queries: torch.Tensor | None, support: tuple | None = None,
                       query_features: torch.Tensor | None = None) -> torch.Tensor:
        """Probabilities ``(Q, ways)`` of ``(Q, C, H, W)`` uint8 queries (or of their embeddings
        ``query_features`` ``(Q, E)``) against ``support`` (default: all examples, through :attr:`fitted_`),
        each query classified on its own (a transductive head's inductive form)."""
        model = self.model_
        if model.head.adapts_backbone:
            images, _, labels = support or self.support()
            with torch.inference_mode():
                logits = model(images.to(self.device), labels.to(self.device), queries.to(self.device),
                               int(labels.max()) + 1)
                return model.head.probabilities(logits).float().cpu()
        fitted = self.fitted_ if support is None else self._fit_state(support[1], support[2])
        query_features = self._embed(queries) if query_features is None else query_features
        with torch.inference_mode():
            return model.fitted_probabilities(fitted, query_features.to(self.device)).float().cpu()

    def details(self, images: ImageLike | Sequence[ImageLike], unknown: str | float | None = None,
                unknown_name: str = UNKNOWN_NAME) -> list[dict]:
        """For each image: ``{"query": name, "predicted": class, "probabilities": {class: p}}``, with
        ``"unknown_score"`` when the head has one; with ``unknown`` (as for :meth:`predict`) also
        ``"unknown_threshold"`` and ``"unknown"`` (true when ``predicted`` is ``unknown_name``; then ``"closest"`` and
        ``"closest_probability"`` name the most probable class)."""
        prepared = self._prepare_queries(images)
        threshold = self.unknown_threshold(unknown, unknown_name=unknown_name)
        queries = as_batch(prepared)
        if unsupported(self.model_, "open_set"):
            return self._details(prepared, self.probabilities_for(queries))
        probabilities, scores = self.scores_for(self._embed(queries))
        return self._scored(self._details(prepared, probabilities), scores, threshold, unknown_name)

    def _query_scores(self, queries: torch.Tensor) -> torch.Tensor | None:
        """Unknown scores ``(Q,)`` of uint8 queries ``(Q, C, S, S)``; None when the head has none."""
        return None if unsupported(self.model_, "open_set") else self.scores_for(self._embed(queries))[1]

    def _scored(self, found: list[dict], scores: torch.Tensor | None, threshold: float | None, unknown_name: str
                ) -> list[dict]:
        """``found`` (:meth:`_details`) with each image's ``unknown_score`` (``scores`` ``(Q,)``; None: the head
        has none) and, past ``threshold``, the answer ``unknown_name``."""
        if scores is None:
            return found
        for item, score in zip(found, scores.tolist()):
            item["unknown_score"] = score
            if threshold is not None:
                item.update(unknown=score > threshold, unknown_threshold=threshold)
                if item["unknown"]:  # the answer is unknown_name; the closest class stays in the record
                    item.update(closest=item["predicted"],
                                closest_probability=item["probabilities"][item["predicted"]],
                                predicted=unknown_name)
        return found

    def _details(self, prepared: list[PreparedImage], probabilities: torch.Tensor) -> list[dict]:
        names = self.classes_
        return [{"query": p.name, "predicted": names[int(probs.argmax())],
                 "probabilities": {name: float(v) for name, v in zip(names, probs)}}
                for p, probs in zip(prepared, probabilities)]


__all__ = ["FewShotClassifier"]
