"""Episodic evaluation: mean accuracy over episodes with its 95% confidence interval.

When the head leaves the backbone unchanged at test time (every head but fine-tuning ones), all
episodes are drawn first, each image they use is embedded once, in large batches, and the embeddings
are reused across episodes; the head then classifies a chunk of episodes in one batched call
(:meth:`fewshot.heads.Head.forward_episodes`). Variable (Meta-Dataset) episodes are embedded the same way
and classified one at a time (padding them into batches does not pay: benchmarks/variable_eval_cost.py).
The plain path (``fast=False``) embeds every episode from its images, and gives the same accuracies.
With several sources (:func:`evaluate_sources`), each source gets its result and the mean over sources.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Iterable

import numpy as np
import torch

from episodes import Episode, EpisodeIndices, EpisodeSampler, FewShotSplit

from ..errors import FewshotError
from ..inference.adaptation import model_for_support
from ..inference.refine import classify_refined
from ..model.network import FewShotModel
from ..runtime import autocast
from .embedded import evaluate_embedded, evaluate_embedded_variable, shape_stats


def confidence_interval(accuracies: np.ndarray) -> float:
    """Half-width of the 95% interval of the mean: ``1.96 * std / sqrt(episodes)`` (sample std)."""
    if len(accuracies) < 2:
        return float("nan")
    return float(1.96 * np.std(accuracies, ddof=1) / math.sqrt(len(accuracies)))


@dataclass
class EvalResult:
    """Per-episode accuracies (fractions) and the episode shape; ``accuracy``/``ci95`` in percent. Variable
    (Meta-Dataset) episodes have ``ways``/``shots``/``queries`` None and their ranges in ``extra["shapes"]``."""

    accuracies: np.ndarray
    ways: int | None
    shots: int | None
    queries: int | None
    seconds: float
    seed: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def accuracy(self) -> float:
        return float(100.0 * self.accuracies.mean())

    @property
    def ci95(self) -> float:
        return 100.0 * confidence_interval(self.accuracies)

    def summary(self) -> str:
        interval = f"± {self.ci95:.2f} % (95% CI, " if math.isfinite(self.ci95) else \
            "% (no interval: it needs 2 or more episodes; "
        if self.ways is None:
            shapes = self.extra.get("shapes", {})
            ways, shots = shapes.get("ways", {}), shapes.get("shots", {})
            return (f"variable episodes (ways {ways.get('min')}-{ways.get('max')}, mean {ways.get('mean', 0):.1f}; "
                    f"shots {shots.get('min')}-{shots.get('max')}, mean {shots.get('mean', 0):.1f}): "
                    f"{self.accuracy:.2f} {interval}{len(self.accuracies)} episodes)")
        return (f"{self.ways}-way {self.shots}-shot: {self.accuracy:.2f} {interval}{len(self.accuracies)} episodes, "
                f"{self.queries} queries per class)")

    def to_json(self) -> dict:
        """Plain JSON values, all accuracies in percent; an undefined interval (one episode) is ``null``."""
        return {"accuracy": self.accuracy, "ci95": self.ci95 if math.isfinite(self.ci95) else None,
                "episodes": len(self.accuracies), "ways": self.ways, "shots": self.shots, "queries": self.queries,
                "seed": self.seed, "seconds": self.seconds, **self.extra,
                "per_episode": [100.0 * float(a) for a in self.accuracies]}


@dataclass
class SourcesResult:
    """Results of several sources (``data.sources``): each source's :class:`EvalResult` and their mean.

    ``ci95`` is the interval of the mean over sources, the sources' episodes being independent:
    ``1.96 * sqrt(sum of std_s^2 / episodes_s) / sources`` (percent)."""

    results: dict[str, EvalResult]

    @property
    def accuracy(self) -> float:
        return float(np.mean([r.accuracy for r in self.results.values()]))

    @property
    def ci95(self) -> float:
        variances = [np.var(r.accuracies, ddof=1) / len(r.accuracies) if len(r.accuracies) > 1 else float("nan")
                     for r in self.results.values()]
        return float(100.0 * 1.96 * math.sqrt(sum(variances)) / len(variances))

    @property
    def seconds(self) -> float:
        return float(sum(r.seconds for r in self.results.values()))

    def summary(self) -> str:
        width = max(len(name) for name in self.results)
        lines = [f"  {name:<{width}}  {result.summary()}" for name, result in self.results.items()]
        interval = f" ± {self.ci95:.2f} %" if math.isfinite(self.ci95) else " %"
        return (f"mean over {len(self.results)} sources: {self.accuracy:.2f}{interval} (95% CI)\n"
                + "\n".join(lines))

    def to_json(self) -> dict:
        return {"accuracy": self.accuracy, "ci95": self.ci95 if math.isfinite(self.ci95) else None,
                "seconds": self.seconds, "sources": {name: r.to_json() for name, r in self.results.items()}}


def evaluate(model: FewShotModel, split: FewShotSplit, ways: int, shots: int, queries: int, episodes: int,
             seed: int = 0, device: torch.device | str = "cpu", batch_size: int = 256, fast: bool | None = None,
             progress: bool = True, precision: str = "auto", refine: str = "none", refine_steps: int = 1,
             threshold: float = 0.9, per_class: bool = False, features: torch.Tensor | None = None,
             runtime: str = "auto") -> EvalResult:
    """Accuracy of ``model`` on ``episodes`` N-way K-shot episodes of ``split`` (episode ``i`` of ``seed``).

    ``precision``: ``auto`` (bfloat16 autocast on CUDA, float32 on the CPU), ``fp32`` or ``bf16``
    (bfloat16 autocast on any device, see :func:`fewshot.runtime.autocast`).
    ``refine``: ``none``, ``soft_kmeans`` or ``self_training`` (see :mod:`fewshot.inference.refine`).
    ``per_class``: also gather every query's true and predicted class, for :func:`per_class_report`.
    ``features``: the split's embeddings from :func:`embed_split` (by this model's backbone), reused instead
    of embedding again. ``runtime``: how the frozen backbone embeds (``auto``, ``eager``, ``jit``,
    ``onnxruntime``; see :mod:`fewshot.inference.embedding`).
    """
    sampler = EpisodeSampler(split.class_sizes, ways, shots, queries, seed)
    return evaluate_drawn(model, split, [sampler.sample(i) for i in range(episodes)], seed, device, batch_size,
                          fast, progress, precision, refine, refine_steps, threshold, per_class, features, runtime)


def evaluate_drawn(model: FewShotModel, split: FewShotSplit, drawn: list, seed: int = 0,
                   device: torch.device | str = "cpu", batch_size: int = 256, fast: bool | None = None,
                   progress: bool = True, precision: str = "auto", refine: str = "none", refine_steps: int = 1,
                   threshold: float = 0.9, per_class: bool = False, features: torch.Tensor | None = None,
                   runtime: str = "auto") -> EvalResult:
    """Accuracy over episodes already drawn from ``split``: :class:`episodes.EpisodeIndices` of one shape
    (classified a chunk at a time) or :class:`episodes.VariableEpisodeIndices` of varying ways and shots
    (one at a time). Options as for :func:`evaluate`."""
    if not drawn:
        raise FewshotError("no episodes to evaluate")
    device = torch.device(device)
    adapts = model.head.adapts_backbone
    if adapts and refine != "none":
        raise FewshotError(f"refinement '{refine}' works on embeddings; head '{type(model.head).__name__}' "
                           "adapts the backbone per episode: use --refine none")
    adapts = adapts or getattr(model, "adapt", "none") != "none"  # per episode, from its own support (adaptation.py)
    fast = not adapts if fast is None else fast and not adapts
    fixed = all(isinstance(d, EpisodeIndices) and d.support.shape == drawn[0].support.shape
                and d.query.shape == drawn[0].query.shape for d in drawn)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            run = (evaluate_embedded if fixed else evaluate_embedded_variable) if fast else _evaluate_per_episode
            accuracies, truth, predicted = run(model, split, drawn, device, batch_size, progress, precision, refine,
                                               refine_steps, threshold, features, runtime)
    finally:
        model.train(was_training)
    if fixed:
        (ways, shots), queries = drawn[0].support.shape, drawn[0].query.shape[1]
        result = EvalResult(accuracies, ways, shots, queries, time.perf_counter() - start, seed)
    else:
        result = EvalResult(accuracies, None, None, None, time.perf_counter() - start, seed,
                            {"protocol": "metadataset", "shapes": shape_stats(drawn)})
    if refine != "none":
        result.extra["refine"] = refine
    if per_class:
        result.extra["per_class"] = per_class_report(split.class_names, truth, predicted)
    return result


def classify_episode(model: FewShotModel, episode: Episode, precision: str = "auto", refine: str = "none",
                     refine_steps: int = 1, threshold: float = 0.9) -> torch.Tensor:
    """Query logits ``(ways*queries, ways)`` of one episode, embedded from its images (heads that adapt
    the backbone adapt it here)."""
    ways, count = episode.ways, len(episode.support)
    if getattr(model, "adapt", "none") != "none":  # a fresh copy adapted to this episode's support alone
        model, _, _ = model_for_support(model, episode.support, episode.support_labels, ways)
    with autocast(episode.support.device, precision):
        if model.head.adapts_backbone:
            return model(episode.support, episode.support_labels, episode.query, ways)
        embedded = model.embed(torch.cat([episode.support, episode.query])).float()
    return classify_refined(model, embedded[:count], episode.support_labels, embedded[count:], ways, refine,
                            refine_steps, threshold)


def _evaluate_per_episode(model, split, drawn, device, batch_size, progress, precision, refine, refine_steps,
                          threshold, embedded=None, runtime=None):
    """Plain path: gather and embed each episode's images, then classify it."""
    from tqdm.auto import tqdm

    accuracies = np.zeros(len(drawn))
    truth: list[np.ndarray] = []
    predicted: list[np.ndarray] = []
    for i, indices in enumerate(tqdm(drawn, desc="evaluating", unit="episode", disable=None if progress else True,
                                     leave=False)):
        episode = split.episode(indices).to(device)
        guesses = classify_episode(model, episode, precision, refine, refine_steps, threshold).argmax(dim=1)
        accuracies[i] = (guesses == episode.query_labels).cpu().numpy().mean()
        truth.append(np.repeat(indices.classes, indices.query.shape[1]))
        predicted.append(indices.classes[guesses.cpu().numpy()])
    return accuracies, np.concatenate(truth), np.concatenate(predicted)


def evaluate_episodes(model: FewShotModel, episodes: Iterable[Episode], device: torch.device | str = "cpu",
                      precision: str = "auto", refine: str = "none", refine_steps: int = 1, threshold: float = 0.9,
                      progress: bool = True) -> EvalResult:
    """Accuracy and 95% interval over episodes made elsewhere (e.g. a learn2learn task pipeline through
    :func:`episodes.episodes_from_taskset`); every episode is embedded from its own images."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    accuracies = []
    shape = None
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            for episode in tqdm(episodes, desc="evaluating", unit="episode", disable=None if progress else True,
                                leave=False):
                episode = episode.to(device)
                shape = shape or (episode.ways, len(episode.support) // episode.ways,
                                  len(episode.query) // episode.ways)
                logits = classify_episode(model, episode, precision, refine, refine_steps, threshold)
                accuracies.append((logits.argmax(dim=1) == episode.query_labels).cpu().numpy().mean())
    finally:
        model.train(was_training)
    if not accuracies:
        raise FewshotError("no episodes to evaluate")
    return EvalResult(np.asarray(accuracies), *shape, time.perf_counter() - start)


def per_class_report(class_names: list[str], truth: np.ndarray, predicted: np.ndarray) -> dict:
    """Confusion matrix over the split's classes (rows: true, columns: predicted, summed over episodes)
    with per-class precision, recall and F1 (percent)."""
    count = len(class_names)
    confusion = np.zeros((count, count), dtype=np.int64)
    np.add.at(confusion, (truth, predicted), 1)
    hits = np.diag(confusion).astype(float)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(confusion.sum(0) > 0, hits / confusion.sum(0), 0.0)
        recall = np.where(confusion.sum(1) > 0, hits / confusion.sum(1), 0.0)
        f1 = np.where(precision + recall > 0, 2 * precision * recall / (precision + recall), 0.0)
    classes = [{"class": name, "precision": 100 * float(p), "recall": 100 * float(r), "f1": 100 * float(f),
                "queries": int(n)} for name, p, r, f, n in zip(class_names, precision, recall, f1, confusion.sum(1))]
    return {"classes": classes, "confusion": confusion.tolist(), "class_names": list(class_names)}


def evaluate_sources(model: FewShotModel, sets: list[tuple[str, FewShotSplit, list]], **options
                     ) -> EvalResult | SourcesResult:
    """Each source's accuracy over its drawn episodes (:func:`fewshot.evaluation.episode_sets.draw_episodes`): an
    :class:`EvalResult` for a config with a single dataset, else a :class:`SourcesResult` with the mean over
    sources. ``options`` as for :func:`evaluate_drawn`."""
    results = {name: evaluate_drawn(model, split, drawn, **options) for name, split, drawn in sets}
    if len(results) == 1 and "" in results:
        return results[""]
    return SourcesResult(results)
