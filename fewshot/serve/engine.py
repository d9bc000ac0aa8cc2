"""The model side of the server: one shared model, a :class:`~fewshot.FewShotClassifier` per project built
from the store, embeddings cached in the store so a fit after an upload embeds only the new images.

Every pass through the model holds :attr:`Engine.compute` (one at a time: the model is shared and read-only,
and on a CPU one pass already uses every core), predictions before background passes (:mod:`.jobs`), so under
load requests queue instead of failing and heavy work never holds the model for long: estimates run split by
split, explanations image by image, new images are embedded a few at a time, exports in a low-priority child
process. A project's classifier is cached with the project's revision and rebuilt when an upload, deletion or
rename changes it, reusing the decoded pixels and embeddings of the images it already had; the caches of all
projects together stay under ``cache_mb`` (least recently used projects are dropped first).
"""

from __future__ import annotations

import os
import tempfile
import threading
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from episodes import EpisodesError, decode_image
from episodes.images import pil_to_array

from ..errors import FewshotError, SupportSetError
from ..inference.classifier import FewShotClassifier
from ..inference.estimate import Estimate
from ..inference.examples import ClassExamples
from ..model.capabilities import require, single_image_note, unsupported
from .adapting import AdaptationJob
from .jobs import ComputeLock, JobSlots, limit_allocator_arenas, release_memory, run_export_process, write_export_job
from .model_info import can_export, int8_note, model_key
from .store import Store


EMBED_CHUNK = 8  # images embedded per background pass: a prediction waits for at most this many


ESTIMATES_KEPT = 4  # estimate results remembered per project revision


CALIBRATION_IMAGES = 64  # support images an export child gets (trace example, INT8 calibration)


def _key(image: dict) -> tuple[int, str]:
    """What the engine's caches are keyed by: the image's id and the digest of its bytes."""
    return image["id"], image["sha256"]


@dataclass
class _Cached:
    revision: int
    classifier: FewShotClassifier
    # keyed by (image id, sha256): an id names one image for good (the store never reuses ids), the digest
    # guards against it anyway
    features: dict[tuple[int, str], torch.Tensor]  # -> (E,) float32 (empty when the head adapts the backbone)
    # (repeats, holdout, seed, adapted) -> Estimate, newest last
    estimates: OrderedDict = field(default_factory=OrderedDict)
    adaptation: AdaptationJob | None = None  # the project adapts: its job (the adapted classifier once finished)
    adapt: str = "none"  # the project's adaptation setting when last read (it changes without a new revision)

    def nbytes(self) -> int:
        """Memory held: what the classifier holds (:meth:`FewShotClassifier.held_bytes`: images, embeddings, their
        joined copy, the fitted and unknown-score state, held-out predictions), the embeddings kept here, and an
        adapted classifier's (counted whole, although it shares the images: a bound, not a tally)."""
        adapted = self.adaptation.classifier if self.adaptation is not None else None
        return (self.classifier.held_bytes() + sum(t.numel() * t.element_size() for t in self.features.values())
                + (adapted.held_bytes() if adapted is not None else 0))

    def drop_adaptation(self) -> None:
        """Cancel the adaptation job (at its next step) and forget what it made."""
        if self.adaptation is not None:
            self.adaptation.cancel.set()
            self.adaptation = None

    def pixels(self) -> dict[str, torch.Tensor]:
        """sha256 -> the decoded image ``(C, S, S)`` the classifier holds (a view, not a copy): what a rebuild
        reuses (a digest names one image within a project: the store refuses duplicates)."""
        return {digest: entry.images[row] for entry in self.classifier.examples_.values()
                for row, digest in enumerate(entry.digests)}


class Engine:
    """Classifiers for the projects of ``store`` around the one model of ``base`` (a classifier, not fitted)."""

    def __init__(self, base: FewShotClassifier, store: Store, cache_mb: float = 2048, max_jobs: int = 1):
        self.base, self.store = base, store
        self.default_adapt = base.adapt  # new projects' setting (the recipe's or --adapt's)
        self.compute = ComputeLock()
        self.jobs = JobSlots(max_jobs)
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache_lock = threading.Lock()
        self._cache: OrderedDict[int, _Cached] = OrderedDict()  # least recently used first
        self._building: dict[int, threading.Lock] = {}
        self._adapting = threading.Lock()  # one adaptation job at a time (the others wait their turn)
        self.key = model_key(base)
        self.embedded_images = 0  # stored images embedded since start (the rest came from the cache)
        self._weights_file: Path | None = None  # the model's weights for export children, written once
        self.tmp = store.root / "tmp" / str(os.getpid())  # this server's work files (another server has its own)
        limit_allocator_arenas()

    @property
    def head(self):
        return self.base.model_.head

    def info(self) -> dict:
        from ..inference.export.formats import EXPORT_FORMATS

        model = self.base.model_
        not_explainable = unsupported(model, "explain", self.base.image_size)
        not_exportable = unsupported(model, "export")
        from ..inference.adaptation import can_adapt

        not_adaptable = can_adapt(model)
        return {"model": self.base.source, "head": self.base.config_.model.head,
                "backbone": self.base.config_.model.backbone, "image_size": self.base.image_size,
                "channels": self.base.channels, "explainable": not_explainable is None,
                "explain_note": not_explainable, "exportable": not_exportable is None, "export_note": not_exportable,
                "export_formats": [f for f in EXPORT_FORMATS if can_export(f)] if not not_exportable else [],
                "single_image_note": single_image_note(model), "int8_note": int8_note(),
                "adaptable": not_adaptable is None, "adapt_note": not_adaptable,
                "embedded_images": self.embedded_images}

    def require(self, capability: str) -> None:
        """:func:`fewshot.model.capabilities.require` for the server's model (the rule the CLI and the API use)."""
        require(self.base.model_, capability, self.base.image_size)

    # ------------------------------------------------------------------ building classifiers
    def classifier(self, project_id: int) -> tuple[FewShotClassifier, _Cached]:
        """The project's classifier over its classes that hold images (at least two). One thread rebuilds a
        stale one while the others wait for it (no herd of identical rebuilds after an upload)."""
        with self._cache_lock:
            building = self._building.setdefault(project_id, threading.Lock())
        with building:
            project = self.store.project(project_id)
            with self._cache_lock:
                cached = self._cache.get(project_id)
                if cached is not None:
                    self._cache.move_to_end(project_id)
            if cached is None or cached.revision != project["revision"]:
                _, cached = self._build(project, cached)
            cached.adapt = project.get("adapt", "none")
            return cached.classifier, cached

    def cached_bytes(self) -> int:
        with self._cache_lock:
            return sum(entry.nbytes() for entry in self._cache.values())

    def _remember(self, project_id: int, entry: _Cached) -> None:
        """Cache ``entry``, then drop least recently used projects until the caches fit ``cache_bytes``
        (the newest entry stays even when it alone is larger)."""
        with self._cache_lock:
            self._cache[project_id] = entry
            self._cache.move_to_end(project_id)
            total = sum(e.nbytes() for e in self._cache.values())
            while total > self.cache_bytes and len(self._cache) > 1:
                _, dropped = self._cache.popitem(last=False)
                total -= dropped.nbytes()
                dropped.drop_adaptation()

    def _build(self, project: dict, cached: _Cached | None) -> tuple[FewShotClassifier, _Cached]:
        project_id = project["id"]
        filled = [c for c in project["classes"] if c["images"]]
        if len(filled) < 2:
            raise SupportSetError(f"add images to at least two classes first (this project has {len(filled)} class"
                                  f"{'' if len(filled) == 1 else 'es'} with images)")
        old_pixels = cached.pixels() if cached else {}
        old_features = cached.features if cached else {}
        images = [image for c in filled for image in c["images"]]
        pixels = {_key(i): old_pixels[i["sha256"]] if i["sha256"] in old_pixels else self._decode(i) for i in images}
        features: dict[tuple[int, str], torch.Tensor] = {}
        if not self.head.adapts_backbone:
            features = {_key(i): old_features[_key(i)] for i in images if _key(i) in old_features}
            rest = {i["id"]: i for i in images if _key(i) not in features}
            stored = self.store.embeddings(list(rest), self.key)
            features.update({_key(rest[k]): torch.from_numpy(v) for k, v in stored.items()})
            missing = [i["id"] for i in images if _key(i) not in features]
            if missing:
                found = self._embed_and_cache(missing, {i["id"]: pixels[_key(i)] for i in images})
                features.update({_key(rest[k]): v for k, v in found.items()})
        examples = {}
        for c in filled:
            keys = [_key(i) for i in c["images"]]
            examples[c["name"]] = ClassExamples(
                torch.stack([pixels[k] for k in keys]),
                None if self.head.adapts_backbone else torch.stack([features[k] for k in keys]),
                [i["name"] for i in c["images"]], [i["sha256"] for i in c["images"]])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # said once at start (transductive); duplicates: the store refuses them
            classifier = FewShotClassifier.from_model(self.base.model_, self.base.config_, self.base.source,
                                                      str(self.base.device), self.base.batch_size, self.base.runtime,
                                                      adapt="none")  # frozen; adapting is the project's job
            classifier.set_examples(examples)
        del pixels  # the classifier holds them now, stacked per class
        if cached is not None:
            cached.drop_adaptation()  # it adapted to the examples before this change
        fresh = _Cached(project["revision"], classifier, features)
        self._remember(project_id, fresh)
        release_memory()  # what the old classifier and dropped projects held
        return classifier, fresh

    def embed_new(self, project_id: int, image_ids: list[int]) -> None:
        """Embed freshly uploaded images now (so the next prediction does not wait for them)."""
        if self.head.adapts_backbone or not image_ids:
            return
        project = self.store.project(project_id)
        rows = {i["id"]: i for c in project["classes"] for i in c["images"]}
        wanted = [i for i in image_ids if i in rows]
        missing = [i for i in wanted if i not in self.store.embeddings(wanted, self.key)]
        if missing:
            self._embed_and_cache(missing, {i: self._decode(rows[i]) for i in missing})

    def _embed_and_cache(self, ids: list[int], pixels: dict[int, torch.Tensor]) -> dict[int, torch.Tensor]:
        """Embed ``ids`` a few at a time (background passes: predictions go first) and store the embeddings."""
        found = {}
        for start in range(0, len(ids), EMBED_CHUNK):
            chunk = ids[start:start + EMBED_CHUNK]
            with self.compute.background():
                vectors = self.base.embed(torch.stack([pixels[i] for i in chunk]))
                self.embedded_images += len(chunk)
            found.update({i: vectors[n] for n, i in enumerate(chunk)})
            self.store.save_embeddings({i: found[i].numpy() for i in chunk}, self.key)
        return found

    def _decode(self, image: dict) -> torch.Tensor:
        path = self.store.image_path(image["sha256"])
        try:
            array = decode_image(path, self.base.image_size, self.base.channels)
        except EpisodesError as exc:
            raise FewshotError(f"stored image '{image['name']}' (id {image['id']}) cannot be read ({exc}); delete it "
                               "and upload it again") from None
        return torch.from_numpy(np.array(array)).permute(2, 0, 1).contiguous()  # a writable copy

    def forget(self, project_id: int) -> None:
        with self._cache_lock:
            dropped = self._cache.pop(project_id, None)
            self._building.pop(project_id, None)
        if dropped is not None:
            dropped.drop_adaptation()

    # ------------------------------------------------------------------ adapting to a project's images
    def adaptation(self, project_id: int) -> AdaptationJob | None:
        """The project's adaptation job (None when it does not adapt), started when its setting or examples
        changed since the last one: it runs in the background (:mod:`.adapting`) while predictions use the frozen
        classifier."""
        return self._adaptation_job(project_id, *self.classifier(project_id))

    def _adaptation_job(self, project_id: int, classifier: FewShotClassifier, cached: _Cached
                        ) -> AdaptationJob | None:
        """:meth:`adaptation` for the frozen ``classifier`` and cache entry :meth:`classifier` just returned."""
        setting = cached.adapt
        with self._cache_lock:
            job = cached.adaptation
            if setting == "none" or (job is not None and job.setting != setting):
                cached.drop_adaptation()
                job = None
            if setting == "none" or job is not None:
                return job
            from ..inference.adaptation import AdaptSettings, adapt_steps

            steps = adapt_steps(self.base.model_, AdaptSettings(steps=self.base.model_.adapt_steps)) * 4
            job = cached.adaptation = AdaptationJob(setting, cached.revision, steps)

        def make() -> FewShotClassifier:
            adapting = FewShotClassifier.from_model(self.base.model_, self.base.config_, self.base.source,
                                                    str(self.base.device), self.base.batch_size, self.base.runtime,
                                                    adapt=setting)
            adapting.progress = False
            return adapting.set_examples(classifier.examples_)

        threading.Thread(target=job.run, args=(self._adapting, self.compute, make), daemon=True,
                         name=f"adapt-project-{project_id}").start()
        return job

    def serving(self, project_id: int) -> tuple[FewShotClassifier, AdaptationJob | None, _Cached]:
        """The classifier a project's predictions, estimates and exports use: the adapted one once its job
        finished, the frozen one until then (and always, when the project does not adapt); its job and cache
        entry. One read of the project from the store."""
        classifier, cached = self.classifier(project_id)
        job = self._adaptation_job(project_id, classifier, cached)
        return (job.classifier if job is not None and job.finished else classifier), job, cached

    # ------------------------------------------------------------------ using them
    def model_input(self, image) -> np.ndarray:
        """A decoded PIL image as the model takes it, ``(S, S, C)`` uint8: what a prediction keeps of an
        upload instead of the full-size image (the classifier prepares it exactly as it would the image)."""
        return pil_to_array(image, self.base.image_size, self.base.channels)

    def predict(self, project_id: int, images: list, explain: bool, cancel: threading.Event | None = None,
                unknown: str | float | None = None) -> list[dict]:
        """``[{name, predicted, probabilities, unknown_score}]`` (plus ``heatmap`` PNG bytes with ``explain``) for
        images (PIL images, or arrays from :meth:`model_input`); with ``unknown`` (``"auto"`` or a threshold) also
        ``unknown`` and ``unknown_threshold``, or ``unknown_note`` saying why ``auto`` has no threshold. Explained
        images are background passes, one at a time."""
        from ..inference.explain import heatmap_overlay_png

        classifier, job, _ = self.serving(project_id)
        threshold, note = self.unknown_threshold(classifier, unknown, cancel)
        if not explain:
            with self.compute.interactive():
                results = classifier.details(images, threshold)
        else:
            results = []
            for image in images:
                with self.compute.background(cancel):
                    details, queries, heatmaps = classifier.explained([image], threshold)
                details[0]["heatmap"] = heatmap_overlay_png(queries[0], heatmaps[0])
                results += details
                del queries, heatmaps  # an explanation's tensors are released before the next image
            release_memory()
        results = [{**item, "unknown_note": note} if note else item for item in results]
        return [{**item, "adaptation": job.to_json()} for item in results] if job is not None else results

    def unknown_threshold(self, classifier: FewShotClassifier, unknown: str | float | None,
                          cancel: threading.Event | None) -> tuple[float | None, str]:
        """(the score threshold for ``unknown``, why there is none): ``auto`` is chosen once per project revision
        (each class held out in turn, as background passes); too few classes or a head without a score give no
        threshold and the reason instead of an error, so predictions still come."""
        reason = unsupported(self.base.model_, "open_set") if unknown is not None else ""
        if unknown is None or reason:
            return None, reason or ""
        if unknown == "auto":
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # the estimate carries its warnings
                    classifier.open_set_estimate(step=lambda: self.compute.background(cancel))
            except SupportSetError as exc:
                return None, str(exc)
        return classifier.unknown_threshold(unknown), ""

    def estimate(self, project_id: int, repeats: int, holdout: float, seed: int,
                 cancel: threading.Event | None = None) -> Estimate:
        """The project's estimate, split by split as background passes (remembered per revision)."""
        classifier, job, cached = self.serving(project_id)
        key = (repeats, holdout, seed, job is not None and job.finished)
        if key in cached.estimates:
            cached.estimates.move_to_end(key)
            return cached.estimates[key]
        with self.jobs.hold("estimate"), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the estimate carries its warnings
            result = classifier.estimate(repeats=repeats, holdout=holdout, seed=seed,
                                         step=lambda: self.compute.background(cancel))
        cached.estimates[key] = result
        while len(cached.estimates) > ESTIMATES_KEPT:
            cached.estimates.popitem(last=False)
        release_memory()
        return result

    def export(self, project_id: int, path: Path, format: str,  # noqa: A002
               cancel: threading.Event | None = None) -> Path:
        """Export in a child process at the lowest CPU priority (:func:`.jobs.run_export_process`)."""
        self.require("export")
        classifier, _, _ = self.serving(project_id)
        with self.jobs.hold("export"):
            try:  # the calibration's splits one background step each (fitted_ then reads them)
                if classifier.calibration == "support":
                    classifier.cross_validation(step=lambda: self.compute.background(cancel))
            except SupportSetError:
                pass  # a class with one image: the table alone, nothing to split
            with self.compute.background(cancel):
                fitted = classifier.fitted_
            with warnings.catch_warnings():  # the threshold's folds one at a time, each a background step
                warnings.simplefilter("ignore")
                threshold = classifier.threshold_record(step=lambda: self.compute.background(cancel))
            count = len(classifier.support_features()[1])
            chosen = torch.linspace(0, count - 1, min(count, CALIBRATION_IMAGES)).round().long()
            self.tmp.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryDirectory(dir=self.tmp) as work:
                job = Path(work) / "job.pt"
                weights = self.weights_file()
                if classifier.model_ is not self.base.model_:  # adapted to the project: its own weights
                    weights = Path(work) / "adapted.pt"
                    torch.save({k: v.detach().cpu() for k, v in classifier.model_.state_dict().items()}, weights)
                write_export_job(job, weights, self.base.config_.to_dict(),
                                 [list(self.base.model_.mean), list(self.base.model_.std)], fitted,
                                 classifier.classes_, classifier.support_images(chosen), path, format, threshold)
                run_export_process(job, cancel or threading.Event())
        return path

    def weights_file(self) -> Path:
        """The shared model's weights for export children, written once as ``models/<model key>.pt`` in the
        data folder (other models' files there are removed)."""
        if self._weights_file is None or not self._weights_file.exists():
            from ..atomic import atomic_write

            folder = self.store.root / "models"
            folder.mkdir(exist_ok=True)
            target = folder / f"{self.key}.pt"
            for stale in folder.glob("*.pt"):
                if stale != target:
                    stale.unlink(missing_ok=True)
            state = {k: v.detach().cpu() for k, v in self.base.model_.state_dict().items()}
            self._weights_file = atomic_write(target, lambda handle: torch.save(state, handle))
        return self._weights_file
