"""``FewShotClassifier``: a few labelled images per class in, a classifier out, in three lines of Python.

    from fewshot import FewShotClassifier
    clf = FewShotClassifier().fit("my_support/")          # the 'default' recipe; one subfolder per class
    clf.predict(["new1.jpg", "new2.jpg"])                 # -> ['cat', 'dog']

Built from a recipe name (``default`` when nothing is given), a run directory or checkpoint, or a backbone
and head (:func:`fewshot.model.loading.load_model`, the CLI's own function). Support images are embedded once
when they are added; ``predict_proba`` embeds only the new images. ``fewshot predict`` is this class.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, ContextManager, Sequence

import numpy as np
import torch
from tqdm import tqdm

from .calibration import (DEFAULT_CALIBRATION, PRIOR_WIDTH, UNANCHORED_WIDTH, calibrated, check_calibration,
                          support_factor, temperature_for)
from ..model.capabilities import require, single_image_note, unsupported
from ..errors import FewshotError, NotFittedError, SavedFileError, SupportSetError
from .estimate import (DEFAULT_HOLDOUT, CrossValidation, Estimate, OpenSetEstimate, cross_validate, estimate,
                       wilson_interval)
from .inputs import ImageLike, PreparedImage, as_batch, prepare_images
from ..model.network import FewShotModel, FittedClassifier
from .open_set import DEFAULT_RECALL, DEFAULT_SCORE, UNKNOWN_NAME, check_recall, check_unknown, resolve_score
from .open_set_estimate import estimate_open_set, remembered_estimate
from .examples import ClassExamples, check_examples, group_support
from .export.formats import EXPORT_FORMATS, export_fitted
from ..paths import folder_classes

if TYPE_CHECKING:
    from .scoring import Score
    from .support_adaptation import SupportAdaptation

SAVED_FORMAT = "fewshot-classifier"
SAVED_VERSION = 1


class FewShotClassifier:
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

    def add_examples(self, class_name: str, images: ImageLike | Sequence[ImageLike]) -> "FewShotClassifier":
        """Add images to a class (a new class if the name is new); only the new images are embedded."""
        if not isinstance(class_name, str) or not class_name.strip():
            raise SupportSetError(f"a class name must be a non-empty string, got {class_name!r}")
        new = self._prepare_class(class_name, images)
        old = self._examples.get(class_name)
        if old is not None:
            features = None if old.features is None else torch.cat([old.features, new.features])
            new = ClassExamples(torch.cat([old.images, new.images]), features, old.names + new.names,
                                 old.digests + new.digests)
        self._examples[class_name], self._saved_adaptation = new, None
        self._changed()
        self._warn_duplicates()
        return self

    def _prepare_class(self, name: str, items: Any) -> ClassExamples:
        if isinstance(items, (list, tuple)) and not items:
            raise SupportSetError(f"class '{name}' has no images: add a few or leave the class out")
        prepared = prepare_images(items, self.image_size, self.channels)
        images = as_batch(prepared)
        features = None if self.base_model_.head.adapts_backbone else self._embed(images, self.base_model_)
        return ClassExamples(images, features, [p.name for p in prepared], [p.digest for p in prepared])

    def set_examples(self, examples: Mapping[str, ClassExamples]) -> "FewShotClassifier":
        """Use examples prepared elsewhere (images already at the model's size, embeddings made by
        :meth:`embed` with this model, e.g. cached by the server), checked for shape; replaces earlier ones."""
        try:
            check_examples(examples, self.image_size, self.channels, self.base_model_.head.adapts_backbone)
        except ValueError as exc:
            raise SupportSetError(str(exc)) from None
        self._examples, self._saved_adaptation = dict(examples), None
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

    def _warn_duplicates(self) -> None:
        seen: dict[str, tuple[str, str]] = {}
        for class_name in sorted(self._examples):
            entry = self._examples[class_name]
            for name, digest in zip(entry.names, entry.digests):
                other = seen.setdefault(digest, (class_name, name))
                if other[0] != class_name:
                    warnings.warn(f"the same image is in class '{other[0]}' ({other[1]}) and in class '{class_name}' "
                                  f"({name}): remove one of them", UserWarning, stacklevel=3)

    def held_bytes(self) -> int:
        """Memory this classifier holds for its examples: their images and embeddings, the joined copy of the
        embeddings, the fitted state (an ``(E, E)`` Mahalanobis precision included) and the held-out predictions
        kept for the estimate and the calibration (what a server's cache counts)."""
        def size(tensor: torch.Tensor | None) -> int:
            return 0 if tensor is None else tensor.numel() * tensor.element_size()

        total = sum(size(e.images) + size(e.features) for e in self._examples.values())
        joined = getattr(self, "_support", None)
        if joined is not None and len(joined[1]) > 1:  # torch.cat made a copy
            total += size(joined[2][0]) + size(joined[2][1])
        if self._fitted is not None:
            total += sum(size(t) for t in self._fitted.tensors().values())
        total += sum(size(found.logits) + size(found.rows) + size(found.labels)
                     for found in self._cross_validations.values())
        if self._adaptation is not None and self._adaptation.adapted:  # the adapted copy and its embeddings
            model = self._adaptation.model
            total += size(self._adaptation.features) + sum(size(t) for t in model.state_dict().values())
        return total

    @property
    def examples_(self) -> dict[str, ClassExamples]:
        """The examples per class as held (a new dict; the tensors are shared, not copied)."""
        return dict(self._examples)

    def support(self) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
        """(images ``(S, C, H, W)`` uint8, embeddings ``(S, E)`` or None, labels ``(S,)``) in ``classes_`` order.
        The images are joined on each call (a copy: callers that need only embeddings use
        :meth:`support_features`, those that need a few images :meth:`support_images`)."""
        features, labels = self.support_features()
        return self.support_images(), features, labels

    def support_images(self, rows: torch.Tensor | None = None) -> torch.Tensor:
        """The support images ``(S, C, H, W)`` uint8 in ``classes_`` order, or only ``rows`` ``(R,)`` of them
        (gathered from each class without joining the others)."""
        parts = [self._examples[n].images for n in self.classes_]
        if rows is None:
            return torch.cat(parts)
        ends = torch.tensor([len(p) for p in parts]).cumsum(0)
        owners = torch.bucketize(rows, ends, right=True).tolist()
        return torch.stack([parts[c][r - (int(ends[c - 1]) if c else 0)] for c, r in zip(owners, rows.tolist())])

    def support_features(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(embeddings ``(S, E)`` by :attr:`model_` or None, labels ``(S,)``) in ``classes_`` order."""
        features, labels = self._examples_features()
        if self._adapt != "none" and self.adaptation_.adapted:
            return self.adaptation_.features, labels
        return features, labels

    def _examples_features(self) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(the examples' own embeddings by the shared model ``(S, E)`` or None, labels ``(S,)``) in ``classes_``
        order, joined once per change."""
        names = self.classes_
        entries = [self._examples[n] for n in names]
        cached = getattr(self, "_support", None)  # (names, entries, joined): holding the entries keeps them alive
        if (cached is not None and cached[0] == names and all(a is b for a, b in zip(cached[1], entries))
                and all(len(e.images) == n for e, n in zip(entries, cached[3]))):
            return cached[2]
        labels = torch.cat([torch.full((len(e.images),), i, dtype=torch.long) for i, e in enumerate(entries)])
        features = None if entries[0].features is None else torch.cat([e.features for e in entries])
        self._support = (names, entries, (features, labels), [len(e.images) for e in entries])
        return features, labels

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

    def explain(self, images: ImageLike | Sequence[ImageLike], out_dir: str | os.PathLike,
                unknown: str | float | None = None, unknown_name: str = UNKNOWN_NAME) -> list[dict]:
        """Like :meth:`details`, with a Grad-CAM heatmap PNG per image written to ``out_dir``; the
        probabilities come from the same pass as the heatmaps."""
        from .explain import save_explanations

        prepared = self._prepare_queries(images)
        threshold = self.unknown_threshold(unknown, unknown_name=unknown_name)
        queries, heatmaps, probabilities = self._heatmaps(prepared)
        save_explanations(queries, heatmaps, probabilities, self.classes_, [Path(p.name) for p in prepared], out_dir)
        return self._scored(self._details(prepared, probabilities), self._query_scores(queries), threshold,
                            unknown_name)

    def heatmaps(self, images: ImageLike | Sequence[ImageLike]) -> np.ndarray:
        """Grad-CAM heatmaps ``(N, S, S)`` float32 in [0, 1] of one image or a sequence of them, at the model's
        image size ``S``: where the model looked for its prediction (see :mod:`fewshot.inference.explain`)."""
        return self._heatmaps(self._prepare_queries(images))[1].numpy()

    def explained(self, images: ImageLike | Sequence[ImageLike], unknown: str | float | None = None,
                  unknown_name: str = UNKNOWN_NAME) -> tuple[list[dict], torch.Tensor, torch.Tensor]:
        """(:meth:`details` of each image, the model-size images ``(Q, C, S, S)`` uint8, their heatmaps
        ``(Q, S, S)`` in [0, 1]); the probabilities come from the same pass as the heatmaps."""
        prepared = self._prepare_queries(images)
        threshold = self.unknown_threshold(unknown, unknown_name=unknown_name)
        queries, heatmaps, probabilities = self._heatmaps(prepared)
        found = self._scored(self._details(prepared, probabilities), self._query_scores(queries), threshold,
                             unknown_name)
        return found, queries, heatmaps

    def _heatmaps(self, prepared: list[PreparedImage]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        from .explain import explain

        require(self.model_, "explain", self.image_size)
        queries = as_batch(prepared)
        if self.model_.head.adapts_backbone:  # the network is adapted to the support images
            support, _, labels = self.support()
        else:  # the fitted state stands for them
            _, labels = self.support_features()
            support = torch.zeros(0, self.channels, self.image_size, self.image_size, dtype=torch.uint8)
        heatmaps, probabilities = explain(self.model_, support.to(self.device), labels.to(self.device),
                                          len(self.classes_), queries.to(self.device), fitted=self.fitted_)
        return queries, heatmaps.cpu(), probabilities.cpu()

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

    # ------------------------------------------------------------------ saving and exporting
    def save(self, path: str | os.PathLike) -> Path:
        """One file: config, weights, class names, support images and embeddings (read back with
        :meth:`load`, which uses safe loading: tensors and plain values only)."""
        from ..version import __version__
        from ..atomic import atomic_write

        self._check_fitted()
        model = self.model_
        config = self.config_.to_dict()
        features = {name: e.features for name, e in self._examples.items()}
        adaptation = None
        if self._adapt != "none" and self.adaptation_.adapted:  # the adapted weights, as adapted: not again
            config["model"]["adapt"] = "none"
            joined, _ = self.support_features()
            sizes = [len(self._examples[name].images) for name in self.classes_]
            features = dict(zip(self.classes_, joined.split(sizes)))
            folds = self.cross_validation()
            adaptation = {"described": self.adaptation_.describe(),
                          "folds": {"rows": folds.rows, "labels": folds.labels, "logits": folds.logits,
                                    "shots": folds.shots, "notes": folds.notes, "repeats": folds.repeats}}
        state = {"format": SAVED_FORMAT, "version": SAVED_VERSION, "fewshot": __version__,
                 "config": config, "source": self.source, "unknown_score": self.unknown_score,
                 "calibration": self.calibration, "adaptation": adaptation,
                 "weights": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                 "normalization": [list(model.mean), list(model.std)],
                 "classes": {name: {"images": e.images, "features": features[name], "names": e.names,
                                    "digests": e.digests} for name, e in self._examples.items()}}
        return atomic_write(path, lambda handle: torch.save(state, handle))

    @classmethod
    def load(cls, path: str | os.PathLike, device: str = "cpu", runtime: str = "auto") -> "FewShotClassifier":
        """A classifier saved by :meth:`save`, ready to predict (``runtime`` as for the constructor)."""
        from ..model.checkpoint import rebuild_model
        from ..safe_io import safe_load

        file = Path(path).expanduser()
        if not file.is_file():
            raise SavedFileError(f"saved classifier {file} does not exist")
        try:
            state = safe_load(file, "saved classifier")
        except FewshotError as exc:
            raise SavedFileError(str(exc)) from None
        if not isinstance(state, dict) or state.get("format") != SAVED_FORMAT:
            hint = " (it looks like a training checkpoint: FewShotClassifier(path).fit(...) uses those)" \
                if isinstance(state, dict) and "model" in state and "config" in state else ""
            raise SavedFileError(f"{file} is not a saved FewShotClassifier{hint}")
        version = state.get("version")
        if not isinstance(version, int) or version != SAVED_VERSION:
            raise SavedFileError(f"{file} was saved by fewshot {state.get('fewshot', '?')} in classifier format "
                                 f"{version}; this fewshot reads format {SAVED_VERSION}: "
                                 + ("upgrade fewshot" if isinstance(version, int) and version > SAVED_VERSION
                                    else "fit and save it again"))
        try:
            model, config = rebuild_model(state["config"], state["weights"], state["normalization"], str(file))
            examples = {name: ClassExamples(e["images"], e["features"], list(e["names"]), list(e["digests"]))
                        for name, e in state["classes"].items()}
            check_examples(examples, config.data.image_size, config.data.channels, model.head.adapts_backbone)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SavedFileError(f"{file} is damaged or incomplete ({type(exc).__name__}: {exc}); save it again")
        except FewshotError as exc:
            raise SavedFileError(f"{file}: {exc}") from None
        score = state.get("unknown_score", DEFAULT_SCORE)
        if score == "energy" and model.head.normalized_logits:  # saved before energy was refused for such heads
            score = DEFAULT_SCORE
        self = cls.from_model(model, config, state.get("source", str(file)), device, runtime=runtime,
                              unknown_score=score, calibration=state.get("calibration", DEFAULT_CALIBRATION))
        self._examples = examples
        saved = state.get("adaptation")
        if isinstance(saved, dict):  # adapted before it was saved: its honest held-out predictions come along
            self._saved_adaptation = (saved["described"], CrossValidation(**saved["folds"]))
        return self

    def export(self, path: str | os.PathLike, format: str = "onnx") -> Path:  # noqa: A002 - the natural name
        """Write a standalone model with the classes built in. ``onnx``: float32 ONNX that takes decoded RGB
        uint8 images ``(B, H, W, 3)`` of any size (resize and normalization in the graph) and returns
        probabilities ``(B, classes)``, class names in its metadata (``fewshot[onnx]``); ``onnx-int8``: the
        same, quantized to 8 bits with the support images as calibration; ``torchscript``: takes ``(B, C, S, S)``
        uint8 at the model's size ``S`` (see :mod:`fewshot.inference.export.torchscript`)."""
        from ..errors import ExportError

        self._check_fitted()
        if format not in EXPORT_FORMATS:
            raise ExportError(f"unknown export format '{format}': choose one of {', '.join(EXPORT_FORMATS)}")
        require(self.model_, "export")
        images, _, _ = self.support()
        fitted, threshold = self.fitted_, self.threshold_record()
        model = self.model_.cpu()
        try:
            return export_fitted(model, fitted, images, self.classes_, self.config_, Path(path), format, threshold)
        finally:
            model.to(self.device)

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


__all__ = ["ClassExamples", "Estimate", "FewShotClassifier", "export_fitted", "folder_classes", "wilson_interval"]
