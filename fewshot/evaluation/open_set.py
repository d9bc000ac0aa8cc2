"""Few-shot open-set recognition, the researchers' protocol (``fewshot eval --open-set U``; PEELER, SnaTCHer): each
N-way K-shot episode also draws ``U`` unseen classes, disjoint from its N, with the same number of queries each
and no support images. The model is fitted once on the N classes' support set (:meth:`FewShotModel.fit`, the
inductive form of a transductive head, calibrated with the model's temperature table, as a practitioner's
classifier is) and each query scored on its own. Reported per episode and averaged with 95% intervals: the
closed-set accuracy on the known classes' queries and the AUROC of the unknown score separating unseen from known
queries (:mod:`fewshot.inference.open_set`)."""

from __future__ import annotations

import time

import numpy as np
import torch
from tqdm.auto import tqdm

from episodes import EpisodeSampler, FewShotSplit

from ..errors import FewshotError
from ..inference.calibration import calibrated
from ..inference.embedding import embedder
from ..inference.open_set import DEFAULT_SCORE, auroc, resolve_score
from ..model.capabilities import require
from ..model.network import FewShotModel
from .embedded import class_offsets, embedded_slots, episode_slots
from .episodic import EvalResult, confidence_interval


def evaluate_open_set(model: FewShotModel, split: FewShotSplit, ways: int, shots: int, queries: int, episodes: int,
                      unknown_ways: int, seed: int = 0, device: torch.device | str = "cpu", batch_size: int = 256,
                      progress: bool = True, runtime: str = "auto", score: str = DEFAULT_SCORE,
                      temperature: dict | None = None) -> EvalResult:
    """Closed-set accuracy (``accuracies``) and, in ``extra["open_set"]``, the AUROC over ``episodes`` episodes of
    ``ways`` known and ``unknown_ways`` unseen classes; ``temperature``: the model's calibration table
    (``config.model.temperature``)."""
    require(model, "open_set")
    score = resolve_score(score, model.head)
    if len(split.class_sizes) < ways + unknown_ways:
        raise FewshotError(f"--open-set {unknown_ways}: each episode needs {ways} known + {unknown_ways} unseen "
                           f"classes, the split has {len(split.class_sizes)}: lower --ways or --open-set")
    sampler = EpisodeSampler(split.class_sizes, ways + unknown_ways, shots, queries, seed)
    drawn = [sampler.sample(i) for i in range(episodes)]
    offsets = class_offsets(split)
    support_slots, query_slots = episode_slots(drawn, offsets)
    support_slots = support_slots[:, :ways * shots]  # class-major: the unseen classes' support is never shown
    device = torch.device(device)
    was_training = model.training
    model.eval()
    start = time.perf_counter()
    try:
        with torch.inference_mode():
            slots, features = embedded_slots(embedder(model, runtime, device), split,
                                             np.concatenate([support_slots.ravel(), query_slots.ravel()]), offsets,
                                             batch_size, progress)
            accuracies, areas = score_episodes(model, features, np.searchsorted(slots, support_slots),
                                               np.searchsorted(slots, query_slots), ways, shots, queries, score,
                                               temperature or {}, progress)
    finally:
        model.train(was_training)
    result = EvalResult(accuracies, ways, shots, queries, time.perf_counter() - start, seed)
    result.extra["open_set"] = {"unknown_ways": unknown_ways, "score": score, "auroc": 100 * float(areas.mean()),
                                "auroc_ci95": 100 * confidence_interval(areas),
                                "per_episode_auroc": [100 * float(a) for a in areas]}
    return result


def score_episodes(model: FewShotModel, features: torch.Tensor, support_rows: np.ndarray, query_rows: np.ndarray,
                   ways: int, shots: int, queries: int, score: str, temperature: dict, progress: bool
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(closed-set accuracy ``(E,)``, AUROC ``(E,)``) of episodes whose support rows ``(E, ways*shots)`` and query
    rows ``(E, (ways+U)*queries)`` index ``features`` ``(N, *F)``; the first ``ways*queries`` queries are known."""
    labels = torch.arange(ways, device=features.device).repeat_interleave(shots)
    truth = torch.arange(ways, device=features.device).repeat_interleave(queries)
    known = ways * queries
    accuracies, areas = [], []
    for support, query in tqdm(zip(support_rows, query_rows), total=len(support_rows), desc="open-set episodes",
                               unit="episode", disable=None if progress else True, leave=False):
        support, query = torch.from_numpy(support).to(features.device), torch.from_numpy(query).to(features.device)
        fitted = calibrated(model.fit(features[support], labels, ways, unknown_score=score), labels, temperature)
        probabilities, scores = model.fitted_scores(fitted, features[query])
        accuracies.append(float((probabilities[:known].argmax(-1) == truth).float().mean()))
        areas.append(auroc(scores[:known].cpu(), scores[known:].cpu()))
    return np.array(accuracies), np.array(areas)


def open_set_summary(result: EvalResult) -> str:
    """``AUROC 81.4 ± 0.7 % (energy score, 5 unseen classes per episode)`` of an :func:`evaluate_open_set` result."""
    found = result.extra["open_set"]
    interval = f"± {found['auroc_ci95']:.2f} " if np.isfinite(found["auroc_ci95"]) else ""
    return (f"unseen vs known AUROC {found['auroc']:.2f} {interval}% ({found['score']} score, "
            f"{found['unknown_ways']} unseen classes per episode, {result.queries} queries each)")


__all__ = ["evaluate_open_set", "open_set_summary"]
