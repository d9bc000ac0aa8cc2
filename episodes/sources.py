"""Episodes from several data sources at once, one source per episode (Meta-Dataset's training setting).

:class:`SourceMixture` draws, for episode ``i``, a source with probability proportional to its weight, then
that source's own sampler draws episode ``i`` from it; both draws come from generators seeded by
``(seed, i)``, so the stream is the same whatever the worker, rank or order. :class:`MultiSourceSplit` turns
the result into an :class:`~episodes.dataset.Episode` whose ``source`` names where it came from. The two
stand in for a split and a sampler in :class:`~episodes.dataset.EpisodeDataset`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from .dataset import Episode, FewShotSplit
from .errors import EpisodesError
from .metadataset import VariableEpisodeIndices
from .sampler import EpisodeIndices


@dataclass(frozen=True)
class SourcedIndices:
    """Episode ``indices`` drawn from source number ``source``."""

    source: int
    indices: EpisodeIndices | VariableEpisodeIndices

    @property
    def index(self) -> int:
        return self.indices.index


def check_weights(weights: Sequence[float], names: Sequence[str]) -> np.ndarray:
    """Source weights as probabilities; one-line errors for a negative, infinite or NaN weight, or a total
    that is not positive."""
    weights = np.asarray(weights, dtype=np.float64)
    if len(weights) != len(names):
        raise EpisodesError(f"{len(weights)} weights for {len(names)} sources: give one weight per source")
    for name, weight in zip(names, weights):
        if not math.isfinite(weight) or weight < 0:
            raise EpisodesError(f"source '{name}' has weight {weight}: weights must be finite and >= 0")
    if weights.sum() <= 0:
        raise EpisodesError("the source weights sum to 0: give at least one source a positive weight")
    return weights / weights.sum()


class SourceMixture:
    """Draws :class:`SourcedIndices`: a source by weight, then an episode from that source's sampler (any
    object with ``sample(index)``, such as :class:`~episodes.sampler.EpisodeSampler` or
    :class:`~episodes.metadataset.MetaDatasetSampler`)."""

    def __init__(self, samplers: Sequence, weights: Sequence[float], names: Sequence[str], seed: int = 0):
        if not samplers:
            raise EpisodesError("no data sources")
        self.samplers, self.names, self.seed = list(samplers), list(names), int(seed)
        self.probabilities = check_weights(weights, self.names)
        self._cumulative = np.cumsum(self.probabilities)

    @property
    def most_ways(self) -> int:
        return max(sampler.most_ways for sampler in self.samplers)

    def generator(self, index: int) -> np.random.Generator:
        """The generator of episode ``index``'s augmentation and source draw (not the source's own draws)."""
        return np.random.default_rng([self.seed, int(index), 1])

    def source_of(self, index: int) -> int:
        draw = self.generator(index).uniform()
        return int(min(np.searchsorted(self._cumulative, draw, side="right"), len(self.samplers) - 1))

    def sample(self, index: int) -> SourcedIndices:
        source = self.source_of(index)
        return SourcedIndices(source, self.samplers[source].sample(index))


class MultiSourceSplit:
    """The splits of several sources, addressed by :class:`SourcedIndices`."""

    def __init__(self, splits: Sequence[FewShotSplit], names: Sequence[str]):
        self.splits, self.names = list(splits), list(names)

    def episode(self, drawn: SourcedIndices) -> Episode:
        episode = self.splits[drawn.source].episode(drawn.indices)
        episode.source = self.names[drawn.source]
        return episode
