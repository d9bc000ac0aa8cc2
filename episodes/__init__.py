"""Episodic data for few-shot learning: class discovery, splits, decoding, cache and sampling.

This package is data only; it never imports model code.
"""

from .cache import default_cache_dir, load_decoded
from .dataset import Episode, EpisodeDataset, FewShotSplit, LabelledImages, drop_small_classes, open_split
from .discovery import IMAGE_EXTENSIONS, ImageClass, discover_classes
from .errors import CorruptImageError, EpisodesError, EpisodesWarning
from .images import decode_image, normalization, normalize, train_augmentation
from .learn2learn_tasks import episodes_from_taskset, task_to_episode
from .metadataset import MetaDatasetConfig, MetaDatasetSampler, VariableEpisodeIndices, parents_of
from .sampler import EpisodeIndices, EpisodeSampler
from .sources import MultiSourceSplit, SourceMixture, SourcedIndices
from .splits import SplitSpec, resolve_split

__all__ = [
    "IMAGE_EXTENSIONS", "CorruptImageError", "Episode", "EpisodeDataset", "EpisodeIndices", "EpisodeSampler",
    "EpisodesError", "EpisodesWarning", "FewShotSplit", "LabelledImages", "ImageClass", "SplitSpec", "decode_image",
    "default_cache_dir", "discover_classes", "drop_small_classes", "load_decoded", "normalization", "normalize",
    "episodes_from_taskset", "open_split", "resolve_split", "task_to_episode", "train_augmentation",
    "MetaDatasetConfig", "MetaDatasetSampler", "VariableEpisodeIndices", "parents_of", "MultiSourceSplit",
    "SourceMixture", "SourcedIndices",
]
