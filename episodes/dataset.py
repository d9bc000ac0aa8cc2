"""A split with its decoded images, and episodes drawn from it as tensors.

:func:`open_split` resolves a :class:`~episodes.splits.SplitSpec` to classes, leaves out classes too
small for the episodes asked for (one warning naming them), decodes every image once through the
cache, and returns a :class:`FewShotSplit`. :class:`EpisodeDataset` wraps a split and an
:class:`~episodes.sampler.EpisodeSampler` as a map-style torch ``Dataset`` whose item ``i`` is episode
``i``; use it with ``DataLoader(dataset, batch_size=None, num_workers=...)``.
"""

from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .cache import load_decoded
from .discovery import ImageClass
from .errors import EpisodesError, EpisodesWarning, preview
from .images import apply_per_image, rotate
from .metadataset import VariableEpisodeIndices
from .sampler import EpisodeIndices, EpisodeSampler
from .splits import SplitSpec, resolve_split


@dataclass
class Episode:
    """One few-shot task.

    ``support``: ``(S, C, H, W)`` uint8, grouped by label (all of label 0 first); ``support_labels``: ``(S,)``
    int64 in ``0..ways-1``; ``query``: ``(ways*queries, C, H, W)`` uint8; ``query_labels``: ``(ways*queries,)``;
    ``class_names[j]`` is the class of label ``j``; ``source``: the data source it came from ('' with one).
    N-way K-shot episodes have ``S = ways*shots``; Meta-Dataset episodes have a count per class
    (:attr:`shots`).
    """

    index: int
    support: torch.Tensor
    support_labels: torch.Tensor
    query: torch.Tensor
    query_labels: torch.Tensor
    class_names: list[str]
    source: str = ""

    @property
    def ways(self) -> int:
        return len(self.class_names)

    @property
    def shots(self) -> torch.Tensor:
        """``(ways,)`` support images per class."""
        return torch.bincount(self.support_labels, minlength=self.ways)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> "Episode":
        """A copy with every tensor on ``device``."""
        move = lambda t: t.to(device, non_blocking=non_blocking)  # noqa: E731
        return replace(self, support=move(self.support), support_labels=move(self.support_labels),
                       query=move(self.query), query_labels=move(self.query_labels))


def drop_small_classes(classes: list[ImageClass], min_images: int, ways: int | None, where: str) -> list[ImageClass]:
    """Leave out classes with fewer than ``min_images`` images, warning once with their names.

    Raises when fewer than ``ways`` classes remain, saying how many are needed and available.
    """
    kept = [cls for cls in classes if len(cls) >= min_images]
    dropped = [f"{cls.name} ({len(cls)})" for cls in classes if len(cls) < min_images]
    if dropped:
        warnings.warn(f"left out {len(dropped)} classes of {where} with fewer than {min_images} images "
                      f"(shots+queries): {preview(dropped)}", EpisodesWarning, stacklevel=3)
    if ways is not None and len(kept) < ways:
        raise EpisodesError(
            f"{where}: {ways}-way episodes need {ways} classes with at least {min_images} images "
            f"(shots+queries), but only {len(kept)} of {len(classes)} classes have that many"
        )
    if not kept:
        raise EpisodesError(f"{where}: no class has at least {min_images} images (shots+queries)")
    return kept


class FewShotSplit:
    """Classes of one split and their decoded images.

    ``pixels`` is the ``(num_files, C, H, W)`` uint8 array of every distinct file (memory-mapped from
    the cache); ``class_rows[c]`` holds the rows of class ``c``'s images; ``rotations[c]`` its rotation.
    """

    def __init__(self, classes: Sequence[ImageClass], pixels: np.ndarray, class_rows: Sequence[np.ndarray],
                 files: Sequence[Path]):
        self.classes = list(classes)
        self.pixels = pixels
        self.class_rows = [np.asarray(rows, dtype=np.int64) for rows in class_rows]
        self.rotations = [cls.rotation for cls in self.classes]
        self.files = list(files)

    @property
    def class_names(self) -> list[str]:
        return [cls.name for cls in self.classes]

    @property
    def class_sizes(self) -> list[int]:
        return [len(rows) for rows in self.class_rows]

    @property
    def image_shape(self) -> tuple[int, int, int]:
        """``(C, H, W)`` of every image."""
        return tuple(self.pixels.shape[1:])

    def __len__(self) -> int:
        return len(self.classes)

    def images(self, class_id: int, positions: np.ndarray | Sequence[int]) -> torch.Tensor:
        """``(len(positions), C, H, W)`` uint8 images of one class, rotated as the class says."""
        rows = self.class_rows[class_id][np.asarray(positions, dtype=np.int64)]
        return torch.from_numpy(np.ascontiguousarray(rotate(self.pixels[rows], self.rotations[class_id])))

    def paths(self, class_id: int, positions: np.ndarray | Sequence[int]) -> list[Path]:
        """Files of the images at ``positions`` of class ``class_id``."""
        rows = self.class_rows[class_id]
        return [self.files[rows[p]] for p in positions]

    def episode(self, indices: EpisodeIndices | VariableEpisodeIndices) -> Episode:
        """Gather the tensors of an episode (fixed, or with a support count per class): one indexed copy of
        its rows, no decoding."""
        ways = len(indices.classes)
        shots = [len(positions) for positions in indices.support]
        queries = [len(positions) for positions in indices.query]
        class_rows = [self.class_rows[c] for c in indices.classes]
        support_rows = np.concatenate([rows[pos] for rows, pos in zip(class_rows, indices.support)])
        query_rows = np.concatenate([rows[pos] for rows, pos in zip(class_rows, indices.query)])
        pixels = np.take(self.pixels, np.concatenate([support_rows, query_rows]), axis=0)
        starts = np.concatenate([[0], np.cumsum(shots)[:-1]])
        query_starts = len(support_rows) + np.concatenate([[0], np.cumsum(queries)[:-1]])
        for label, class_id in enumerate(indices.classes):
            if self.rotations[class_id]:
                for start, count in ((starts[label], shots[label]), (query_starts[label], queries[label])):
                    block = pixels[start:start + count]
                    block[:] = rotate(block.copy(), self.rotations[class_id])
        images = torch.from_numpy(pixels)
        labels = torch.arange(ways)
        return Episode(
            index=indices.index,
            support=images[: len(support_rows)],
            support_labels=labels.repeat_interleave(torch.as_tensor(shots)),
            query=images[len(support_rows):],
            query_labels=labels.repeat_interleave(torch.as_tensor(queries)),
            class_names=[self.classes[c].name for c in indices.classes],
        )


def open_split(spec: SplitSpec, *, image_size: int, channels: int, min_images: int = 1, ways: int | None = None,
               cache_dir: str | os.PathLike | None = None, use_cache: bool = True, skip_corrupt: bool = False,
               workers: int | None = None, progress: bool = True) -> FewShotSplit:
    """Resolve, filter and decode a split (see the module docstring)."""
    where = spec.describe()
    classes = drop_small_classes(resolve_split(spec), min_images, ways, where)
    files: list[Path] = []
    row_of: dict[Path, int] = {}
    class_rows = []
    for cls in classes:
        rows = []
        for path in cls.files:
            if path not in row_of:
                row_of[path] = len(files)
                files.append(path)
            rows.append(row_of[path])
        class_rows.append(np.asarray(rows, dtype=np.int64))
    decoded = load_decoded(files, image_size, channels, cache_dir=cache_dir, use_cache=use_cache,
                           skip_corrupt=skip_corrupt, workers=workers, progress=progress)
    if not decoded.valid.all():
        class_rows = [rows[decoded.valid[rows]] for rows in class_rows]
        classes = [replace(cls, files=tuple(files[r] for r in rows)) for cls, rows in zip(classes, class_rows)]
        kept = {cls.name for cls in drop_small_classes(classes, min_images, ways, where)}
        keep = [i for i, cls in enumerate(classes) if cls.name in kept]
        classes = [classes[i] for i in keep]
        class_rows = [class_rows[i] for i in keep]
    return FewShotSplit(classes, decoded.pixels, class_rows, files)


class EpisodeDataset(Dataset):
    """Map-style dataset of episodes, as :class:`Episode` objects.

    ``episodes`` is a count ``n`` (item ``i`` is episode ``i``) or a sequence of episode indices (item ``i``
    is episode ``episodes[i]``; a ``range`` with a step gives each data-parallel rank its own stream).
    ``transform`` (optional) is applied to every image separately, with torch's random state seeded from
    the episode index, so augmented episodes are also independent of worker count and order.
    """

    def __init__(self, split: FewShotSplit, sampler: EpisodeSampler, episodes: int | Sequence[int],
                 transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.split, self.sampler, self.transform = split, sampler, transform
        self.indices = range(episodes) if isinstance(episodes, int) else episodes

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, item: int) -> Episode:
        index = int(self.indices[item])
        episode = self.split.episode(self.sampler.sample(index))
        if self.transform is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(int(self.sampler.generator(index).integers(2**62)) + 1)
                episode.support = apply_per_image(self.transform, episode.support)
                if len(episode.query):
                    episode.query = apply_per_image(self.transform, episode.query)
        return episode


class LabelledImages(Dataset):
    """Every image of a split with its class id, for supervised (pretraining) batches.

    Item ``i`` is ``(image (C, H, W) uint8, class id)``; ``transform`` is applied per image.
    """

    def __init__(self, split: FewShotSplit, transform: Callable[[torch.Tensor], torch.Tensor] | None = None):
        self.split, self.transform = split, transform
        self.items = [(c, p) for c, size in enumerate(split.class_sizes) for p in range(size)]

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, item: int) -> tuple[torch.Tensor, int]:
        class_id, position = self.items[item]
        image = self.split.images(class_id, [position])[0]
        return (self.transform(image) if self.transform is not None else image), class_id
