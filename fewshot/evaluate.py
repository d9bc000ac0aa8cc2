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

from .model import FewShotModel
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
             progress: bool = True, amp: bool = True) -> EvalResult:
    """Accuracy of ``model`` on ``episodes`` episodes of ``split`` (episode ``i`` of ``seed``)."""
    from tqdm.auto import tqdm

    device = torch.device(device)
    sampler = EpisodeSampler(split.class_sizes, ways, shots, queries, seed)
    fast = not model.head.adapts_backbone if fast is None else fast
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
                    logits = model.classify(features[support_ids], support_labels, features[query_ids], ways)
                else:
                    episode = split.episode(drawn).to(device)
                    with autocast(device, amp):
                        logits = model(episode.support, support_labels, episode.query, ways)
                accuracies[i] = (logits.argmax(dim=1) == query_labels).float().mean().item()
    finally:
        model.train(was_training)
    return EvalResult(accuracies, ways, shots, queries, time.perf_counter() - start, seed)
