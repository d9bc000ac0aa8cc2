"""N-way K-shot Q-query episode sampling.

Episode ``i`` of seed ``s`` is drawn from its own random generator, seeded by ``(s, i)``: it is the
same whatever the number of DataLoader workers, the order episodes are asked for, or how many were
drawn before. Within an episode the classes come in a random order that defines labels
``0..ways-1``, and each class's support and query images are drawn without replacement, so they
never share an image.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import EpisodesError


@dataclass(frozen=True)
class EpisodeIndices:
    """Which images form an episode.

    ``classes``: ``(ways,)`` class ids, label ``j`` is ``classes[j]``;
    ``support``: ``(ways, shots)`` and ``query``: ``(ways, queries)`` positions within each class.
    """

    index: int
    classes: np.ndarray
    support: np.ndarray
    query: np.ndarray


class EpisodeSampler:
    """Draws :class:`EpisodeIndices` for classes of the given sizes."""

    def __init__(self, class_sizes: Sequence[int], ways: int, shots: int, queries: int, seed: int = 0):
        for name, value, least in (("ways", ways, 2), ("shots", shots, 1), ("queries", queries, 0)):
            if int(value) != value or value < least:
                raise EpisodesError(f"{name} must be an integer >= {least}, got {value}")
        self.class_sizes = np.asarray(class_sizes, dtype=np.int64)
        self.ways, self.shots, self.queries, self.seed = int(ways), int(shots), int(queries), int(seed)
        need = self.shots + self.queries
        small = int((self.class_sizes < need).sum())
        if small:
            raise EpisodesError(f"{small} classes have fewer than shots+queries={need} images")
        if ways > len(self.class_sizes):
            raise EpisodesError(
                f"ways={ways} but only {len(self.class_sizes)} classes are available: lower --ways "
                f"or add classes"
            )

    @property
    def most_ways(self) -> int:
        """The number of ways of every episode."""
        return self.ways

    def generator(self, index: int) -> np.random.Generator:
        """The random generator owned by episode ``index``."""
        return np.random.default_rng([self.seed, int(index)])

    def sample(self, index: int) -> EpisodeIndices:
        """Draw episode ``index`` (any non-negative integer)."""
        rng = self.generator(index)
        classes = rng.choice(len(self.class_sizes), size=self.ways, replace=False)
        per_class = self.shots + self.queries
        picks = np.stack([rng.choice(self.class_sizes[c], size=per_class, replace=False) for c in classes])
        return EpisodeIndices(int(index), classes, picks[:, : self.shots], picks[:, self.shots :])
