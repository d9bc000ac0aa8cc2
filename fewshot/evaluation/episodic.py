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
from einops import rearrange

from episodes import Episode, EpisodeIndices, EpisodeSampler, FewShotSplit, query_counts

from ..inference.adaptation import model_for_support
from ..inference.embedding import Embedder, embedder
from ..errors import FewshotError
from ..model.network import FewShotModel
from ..inference.refine import classify_refined
from ..runtime import autocast


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


def shape_stats(drawn: list) -> dict:
    """Ranges of ways, shots per class, queries per class and support size over drawn episodes."""
    ways = np.array([len(d.classes) for d in drawn])
    shots = np.concatenate([[len(s) for s in d.support] for d in drawn])
    queries = np.concatenate([query_counts(d) for d in drawn])
    support = np.array([sum(len(s) for s in d.support) for d in drawn])
    stat = lambda a: {"min": int(a.min()), "mean": float(a.mean()), "max": int(a.max())}  # noqa: E731
    return {"ways": stat(ways), "shots": stat(shots), "queries": stat(queries), "support_size": stat(support)}


def episode_slots(drawn: list[EpisodeIndices], offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Slot ids (``offsets[class] + position``) of every episode's images, labels class-major:
    support ``(E, ways*shots)`` and query ``(E, ways*queries)``."""
    base = offsets[np.stack([d.classes for d in drawn])][:, :, None]  # (E, ways, 1)
    support = base + np.stack([d.support for d in drawn])  # (E, ways, shots)
    query = base + np.stack([d.query for d in drawn])  # (E, ways, queries)
    return rearrange(support, "e w s -> e (w s)"), rearrange(query, "e w q -> e (w q)")


def embed_slots(embed: Embedder, split: FewShotSplit, slots: np.ndarray, offsets: np.ndarray,
                batch_size: int = 256, progress: bool = True) -> torch.Tensor:
    """Embed the images at the sorted, distinct ``slots`` (image ``p`` of class ``c`` is slot
    ``offsets[c] + p``), each once, in batches of ``batch_size``: ``(len(slots), *F)`` on ``embed.device``."""
    from tqdm.auto import tqdm

    classes = np.searchsorted(offsets, slots, side="right") - 1
    chunks: list[torch.Tensor] = []
    pending: list[torch.Tensor] = []
    waiting = 0
    bar = tqdm(total=len(slots), desc="embedding", unit="img", disable=None if progress else True, leave=False)

    def flush():
        nonlocal pending, waiting
        batch = torch.cat(pending)
        chunks.append(embed(batch))
        bar.update(len(batch))
        pending, waiting = [], 0

    bounds = np.flatnonzero(np.diff(classes)) + 1
    for group in np.split(np.arange(len(slots)), bounds):
        if not len(group):
            continue
        class_id = int(classes[group[0]])
        positions = slots[group] - offsets[class_id]
        for start in range(0, len(positions), batch_size):
            part = split.images(class_id, positions[start:start + batch_size])
            pending.append(part)
            waiting += len(part)
            if waiting >= batch_size:
                flush()
    if pending:
        flush()
    bar.close()
    return torch.cat(chunks)


def embed_split(model: FewShotModel, split: FewShotSplit, device: torch.device | str = "cpu", batch_size: int = 256,
                progress: bool = True, precision: str = "auto", runtime: str = "auto") -> torch.Tensor:
    """Embeddings of every image of ``split``, class-major (class 0's images first): ``(images, *F)``. Pass
    them to :func:`evaluate` as ``features`` to evaluate several heads or transforms on one embedding.
    ``runtime``: see :mod:`fewshot.inference.embedding`."""
    total = int(sum(split.class_sizes))
    offsets = class_offsets(split)
    model.eval()
    with torch.inference_mode():
        return embed_slots(embedder(model, runtime, device, precision), split, np.arange(total), offsets, batch_size,
                           progress)


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
            run = (_evaluate_embedded if fixed else _evaluate_embedded_variable) if fast else _evaluate_per_episode
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


def _evaluate_embedded(model, split, drawn, device, batch_size, progress, precision, refine, refine_steps,
                       threshold, embedded=None, runtime="auto", chunk: int = 10):
    """Fast path: embed every image the episodes use once, then classify ``chunk`` episodes at a time
    (one batched head call when there is no refinement)."""
    from tqdm.auto import tqdm

    episodes = len(drawn)
    (ways, shots), queries = drawn[0].support.shape, drawn[0].query.shape[1]
    offsets = class_offsets(split)
    support_slots, query_slots = episode_slots(drawn, offsets)
    embed = embedder(model, runtime, device, precision)
    slots, features = embedded_slots(embed, split, np.concatenate([support_slots.ravel(), query_slots.ravel()]),
                                     offsets, batch_size, progress, embedded)
    support_rows = torch.from_numpy(np.searchsorted(slots, support_slots)).to(device)
    query_rows = torch.from_numpy(np.searchsorted(slots, query_slots)).to(device)
    support_labels = torch.arange(ways, device=device).repeat_interleave(shots)
    query_labels = torch.arange(ways, device=device).repeat_interleave(queries)
    guesses = torch.empty(episodes, ways * queries, dtype=torch.long, device=device)
    bar = tqdm(total=episodes, desc="evaluating", unit="episode", disable=None if progress else True, leave=False)
    for first in range(0, episodes, chunk):
        part = slice(first, min(first + chunk, episodes))
        support, query = features[support_rows[part]], features[query_rows[part]]  # (e, ways*shots|queries, *F)
        if refine == "none":
            logits = model.classify_episodes(support, support_labels, query, ways)
        else:
            logits = torch.stack([classify_refined(model, s, support_labels, q, ways, refine, refine_steps, threshold)
                                  for s, q in zip(support, query)])
        guesses[part] = logits.argmax(dim=-1)
        bar.update(part.stop - part.start)
    bar.close()
    guesses = guesses.cpu().numpy()
    accuracies = (guesses == query_labels.cpu().numpy()).mean(axis=1)
    classes = np.stack([d.classes for d in drawn])  # (E, ways)
    truth = np.repeat(classes, queries, axis=1).ravel()
    predicted = np.take_along_axis(classes, guesses, axis=1).ravel()
    return accuracies, truth, predicted


def class_offsets(split: FewShotSplit) -> np.ndarray:
    """``(classes,)`` slot of each class's first image: image ``p`` of class ``c`` is slot ``offsets[c] + p``."""
    return np.concatenate([[0], np.cumsum(split.class_sizes)[:-1]]).astype(np.int64)


def embedded_slots(embed: Embedder, split, wanted: np.ndarray, offsets: np.ndarray, batch_size, progress,
                   embedded: torch.Tensor | None = None) -> tuple[np.ndarray, torch.Tensor]:
    """``(slots, features)``: the sorted distinct slots among ``wanted`` embedded once each (or every slot of
    the split's precomputed ``embedded``), rows in slot order."""
    if embedded is not None:
        return np.arange(len(embedded)), embedded.to(embed.device)
    slots = np.unique(wanted)
    return slots, embed_slots(embed, split, slots, offsets, batch_size, progress)


def _evaluate_embedded_variable(model, split, drawn, device, batch_size, progress, precision, refine, refine_steps,
                                threshold, embedded=None, runtime="auto"):
    """Fast path for episodes of varying shapes: every image the episodes use is embedded once (the costly
    part); each episode is then classified on its own rows of those features."""
    from tqdm.auto import tqdm

    offsets = class_offsets(split)
    support_slots = [np.concatenate([offsets[c] + s for c, s in zip(d.classes, d.support)]) for d in drawn]
    query_slots = [np.concatenate([offsets[c] + q for c, q in zip(d.classes, d.query)]) for d in drawn]
    slots, features = embedded_slots(embedder(model, runtime, device, precision), split,
                                     np.concatenate(support_slots + query_slots), offsets, batch_size, progress, embedded)
    accuracies = np.zeros(len(drawn))
    truth, predicted = [], []
    for i, d in enumerate(tqdm(drawn, desc="evaluating", unit="episode", disable=None if progress else True,
                               leave=False)):
        ways, queries = len(d.classes), query_counts(d)
        support = features[torch.from_numpy(np.searchsorted(slots, support_slots[i])).to(device)]
        query = features[torch.from_numpy(np.searchsorted(slots, query_slots[i])).to(device)]
        labels = torch.arange(ways, device=device).repeat_interleave(torch.as_tensor([len(s) for s in d.support],
                                                                                     device=device))
        guesses = classify_refined(model, support, labels, query, ways, refine, refine_steps, threshold).argmax(1)
        guesses = guesses.cpu().numpy()
        accuracies[i] = (guesses == np.repeat(np.arange(ways), queries)).mean()
        truth.append(np.repeat(d.classes, queries))
        predicted.append(d.classes[guesses])
    return accuracies, np.concatenate(truth), np.concatenate(predicted)


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
