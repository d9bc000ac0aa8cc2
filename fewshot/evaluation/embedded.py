"""The fast path of episodic evaluation: every image the episodes use is embedded once, then all episodes are
classified from the embeddings in batches (:func:`evaluate_embedded`; :func:`evaluate_embedded_variable` for
episodes of varying shapes, as Meta-Dataset's)."""

from __future__ import annotations

import numpy as np
import torch
from einops import rearrange

from episodes import EpisodeIndices, FewShotSplit, query_counts

from ..inference.embedding import Embedder, embedder
from ..inference.refine import classify_refined
from ..model.network import FewShotModel


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


def evaluate_embedded(model, split, drawn, device, batch_size, progress, precision, refine, refine_steps,
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


def evaluate_embedded_variable(model, split, drawn, device, batch_size, progress, precision, refine, refine_steps,
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
