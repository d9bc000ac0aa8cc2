"""From the config's ``data`` section to the ``episodes`` layer: one split per phase."""

from __future__ import annotations

from episodes import FewShotSplit, SplitSpec, open_split

from .config import Config, DataConfig
from .errors import FewshotError


def phase_spec(data: DataConfig, phase: str, required: bool = True) -> SplitSpec | None:
    """The :class:`SplitSpec` of ``phase`` (train / val / test).

    A phase with no ``split``, ``classes`` or ``csv`` entry is None, except ``train``, which then uses
    every class under ``data.root``.
    """
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
