"""The examples side of :class:`~fewshot.inference.classifier.FewShotClassifier`: classes added one at a time or set
from elsewhere (the server's cached embeddings), checked for shape and duplicates, joined into one support set on
demand (:class:`~fewshot.inference.examples.ClassExamples` per class)."""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, Sequence

import torch

from ..errors import SupportSetError
from .examples import ClassExamples, check_examples
from .inputs import ImageLike, as_batch, prepare_images


class ExamplesMixin:
    """The examples a :class:`~fewshot.inference.classifier.FewShotClassifier` holds: adding and replacing them, the
    support set joined from them (images, embeddings, labels), and the memory they take."""

    def add_examples(self, class_name: str, images: ImageLike | Sequence[ImageLike]) -> "ExamplesMixin":
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

    def set_examples(self, examples: Mapping[str, ClassExamples]) -> "ExamplesMixin":
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
