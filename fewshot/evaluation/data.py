"""From the config's ``data`` section to the ``episodes`` layer: the splits of each phase (one dataset, or the
several of ``data.sources``) and the samplers of ``data.protocol`` (fixed N-way K-shot, or Meta-Dataset's)."""

from __future__ import annotations

from dataclasses import dataclass

from episodes import (DirichletQuerySampler, EpisodeSampler, FewShotSplit, MetaDatasetSampler, MultiSourceSplit,
                      SourceMixture, SplitSpec, open_split, parents_of)

from ..config import Config, DataConfig, query_concentration, source_name
from ..errors import FewshotError


def phase_spec(data: DataConfig, phase: str, required: bool = True) -> SplitSpec | None:
    """The :class:`SplitSpec` of ``phase`` (train / val / test).

    A phase with no ``split``, ``classes`` or ``csv`` entry is None, except ``train``, which then uses
    every class under ``data.root``.
    """
    if data.sources:
        raise FewshotError("this command reads one dataset; data.sources (several) works with fewshot train and "
                           "eval: set data.root instead")
    split, classes, csv = (getattr(getattr(data, key), phase) for key in ("split", "classes", "csv"))
    if not (split or classes or csv):
        if phase == "train" and data.root:
            return SplitSpec(tuple(data.root))
        if required and not data.root and not data.images:
            raise FewshotError(f"no data configured for {phase}: set data.root in the config (or pass --data DIR)")
        if required:
            raise FewshotError(f"no {phase} data configured: set data.split.{phase}, data.classes.{phase} "
                               f"or data.csv.{phase} (or pass --data)")
        return None
    if not data.root and not csv:
        raise FewshotError("data.root is empty: set it to the dataset folder (a path or a list of paths)")
    return SplitSpec(tuple(data.root), split=split, classes=classes, csv=csv, images=data.images)


def open_phase(config: Config, spec: SplitSpec, ways: int, shots: int, queries: int,
               progress: bool = True) -> FewShotSplit:
    """Open ``spec`` for episodes of the given shape, decoding through the cache."""
    data = config.data
    return open_split(spec, image_size=data.image_size, channels=data.channels, min_images=shots + queries,
                      ways=ways, cache_dir=data.cache_dir, skip_corrupt=data.skip_corrupt, progress=progress)


# ---------------------------------------------------------------------- episodes: protocol and sources
Shape = tuple[int, int, int]
"""``(ways, shots, queries)`` of fixed episodes (``train.*`` or ``eval.*``); unused by the metadataset protocol."""


@dataclass
class Source:
    """One dataset of a phase: its name ('' when the config has a single dataset), split and weight."""

    name: str
    spec: SplitSpec
    weight: float = 1.0


def phase_sources(data: DataConfig, phase: str, required: bool = True) -> list[Source]:
    """The sources of ``phase``: ``data.sources`` entries that define it (train: every source of positive
    weight), else the single dataset of :func:`phase_spec`. Empty when nothing defines it and ``required`` is
    False."""
    if not data.sources:
        spec = phase_spec(data, phase, required)
        return [] if spec is None else [Source("", spec)]
    found = []
    for source in data.sources:
        if phase == "train" and source.weight == 0:  # a test-only source: never drawn, never decoded
            continue
        view = DataConfig(root=source.root, split=source.split, classes=source.classes, csv=source.csv,
                          images=source.images)
        spec = phase_spec(view, phase, required=False)
        if spec is not None:
            found.append(Source(source_name(source), spec, source.weight))
    if required and not found:
        raise FewshotError(f"no entry of data.sources defines a {phase} split: set data.sources[N].split.{phase} "
                           f"(or classes.{phase} / csv.{phase})")
    return found


def open_source(config: Config, source: Source, shape: Shape, progress: bool = True) -> FewShotSplit:
    """Decode a source's split for episodes of the config's protocol: N-way K-shot needs ``shape``'s ways and
    shots+queries images per class; Meta-Dataset episodes need 2 images per class and ``min_ways`` classes."""
    if config.data.protocol == "metadataset":
        data = config.data
        return open_split(source.spec, image_size=data.image_size, channels=data.channels, min_images=2,
                          ways=config.metadataset.min_ways, cache_dir=data.cache_dir,
                          skip_corrupt=data.skip_corrupt, progress=progress)
    return open_phase(config, source.spec, *shape, progress=progress)


def episode_sampler(config: Config, split: FewShotSplit, shape: Shape, seed: int, where: str = "the split"):
    """The sampler of the config's protocol for ``split``: :class:`EpisodeSampler` (``shape``),
    :class:`DirichletQuerySampler` (``shape`` with ``data.query_sampling: dirichlet:A``) or
    :class:`MetaDatasetSampler` (``metadataset.*``, classes grouped by their parent folder when there is one)."""
    if config.data.protocol == "metadataset":
        return MetaDatasetSampler(split.class_sizes, seed, config.metadataset, parents_of(split.class_names), where)
    alpha = query_concentration(config.data)
    if alpha is not None:
        return DirichletQuerySampler(split.class_sizes, *shape, alpha, seed)
    return EpisodeSampler(split.class_sizes, *shape, seed)


def episode_stream(config: Config, opened: list[tuple[Source, FewShotSplit]], shape: Shape, seed: int):
    """``(split, sampler)`` for :class:`episodes.EpisodeDataset`: the source's own with one source, else a
    :class:`MultiSourceSplit` and a :class:`SourceMixture` drawing each episode from one source by weight."""
    samplers = [episode_sampler(config, split, shape, seed, source.name or source.spec.describe())
                for source, split in opened]
    if len(opened) == 1:
        return opened[0][1], samplers[0]
    names = [source.name for source, _ in opened]
    return (MultiSourceSplit([split for _, split in opened], names),
            SourceMixture(samplers, [source.weight for source, _ in opened], names, seed))


def check_head_ways(head, sampler, where: str = "the episodes") -> None:
    """One-line error when a head with a fixed number of outputs (``head.max_ways``) would meet episodes with
    more ways than it has, before any work starts."""
    if head.max_ways is not None and sampler.most_ways > head.max_ways:
        raise FewshotError(f"{where} can have {sampler.most_ways} ways but head '{type(head).__name__}' has "
                           f"max_ways={head.max_ways} outputs: set model.head_options.max_ways={sampler.most_ways} "
                           "(or lower metadataset.max_ways)")
