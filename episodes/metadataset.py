"""Meta-Dataset's variable episodes (Triantafillou et al., ICLR 2020): each episode draws its own number of
ways and of shots per class, with unbalanced support sets.

The rules, with Meta-Dataset's default values (every one a field of :class:`MetaDatasetConfig`):

* ways ~ uniform in [min_ways, min(max_ways, classes available)] (5 and 50); with a hierarchy (a folder level
  above the classes, such as Omniglot's alphabets) a parent is drawn uniformly among those holding at least
  ``min_ways`` classes, and all of the episode's classes come from it;
* queries per class q = min(max_queries, floor(min over the chosen classes of n_c / 2)) (max_queries 10);
* support size |S| = min(sum over classes of (floor(beta * min(max_support_per_class, n_c - q)) + 1),
  max_support_size) with beta ~ U(0, 1) (100 and 500);
* shots: class c gets a share proportional to n_c * exp(u_c), u_c ~ U(log 0.5, log 2), of the |S| - ways
  images left once each class has one: shots_c = min(floor(share_c * (|S| - ways)) + 1, n_c - q), so
  1 <= shots_c <= n_c - q.

Episode ``i`` of seed ``s`` is drawn from its own generator seeded by ``(s, i)``, like
:class:`~episodes.sampler.EpisodeSampler`: the same whatever the worker, rank or order of drawing.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields
from typing import Sequence

import numpy as np

from .errors import EpisodesError

_ROTATION = re.compile(r"/rot\d{3}$")


def _ranged(default, low: float, high: float | None = None):
    """A field with its allowed range declared as ``metadata["range"] = (low, high, above, below)``, the form
    config layers read to check values and write help."""
    return field(default=default, metadata={"range": (low, high, None, None)})


@dataclass(frozen=True)
class MetaDatasetConfig:
    """Meta-Dataset's sampling limits (its defaults)."""

    min_ways: int = _ranged(5, 2)
    max_ways: int = _ranged(50, 2)
    max_queries: int = _ranged(10, 1)
    max_support_per_class: int = _ranged(100, 1)
    max_support_size: int = _ranged(500, 1)
    min_log_weight: float = _ranged(math.log(0.5), -10.0, 10.0)
    max_log_weight: float = _ranged(math.log(2.0), -10.0, 10.0)
    hierarchy: bool = True  # draw each episode's classes from one parent where the classes have parents

    def __post_init__(self):
        for name in ("min_ways", "max_ways", "max_queries", "max_support_per_class", "max_support_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < (2 if "ways" in name else 1):
                raise EpisodesError(f"metadataset.{name} must be an integer >= {2 if 'ways' in name else 1}, "
                                    f"got {value!r}")
        if self.max_ways < self.min_ways:
            raise EpisodesError(f"metadataset.max_ways ({self.max_ways}) is below min_ways ({self.min_ways})")
        if self.max_support_size < self.max_ways:
            raise EpisodesError(f"metadataset.max_support_size ({self.max_support_size}) must be at least max_ways "
                                f"({self.max_ways}): every class needs one support image")
        if not self.min_log_weight <= self.max_log_weight:
            raise EpisodesError("metadataset.min_log_weight must not exceed max_log_weight")

    @classmethod
    def keys(cls) -> list[str]:
        return [f.name for f in fields(cls)]


@dataclass(frozen=True)
class VariableEpisodeIndices:
    """Which images form a variable episode.

    ``classes``: ``(ways,)`` class ids (label ``j`` is ``classes[j]``); ``support``: one array of positions per
    class, of lengths ``shots`` (they differ); ``query``: ``(ways, queries)`` positions (one count per episode),
    or one array per class when the query counts differ too (:class:`~episodes.sampler.DirichletQuerySampler`).
    """

    index: int
    classes: np.ndarray
    support: tuple[np.ndarray, ...]
    query: np.ndarray | tuple[np.ndarray, ...]

    @property
    def shots(self) -> np.ndarray:
        return np.array([len(s) for s in self.support])


def class_parent(name: str) -> str | None:
    """The folder above a class (``Alphabet`` for ``Alphabet/character01`` or ``.../character01/rot090``), or
    None for a class at the top of its root."""
    base = _ROTATION.sub("", name)
    return base.rsplit("/", 1)[0] if "/" in base else None


def parents_of(names: Sequence[str]) -> list[int] | None:
    """A parent id per class when every class has a parent and there are at least two; else None (flat)."""
    parents = [class_parent(n) for n in names]
    if any(p is None for p in parents) or len(set(parents)) < 2:
        return None
    order = {p: i for i, p in enumerate(sorted(set(parents)))}
    return [order[p] for p in parents]


class MetaDatasetSampler:
    """Draws :class:`VariableEpisodeIndices` for classes of the given sizes; ``parents``: a group id per class
    (see :func:`parents_of`) to draw every episode's classes from one group, or None."""

    def __init__(self, class_sizes: Sequence[int], seed: int = 0, config: MetaDatasetConfig = MetaDatasetConfig(),
                 parents: Sequence[int] | None = None, source: str = "the split"):
        self.class_sizes = np.asarray(class_sizes, dtype=np.int64)
        self.seed, self.config = int(seed), config
        small = int((self.class_sizes < 2).sum())
        if small:
            raise EpisodesError(f"{source}: {small} classes have fewer than 2 images (one support, one query); "
                                "remove them")
        if len(self.class_sizes) < config.min_ways:
            raise EpisodesError(f"{source} has {len(self.class_sizes)} classes; Meta-Dataset episodes need at least "
                                f"min_ways={config.min_ways}")
        self.groups: list[np.ndarray] | None = None
        if parents is not None and config.hierarchy:
            if len(parents) != len(self.class_sizes):
                raise EpisodesError("one parent per class is needed")
            parents = np.asarray(parents)
            groups = [np.flatnonzero(parents == p) for p in np.unique(parents)]
            self.groups = [g for g in groups if len(g) >= config.min_ways]
            if not self.groups:
                raise EpisodesError(f"{source}: no parent folder holds min_ways={config.min_ways} classes (the "
                                    f"largest holds {max(len(g) for g in groups)}): set metadataset.hierarchy: false "
                                    "or lower metadataset.min_ways")

    @property
    def most_ways(self) -> int:
        """The largest number of ways an episode can have."""
        pool = max(len(g) for g in self.groups) if self.groups else len(self.class_sizes)
        return min(self.config.max_ways, pool)

    def generator(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, int(index)])

    def sample(self, index: int) -> VariableEpisodeIndices:
        """Draw episode ``index`` (any non-negative integer)."""
        cfg, rng = self.config, self.generator(index)
        pool = self.groups[rng.integers(len(self.groups))] if self.groups else np.arange(len(self.class_sizes))
        ways = int(rng.integers(cfg.min_ways, min(cfg.max_ways, len(pool)) + 1))
        classes = rng.choice(pool, size=ways, replace=False)
        sizes = self.class_sizes[classes]
        queries = int(min(cfg.max_queries, (sizes // 2).min()))
        remaining = sizes - queries
        beta = rng.uniform()
        support_size = int(min((np.floor(beta * np.minimum(cfg.max_support_per_class, remaining)) + 1).sum(),
                               cfg.max_support_size))
        weights = sizes * np.exp(rng.uniform(cfg.min_log_weight, cfg.max_log_weight, size=ways))
        shots = np.minimum(np.floor(weights / weights.sum() * (support_size - ways)).astype(np.int64) + 1, remaining)
        support, query = [], []
        for c, k in zip(classes, shots):
            picks = rng.permutation(self.class_sizes[c])[: k + queries]
            support.append(np.sort(picks[:k]))
            query.append(picks[k:])
        return VariableEpisodeIndices(int(index), classes, tuple(support), np.stack(query))
