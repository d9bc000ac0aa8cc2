"""Episodic data for few-shot learning: class discovery, splits, decoding, cache and sampling.

This package is data only; it never imports model code. Its names are imported lazily (on first use).
"""

import importlib

_LOCATIONS = {  # public name -> the submodule that defines it (imported on first use: PEP 562)
    "default_cache_dir": "cache", "load_decoded": "cache", "Episode": "dataset", "EpisodeDataset": "dataset",
    "FewShotSplit": "dataset", "LabelledImages": "dataset", "drop_small_classes": "dataset", "open_split": "dataset",
    "IMAGE_EXTENSIONS": "discovery", "ImageClass": "discovery", "discover_classes": "discovery",
    "CorruptImageError": "errors", "EpisodesError": "errors", "EpisodesWarning": "errors", "decode_image": "images",
    "normalization": "images", "normalize": "images", "train_augmentation": "images",
    "episodes_from_taskset": "learn2learn_tasks", "task_to_episode": "learn2learn_tasks",
    "MetaDatasetConfig": "metadataset", "MetaDatasetSampler": "metadataset", "VariableEpisodeIndices": "metadataset",
    "parents_of": "metadataset", "EpisodeIndices": "sampler", "EpisodeSampler": "sampler",
    "DirichletQuerySampler": "sampler", "query_counts": "sampler",
    "MultiSourceSplit": "sources", "SourceMixture": "sources", "SourcedIndices": "sources", "SplitSpec": "splits",
    "resolve_split": "splits",
}


def __getattr__(name: str):
    """Import a public name's submodule when it is first used, so that ``import episodes.discovery`` (or the
    CLI's argument parsing) does not pay for torch until something needs it."""
    module = _LOCATIONS.get(name)
    if module is None:
        raise AttributeError(f"module 'episodes' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LOCATIONS))


__all__ = [
    "IMAGE_EXTENSIONS", "CorruptImageError", "DirichletQuerySampler", "Episode", "EpisodeDataset", "EpisodeIndices",
    "EpisodeSampler", "query_counts",
    "EpisodesError", "EpisodesWarning", "FewShotSplit", "LabelledImages", "ImageClass", "SplitSpec", "decode_image",
    "default_cache_dir", "discover_classes", "drop_small_classes", "load_decoded", "normalization", "normalize",
    "episodes_from_taskset", "open_split", "resolve_split", "task_to_episode", "train_augmentation",
    "MetaDatasetConfig", "MetaDatasetSampler", "VariableEpisodeIndices", "parents_of", "MultiSourceSplit",
    "SourceMixture", "SourcedIndices",
]
