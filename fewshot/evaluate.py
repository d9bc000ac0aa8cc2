"""Episodic evaluation: mean accuracy over episodes with its 95% confidence interval.

When the head leaves the backbone unchanged at test time (every head but fine-tuning ones), each
image of the split is embedded once, in large batches, and the embeddings are reused across all
episodes; only the head runs per episode. The plain path (``fast=False``) embeds every episode from
its images, and gives the same accuracies.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from episodes import EpisodeSampler, FewShotSplit

from .errors import FewshotError
from .model import FewShotModel
from .refine import classify_refined
from .runtime import autocast


def confidence_interval(accuracies: np.ndarray) -> float:
    """Half-width of the 95% interval of the mean: ``1.96 * std / sqrt(episodes)`` (sample std)."""
    if len(accuracies) < 2:
        return float("nan")
    return float(1.96 * np.std(accuracies, ddof=1) / math.sqrt(len(accuracies)))


@dataclass
class EvalResult:
    """Per-episode accuracies (fractions) and the episode shape; ``accuracy``/``ci95`` in percent."""

    accuracies: np.ndarray
    ways: int
    shots: int
    queries: int
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
        return (f"{self.ways}-way {self.shots}-shot: {self.accuracy:.2f} ± {self.ci95:.2f} % "
                f"(95% CI, {len(self.accuracies)} episodes, {self.queries} queries per class)")

    def to_json(self) -> dict:
        return {"accuracy": self.accuracy, "ci95": self.ci95, "episodes": len(self.accuracies), "ways": self.ways,
                "shots": self.shots, "queries": self.queries, "seed": self.seed, "seconds": self.seconds,
                **self.extra, "per_episode": [float(a) for a in self.accuracies]}


def embed_split(model: FewShotModel, split: FewShotSplit, device: torch.device, batch_size: int = 256,
                progress: bool = True, amp: bool = True) -> tuple[torch.Tensor, np.ndarray]:
    """Embed every image of every class once.

    Returns ``features`` ``(sum(class_sizes), *F)`` on ``device`` and ``offsets`` ``(classes,)``: image
    ``p`` of class ``c`` is row ``offsets[c] + p``.
    """
    from tqdm.auto import tqdm

    sizes = np.asarray(split.class_sizes)
    offsets = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.int64)
    chunks: list[torch.Tensor] = []
    pending: list[torch.Tensor] = []
    waiting = 0
    bar = tqdm(total=int(sizes.sum()), desc="embedding", unit="img", disable=None if progress else True,
               leave=False)

    def flush():
        nonlocal pending, waiting
        batch = torch.cat(pending).to(device, non_blocking=True)
        with autocast(device, amp):
            chunks.append(model.embed(batch).float())
        bar.update(len(batch))
        pending, waiting = [], 0

    for class_id, size in enumerate(sizes):
        images = split.images(class_id, np.arange(size))
        for start in range(0, size, batch_size):
            part = images[start:start + batch_size]
            pending.append(part)
            waiting += len(part)
            if waiting >= batch_size:
                flush()
    if pending:
        flush()
    bar.close()
    return torch.cat(chunks), offsets


def evaluate(model: FewShotModel, split: FewShotSplit, ways: int, shots: int, queries: int, episodes: int,
             seed: int = 0, device: torch.device | str = "cpu", batch_size: int = 256, fast: bool | None = None,
             progress: bool = True, amp: bool = True, refine: str = "none", refine_steps: int = 1,
             threshold: float = 0.9, per_class: bool = False) -> EvalResult:
    """Accuracy of ``model`` on ``episodes`` episodes of ``split`` (episode ``i`` of ``seed``).

    ``refine``: ``none``, ``soft_kmeans`` or ``self_training`` (see :mod:`fewshot.refine`).
    ``per_class``: also gather every query's true and predicted class, for :func:`per_class_report`.
    """
    from tqdm.auto import tqdm

    device = torch.device(device)
    sampler = EpisodeSampler(split.class_sizes, ways, shots, queries, seed)
    adapts = model.head.adapts_backbone
    if adapts and refine != "none":
        raise FewshotError(f"refinement '{refine}' works on embeddings; head '{type(model.head).__name__}' "
                           "adapts the backbone per episode: use --refine none")
    fast = not adapts if fast is None else fast and not adapts
    truth: list[np.ndarray] = []
    predicted: list[np.ndarray] = []
    was_training = model.training
    model.eval()
    accuracies = np.zeros(episodes)
    start = time.perf_counter()
    support_labels = torch.arange(ways, device=device).repeat_interleave(shots)
    query_labels = torch.arange(ways, device=device).repeat_interleave(queries)
    try:
        with torch.inference_mode():
            if fast:
                features, offsets = embed_split(model, split, device, batch_size, progress, amp)
            bar = tqdm(range(episodes), desc="evaluating", unit="episode", disable=None if progress else True,
                       leave=False)
            for i in bar:
                drawn = sampler.sample(i)
                if fast:
                    base = offsets[drawn.classes][:, None]
                    support_ids = torch.from_numpy((base + drawn.support).ravel()).to(device)
                    query_ids = torch.from_numpy((base + drawn.query).ravel()).to(device)
                    support_features, query_features = features[support_ids], features[query_ids]
                else:
                    episode = split.episode(drawn).to(device)
                    with autocast(device, amp):
                        if adapts:
                            logits = model(episode.support, support_labels, episode.query, ways)
                        else:
                            embedded = model.embed(torch.cat([episode.support, episode.query])).float()
                            support_features, query_features = embedded[: ways * shots], embedded[ways * shots:]
                if not adapts:
                    logits = classify_refined(model, support_features, support_labels, query_features, ways,
                                              refine, refine_steps, threshold)
                guesses = logits.argmax(dim=1)
                accuracies[i] = (guesses == query_labels).float().mean().item()
                if per_class:
                    truth.append(np.repeat(drawn.classes, queries))
                    predicted.append(drawn.classes[guesses.cpu().numpy()])
    finally:
        model.train(was_training)
    result = EvalResult(accuracies, ways, shots, queries, time.perf_counter() - start, seed)
    if refine != "none":
        result.extra["refine"] = refine
    if per_class:
        result.extra["per_class"] = per_class_report(split.class_names, np.concatenate(truth),
                                                     np.concatenate(predicted))
    return result


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
