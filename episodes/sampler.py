"""N-way K-shot Q-query episode sampling.

Episode ``i`` of seed ``s`` is drawn from its own random generator, seeded by ``(s, i)``: it is the
same whatever the number of DataLoader workers, the order episodes are asked for, or how many were
drawn before. Within an episode the classes come in a random order that defines labels
``0..ways-1``, and each class's support and query images are drawn without replacement, so they
never share an image.

:class:`DirichletQuerySampler` draws realistic, imbalanced query sets (Veilleux et al., NeurIPS 2021): the
class proportions of the ``ways * queries`` queries come from a symmetric Dirichlet distribution.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .errors import EpisodesError
from .metadataset import VariableEpisodeIndices


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


def query_counts(indices) -> np.ndarray:
    """Queries per class ``(ways,)`` of any drawn episode (a ``(ways, queries)`` array or one array per class)."""
    return np.array([len(q) for q in indices.query], dtype=np.int64)


def dirichlet_counts(rng: np.random.Generator, ways: int, total: int, alpha: float, capacity: np.ndarray
                     ) -> np.ndarray:
    """``(ways,)`` query counts summing to ``total``: proportions drawn from ``Dirichlet(alpha, ..., alpha)``,
    rounded by largest remainder (a class may get none), each at most ``capacity[c]`` (a class's overflow goes to
    the classes with room, the largest proportion first)."""
    proportions = rng.dirichlet(np.full(ways, float(alpha)))
    raw = proportions * total
    counts = np.floor(raw).astype(np.int64)
    order = np.argsort(-(raw - counts), kind="stable")
    counts[order[: total - int(counts.sum())]] += 1
    overflow = int(np.clip(counts - capacity, 0, None).sum())
    counts = np.minimum(counts, capacity)
    for c in np.argsort(-proportions, kind="stable"):
        moved = min(overflow, int(capacity[c] - counts[c]))
        counts[c] += moved
        overflow -= moved
    return counts


class DirichletQuerySampler(EpisodeSampler):
    """N-way K-shot episodes whose ``ways * queries`` queries are spread over the classes by proportions from a
    symmetric Dirichlet with concentration ``alpha`` (small: a few classes take most queries; large: balanced),
    as in Veilleux et al. (NeurIPS 2021; they use ``alpha = 2``). The support stays ``shots`` per class. Draws
    :class:`~episodes.metadataset.VariableEpisodeIndices` with one query array per class."""

    def __init__(self, class_sizes: Sequence[int], ways: int, shots: int, queries: int, alpha: float,
                 seed: int = 0):
        super().__init__(class_sizes, ways, shots, queries, seed)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not alpha > 0:
            raise EpisodesError(f"the Dirichlet concentration must be a number > 0, got {alpha!r}")
        self.alpha = float(alpha)

    def sample(self, index: int) -> VariableEpisodeIndices:
        rng = self.generator(index)
        classes = rng.choice(len(self.class_sizes), size=self.ways, replace=False)
        counts = dirichlet_counts(rng, self.ways, self.ways * self.queries, self.alpha,
                                  self.class_sizes[classes] - self.shots)
        picks = [rng.choice(self.class_sizes[c], size=self.shots + n, replace=False) for c, n in zip(classes, counts)]
        return VariableEpisodeIndices(int(index), classes, tuple(p[: self.shots] for p in picks),
                                      tuple(p[self.shots:] for p in picks))
