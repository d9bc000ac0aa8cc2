"""Why a :class:`~fewshot.inference.classifier.FewShotClassifier` answered as it did: Grad-CAM heatmaps per image
(:mod:`fewshot.inference.explain`), as arrays, as PNG overlays written to a folder, or with the answers."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..model.capabilities import require
from .inputs import ImageLike, PreparedImage, as_batch
from .open_set import UNKNOWN_NAME


class ExplanationsMixin:
    """Grad-CAM heatmaps of a :class:`~fewshot.inference.classifier.FewShotClassifier`'s answers."""

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
