"""Episodes from a learn2learn task pipeline, so that its users can evaluate with our evaluator.

A learn2learn ``TaskDataset`` (or anything with ``sample()`` returning ``(X, y)``: images
``(ways*(shots+queries), C, H, W)`` and their labels) becomes :class:`~episodes.dataset.Episode`
objects: in each task, the first ``shots`` images of every label are the support and the rest the
queries, labels are renumbered ``0..ways-1`` in order of first appearance. learn2learn itself is never
imported here (it is optional; see ``benchmarks/build_learn2learn.sh``).

Images pass through unchanged: float images must already be normalized as the model expects (our
models normalize only uint8 input); ``to_uint8=True`` turns ``[0, 1]`` floats (``ToTensor()`` output)
into uint8 so that the model applies its own normalization.
"""

from __future__ import annotations

from typing import Iterator

import torch

from .dataset import Episode
from .errors import EpisodesError


def task_to_episode(images: torch.Tensor, labels: torch.Tensor, shots: int, index: int = 0,
                    to_uint8: bool = False) -> Episode:
    """One task ``images`` ``(N, C, H, W)``, ``labels`` ``(N,)`` -> an :class:`Episode` with ``shots``
    support images per label and every other image of that label as a query."""
    labels = torch.as_tensor(labels).flatten()
    if images.ndim != 4 or len(images) != len(labels):
        raise EpisodesError(f"a task must be images (N, C, H, W) and N labels, got {tuple(images.shape)} and "
                            f"{tuple(labels.shape)}")
    order = list(dict.fromkeys(labels.tolist()))  # labels in order of first appearance
    positions = [torch.nonzero(labels == label).flatten() for label in order]
    counts = {len(p) for p in positions}
    if len(counts) != 1 or min(counts) <= shots:
        raise EpisodesError(f"task {index}: every label needs the same number of images, more than shots={shots}; "
                            f"got {sorted(len(p) for p in positions)}")
    queries = counts.pop() - shots
    support = torch.cat([p[:shots] for p in positions])
    query = torch.cat([p[shots:] for p in positions])
    if to_uint8:
        images = (images.float().clamp(0, 1) * 255).round().to(torch.uint8)
    ways = torch.arange(len(order))
    return Episode(index=index, support=images[support], support_labels=ways.repeat_interleave(shots),
                   query=images[query], query_labels=ways.repeat_interleave(queries),
                   class_names=[str(label) for label in order])


def episodes_from_taskset(taskset, shots: int, count: int, to_uint8: bool = False) -> Iterator[Episode]:
    """``count`` episodes from ``taskset.sample()`` (a learn2learn ``TaskDataset``), each split by
    :func:`task_to_episode`."""
    for index in range(count):
        images, labels = taskset.sample()
        yield task_to_episode(images, labels, shots, index, to_uint8)
