"""A :class:`~fewshot.inference.classifier.FewShotClassifier` as files: :meth:`FilesMixin.save` / :meth:`FilesMixin.load`
(one file holding the model's config and weights, the examples and their embeddings, the fitted state and, for an
adapted classifier, the adapted weights and the folds its estimate read; plain tensors and values only) and
:meth:`FilesMixin.export` (TorchScript or ONNX for applications without this framework)."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from ..errors import FewshotError, SavedFileError
from ..model.capabilities import require
from .calibration import DEFAULT_CALIBRATION
from .estimate import CrossValidation
from .examples import ClassExamples, check_examples
from .export.formats import EXPORT_FORMATS, export_fitted
from .open_set import DEFAULT_SCORE


SAVED_FORMAT = "fewshot-classifier"
SAVED_VERSION = 1


class FilesMixin:
    """Saving, loading and exporting a :class:`~fewshot.inference.classifier.FewShotClassifier`."""

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
    def load(cls, path: str | os.PathLike, device: str = "cpu", runtime: str = "auto") -> "FilesMixin":
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
